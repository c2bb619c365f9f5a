"""Layer 1 of 7. Foundations: distributed processes, timing, paths and the cache root, device choice, progress bars, memory.

Imports go downward only: a module here imports its own layer or a lower one (tests/test_imports.py)."""
