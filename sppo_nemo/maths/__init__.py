"""The mathematics, as pure functions citing the paper (arXiv:2405.00675): the losses (``loss``),
the preference estimates (``preference``), exact games (``games``), statistics (``stats``), seed
derivation (``seeds``), shared-prompt packing (``packing``), the one trainer core (``training``) and AlpacaEval 2.0's
length-controlled win rate (``length_control``)."""
