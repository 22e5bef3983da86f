"""AlpacaEval 2.0 inside the evaluate stage (``evaluation.alpaca_eval``).

``spec`` reads and checks the recipe's keys; ``prompt`` is AlpacaEval 2.0's judge prompt and the
preference it reads from the judge's first-token log-probabilities; ``client`` talks to any
OpenAI-compatible chat endpoint (standard library only); ``server`` runs vLLM's OpenAI server on a
local judge model in a process group of its own; ``annotate`` judges every instruction, resumably,
and fits the length-controlled win rate (sppo_nemo/maths/length_control.py).
"""
