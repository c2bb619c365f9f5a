"""Layer 2 of 7. The math: advantage estimators, KL estimators, policy objectives, losses and off-policy corrections. Pure torch functions in registries.

Imports go downward only: a module here imports its own layer or a lower one (tests/test_imports.py)."""
