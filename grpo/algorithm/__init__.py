"""Layer 5 of 7. The algorithm: the train state, rollout collection, the GRPO step, its update, metrics and probes.

Imports go downward only: a module here imports its own layer or a lower one (tests/test_imports.py)."""
