"""`grpo bench`: the FLOP model by hand, the GEMM peak's arithmetic on a scripted clock, and a JSON whose
floor and efficiency follow from its own numbers. (Times are printed by the benchmark, never asserted.)"""

from __future__ import annotations

import json
import math

import pytest
import torch

from grpo.commands import benchmark as bench
from grpo.commands.cli import main


def test_step_flops_of_w1_by_hand():
    # tiny: h 128, 4 layers, intermediate 512, 4 heads = 4 kv heads; vocabulary 21.
    # layer weights per token: 4 * (2*128*128 + 2*128*128 + 3*128*512) = 1,048,576; head 128*21 = 2,688.
    # reference forward over 7 + 32 = 39 positions: layers 2 * 1,048,576 * 39 = 81,788,928, the head over
    # the 32 scored positions 2 * 2,688 * 32 = 172,032, attention 4 * 128 * 4 layers * (1 + ... + 39 = 780)
    # = 1,597,440; per sequence 83,558,400, x 64.
    flops = bench.step_flops(bench.preset_dims("tiny"), [7] * 64, completion_len=32)
    assert flops["reference"] == 64 * 83_558_400
    # the rollout runs the layers over 38 positions (the last token is never fed back), the head over 32:
    # 2*1,048,576*38 + 172,032 + 2048*741
    assert flops["rollout"] == 64 * (79_691_776 + 172_032 + 1_517_568)
    assert flops["policy_fwd_bwd"] == 3 * flops["reference"]


def test_step_flops_count_each_prompt_at_its_own_length():
    # one layer, h 2, kv 2, intermediate 1, vocabulary 3: layer weights 2*4 + 2*4 + 3*2 = 22, head 6.
    # prompts of 1 and 3 tokens, C = 2: reference positions 3 and 5.
    # forward(n) = 2*22*n + 2*6*2 + 4*2*1*n(n+1)/2 -> forward(3) = 132 + 24 + 48 = 204, forward(5) = 220 + 24
    # + 120 = 364; the rollout: forward(2) = 88 + 24 + 24 = 136, forward(4) = 176 + 24 + 80 = 280.
    dims = {"hidden": 2, "layers": 1, "intermediate": 1, "kv": 2, "vocab": 3}
    flops = bench.step_flops(dims, [1, 3], completion_len=2)
    assert flops == {"rollout": 136 + 280, "reference": 204 + 364, "policy_fwd_bwd": 3 * (204 + 364)}


def test_step_flops_count_a_groups_prompt_once():
    # The dims above, rows [1, 1, 3, 3] in groups of 2. A forward splits into the prompt part (layers and
    # attention over positions 0 .. p-1) and each row's completion part (positions p .. p+fed-1, plus the head
    # 2*2*3 over C = 2 positions): prompt 1: 2*22*1 + 4*2*1 = 52; prompt 3: 2*22*3 + 8*(1+2+3) = 180.
    # reference (fed 2): rows of prompt 1: 88 + 24 + 8*(2+3) = 152; of prompt 3: 88 + 24 + 8*(4+5) = 184.
    # rollout (fed 1): 44 + 24 + 8*2 = 84 and 44 + 24 + 8*4 = 100. (Each row alone: 52 + 152 = 204 = forward(3).)
    dims = {"hidden": 2, "layers": 1, "intermediate": 1, "kv": 2, "vocab": 3}
    flops = bench.step_flops(dims, [1, 1, 3, 3], completion_len=2, group_size=2)
    assert flops["reference"] == 52 + 2 * 152 + 180 + 2 * 184
    assert flops["rollout"] == 52 + 2 * 84 + 180 + 2 * 100


def test_gemm_peak_is_the_best_shape_on_a_scripted_clock(monkeypatch):
    """Each perf_counter call advances 0.05 s: after the warm-up call, a shape is called until 0.2 s have
    passed, i.e. 4 times, so its rate is 2*m*k*n * 4 / 0.2 s. The peak is the best shape's."""
    clock = iter(0.05 * i for i in range(1000))
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    shapes = [(8, 4, 2), (16, 8, 4)]
    peak = bench.gemm_peak_gflops(shapes, torch.device("cpu"), torch.float32, seconds=0.2)
    assert peak == pytest.approx(2 * 16 * 8 * 4 * 4 / 0.2 / 1e9, rel=1e-12)


