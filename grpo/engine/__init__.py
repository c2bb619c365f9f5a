"""Layer 4 of 7. Engine parts: models, samplers, log-prob scoring, evaluation, the warm start and CPU kernels.

Imports go downward only: a module here imports its own layer or a lower one (tests/test_imports.py)."""
