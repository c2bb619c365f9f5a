#!/usr/bin/env python3
"""Issue Q's target: a population's seed-steps per second against TRL running the same seeds as a sweep would.

    python bench/population_vs_trl.py [--workload tiny] [--seeds 5] [--steps 10] [--warmup 2] [--rounds 2]

TRL's side runs ../shared/bench/trl_grpo_bench.py (in .venv-trl, see bench/README.md) the way a sweep runs
seeds: as processes, two at a time, one thread each. Its throughput is counted as 2 / (the median s/step of
two processes running side by side), i.e. perfectly packed pairs: the tail of an odd seed count, where one
process runs alone on two cores, is not charged to it. grpo-lab's side is `grpo bench --population S` at
the machine's thread count (one process). The two sides alternate, never overlap, and the ratio is taken
within each round. Prints one JSON object; the target is `ratio >= 2.5` on the median over rounds.
`--kernel-bound` adds, per round, the most seed-steps/s grpo-lab's step could reach on this machine's
matmul and attention kernels alone (`grpo bench --kernel-profile`'s `kernel_only_seed_steps_per_s`), the
best of one process at the machine's threads (the population's own profile), the same population batched
(`--population-batching on`: its stacked matmuls) and `--threads` single-thread runs side by side (one per
core at the default), and its ratio to TRL's: what eager torch's kernels, as these three call them, allow
with everything else free. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRL_SCRIPT = REPO.parent / "shared" / "bench" / "trl_grpo_bench.py"
TARGET = 2.5
KERNEL_PROFILE_STEPS = 3


def trl_pair(workload: str, steps: int, warmup: int, out: Path) -> list[float]:
    """Two TRL processes side by side, one thread each: each one's median s/step."""
    python = REPO / ".venv-trl" / "bin" / "python"
    if not python.exists():
        sys.exit("population_vs_trl: error: no .venv-trl (set it up as bench/README.md says)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs, files = [], []
    for seed in (0, 1):
        files.append(out / f"trl{seed}.json")
        procs.append(subprocess.Popen(
            [str(python), str(TRL_SCRIPT), "--workload", workload, "--threads", "1", "--seed", str(seed),
             "--timed-steps", str(steps), "--warmup-steps", str(warmup), "--json-out", str(files[-1])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
    for p in procs:
        if p.wait() != 0:
            sys.exit(f"population_vs_trl: error: the TRL bench exited {p.returncode}")
    return [json.loads(f.read_text())["step_s_summary"]["median"] for f in files]


def ours(workload: str, seeds: int, steps: int, warmup: int, threads: int, out: Path, batching: str = "auto",
         kernel_profile: int = 0) -> dict:
    """`grpo bench --population seeds` in a fresh process: its JSON object."""
    path = out / f"ours{seeds}{batching}{threads}.json"
    subprocess.run([str(REPO / ".venv" / "bin" / "grpo"), "bench", "--workload", workload, "--population", str(seeds),
                    "--steps", str(steps), "--warmup", str(warmup), "--threads", str(threads), "--json-out", str(path),
                    "--population-batching", batching, "--kernel-profile", str(kernel_profile)],
                   check=True, stdout=subprocess.DEVNULL)
    return json.loads(path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="tiny", choices=("tiny", "small"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--kernel-bound", action="store_true",
                        help="also the kernel-only bound on grpo-lab's seed-steps/s and its ratio to TRL's")
    args = parser.parse_args()
    profiled = KERNEL_PROFILE_STEPS if args.kernel_bound else 0
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for k in range(args.rounds):
            order = ("trl", "ours") if k % 2 == 0 else ("ours", "trl")
            row = {}
            for side in order:
                if side == "trl":
                    medians = trl_pair(args.workload, args.steps, args.warmup, out)
                    row["trl_pair_s_per_step"] = medians
                    row["trl_seed_steps_per_s"] = sum(1 / m for m in medians)
                else:
                    result = ours(args.workload, args.seeds, args.steps, args.warmup, args.threads, out,
                                  kernel_profile=profiled)
                    row["ours_seed_steps_per_s"] = result["seed_steps_per_s"]
                    row["ours_peak_rss_mib"] = result["peak_rss_mib"]
                    if profiled:
                        single = ours(args.workload, 1, args.steps, args.warmup, 1, out, kernel_profile=profiled)
                        batched = ours(args.workload, args.seeds, args.steps, args.warmup, args.threads, out, "on",
                                       kernel_profile=profiled)
                        row["kernel_only_seed_steps_per_s"] = {
                            "one_process": result["kernels"]["kernel_only_seed_steps_per_s"],
                            "one_process_batched": batched["kernels"]["kernel_only_seed_steps_per_s"],
                            "single_thread_runs_side_by_side": args.threads * single["kernels"]["kernel_only_seed_steps_per_s"]}
            row["ratio"] = row["ours_seed_steps_per_s"] / row["trl_seed_steps_per_s"]
            if profiled:
                row["kernel_only_ratio"] = max(row["kernel_only_seed_steps_per_s"].values()) / row["trl_seed_steps_per_s"]
            rounds.append(row)
    ratio = statistics.median(r["ratio"] for r in rounds)
    result = {"workload": args.workload, "seeds": args.seeds, "threads": args.threads, "rounds": rounds,
              "ratio_median": ratio, "target": TARGET, "target_met": ratio >= TARGET}
    if profiled:
        bound = statistics.median(r["kernel_only_ratio"] for r in rounds)
        result.update(kernel_only_ratio_median=bound, target_within_kernel_bound=bound >= TARGET)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
