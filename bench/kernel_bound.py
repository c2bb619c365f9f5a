#!/usr/bin/env python3
"""A floor under an experiment's RL wall time: its runs' matmul and attention kernels alone, at their rates here.

    python bench/kernel_bound.py [--experiment demo] [--cores 2] [--measured SECONDS] [--target 0.4]

Each arm's first seed runs `grpo train` with the sweep's flags for it, one thread, in a fresh process and a
temporary directory (warm starts come from the cache, as in a sweep after its first run). A run's kernel
seconds are the time inside `grpo bench`'s KERNEL_OPS (matmuls and attention), each call timed where torch
dispatches it (`KernelClock`), at the rates they ran. The floor is seeds x (the sum over arms of one run's
kernel seconds) / cores: the RL runs' wall time if nothing but these kernels cost time and every core were
busy all along. It holds for these kernels as eager torch calls them; stacking seeds calls other ones (a
batched matmul over their weights), measured no faster (docs/population.md). Given `--measured`, the RL
runs' measured wall time, it prints the floor's share of it and whether a `--target` share lies above it.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from grpo.commands.benchmark import KERNEL_OPS

PROFILE_RUN = "--profile-run"      # internal: the rest of argv are one run's grpo train flags


@functools.cache
def composite(func) -> bool:
    """Whether `func` has a CompositeImplicitAutograd kernel: such an op reaches a dispatch mode whole under
    torch.inference_mode (the rollout, the reference forward) and as its parts outside it (the learner)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd")


class KernelClock(TorchDispatchMode):
    """Seconds spent in each of `KERNEL_OPS` (by op name), timed around each call, and the calls. A composite op
    (`composite`: torch.matmul, F.linear, SDPA under inference_mode) is decomposed, its parts back through the
    clock, so the same kernels are timed with or without inference_mode and none twice. Each timed call also
    carries its Python dispatch (a few microseconds: `calls` says how many). Unlike torch.profiler the clock
    keeps no event per op, so a whole run costs no memory (the profiler's events of one demo run held 14 GB);
    every other op pays a Python call, so the wall time around it is not the run's. It sees the thread that
    entered it only."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name, kwargs = func._schema.name, kwargs or {}
        if name not in KERNEL_OPS:
            if composite(func):
                with self:          # its parts come back here
                    out = func.decompose(*args, **kwargs)
                if out is not NotImplemented:
                    return out
            return func(*args, **kwargs)
        start = time.perf_counter()
        out = func(*args, **kwargs)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        self.calls[name] = self.calls.get(name, 0) + 1
        return out


def profile_run(flags: list[str]) -> dict:
    """One `grpo train` in this process under a `KernelClock`: its kernel seconds, and its wall seconds."""
    from grpo.commands.cli import main

    if "--population" in flags:
        sys.exit("kernel_bound: error: a profiled run is one seed (the clock sees one thread; a population's batched"
                 " model calls run in its seeds' threads)")
    start = time.perf_counter()
    with KernelClock() as clock:
        code = main(["train", *flags])
    if code != 0:
        sys.exit(f"kernel_bound: error: grpo train exited {code}")
    return {"clocked_wall_s": time.perf_counter() - start, "kernel_s": sum(clock.seconds.values()),
            "by_op_s": clock.seconds, "kernel_calls": sum(clock.calls.values())}


def arm_flags(experiment, out_dir: Path) -> dict[str, list[str]]:
    """arm -> the grpo train flags of its seed 0 as the sweep plans it, on one thread."""
    from experiments.sweep import plan_runs
    from grpo.setup.config import config_flags

    runs = plan_runs(experiment, out_dir, [0], {"quick": False, "steps": None, "train_args": []}, parallel=1)
    return {run.arm: config_flags(dataclasses.replace(run.config, threads=1)) for run in runs}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == PROFILE_RUN:
        print(json.dumps(profile_run(sys.argv[2:])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="demo", help="an experiments/<name>.py (default: demo)")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores the RL runs share")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per arm (default: the experiment's)")
    parser.add_argument("--measured", type=float, default=None, help="the RL runs' measured wall seconds")
    parser.add_argument("--target", type=float, default=0.4, help="a target share of --measured (issue Q: 0.4)")
    args = parser.parse_args()
    if args.cores < 1 or (args.seeds is not None and args.seeds < 1):
        parser.error("--cores and --seeds must be >= 1")
    if args.measured is not None and args.measured <= 0:
        parser.error("--measured must be > 0 seconds")
    try:
        experiment = importlib.import_module(f"experiments.{args.experiment}").EXPERIMENT
    except (ImportError, AttributeError):
        parser.error(f"no experiment {args.experiment!r} (experiments/<name>.py with an EXPERIMENT)")
    seeds = args.seeds or experiment.seeds
    arms = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm, flags in arm_flags(experiment, Path(tmp)).items():
            done = subprocess.run([sys.executable, __file__, PROFILE_RUN, *flags], capture_output=True, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no message"])[-1]
                sys.exit(f"kernel_bound: error: arm {arm}'s run failed: {last}")
            arms[arm] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{arm}: {arms[arm]['kernel_s']:.1f} kernel s", file=sys.stderr)
    bound = seeds * sum(a["kernel_s"] for a in arms.values()) / args.cores
    result = {"experiment": args.experiment, "seeds_per_arm": seeds, "cores": args.cores, "arms": arms,
              "kernel_only_wall_s": bound}
    if args.measured is not None:
        # within: the kernels alone do not rule the target out (nothing says the rest could be made free)
        result.update(measured_wall_s=args.measured, kernel_only_share=bound / args.measured, target=args.target,
                      target_within_kernel_bound=bound / args.measured <= args.target)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
