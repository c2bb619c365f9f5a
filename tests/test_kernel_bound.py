"""bench/kernel_bound.py: each arm's seed-0 run planned as the sweep plans it, profiled to its kernel seconds."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from grpo.setup.config import config_flags

spec = importlib.util.spec_from_file_location(
    "kernel_bound", Path(__file__).resolve().parents[1] / "bench" / "kernel_bound.py")
kernel_bound = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kernel_bound)


def test_arm_flags_are_the_sweeps_seed_zero_runs_on_one_thread(tmp_path):
    from experiments.demo import EXPERIMENT

    flags = kernel_bound.arm_flags(EXPERIMENT, tmp_path)
    assert list(flags) == ["grpo", "dr_grpo", "G4", "beta0"]
    for arm, arm_flags in flags.items():
        assert arm_flags[arm_flags.index("--threads") + 1] == "1"
        assert arm_flags[arm_flags.index("--out-dir") + 1] == str(tmp_path / arm / "seed0")
        assert "--seed" not in arm_flags       # seed 0 is the default
    assert flags["dr_grpo"][flags["dr_grpo"].index("--advantage") + 1] == "dr_grpo"
    assert flags["beta0"][flags["beta0"].index("--kl-beta") + 1] == "0.0"


def test_a_profiled_run_reports_its_matmul_seconds_within_its_wall_time(make_cfg, tmp_path):
    cfg = make_cfg(tmp_path, steps=2, eval_every=2, save_every=2)
    result = kernel_bound.profile_run(config_flags(cfg))
    assert (tmp_path / "run" / "summary.json").exists()
    assert result["by_op_s"]["aten::mm"] > 0
    assert result["kernel_s"] == sum(result["by_op_s"].values())
    assert 0 < result["kernel_s"] < result["clocked_wall_s"]


def test_the_kernel_clock_reads_nothing_on_elementwise_work():
    x = torch.randn(256, 256)
    with kernel_bound.KernelClock() as clock:
        (x * x + x).softmax(-1).sum()
    assert clock.seconds == {}


@pytest.mark.parametrize("inference", [False, True])
def test_the_kernel_clock_times_the_matmuls_inside_composite_ops(inference):
    # Under inference_mode torch.matmul, F.linear and SDPA reach the clock whole; it times their kernels (bmm,
    # mm, the flash attention kernel) as it does outside, where only the kernels reach it.
    a, b = torch.randn(8, 64, 32), torch.randn(8, 32, 64)
    weight, q = torch.randn(48, 32), torch.randn(2, 4, 16, 8)
    with torch.inference_mode(inference), kernel_bound.KernelClock() as clock:
        start = time.perf_counter()
        product = torch.matmul(a, b)
        projected = F.linear(a, weight)
        attended = F.scaled_dot_product_attention(q, q, q)
        wall = time.perf_counter() - start
    # One kernel call each, whichever way it reached the clock: none missed, none counted twice.
    assert clock.calls == {"aten::bmm": 1, "aten::mm": 1, "aten::_scaled_dot_product_flash_attention_for_cpu": 1}
    assert set(clock.seconds) == set(clock.calls) and 0 < sum(clock.seconds.values()) < wall
    torch.testing.assert_close(product, a @ b)
    torch.testing.assert_close(projected, a @ weight.t())
    assert attended.shape == q.shape


def test_a_profiled_run_is_one_seed():
    with pytest.raises(SystemExit, match="one seed"):
        kernel_bound.profile_run(["--population", "2"])


def test_the_kernel_clock_counts_the_kernel_calls_the_profiler_records_in_a_real_step():
    # Two runs built alike take the same first step (W1's shape, exact-length completions); one under
    # torch.profiler, which records every kernel call, inside composites too, one under the clock.
    from torch.profiler import ProfilerActivity, profile

    from grpo.algorithm.step import build_run, grpo_step
    from grpo.commands.benchmark import BenchConfig, KERNEL_OPS, workload_config

    cfg = workload_config(BenchConfig(completion_len=3, threads=1))
    profiled, clocked = build_run(cfg, log=lambda *_: None), build_run(cfg, log=lambda *_: None)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        grpo_step(*profiled, 1)
    with kernel_bound.KernelClock() as clock:
        grpo_step(*clocked, 1)
    recorded = {e.key: e.count for e in prof.key_averages() if e.key in KERNEL_OPS}
    # Every kernel call is counted once. The product may change kernel: decomposed from Python, one matmul (the
    # prefill's head on a strided [8, 1, 128] slice) runs as bmm where torch's C++ matmul folds it into an mm.
    matmuls = ("aten::mm", "aten::bmm")
    assert sum(clock.calls.get(k, 0) for k in matmuls) == sum(recorded.get(k, 0) for k in matmuls)
    assert {k: n for k, n in clock.calls.items() if k not in matmuls} == \
        {k: n for k, n in recorded.items() if k not in matmuls}
    assert abs(clock.calls["aten::bmm"] - recorded["aten::bmm"]) <= 1
    assert recorded["aten::mm"] > 0 and "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in recorded
