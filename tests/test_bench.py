"""`grpo bench`: the FLOP model by hand, the GEMM peak's arithmetic on a scripted clock, and a JSON whose
floor and efficiency follow from its own numbers. (Times are printed by the benchmark, never asserted.)"""

from __future__ import annotations

import json
import math

import pytest
import torch

from grpo import bench
from grpo.cli import main


def test_step_flops_of_w1_by_hand():
    # tiny: h 128, 4 layers, intermediate 512, 4 heads = 4 kv heads; vocabulary 21.
    # weights per token: 4 * (2*128*128 + 2*128*128 + 3*128*512) + 128*21 = 1,048,576 + 2,688 = 1,051,264
    # reference forward over 7 + 32 = 39 positions: 2 * 1,051,264 * 39 = 81,998,592 weight FLOPs,
    # attention 4 * 128 * 4 layers * (1 + ... + 39 = 780) = 1,597,440; per sequence 83,596,032, x 64.
    flops = bench.step_flops("tiny", num_seqs=64, completion_len=32)
    assert flops["reference"] == 64 * 83_596_032
    # the rollout attends over 38 positions (the last token is never fed back): 2*1,051,264*38 + 2048*741
    assert flops["rollout"] == 64 * (79_896_064 + 1_517_568)
    assert flops["policy_fwd_bwd"] == 3 * flops["reference"]


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
    assert bench.step_gemm_shapes("tiny", 64, 32) == [(tokens, 128, 128), (tokens, 128, 128), (tokens, 128, 512),
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