def test_step_gemm_shapes_are_the_learner_matmuls_of_w1():
    tokens = 64 * (7 + 32)
    assert bench.step_gemm_shapes(bench.preset_dims("tiny"), tokens) == [(tokens, 128, 128), (tokens, 128, 128), (tokens, 128, 512),
                                                      (tokens, 512, 128), (tokens, 128, 21)]


@pytest.mark.parametrize("peak", [None, 50.0])
def test_bench_json_floor_and_efficiency_follow_from_its_numbers(tmp_path, capsys, peak):
    out = tmp_path / "bench.json"
    args = ["bench", "--steps", "2", "--warmup", "0", "--threads", "1", "--completion-len", "4", "--json-out", str(out)]
    assert main(args + (["--peak-gflops", str(peak)] if peak else [])) == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert math.isfinite(result["gemm_peak_gflops"]) and result["gemm_peak_gflops"] > 0
    if peak:
        assert result["gemm_peak_gflops"] == peak and result["gemm_peak_source"] == "--peak-gflops"
    assert result["floor_s_per_step"] == pytest.approx(result["flops_per_step"] / (result["gemm_peak_gflops"] * 1e9))
    assert result["efficiency"] == pytest.approx(result["floor_s_per_step"] / result["median_s_per_step"])
    assert result["timed_steps"] == 2 and result["completion_len"] == 4


def test_kernel_seconds_sum_the_kernel_ops_per_step():
    # Two profiled steps: mm 0.3 + 0.1 s, oneDNN's linear 0.5 s, SDPA backward 0.2 s -> per step 0.2, 0.25, 0.1.
    # The wrappers (matmul, linear) and elementwise ops are not kernels of the FLOP model.
    events = [("aten::mm", 0.3), ("aten::matmul", 0.7), ("mkldnn::_linear_pointwise", 0.5), ("aten::mm", 0.1),
              ("aten::mul", 0.9), ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", 0.2),
              ("aten::linear", 0.4)]
    assert bench.kernel_seconds(events, steps=2) == pytest.approx(
        {"aten::mm": 0.2, "mkldnn::_linear_pointwise": 0.25,
         "aten::_scaled_dot_product_flash_attention_for_cpu_backward": 0.1}, rel=1e-12)


def test_kernel_seconds_by_phase_charge_each_call_to_the_phase_it_ran_in():
    # Two profiled steps. rollout [0, 10] and train [20, 30]; two seeds' reward phases overlap, [12, 18] and
    # [13, 16]: a call at 14 is the later one's, one at 17 the earlier one's (the later ended at 16).
    phases = [("train", 20.0, 30.0), ("rollout", 0.0, 10.0), ("reward", 12.0, 18.0), ("reward2", 13.0, 16.0)]
    kernels = [(1.0, 0.2), (10.0, 0.4), (14.0, 0.6), (17.0, 0.8), (11.0, 1.0), (25.0, 1.2), (31.0, 1.4), (-1.0, 0.1)]
    assert bench.kernel_seconds_by_phase(kernels, phases, steps=2) == pytest.approx(
        {"rollout": 0.3, "reward2": 0.3, "reward": 0.4, "train": 0.6, "outside": 1.25}, rel=1e-12)
    assert bench.kernel_seconds_by_phase([], phases, steps=1) == {}


