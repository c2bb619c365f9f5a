"""`grpo bench`: seconds per GRPO step on the fixed workloads W1 (tiny), W2 (small) and W3 (smollm2).

W1/W2 match ../shared/bench/trl_grpo_bench.py, so both can be timed side by side (bench/compare_trl.py):
8 prompts "a+b=" x G = 8, exactly 32 new tokens (EOS suppressed), temperature 1, correct + format
rewards, group advantages, kl_beta 0.04 with k3 (a reference forward every step), one inner epoch and one
mini-batch (no separate old-logprob forward), AdamW lr 1e-4, grad clip 1.0, all 64 completions in one
micro-batch, fp32, random init with seed 0, no warm start. W3 matches bench/trl_smollm2_bench.py: the
real SmolLM2-135M-Instruct, 4 questions "What is a+b?" in its chat template x G = 4, exactly 128 new
tokens, micro-batches of 4 completions, otherwise the same (AdamW lr 1e-5).

It runs the trainer's own `grpo_step` and prints one JSON object: median/min/max s/step, completion
tokens/s, peak RSS, the phase split, the FLOP-model floor and `efficiency` = floor / step time. The floor
divides the step's matmul FLOPs by this machine's fp32 GEMM peak, timed in the same process, with the
same threads, on the step's own matmul shapes (`gemm_peak_gflops`; `--peak-gflops` overrides it), so an
efficiency means the same on any machine: 1.0 would be a step that does nothing but its matmuls at peak.
`profile` sets each phase (rollout, with its time per generated token; reference forward; learner
forward/backward; optimizer) beside its own floor. `--kernel-profile K` runs K more steps under
torch.profiler and adds `kernels`: the seconds a step spends inside its matmul and attention kernels, at
the rates they ran in the step. That is the step's time if every other op and all Python cost nothing,
so `kernels.ratio_to_floor` is as near the floor as the step's code gets on this machine's kernels, and
`kernels.kernel_only_seed_steps_per_s` (S / those seconds) is the most seed-steps per second the step's
code reaches as eager torch calls these kernels, with everything else free; `by_phase_s` splits the kernel
seconds by the step's phases. The kernels do some work the floor leaves out (padding after EOS,
oneDNN's padded row buckets, the decode loop's masked cache slots), so the ratio mixes the kernels' rate
with that extra work.

`--population S` steps seeds 0 .. S-1 of the workload as one population (grpo train --population S,
grpo/algorithm/population.py): a step is all S seeds' steps, so `median_s_per_step`, the phases (summed over
the seeds), the FLOPs and the floor are the population's, and `seed_steps_per_s` = S / median s per step
compares across S. `--compare-loop` also times the same S seeds as S single runs stepped in turn (`loop`)
and reports `population_speedup` = seed_steps_per_s / the loop's.

`--rollout-dtype bf16` draws the rollouts from a bf16 copy of the weights (grpo train's flag, issue O)
while the learner stays in `--dtype`: the rollout phase then runs bf16 matmuls, and the step gains the
learner's pi_old forward (in the reward phase), which the floor, counting one dtype's peak, leaves out.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from grpo import GrpoError
from grpo.base.device import DTYPES
from grpo.base.timing import STAGE_PREFIX
from grpo.engine import gemm
from grpo.setup.config import TrainConfig
from grpo.setup.presets import MODEL_PRESETS
from grpo.setup.sampler_registry import check_sampler_name

# name -> the workload's fixed shape. W1/W2 match ../shared/bench/trl_grpo_bench.py; W3 matches
# bench/trl_smollm2_bench.py: SmolLM2-135M-Instruct, 4 chat-templated questions "What is a+b?" x G 4.
WORKLOADS = {
    "tiny": dict(model="tiny", prompts=8, group_size=8, completion_len=32, micro_batch=64),
    "small": dict(model="small", prompts=8, group_size=8, completion_len=32, micro_batch=64),
    "qwen2_0.5b": dict(model="qwen2_0.5b", prompts=8, group_size=8, completion_len=32, micro_batch=64),
    "smollm2": dict(model="smollm2-135m", prompts=4, group_size=4, completion_len=128, micro_batch=4),
}


@dataclass(frozen=True)
class BenchConfig:
    """Time GRPO steps on a fixed workload; prints one JSON object."""

    workload: Literal["tiny", "small", "qwen2_0.5b", "smollm2"] = "tiny"
    """W1 = tiny (1.06M params), W2 = small (33.6M params), W3 = smollm2 (SmolLM2-135M-Instruct: `make smollm2`); qwen2_0.5b is Qwen2-0.5B's shape (for GPUs)."""
    steps: int = 20
    """Timed steps."""
    warmup: int = 2
    """Untimed steps first (allocator warm-up, compilation)."""
    threads: int = 2
    """torch CPU threads."""
    group_size: int | None = None
    """G; unset: the workload's (8, W3 4). Change it for the scaling table."""
    completion_len: int | None = None
    """Exact completion length; unset: the workload's (32, W3 128). Change it for the scaling table."""
    micro_batch_size: int | None = None
    """Completions per forward/backward; unset: all of them (W3: 4)."""
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    """Device to run on."""
    dtype: Literal["fp32", "bf16"] = "fp32"
    """Compute dtype."""
    rollout_dtype: Literal["fp32", "bf16"] | None = None
    """Precision the sampler draws in (grpo train --rollout-dtype); unset: the compute dtype. Differing from it adds the learner's pi_old forward (timed in the reward phase)."""
    sampler: str = "auto"
    """Rollout implementation (see grpo train --help)."""
    peak_gflops: float | None = None
    """The machine's GEMM peak (GFLOP/s) for the floor; unset: timed here on the step's matmul shapes."""
    json_out: str = ""
    """Also write the JSON object to this file."""
    kernel_profile: int = 0
    """Steps run after the timed ones under torch.profiler (CPU only; 0: none) to report the seconds a step
    spends in its matmul and attention kernels."""
    population: int = 1
    """Seeds 0 .. S-1 stepped as one population (grpo train --population S); reports seed_steps_per_s = S / s per step."""
    population_batching: Literal["auto", "on", "off"] = "auto"
    """grpo train --population-batching: the population's model calls over stacked weights (on), seed by seed (off), or auto (on for CUDA)."""
    compare_loop: bool = False
    """Also time the same seeds as single runs stepped in turn (`loop`, and `population_speedup`)."""

    def __post_init__(self) -> None:
        if self.kernel_profile < 0:
            raise GrpoError(f"--kernel-profile must be >= 0 steps, got {self.kernel_profile}")
        if self.population < 1:
            raise GrpoError(f"--population must be >= 1 seeds, got {self.population}")
        check_sampler_name(self.sampler)

    @property
    def shape(self) -> dict:
        """The workload's shape with this run's overrides."""
        w = dict(WORKLOADS[self.workload])
        w["group_size"] = self.group_size or w["group_size"]
        w["completion_len"] = self.completion_len or w["completion_len"]
        w["micro_batch"] = self.micro_batch_size or (w["micro_batch"] if self.workload == "smollm2"
                                                     else w["prompts"] * w["group_size"])
        return w


