"""sppo-nemo: Self-Play Preference Optimization (Wu et al., ICLR 2025) from one YAML recipe.

The floor plan, lowest layer first; a module imports only from its own layer and the layers below
it (``tests/unit/test_package_layout.py`` checks it):

- ``schema``   the recipe's typed sections, the one error type, the interfaces backends implement
- ``maths``    the paper's mathematics and the trainer core, as pure functions
- ``formats``  what lies on disk: prompt data, the run directory, chunk logs, rows, checkpoints
- ``process``  what a process sets up for itself: signals, the memory allocator
- ``backends`` the engines (transformers, vLLM, PairRM, megatron-core, the games, lm-eval, AlpacaEval's judge)
- ``loading``  a recipe from YAML to checked values: inheritance, overrides, checks, precision, cost
- ``stages``   the five stages of an iteration and the context they share
- ``run``      the plan run stage by stage, the report, tracking, preflight, the process rule
- ``launch``   jobs: Slurm and NeMo-Run
- ``cli``      ``sppo-run``; ``testing`` builds the tiny models the tests and CI recipe use
"""

__version__ = "0.1.0"
