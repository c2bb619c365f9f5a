#!/usr/bin/env python3
"""Which of a population's model calls pay for batching: W1 (or W2) at S seeds, one step timed per variant.

    python bench/population_kinds.py [--workload tiny] [--seeds 5] [--steps 6] [--warmup 2] [--threads 2]

Variants, each a fresh population of the same seeds (grpo/algorithm/batching.py's executors):
    loop        --population-batching off: each seed's step in turn, no threads
    each        the exchange, every call still run seed by seed (the threads' cost alone)
    decode      + the rollout decode over stacked weights (generate_stacked)
    reference   + the shared reference over every seed's rows (frozen_batched)
    learner     + the learner's forward over stacked weights (logp_stacked)
Prints one JSON object: median s per population step, seed_steps_per_s and the phases of each variant, run
one after the other in this process (order as listed, then again reversed, medians of both). Caution: in one
process the loop variant ran slower after the batched ones (W1, S = 5: 1.25 s a step first, 2.33 s as the
median of both orders), so these ratios flatter batching; for a verdict time `grpo bench --population S
--population-batching off|on` in fresh processes (docs/population.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics

import torch

from grpo.algorithm import batching
from grpo.algorithm.population import build_population
from grpo.commands.benchmark import BenchConfig, time_steps, workload_config

VARIANTS = {
    "loop": None,
    "each": dict(batching.EACH),
    "decode": {**batching.EACH, "generate": batching.generate_stacked},
    "reference": {**batching.EACH, "generate": batching.generate_stacked, "frozen": batching.frozen_batched},
    "learner": {**batching.EACH, "generate": batching.generate_stacked, "frozen": batching.frozen_batched,
                "logp": batching.logp_stacked},
}


def time_variant(b: BenchConfig, executors) -> list[float]:
    cfg = dataclasses.replace(workload_config(b), population_batching="off" if executors is None else "on")
    seeds = [dataclasses.replace(cfg, seed=k) for k in range(b.population)]
    saved = dict(batching.BATCHED)
    if executors is not None:
        batching.BATCHED.clear()
        batching.BATCHED.update(executors)
    try:
        members = build_population(seeds, log=lambda *_: None)
    finally:
        batching.BATCHED.clear()
        batching.BATCHED.update(saved)
    times, phases, _ = time_steps(b, members)
    return times, phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="tiny", choices=("tiny", "small"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    args = parser.parse_args()
    chosen = [v for v in VARIANTS if v in args.variants.split(",")]
    torch.set_num_threads(args.threads)
    b = BenchConfig(workload=args.workload, steps=args.steps, warmup=args.warmup, threads=args.threads,
                    population=args.seeds)
    runs: dict[str, list] = {name: [] for name in chosen}
    for order in (chosen, chosen[::-1]):
        for name in order:
            runs[name].append(time_variant(b, VARIANTS[name]))
    out = {}
    for name, rounds in runs.items():
        median = statistics.median(t for times, _ in rounds for t in times)
        phases = [p for _, ps in rounds for p in ps]
        out[name] = {"median_s_per_step": median, "seed_steps_per_s": args.seeds / median,
                     "phases_s": {k: statistics.median(p.get(k, 0.0) for p in phases) for k in phases[0]}}
    for name in out:
        if "loop" in out:
            out[name]["speedup_over_loop"] = out["loop"]["median_s_per_step"] / out[name]["median_s_per_step"]
    print(json.dumps({"workload": args.workload, "seeds": args.seeds, "threads": args.threads,
                      "variants": out}, indent=1))


if __name__ == "__main__":
    main()
