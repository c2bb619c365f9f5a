"""The rollout decode of S seeds: S single decodes in a loop against one population decode over stacked weights.

    .venv/bin/python bench/population_decode.py [--threads 2] [--repeats 2] [--seeds 1 2 5 10]

W1's and W2's rollout shape (`grpo bench --workload tiny` / `small`): 8 prompts of 7 tokens x G = 8 = 64 rows,
exactly 32 new tokens (EOS banned: min_new_tokens = 32), temperature 1, fp32, random-init models (seed s for
seed s). For each S: `loop_s`, S `StaticCacheSampler().generate_from` calls in turn; `population_s`, one
`generate_population` over the S models (stacking their weights included); `ratio` = loop_s /
population_s (above 1: the population is faster). `prefill_s`: the S models' own prefills alone (part of
both). Each time is the best of --repeats, the two sides alternating. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from grpo.engine.fast_sampler import StaticCacheSampler
from grpo.engine.models import build_model
from grpo.engine.population_decode import generate_population
from grpo.engine.sampler import shared_prefill

VOCAB, PROMPTS, GROUP_SIZE, PROMPT_LEN, NEW_TOKENS = 21, 8, 8, 7, 32
DECODE = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, temperature=1.0, eos_token_id=2, pad_token_id=0)


def prompts(seed: int) -> torch.Tensor:
    """8 prompts of 7 tokens (ids 3-20: no pad, bos or eos) each repeated G times: [64, 7]."""
    distinct = torch.randint(3, VOCAB, (PROMPTS, PROMPT_LEN), generator=torch.Generator().manual_seed(seed))
    return distinct.repeat_interleave(GROUP_SIZE, dim=0)


def seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def time_population(models: list, repeats: int) -> dict:
    ids = [prompts(1000 + s) for s in range(len(models))]
    masks = [torch.ones_like(x) for x in ids]

    def loop():
        for s, model in enumerate(models):
            StaticCacheSampler().generate_from(model, ids[s], masks[s], generator=torch.Generator().manual_seed(s),
                                               **DECODE)

    def population():
        generators = [torch.Generator().manual_seed(s) for s in range(len(models))]
        generate_population(models, ids, masks, generators=generators, **DECODE)

    def prefills():
        with torch.inference_mode():
            for model, x, mask in zip(models, ids, masks):
                shared_prefill(model, x, mask)

    times = {"loop_s": [], "population_s": [], "prefill_s": []}
    for _ in range(repeats):
        times["loop_s"].append(seconds(loop))
        times["population_s"].append(seconds(population))
        times["prefill_s"].append(seconds(prefills))
    best = {k: round(min(v), 4) for k, v in times.items()}
    return {"seeds": len(models), **best, "ratio": round(best["loop_s"] / best["population_s"], 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per side and S (the best is kept)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 5, 10], help="population sizes S")
    parser.add_argument("--workloads", nargs="+", default=["tiny", "small"], choices=["tiny", "small"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"threads": args.threads, "repeats": args.repeats, "rows": PROMPTS * GROUP_SIZE,
              "prompt_len": PROMPT_LEN, "new_tokens": NEW_TOKENS}
    for workload in args.workloads:
        models = [build_model(workload, VOCAB, seed).eval() for seed in range(max(args.seeds))]
        time_population(models[:1], 1)                                   # warm-up (oneDNN kernels, allocator)
        result[workload] = []
        for size in args.seeds:
            result[workload].append(time_population(models[:size], args.repeats))
            print(workload, json.dumps(result[workload][-1]), file=sys.stderr, flush=True)   # progress
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
