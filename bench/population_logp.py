"""The learner's log-probs of S seeds: S single computations in a loop against one population forward.

    PYTHONPATH=. .venv/bin/python bench/population_logp.py [--workload tiny small] [--seeds 1 2 5 10]
        [--reps 3] [--threads 2] [--memory]

Per workload (W1 tiny, W2 small; vocabulary 21) and seed count S: S models, each seed 64 rows (8 prompts x 8
completions) of 7-token prompts (left-padded) and 32 completion tokens; a forward and the backward of the sum of
the log-probs, as (a) `logprobs.completion_logp` with its defaults per seed in a loop and (b) one
`population_logp.population_logp` over the stacked weights. The two alternate rep by rep (after one warm-up
each), so a load on the machine falls on both; the medians and their ratio are printed as JSON. --memory:
also each method's peak RSS above the process's once the models are built, each in a fresh process
(Linux only).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from grpo.engine.logprobs import completion_logp
from grpo.engine.models import build_model
from grpo.engine.population_logp import population_logp

VOCAB, PROMPTS, GROUP, PROMPT_LEN, COMPLETION_LEN = 21, 8, 8, 7, 32


def inputs(num_seeds: int):
    """Per seed: prompt ids [64, 7] (each prompt repeated for its group, 0-3 left-padding tokens), mask, completions."""
    generator = torch.Generator().manual_seed(0)
    prompt_ids, prompt_masks, completion_ids = [], [], []
    for _ in range(num_seeds):
        prompts = torch.randint(3, VOCAB, (PROMPTS, PROMPT_LEN), generator=generator)
        mask = torch.ones(PROMPTS, PROMPT_LEN, dtype=torch.long)
        for row, pad in enumerate(torch.randint(0, 4, (PROMPTS,), generator=generator).tolist()):
            prompts[row, :pad], mask[row, :pad] = 0, 0
        prompt_ids.append(prompts.repeat_interleave(GROUP, 0))
        prompt_masks.append(mask.repeat_interleave(GROUP, 0))
        completion_ids.append(torch.randint(3, VOCAB, (PROMPTS * GROUP, COMPLETION_LEN), generator=generator))
    return prompt_ids, prompt_masks, completion_ids


def loop(models, data) -> None:
    for s, model in enumerate(models):
        completion_logp(model, *(d[s] for d in data), 1.0).sum().backward()


def population(models, data) -> None:
    sum(out.sum() for out in population_logp(models, *data, temperature=1.0)).backward()


METHODS = {"loop": loop, "population": population}


def setup(workload: str, num_seeds: int):
    return [build_model(workload, VOCAB, seed) for seed in range(num_seeds)], inputs(num_seeds)


def status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def peak_rss(workload: str, num_seeds: int, method: str, reps: int) -> float:
    """MiB of peak RSS above the process's RSS once the models are built, over `reps` calls after a warm-up
    (Linux: writing 5 to clear_refs resets the peak, VmHWM, so the build's own peak does not count); run in a
    fresh process."""
    models, data = setup(workload, num_seeds)
    before = status_kib("VmRSS")
    METHODS[method](models, data)                     # a warm-up: the libraries' first-call allocations
    for model in models:
        model.zero_grad(set_to_none=True)
    Path("/proc/self/clear_refs").write_text("5")
    for _ in range(reps):
        METHODS[method](models, data)
        for model in models:
            model.zero_grad(set_to_none=True)
    return (status_kib("VmHWM") - before) / 1024


def timings(workload: str, num_seeds: int, reps: int) -> dict:
    models, data = setup(workload, num_seeds)
    seconds = {name: [] for name in METHODS}
    for rep in range(reps + 1):                       # rep 0 warms up
        for name, method in METHODS.items():
            start = time.perf_counter()
            method(models, data)
            if rep:
                seconds[name].append(time.perf_counter() - start)
            for model in models:
                model.zero_grad(set_to_none=True)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    return {"loop_s": round(median["loop"], 4), "population_s": round(median["population"], 4),
            "speedup": round(median["loop"] / median["population"], 3),
            "loop_reps_s": [round(x, 4) for x in seconds["loop"]],
            "population_reps_s": [round(x, 4) for x in seconds["population"]]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", nargs="+", choices=["tiny", "small"], default=["tiny", "small"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 5, 10])
    parser.add_argument("--reps", type=int, default=3, help="timed reps per method (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory", action="store_true", help="also peak RSS per method, each in a fresh process")
    parser.add_argument("--peak-rss", nargs=3, metavar=("WORKLOAD", "S", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.peak_rss:
        print(peak_rss(args.peak_rss[0], int(args.peak_rss[1]), args.peak_rss[2], 2))
        return 0
    results = {"threads": args.threads, "rows_per_seed": PROMPTS * GROUP, "prompt_len": PROMPT_LEN,
               "completion_len": COMPLETION_LEN, "vocab": VOCAB}
    for workload in args.workload:
        for num_seeds in args.seeds:
            cell = timings(workload, num_seeds, args.reps)
            if args.memory:
                for name in METHODS:
                    out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--peak-rss",
                                          workload, str(num_seeds), name], check=True, capture_output=True, text=True)
                    cell[f"{name}_peak_rss_mib"] = round(float(out.stdout), 1)
            results[f"{workload}_S{num_seeds}"] = cell
            print(json.dumps({f"{workload}_S{num_seeds}": cell}), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
