"""Defaults shared by the library and the CLI's argument parser (no heavy imports here)."""

#: held-out train examples kept per task for choosing coefficients (``taskvec search``/``negate``)
DEFAULT_HOLDOUT = 200
