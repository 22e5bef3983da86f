"""sppo-nemo: Self-Play Preference Optimization (Wu et al., ICLR 2025) from one YAML recipe."""

__version__ = "0.1.0"
