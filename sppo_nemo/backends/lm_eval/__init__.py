"""EleutherAI's lm-evaluation-harness on an evaluated policy (``evaluation.lm_eval``).

``spec`` reads and checks the recipe's keys (no lm-eval import); ``controller`` runs the worker and
reads its results; ``worker`` (``python -m sppo_nemo.backends.lm_eval``) is the only module that
imports lm_eval: it loads the policy once and runs the tasks one by one, each task's results a file
of its own, so a stopped stage resumes at the first task without one.
"""
