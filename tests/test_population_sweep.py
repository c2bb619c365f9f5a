"""Sweeps through populations (--population auto): the planned processes, run dirs equal to single runs',
restarts after a partial run, a failed population reported per seed; and `grpo bench --population S`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grpo.commands.cli import main as grpo_main

# ---------------------------------------------------------------- grpo bench --population

def bench(tmp_path: Path, *flags: str) -> dict:
    out = tmp_path / f"bench{len(list(tmp_path.iterdir()))}.json"
    assert grpo_main(["bench", "--steps", "2", "--warmup", "0", "--threads", "1", "--completion-len", "4",
                      "--peak-gflops", "50", "--json-out", str(out), *flags]) == 0
    return json.loads(out.read_text())


def test_bench_population_reports_seed_steps_per_second(tmp_path, capsys):
    one, two = bench(tmp_path), bench(tmp_path, "--population", "2", "--compare-loop")
    assert one["population"] == 1 and two["population"] == 2
    assert one["seed_steps_per_s"] == pytest.approx(1 / one["median_s_per_step"])
    assert two["seed_steps_per_s"] == pytest.approx(2 / two["median_s_per_step"])
    # Every prompt is 7 tokens and every completion exactly 4: two seeds do twice one seed's matmul FLOPs.
    assert two["flops_per_step"] == pytest.approx(2 * one["flops_per_step"], rel=1e-12)
    assert set(two["phases_s"]) >= {"rollout", "reward", "train", "optimizer", "jsonl"}
    assert two["peak_rss_mib"] > 0 and two["median_s_per_step"] > 0
    loop = two["loop"]
    assert loop["seed_steps_per_s"] == pytest.approx(2 / loop["median_s_per_step"])
    assert two["population_speedup"] == pytest.approx(two["seed_steps_per_s"] / loop["seed_steps_per_s"])
