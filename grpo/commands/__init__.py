"""Layer 7 of 7. Commands: the `grpo` CLI (train, bench, sync, rescore).

Imports go downward only: a module here imports its own layer or a lower one (tests/test_imports.py)."""
