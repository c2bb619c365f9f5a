"""Layer 3 of 7. A run's setup: its config and flags, counterfactual alternatives, model presets, tasks, rewards, tokenizer and the sampler names.

Imports go downward only: a module here imports its own layer or a lower one (tests/test_imports.py)."""
