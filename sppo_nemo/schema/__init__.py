"""The lowest layer: the recipe schema (``config``), the one user-facing error type (``errors``) and
the interfaces every backend implements (``protocols``). Imports nothing of the package."""
