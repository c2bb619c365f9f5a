"""What a CPU process does with the memory its tensors free: keep it for the next step or give it back.

glibc's malloc decides per allocation: a block of at least the mmap threshold gets a fresh mapping (and a
page fault for every 4 KB page its first writer touches), smaller ones come from the heap, whose free top
goes back to the OS once it exceeds the trim threshold. Both thresholds start at 128 KB and move with the
program; a training step frees and reallocates the same activations every step, so where they land
decides how many pages each step faults in again. On this project's VMs the cost shows (W1 with glibc's
defaults: 5-18k faults and 0.04-0.35 s of system time a step, the learner swinging 0.19-0.58 s).

- A small model (below LARGE_MODEL_PARAMS) keeps its freed blocks: every tensor under 32 MB (where
  glibc's own moving threshold stops on 64-bit) comes from the heap, and free memory at the heap's top
  goes back only once it exceeds 1 GB, so after the first steps a step faults in almost nothing. Measured
  side by side (grpo bench, 2 threads): W1 0.52-0.544 -> 0.502-0.52 s a step, W2 8.26-8.56 -> 7.82-7.93 s,
  same peak RSS.
- A large one gives them back (1 MB thresholds): the rollout's caches and the learner's activations
  leave between phases instead of staying resident: W3 (SmolLM2-135M) peak RSS 4.76 -> 4.35 GB at no
  measured cost, which the lean layers (grpo/engine/lean_layers.py) then took within 4 GiB.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# From this many parameters up, a model's training memory is worth trading for: freed memory goes back to
# the OS and Llama-family models get the lean layers (grpo/engine/lean_layers.py). Below it neither pays.
LARGE_MODEL_PARAMS = 50_000_000

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3      # mallopt's option numbers (malloc.h)
KEEP = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 1 << 30}
GIVE_BACK = {M_MMAP_THRESHOLD: 1 << 20, M_TRIM_THRESHOLD: 1 << 20}


def set_malloc_thresholds(thresholds: dict[int, int]) -> bool:
    """Set glibc malloc's thresholds (option -> bytes) for this process; whether glibc took every one
    (mallopt returns 0 for a value it refuses). A no-op, False, without glibc's mallopt."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all([mallopt(option, value) == 1 for option, value in thresholds.items()])   # a list: every call runs


def fit_malloc_to_model(num_params: int) -> bool:
    """Keep freed memory for a small model's next step; give it back for a large model (see above)."""
    return set_malloc_thresholds(GIVE_BACK if num_params >= LARGE_MODEL_PARAMS else KEEP)
