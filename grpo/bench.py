"""`grpo bench`: seconds per GRPO step on the fixed workloads W1 (tiny) and W2 (small).

The workload matches ../shared/bench/trl_grpo_bench.py, so both can be timed side by side
(bench/compare_trl.py): 8 prompts "a+b=" x G = 8, exactly 32 new tokens (EOS suppressed), temperature
1, correct + format rewards, group advantages, kl_beta 0.04 with k3 (a reference forward every step),
one inner epoch and one mini-batch (no separate old-logprob forward), AdamW lr 1e-4, grad clip 1.0,
all 64 completions in one micro-batch, fp32, random init with seed 0, no warm start.

It runs the trainer's own `grpo_step` and prints one JSON object: median/min/max s/step, completion
tokens/s, peak RSS, the phase split, the FLOP-model floor and `efficiency` = floor / step time. The floor
divides the step's matmul FLOPs by this machine's fp32 GEMM peak, timed in the same process, with the
same threads, on the step's own matmul shapes (`gemm_peak_gflops`; `--peak-gflops` overrides it), so an
efficiency means the same on any machine: 1.0 would be a step that does nothing but its matmuls at peak.
"""

from __future__ import annotations

import json
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from grpo.config import TrainConfig
from grpo.models import MODEL_PRESETS

PROMPT_LEN = 7            # "<bos>" + "ab+cd="
VOCAB = 21


@dataclass(frozen=True)
class BenchConfig:
    """Time GRPO steps on a fixed workload; prints one JSON object."""

    workload: Literal["tiny", "small", "qwen2_0.5b"] = "tiny"
    """W1 = tiny (1.06M params), W2 = small (33.6M params); qwen2_0.5b is Qwen2-0.5B's shape (for GPUs)."""
    steps: int = 20
    """Timed steps."""
    warmup: int = 2
    """Untimed steps first (allocator warm-up, compilation)."""
    threads: int = 2
    """torch CPU threads."""
    group_size: int = 8
    """G (the workload's 8; change it for the scaling table)."""
    completion_len: int = 32
    """Exact completion length (the workload's 32; change it for the scaling table)."""
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    """Device to run on."""
    dtype: Literal["fp32", "bf16"] = "fp32"
    """Compute dtype."""
    sampler: Literal["auto", "hf"] = "auto"
    """Rollout implementation (see grpo train --help)."""
    peak_gflops: float | None = None
    """The machine's GEMM peak (GFLOP/s) for the floor; unset: timed here on the step's matmul shapes."""
    json_out: str = ""
    """Also write the JSON object to this file."""


def workload_config(b: BenchConfig) -> TrainConfig:
    return TrainConfig(
        task="arithmetic", digits="2", model=b.workload, prompts_per_step=8, group_size=b.group_size,
        max_new_tokens=b.completion_len, min_new_tokens=b.completion_len, temperature=1.0,
        kl_beta=0.04, kl_estimator="k3", inner_epochs=1, mini_batches=1, micro_batch_size=8 * b.group_size,
        lr=1e-4, max_grad_norm=1.0, warmstart_steps=0, warmstart_seed=0, seed=0, threads=b.threads,
        device=b.device, dtype=b.dtype, sampler=b.sampler, wandb_mode="disabled", quiet=True)


def step_flops(model: str, num_seqs: int, completion_len: int) -> dict[str, float]:
    """Matmul FLOPs of one step: 2 per weight per token forward, 3x that for forward + backward,
    plus the attention products QK^T and AV (4 * hidden per attended position per layer)."""
    p = MODEL_PRESETS[model]
    h, layers, inter = p["hidden_size"], p["num_hidden_layers"], p["intermediate_size"]
    kv = h * p["num_key_value_heads"] // p["num_attention_heads"]      # k and v width under GQA
    weights = layers * (2 * h * h + 2 * h * kv + 3 * h * inter) + h * VOCAB
    seq = PROMPT_LEN + completion_len

    def forward(positions: int) -> float:
        attention = sum(4 * h * (t + 1) for t in range(positions)) * layers
        return num_seqs * (2 * weights * positions + attention)

    return {"rollout": forward(seq - 1), "reference": forward(seq), "policy_fwd_bwd": 3 * forward(seq)}