def workload_config(b: BenchConfig) -> TrainConfig:
    w = b.shape
    pretrained = b.workload == "smollm2"
    return TrainConfig(
        task="arithmetic", digits="2", model=w["model"], prompts_per_step=w["prompts"], group_size=w["group_size"],
        max_new_tokens=w["completion_len"], min_new_tokens=w["completion_len"], temperature=1.0,
        reward_weights={"correct_extracted": 1.0, "format_partial": 0.2} if pretrained else {"correct": 1.0, "format": 0.1},
        kl_beta=0.04, kl_estimator="k3", inner_epochs=1, mini_batches=1, micro_batch_size=w["micro_batch"],
        lr=1e-5 if pretrained else 1e-4, max_grad_norm=1.0, warmstart_steps=0, warmstart_seed=0, seed=0,
        threads=b.threads, device=b.device, dtype=b.dtype, rollout_dtype=b.rollout_dtype,
        sampler=b.sampler, wandb_mode="disabled", quiet=True, population_batching=b.population_batching)


def model_dims(config) -> dict[str, int]:
    """The sizes the FLOP model needs, from a transformers config (or a preset's dict plus its vocabulary)."""
    get = config.get if isinstance(config, dict) else lambda key: getattr(config, key)
    h, heads = get("hidden_size"), get("num_attention_heads")
    return {"hidden": h, "layers": get("num_hidden_layers"), "intermediate": get("intermediate_size"),
            "kv": h * get("num_key_value_heads") // heads, "vocab": get("vocab_size")}


def preset_dims(model: str, vocab: int = 21) -> dict[str, int]:
    return model_dims({**MODEL_PRESETS[model], "vocab_size": vocab})


def step_flops(dims: dict[str, int], prompt_lens: list[int], completion_len: int,
               group_size: int = 1) -> dict[str, float]:
    """Matmul FLOPs of one step, counting only the work a step cannot skip: 2 per weight per token
    forward (3x for forward + backward), the layers over every real position (padding excluded), the
    vocabulary head only where logits are used (the C positions that score a completion token), the
    attention products QK^T and AV (4 * hidden per attended position per layer), and each group's prompt
    once (`prompt_lens` per row, rows i*G .. i*G+G-1 share a prompt, as the trainer runs them).

    rollout: the layers over p + C - 1 positions (the last token is never fed back), the head over C;
    reference: the layers over p + C, the head over C; learner: 3x the reference."""
    h, layers, inter, kv, vocab = (dims[k] for k in ("hidden", "layers", "intermediate", "kv", "vocab"))
    layer_weights = layers * (2 * h * h + 2 * h * kv + 3 * h * inter)
    C = completion_len

    def positions(first: int, last: int) -> float:
        """Layers and attention over positions first .. last - 1."""
        attention = 4 * h * layers * (last * (last + 1) - first * (first + 1)) // 2
        return 2 * layer_weights * (last - first) + attention

    def forward(p: int, fed: int) -> float:       # one group: its prompt once, G completions of `fed` tokens
        return positions(0, p) + group_size * (positions(p, p + fed) + 2 * h * vocab * C)

    prompts = prompt_lens[::group_size]
    reference = sum(forward(p, C) for p in prompts)
    return {"rollout": sum(forward(p, C - 1) for p in prompts), "reference": reference,
            "policy_fwd_bwd": 3 * reference}


def step_gemm_shapes(dims: dict[str, int], tokens: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of the step's weight matmuls in the learner's forward over `tokens` positions at once."""
    h, inter, kv, vocab = dims["hidden"], dims["intermediate"], dims["kv"], dims["vocab"]
    return [(tokens, h, h), (tokens, h, kv), (tokens, h, inter), (tokens, inter, h), (tokens, h, vocab)]


def gemm_peak_gflops(shapes: list[tuple[int, int, int]], device: torch.device, dtype: torch.dtype,
                     seconds: float = 0.2) -> float:
    """The best GFLOP/s a matmul reaches on any of `shapes` (m, k, n), each timed for ~`seconds` after a
    warm-up, in this process and with its threads: the peak a step's matmuls could reach here. Timed
    through torch.mm and, where the step would use it (`grpo.engine.gemm`: fp32 on the CPU, weights of 2^18
    elements or more), oneDNN's linear op with a packed weight, which runs faster than torch.mm on some CPUs."""
    best = 0.0
    generator = torch.Generator().manual_seed(0)
    for m, k, n in shapes:
        a = torch.randn(m, k, generator=generator).to(device, dtype)
        b = torch.randn(k, n, generator=generator).to(device, dtype)
        calls = [lambda: torch.mm(a, b)]
        if gemm.worth(b) and gemm.applies(a):
            packed = gemm.pack(b.t().contiguous())
            calls.append(lambda: gemm.linear(a, packed))
        for call in calls:
            best = max(best, 2 * m * k * n / seconds_per_call(call, device, seconds) / 1e9)
    return best


# The ops whose time is the FLOP model's: weight matmuls (torch's and oneDNN's; addmm_ is the lean head's
# weight gradient), the rollout's attention products, and SDPA forward and backward. Their self time
# excludes the wrappers above them (matmul, linear).
KERNEL_OPS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "mkldnn::_linear_pointwise",
              "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def kernel_seconds(events, steps: int) -> dict[str, float]:
    """Seconds a step spends in each of KERNEL_OPS, from (op name, self seconds) pairs of `steps` profiled
    steps; ops that did not run are left out."""
    totals: dict[str, float] = {}
    for name, seconds in events:
        if name in KERNEL_OPS:
            totals[name] = totals.get(name, 0.0) + seconds / steps
    return totals


def kernel_seconds_by_phase(kernels: list[tuple[float, float]], phases: list[tuple[str, float, float]],
                            steps: int) -> dict[str, float]:
    """Seconds a step spends in kernels during each phase, from each kernel call's (start, seconds) and each
    phase's (name, start, end) over `steps` profiled steps (one clock for both). A call inside overlapping
    phases (a batched population's seeds wait in theirs together) counts once, under the latest to start;
    a call inside none counts under "outside" (the step's work between its phases)."""
    phases = sorted(phases, key=lambda phase: phase[1])
    starts = [start for _, start, _ in phases]
    totals: dict[str, float] = {}
    for start, seconds in kernels:
        name = "outside"
        for i in range(bisect.bisect_right(starts, start) - 1, -1, -1):
            if phases[i][2] >= start:
                name = phases[i][0]
                break
        totals[name] = totals.get(name, 0.0) + seconds / steps
    return totals


def profile_kernels(members, first_step: int, steps: int) -> tuple[dict[str, float], dict[str, float]]:
    """Run `steps` more GRPO steps of `members` under torch.profiler: the kernel seconds of a step by op
    (`kernel_seconds`) and by phase (`kernel_seconds_by_phase`)."""
    from torch.profiler import ProfilerActivity, profile

    for c, _ in members:
        c.timer.ranges = True
    # Every thread: a batched population runs its model calls in its seeds' threads (grpo/algorithm/batching.py),
    # which the profiler, by default, does not see. (A private option of torch's; without it, say so.)
    try:
        every_thread = torch._C._profiler._ExperimentalConfig(profile_all_threads=True)
    except (AttributeError, TypeError) as err:
        if len(members) > 1 and members[0][0].population is not None:
            raise GrpoError(f"--kernel-profile of a batched population needs torch's profile_all_threads ({err})")
        every_thread = None
    try:
        with profile(activities=[ProfilerActivity.CPU], experimental_config=every_thread) as prof:
            for step in range(first_step, first_step + steps):
                step_members(members, step)
    finally:
        for c, _ in members:
            c.timer.ranges = False
    events = prof.events()
    phases = [(e.name.removeprefix(STAGE_PREFIX), e.time_range.start, e.time_range.end)
              for e in events if e.name.startswith(STAGE_PREFIX)]
    kernels = [(e.time_range.start, e.self_cpu_time_total / 1e6) for e in events if e.name in KERNEL_OPS]
    return (kernel_seconds(((e.name, e.self_cpu_time_total / 1e6) for e in events), steps),
            kernel_seconds_by_phase(kernels, phases, steps))


def seconds_per_call(call, device: torch.device, seconds: float) -> float:
    """Mean seconds of `call()` over ~`seconds` of calls, after one untimed call."""
    call()
    calls, started = 0, time.perf_counter()
    while True:
        call()
        calls += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return elapsed / calls


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_members(members, step: int, loop: bool = False) -> list:
    """Step `step` of every (components, state) in `members`: a single run's `grpo_step`, a population's
    `step_population`, or (loop) each member's `grpo_step` in turn; a seed's error is raised."""
    from grpo.algorithm.population import step_population
    from grpo.algorithm.step import grpo_step

    if loop or len(members) == 1:
        return [grpo_step(c, s, step) for c, s in members]
    results = [result for result, _ in step_population(members, step)]
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


def time_steps(b: BenchConfig, members, loop: bool = False) -> tuple[list[float], list[dict], list[list]]:
    """Run b.warmup + b.steps steps of `members`; per timed step: its seconds, its phases (plus `jsonl`:
    appending each member's metrics line) and the real (unpadded) prompt lengths of each member's rollout.
    The phases are summed over members stepped in turn; in a batched population each seed's timer spans the
    batched calls it waited on, so there a phase is the longest seed's."""
    batched = not loop and len(members) > 1 and members[0][0].population is not None
    times, phases, step_calls = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "metrics.jsonl"
        for step in range(1, b.warmup + b.steps + 1):
            tick = time.perf_counter()
            results = step_members(members, step, loop)
            if members[0][0].device.type == "cuda":
                torch.cuda.synchronize()
            # The trainer's local store: one JSON line appended and flushed per step (and seed).
            tock = time.perf_counter()
            with open(log_path, "a") as f:
                for result in results:
                    f.write(json.dumps({"step": step, **result.metrics}) + "\n")
                    f.flush()
            elapsed = time.perf_counter() - tick
            if step > b.warmup:
                summed: dict[str, float] = {}
                for c, _ in members:
                    for k, v in c.timer.seconds.items():
                        summed[k] = max(summed.get(k, 0.0), v) if batched else summed.get(k, 0.0) + v
                times.append(elapsed)
                phases.append({**summed, "jsonl": elapsed - (tock - tick)})
                step_calls.append([r.batch.rollout.prompt_mask.sum(-1).tolist() for r in results])
    return times, phases, step_calls


def run_bench(b: BenchConfig) -> dict:
    from grpo.algorithm.population import build_population
    from grpo.algorithm.step import build_run

    cfg, shape, S = workload_config(b), b.shape, b.population
    seeds = [dataclasses.replace(cfg, seed=k) for k in range(S)]
    members = build_population(seeds, log=lambda *_: None)
    times, phases, step_calls = time_steps(b, members)
    c, s = members[0]
    median, C = statistics.median(times), shape["completion_len"]
    dims = model_dims(s.policy.config)
    # The floor of a median step: each timed step's FLOPs (every seed's rollouts) on its own prompts, then
    # their median.
    step_flop_list = [{k: sum(step_flops(dims, lengths, C, cfg.group_size)[k] for lengths in calls)
                       for k in ("rollout", "reference", "policy_fwd_bwd")} for calls in step_calls]
    flops = {k: statistics.median(f[k] for f in step_flop_list) for k in step_flop_list[0]}
    prompt_tokens = statistics.mean(n for calls in step_calls for lengths in calls for n in lengths)
    peak_rss = peak_rss_mib()
    dtype = DTYPES[b.dtype]
    tokens = round(cfg.micro_batch * (prompt_tokens + C))
    peak = b.peak_gflops or gemm_peak_gflops(step_gemm_shapes(dims, tokens), c.device, dtype)
    floor = sum(flops.values()) / (peak * 1e9)
    phase_s = {k: statistics.median(p.get(k, 0.0) for p in phases) for k in phases[0]}
    params = sum(p.numel() for p in s.policy.parameters())
    head = 2 * dims["hidden"] * dims["vocab"] * C * cfg.num_completions * S    # one forward's head FLOPs
    result = {
        "workload": b.workload, "model": shape["model"], "device": str(c.device), "dtype": b.dtype,
        "rollout_dtype": cfg.rollout_dtype or b.dtype,
        "threads": torch.get_num_threads(), "prompts": shape["prompts"], "group_size": shape["group_size"],
        "completion_len": C, "micro_batch_size": cfg.micro_batch, "mean_prompt_tokens": prompt_tokens,
        "params": params, "timed_steps": b.steps, "population": S,
        "median_s_per_step": median, "min_s_per_step": min(times), "max_s_per_step": max(times),
        "seed_steps_per_s": S / median,
        "completion_tokens_per_s": S * cfg.num_completions * C / median,
        "peak_rss_mib": peak_rss,
        # each seed's policy + its gradient + AdamW's two moments (fp32) + the one shared reference (in the
        # compute dtype)
        "model_state_mib": (4 * 4 * S + (cfg.kl_beta > 0) * (2 if b.dtype == "bf16" else 4)) * params / 2**20,
        "phases_s": phase_s,
        "logging_share": statistics.median((p["metrics"] + p["jsonl"]) / seconds for p, seconds in zip(phases, times)),
        "flops_per_step": sum(flops.values()), "gemm_peak_gflops": peak,
        "gemm_peak_source": "--peak-gflops" if b.peak_gflops else "timed here on the step's matmul shapes",
        "floor_s_per_step": floor, "efficiency": floor / median, "ratio_to_floor": median / floor,
        # Each phase against its own floor. The reward phase holds the reference forward; the rollout's
        # per-token numbers divide by the completion length (prefill included).
        "profile": {
            "rollout": {"s": phase_s.get("rollout", 0.0), "floor_s": flops["rollout"] / (peak * 1e9),
                        "s_per_token": phase_s.get("rollout", 0.0) / C,
                        "floor_s_per_token": flops["rollout"] / (peak * 1e9) / C},
            "reference": {"s": phase_s.get("reward", 0.0), "floor_s": flops["reference"] / (peak * 1e9)},
            "learner_fwd_bwd": {"s": phase_s.get("train", 0.0), "floor_s": flops["policy_fwd_bwd"] / (peak * 1e9)},
            "optimizer": {"s": phase_s.get("optimizer", 0.0)},
            "vocab_head_share_of_floor": 5 * head / sum(flops.values()),   # rollout + reference + 3x learner
        },
        "torch": torch.__version__,
    }
    if b.kernel_profile:
        by_op, by_phase = profile_kernels(members, b.warmup + b.steps + 1, b.kernel_profile)
        kernel_s = sum(by_op.values())
        result["kernels"] = {
            "profiled_steps": b.kernel_profile, "s_per_step": kernel_s, "by_op_s": by_op, "by_phase_s": by_phase,
            # the profiled steps' kernel time over the (unprofiled) timed steps' median
            "ratio_to_floor": kernel_s / floor, "share_of_median_step": kernel_s / median,
            "kernel_only_seed_steps_per_s": S / kernel_s if kernel_s else None,   # None: no kernel seen
        }
    if b.compare_loop:
        # The same seeds as single runs, each built alone (its own reference and sampler) and stepped in turn.
        singles = [build_run(seed_cfg, log=lambda *_: None) for seed_cfg in seeds]
        loop_times, loop_phases, _ = time_steps(b, singles, loop=True)
        loop_median = statistics.median(loop_times)
        result["loop"] = {"median_s_per_step": loop_median, "seed_steps_per_s": S / loop_median,
                          "phases_s": {k: statistics.median(p.get(k, 0.0) for p in loop_phases) for k in loop_phases[0]}}
        result["population_speedup"] = result["seed_steps_per_s"] / result["loop"]["seed_steps_per_s"]
    if c.device.type == "cuda":
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main(argv: list[str]) -> int:
    from grpo.base.device import resolve_device
    from grpo.setup.flags import parse_flags

    b = parse_flags(BenchConfig, argv, "grpo bench")
    if b.kernel_profile and resolve_device(b.device).type == "cuda":
        raise GrpoError("--kernel-profile times CPU kernels; on a GPU use torch.profiler with CUDA activity")
    result = run_bench(b)
    text = json.dumps(result, indent=2)
    print(text)
    if b.json_out:
        Path(b.json_out).write_text(text + "\n")
    return 0
