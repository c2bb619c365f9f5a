"""The malloc policy by model size (grpo/base/memory.py), checked on the page faults it exists to avoid."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from grpo.base import memory

# A step-like pattern in a fresh process: 5 MB tensors allocated, written and freed again and again. Each
# policy is warmed up first; then its minor page faults over 10 more rounds are counted. Transparent huge
# pages are off for the probe (PR_SET_THP_DISABLE), so a fault is one 4 KB page on any kernel setting.
PROBE = """
import ctypes, json, resource, torch
from grpo.base.memory import fit_malloc_to_model, LARGE_MODEL_PARAMS

ctypes.CDLL("libc.so.6").prctl(41, 1, 0, 0, 0)           # PR_SET_THP_DISABLE

def faults_per_round(num_params):
    took = fit_malloc_to_model(num_params)
    def round_():
        x = torch.empty(5 << 18).fill_(1.0)          # 5 MB
        del x
    for _ in range(50):
        round_()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        round_()
    return took, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10

large = faults_per_round(LARGE_MODEL_PARAMS)      # first: the other policy would leave free heap behind
print(json.dumps({"large": large, "small": faults_per_round(1_000_000)}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and its page faults are Linux's")
def test_a_small_model_reuses_freed_memory_and_a_large_one_gives_it_back():
    """Below LARGE_MODEL_PARAMS a freed 5 MB tensor's pages serve the next one (no faults); from it up
    the tensor is a fresh 1 MB-threshold mapping each time: 5 MB / 4 KB = 1280 faults a round. glibc
    takes every threshold of both policies."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                         env={**env, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    faults = json.loads(out.stdout)
    assert faults["large"][0] and faults["small"][0]
    assert faults["small"][1] < 50
    assert faults["large"][1] >= 1200


def test_the_threshold_decides_the_policy(monkeypatch):
    chosen = []
    monkeypatch.setattr(memory, "set_malloc_thresholds", chosen.append)
    memory.fit_malloc_to_model(memory.LARGE_MODEL_PARAMS - 1)
    memory.fit_malloc_to_model(memory.LARGE_MODEL_PARAMS)
    assert chosen == [memory.KEEP, memory.GIVE_BACK]
