"""Layer 6 of 7. The run around the algorithm: the run directory, its wandb mirror, checkpoints, stored rollouts and the runner.

Imports go downward only: a module here imports its own layer or a lower one (tests/test_imports.py)."""