def test_bench_kernel_profile_reports_kernels_inside_the_step(tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", "--steps", "2", "--warmup", "0", "--threads", "1", "--completion-len", "4",
            "--peak-gflops", "50", "--kernel-profile", "1", "--json-out", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    kernels = result["kernels"]
    assert kernels["profiled_steps"] == 1
    # The step's weight matmuls ran (torch.mm: W1's weights are below oneDNN's size threshold).
    assert kernels["by_op_s"]["aten::mm"] > 0
    assert kernels["s_per_step"] == pytest.approx(sum(kernels["by_op_s"].values()))
    assert kernels["ratio_to_floor"] == pytest.approx(kernels["s_per_step"] / result["floor_s_per_step"])
    assert kernels["share_of_median_step"] == pytest.approx(kernels["s_per_step"] / result["median_s_per_step"])
    assert kernels["kernel_only_seed_steps_per_s"] == pytest.approx(1 / kernels["s_per_step"])
    # Every kernel ran in a phase of the step (rollout, reference forward in "reward", learner in "train"):
    # the split adds up to the total and charges nothing to the gaps between phases.
    by_phase = kernels["by_phase_s"]
    assert sum(by_phase.values()) == pytest.approx(kernels["s_per_step"], rel=1e-9)
    assert {"rollout", "reward", "train"} <= set(by_phase) and "outside" not in by_phase
    assert all(by_phase[k] > 0 for k in ("rollout", "reward", "train"))


def test_bench_kernel_profile_sees_a_batched_populations_seed_threads(tmp_path):
    # Batched, every model call runs in one of the seeds' step threads (grpo/algorithm/batching.py), none in the
    # main thread: a profile of the main thread alone would find no kernel in any phase.
    out = tmp_path / "bench.json"
    args = ["bench", "--steps", "1", "--warmup", "0", "--threads", "1", "--completion-len", "4", "--population", "2",
            "--population-batching", "on", "--peak-gflops", "50", "--kernel-profile", "1", "--json-out", str(out)]
    assert main(args) == 0
    kernels = json.loads(out.read_text())["kernels"]
    assert all(kernels["by_phase_s"].get(k, 0) > 0 for k in ("rollout", "reward", "train"))
    assert kernels["kernel_only_seed_steps_per_s"] == pytest.approx(2 / kernels["s_per_step"])


def test_kernel_ops_cover_every_matmul_and_attention_op_a_step_runs(tmp_path):
    """Profile one W1-shaped step (3 tokens) and the lean head's log-probs with their gradient (the head of
    models of 50M+ parameters): every op whose name says mm, linear or attention is a kernel of KERNEL_OPS
    or one of the wrappers that call them."""
    from torch.profiler import ProfilerActivity, profile

    from grpo.engine.lean_layers import head_logp
    from grpo.algorithm.step import build_run, grpo_step

    c, s = build_run(bench.workload_config(bench.BenchConfig(completion_len=3, threads=1)), log=lambda *_: None)
    hidden = torch.randn(2, 3, 8, requires_grad=True)
    weight = torch.randn(5, 8, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        grpo_step(c, s, 1)
        head_logp(hidden, weight, torch.tensor([[1, 2, 3], [4, 0, 1]]), 1.0).sum().backward()
    names = {e.key for e in prof.key_averages()}
    wrappers = {"aten::matmul", "aten::linear", "aten::scaled_dot_product_attention", "aten::_addmm_activation"}
    looks_like = {n for n in names if any(w in n.lower() for w in ("mm", "linear", "attention"))
                  and n.startswith(("aten::", "mkldnn::"))}
    assert looks_like - wrappers <= set(bench.KERNEL_OPS), looks_like - wrappers - set(bench.KERNEL_OPS)
    assert {"aten::mm", "aten::addmm_", "aten::bmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
            "aten::_scaled_dot_product_flash_attention_for_cpu_backward"} <= names


def test_bench_kernel_profile_must_not_be_negative(capsys):
    assert main(["bench", "--kernel-profile", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--kernel-profile must be >= 0" in err and "Traceback" not in err


def test_bench_rollout_dtype_reaches_the_sampler():
    """--rollout-dtype bf16 makes the workload's sampler draw in bf16 while the learner scores in fp32: the
    step logs a mismatch between the two (bf16 rounding moves the log-probs, so k3 > 0); the default
    (the compute dtype, fp32) logs none, its sampler being the learner."""
    from grpo.algorithm.step import build_run, grpo_step

    def step_metrics(**fields) -> dict:
        cfg = bench.workload_config(bench.BenchConfig(completion_len=3, threads=1, **fields))
        c, s = build_run(cfg, log=lambda *_: None)
        return grpo_step(c, s, 1).metrics

    assert bench.workload_config(bench.BenchConfig(rollout_dtype="bf16")).rollout_dtype == "bf16"
    assert step_metrics(rollout_dtype="bf16")["mismatch/k3"] > 0
    assert not any(k.startswith("mismatch/") for k in step_metrics())
