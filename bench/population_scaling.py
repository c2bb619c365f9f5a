#!/usr/bin/env python3
"""Issue Q's closing table: a population's speed-up over one run, S = 1, 2, 5, 10 seeds, W1 and W2.

    python bench/population_scaling.py [--workloads tiny,small] [--seeds 1,2,5,10] [--threads 2]

Each cell is `grpo bench --workload W --population S --population-batching off|on` in a fresh process, one
after the other (run it on a quiet machine). `off` steps the seeds in turn; `on` batches the rollout decode,
the reference and pi_old forwards over stacked weights (grpo/algorithm/batching.py). speedup = the cell's
seed-steps per second / the single run's (S = 1, off); rss_over_singles = its peak RSS / (S x the single
run's); floor_seed_steps_per_s = S / the FLOP-model floor of a population step at the GEMM peak timed in that
process: no batching of S seeds with their own weights lowers the FLOPs, so it bounds any speed-up.
Prints one JSON object. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from population_vs_trl import ours  # noqa: E402  (a sibling script, not a package)

STEPS = {"tiny": 8, "small": 2}       # timed steps per cell: W2's step is ~25x W1's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", type=lambda t: t.split(","), default=["tiny", "small"],
                        help=f"comma-separated, of {', '.join(STEPS)}")
    parser.add_argument("--seeds", type=lambda t: [int(s) for s in t.split(",")], default=[1, 2, 5, 10])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    unknown = sorted(set(args.workloads) - set(STEPS))
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workload in args.workloads:
            single = ours(workload, 1, STEPS[workload], args.warmup, args.threads, Path(tmp), "off")
            for seeds in args.seeds:
                for batching in ("off",) if seeds == 1 else ("off", "on"):
                    cell = single if seeds == 1 else ours(workload, seeds, STEPS[workload], args.warmup,
                                                          args.threads, Path(tmp), batching)
                    rows.append({"workload": workload, "seeds": seeds, "batching": batching,
                                 "s_per_step": cell["median_s_per_step"],
                                 "seed_steps_per_s": cell["seed_steps_per_s"],
                                 "speedup": cell["seed_steps_per_s"] / single["seed_steps_per_s"],
                                 "peak_rss_mib": cell["peak_rss_mib"],
                                 "rss_over_singles": cell["peak_rss_mib"] / (seeds * single["peak_rss_mib"]),
                                 "floor_seed_steps_per_s": seeds / cell["floor_s_per_step"],
                                 "phases_s": cell["phases_s"]})
                    print(json.dumps({k: v for k, v in rows[-1].items() if k != "phases_s"}), file=sys.stderr)
    print(json.dumps({"threads": args.threads, "warmup": args.warmup, "steps": STEPS, "cells": rows}, indent=1))


if __name__ == "__main__":
    main()