def step_gemm_shapes(model: str, num_seqs: int, completion_len: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of the step's weight matmuls in the learner's forward: all tokens of the batch at once."""
    p = MODEL_PRESETS[model]
    h, inter = p["hidden_size"], p["intermediate_size"]
    kv = h * p["num_key_value_heads"] // p["num_attention_heads"]
    tokens = num_seqs * (PROMPT_LEN + completion_len)
    return [(tokens, h, h), (tokens, h, kv), (tokens, h, inter), (tokens, inter, h), (tokens, h, VOCAB)]


def gemm_peak_gflops(shapes: list[tuple[int, int, int]], device: torch.device, dtype: torch.dtype,
                     seconds: float = 0.2) -> float:
    """The best GFLOP/s torch.mm reaches on any of `shapes` (m, k, n), each timed for ~`seconds` after a
    warm-up, in this process and with its threads: the peak a step's matmuls could reach here."""
    best = 0.0
    generator = torch.Generator().manual_seed(0)
    for m, k, n in shapes:
        a = torch.randn(m, k, generator=generator).to(device, dtype)
        b = torch.randn(k, n, generator=generator).to(device, dtype)
        torch.mm(a, b)
        calls, started = 0, time.perf_counter()
        while True:
            torch.mm(a, b)
            calls += 1
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                break
        best = max(best, 2 * m * k * n * calls / elapsed / 1e9)
    return best


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_bench(b: BenchConfig) -> dict:
    from grpo.trainer import build_trainer, grpo_step

    cfg = workload_config(b)
    t = build_trainer(cfg, log=lambda *_: None)
    times, phases = [], []
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "metrics.jsonl"
        for step in range(1, b.warmup + b.steps + 1):
            tick = time.perf_counter()
            metrics, _ = grpo_step(t, step)
            if t.device.type == "cuda":
                torch.cuda.synchronize()
            # The trainer's local store: one JSON line appended and flushed per step.
            tock = time.perf_counter()
            with open(log_path, "a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
                f.flush()
            elapsed = time.perf_counter() - tick
            if step > b.warmup:
                times.append(elapsed)
                phases.append({**t.timer.seconds, "jsonl": elapsed - (tock - tick)})
    median = statistics.median(times)
    flops = step_flops(b.workload, cfg.num_completions, b.completion_len)
    dtype = torch.bfloat16 if b.dtype == "bf16" else torch.float32
    peak = b.peak_gflops or gemm_peak_gflops(step_gemm_shapes(b.workload, cfg.num_completions, b.completion_len),
                                             t.device, dtype)
    floor = sum(flops.values()) / (peak * 1e9)
    result = {
        "workload": b.workload, "device": str(t.device), "dtype": b.dtype, "threads": torch.get_num_threads(),
        "group_size": b.group_size, "completion_len": b.completion_len, "timed_steps": b.steps,
        "median_s_per_step": median, "min_s_per_step": min(times), "max_s_per_step": max(times),
        "completion_tokens_per_s": cfg.num_completions * b.completion_len / median,
        "peak_rss_mib": peak_rss_mib(),
        "phases_s": {k: statistics.median(p[k] for p in phases) for k in phases[0]},
        "logging_share": statistics.median((p["metrics"] + p["jsonl"]) / s for p, s in zip(phases, times)),
        "flops_per_step": sum(flops.values()), "gemm_peak_gflops": peak,
        "gemm_peak_source": "--peak-gflops" if b.peak_gflops else "timed here on the step's matmul shapes",
        "floor_s_per_step": floor, "efficiency": floor / median, "ratio_to_floor": median / floor,
        "torch": torch.__version__,
    }
    if t.device.type == "cuda":
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main(argv: list[str]) -> int:
    from grpo.cli import parse_flags

    b = parse_flags(BenchConfig, argv, "grpo bench")
    result = run_bench(b)
    text = json.dumps(result, indent=2)
    print(text)
    if b.json_out:
        Path(b.json_out).write_text(text + "\n")
    return 0
