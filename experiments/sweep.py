"""The sweep runner: every (arm, seed) of an experiment as a `grpo train` run of its own process, resumable.

    python -m experiments.<name> [--out-dir D] [--seeds N] [--steps S] [--parallel K] [--quick]
                                 [--dry-run] [--executor local|ray] [--warmstart-seed same|per-seed]
                                 [--population auto|off] [any grpo train flag ...]

Run directories are `<out-dir>/<arm>/seed<k>`. Restarting a sweep skips finished runs, resumes
unfinished ones (the trainer continues from its last checkpoint) and starts the rest. A failed run is
reported with its log and does not stop the others; the sweep exits 1 if any run failed. Each run's
output goes to `<run>/train.log`; the runs share one `<out-dir>/wandb/` so `wandb leet` browses all.

Processes (`--population auto`, the default): the unfinished seeds of an arm of a preset model, where they
are consecutive, train as one population, `grpo train --seed s0 --population S --out-dir <out-dir>/<arm>`
(docs/population.md), which writes each seed's run dir `<out-dir>/<arm>/seed<k>` exactly as its single
run would, so restarts and analysis see single runs. Its output goes to
`<out-dir>/<arm>/population_seed<a>-<b>.log`. A gap (a finished seed between unfinished ones, after a
partial restart) splits the seeds into one population per consecutive block; a block of one seed, a
pretrained model, and seeds whose configs differ in more than seed and run dir (`--warmstart-seed
per-seed`) run as single runs. `--parallel` counts processes.

What the seeds vary: the RL seed (prompts, sampling). By default every run of an arm starts from the
one warm start its config names (`--warmstart-seed same`), so an interval over seeds is conditional on
that warm start; `--warmstart-seed per-seed` seeds each run's warm start with its own seed (each seed
trains, and caches, its own), so the intervals include the warm start's variance too.

On Linux the local runs are forks of the sweep process, which imports torch, transformers and the
trainer once (a `grpo train` process spends ~4 s on them; a demo run takes ~38 s). The sweep process
itself never runs a tensor op: a process forked after OpenMP has started its threads hangs in its
first multi-threaded op, so the warm starts and GGUF conversions run in forks too.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from grpo import GrpoError
from grpo.commands.prepare import check_model_dir, git_commit, gguf_models, prebuild_warm_starts, preload
from grpo.setup.config import TrainConfig, config_flags, config_mismatch
from grpo.setup.flags import parse_flags
from grpo.setup.presets import is_preset

# Measured on the 2-core machine (3 x 250-step tiny runs): two 1-thread runs side by side took 205 s for
# both, one 2-thread run 114 s alone, so two at a time finish a sweep ~10% sooner.
DEFAULT_PARALLEL = 2


QUICK = {"steps": 40, "eval_every": 10, "save_every": 10}   # the --quick budget unless an experiment sets its own


@dataclass(frozen=True)
class Experiment:
    name: str
    base: TrainConfig
    arms: dict[str, TrainConfig]
    budget: str                      # one line: what the comparison holds fixed
    baseline: str                    # the arm the others are compared with
    knob: str | None = None          # the config field the ablation varies (for final-score-vs-knob plots)
    seeds: int = 3
    quick: dict = field(default_factory=lambda: dict(QUICK))   # overrides applied to every arm by --quick
    report_x: str = "step"           # x axis of the report's curves (samples: arms that generate more per step)
    effect: float | None = None      # the report's "seeds for E points" column unless --effect is given
    # arm -> one line naming where the arm deliberately departs from its paper's method (a budget, a
    # component the harness lacks); written to sweep.json for the report's "what was run" table.
    departures: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.departures) - set(self.arms))
        if unknown:
            raise GrpoError(f"experiment {self.name!r}: departures name unknown arm(s) {unknown}")


@dataclass(eq=False)     # identity hash: runs are dict keys while they execute
class Run:
    arm: str
    seed: int
    config: TrainConfig

    @property
    def dir(self) -> Path:
        return Path(self.config.out_dir)

    @property
    def log(self) -> Path:
        return self.dir / "train.log"


@dataclass(eq=False)     # identity hash: processes are dict keys while they execute
class Process:
    """One `grpo train` process: a single run, or a population of one arm's consecutive seeds (`runs`, in
    seed order) whose config trains them all (`config.members()` are the runs' configs)."""
    runs: list[Run]
    config: TrainConfig

    @property
    def log(self) -> Path:
        if len(self.runs) == 1:
            return self.runs[0].log
        return Path(self.config.out_dir) / f"population_seed{self.runs[0].seed}-{self.runs[-1].seed}.log"


def train_command(process: Process) -> list[str]:
    return [sys.executable, "-m", "grpo.commands.cli", "train", *config_flags(process.config)]


def consecutive_blocks(runs: list[Run]) -> list[list[Run]]:
    """`runs` (in plan order) split where the arm changes or the seed does not follow the one before."""
    blocks: list[list[Run]] = []
    for run in runs:
        if blocks and blocks[-1][-1].arm == run.arm and blocks[-1][-1].seed + 1 == run.seed:
            blocks[-1].append(run)
        else:
            blocks.append([run])
    return blocks


def balanced(blocks: list[list[Run]], parallel: int) -> list[list[Run]]:
    """`blocks` with the largest split in two (first half the larger) until their count is a multiple of
    `parallel` (or every block is one run), longest first: K processes of equal length on `parallel` cores
    leave cores idle in their last round unless `parallel` divides K (5 arms x 3 seeds at 2 at a time: 9
    run-lengths of wall time as 5 populations, 8 as 4 + 2 + 1)."""
    blocks = list(blocks)
    while len(blocks) % parallel and max(map(len, blocks)) > 1:
        largest = max(range(len(blocks)), key=lambda i: len(blocks[i]))
        block = blocks.pop(largest)
        half = (len(block) + 1) // 2
        blocks[largest:largest] = [block[:half], block[half:]]
    return sorted(blocks, key=len, reverse=True)


def plan_processes(runs: list[Run], population: str, parallel: int = 1) -> list[Process]:
    """The processes that train `runs` (the unfinished ones): with population "off" one per run; with "auto"
    one population per block of an arm's consecutive seeds of a preset model (blocks split so that `parallel`
    cores stay busy: `balanced`), provided the population's members are exactly the runs' configs (else, as
    for a pretrained model, one process per run)."""
    processes = []
    for block in balanced(consecutive_blocks(runs), parallel) if population == "auto" else [[run] for run in runs]:
        config = block[0].config
        if len(block) > 1 and is_preset(config.model):
            together = dataclasses.replace(config, population=len(block), out_dir=str(block[0].dir.parent))
            if together.members() == [run.config for run in block]:
                processes.append(Process(block, together))
                continue
        processes.extend(Process([run], run.config) for run in block)
    return processes


def plan_runs(experiment: Experiment, out_dir: Path, seeds: list[int], overrides: dict, parallel: int) -> list[Run]:
    import tyro

    threads = max(1, (os.cpu_count() or 1) // parallel)
    runs = []
    for arm, arm_config in experiment.arms.items():
        if overrides.get("arms") and arm not in overrides["arms"]:
            continue
        if overrides["quick"]:
            arm_config = dataclasses.replace(arm_config, **experiment.quick)
        if overrides["steps"]:
            arm_config = dataclasses.replace(arm_config, steps=overrides["steps"])
        # Any grpo train flag given to the sweep applies to every arm, on top of the arm's own values.
        arm_config = parse_flags(TrainConfig, overrides["train_args"], "sweep overrides", default=arm_config)
        for seed in seeds:
            # --warmstart-seed per-seed: each seed's own warm start (the cache keys on warmstart_seed).
            warmstart_seed = seed if overrides.get("warmstart_seed") == "per-seed" else arm_config.warmstart_seed
            config = dataclasses.replace(
                arm_config, seed=seed, warmstart_seed=warmstart_seed, experiment=experiment.name, arm=arm, quiet=True,
                threads=arm_config.threads or threads, out_dir=str(out_dir / arm / f"seed{seed}"),
                wandb_dir=str(out_dir), wandb_group=arm_config.wandb_group or experiment.name)
            args = config_flags(config)
            if tyro.cli(TrainConfig, args=args, default=TrainConfig.flag_defaults(args)) != config:  # as grpo train
                raise GrpoError(f"arm {arm!r} cannot be written as grpo train flags")
            runs.append(Run(arm, seed, config))
    return runs


def run_status(run: Run) -> str:
    """finished / failed / unfinished / missing, or conflict: the directory holds another config's run
    (a sweep re-run with other flags must not count old results as the new arm's)."""
    try:
        saved = json.loads((run.dir / "config.json").read_text())
        if config_mismatch(saved, run.config):
            return "conflict"
    except (OSError, ValueError):
        pass
    try:
        summary = json.loads((run.dir / "summary.json").read_text())
    except (OSError, ValueError):
        return "missing"
    if summary.get("status") == "finished" and summary.get("steps_done", 0) >= run.config.steps:
        return "finished"
    return "failed" if summary.get("status") == "failed" else "unfinished"


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the sweep dies, so a killed sweep leaves no orphan runs."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except OSError:
        pass


FORK = sys.platform.startswith("linux")     # elsewhere (macOS) a fork of a process holding torch is unsafe


class Forked:
    """`work()` in a forked child: its return value (or SystemExit code) is the exit code, any other
    exception a traceback and exit 1. Has Popen's poll() / wait() / returncode."""

    def __init__(self, work, log_path: Path | None = None) -> None:
        sys.stdout.flush()
        sys.stderr.flush()        # or the child would print the parent's buffered lines again
        self.returncode = None
        self.pid = os.fork()
        if self.pid == 0:
            code = 1
            try:
                _die_with_parent()
                if log_path is not None:
                    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                    os.dup2(log, 1)
                    os.dup2(log, 2)
                    os.close(log)
                    # New streams on the descriptors: the inherited ones may write elsewhere (pytest, notebooks).
                    sys.stdout = open(1, "w", buffering=1, closefd=False)
                    sys.stderr = open(2, "w", buffering=1, closefd=False)
                code = work()
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
            except BaseException:
                traceback.print_exc()
            finally:
                if "wandb" in sys.modules:      # stop this child's wandb service; os._exit skips atexit
                    try:
                        sys.modules["wandb"].teardown()
                    except Exception:
                        pass
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        while self.poll() is None:
            time.sleep(0.1)
        return self.returncode


def isolated(work) -> int:
    """work() in a fork when runs are forked, so that this process starts no OpenMP threads; else here."""
    return Forked(work).wait() if FORK else work()


def start_process(process: Process):
    """The process as a child writing to its log: a fork calling `grpo train`'s entry point, or (without
    fork) a `grpo train` subprocess."""
    env = {"OMP_NUM_THREADS": str(process.config.threads), "TOKENIZERS_PARALLELISM": "false"}
    if FORK:
        def work() -> int:
            from grpo.commands.cli import main as grpo_main

            os.environ.update(env)
            return grpo_main(["train", *config_flags(process.config)])

        return Forked(work, process.log)
    with open(process.log, "a") as log:
        return subprocess.Popen(train_command(process), stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **env}, preexec_fn=_die_with_parent)


def run_local(processes: list[Process], parallel: int, progress) -> dict[str, int]:
    """Run `processes` with at most `parallel` at once; returns {run dir: its process's exit code}."""
    pending, active, codes = list(processes), {}, {}
    while pending or active:
        while pending and len(active) < parallel:
            process = pending.pop(0)
            Path(process.config.out_dir).mkdir(parents=True, exist_ok=True)
            active[process] = start_process(process)
        time.sleep(0.5)
        for process, proc in list(active.items()):
            if proc.poll() is not None:
                codes.update({str(run.dir): proc.returncode for run in process.runs})
                del active[process]
                progress(process, proc.returncode)
    return codes


def run_ray(processes: list[Process], progress) -> dict[str, int]:
    """Dispatch each process as a Ray task (same commands, same run-dir layout on shared storage)."""
    try:
        import ray
    except ImportError:
        raise GrpoError("--executor ray needs the ray extra: pip install 'grpo-lab[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False)

    @ray.remote(num_cpus=1)
    def launch(command: list[str], log_path: str, threads: int) -> int:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as log:
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode

    futures = {launch.remote(train_command(p), str(p.log), p.config.threads): p for p in processes}
    codes = {}
    remaining = list(futures)
    while remaining:
        done, remaining = ray.wait(remaining, num_returns=1)
        process, code = futures[done[0]], ray.get(done[0])
        codes.update({str(run.dir): code for run in process.runs})
        progress(process, code)
    return codes


def write_sweep_json(experiment: Experiment, out_dir: Path, runs: list[Run], seeds: list[int],
                     warmstart_seed: str = "same") -> None:
    """Declare the sweep in <out-dir>/sweep.json, merged with what an earlier invocation declared.

    "warmstart_seed" says what the seeds vary ("same": one warm start per arm; "per-seed": each seed its
    own, so a run's warmstart_seed is its seed and is not an arm setting); "departures" names where each
    arm deliberately departs from its paper.

    `--arms a,b` or fewer `--seeds` add to the declaration instead of shrinking it (the report then still
    lists the other arms); the first invocation's provenance (created, git commit, versions) is kept and
    every invocation is appended to `invocations`.
    """
    import torch
    import transformers

    from grpo import __version__

    per_run = ("out_dir", "seed", "experiment", "arm") + (("warmstart_seed",) if warmstart_seed == "per-seed" else ())
    # An arm's settings are what differs from the defaults grpo train gives its model (PRETRAINED_DEFAULTS
    # for a pretrained one), as config_args writes them.
    arms = {arm: {k: v for k, v in dataclasses.asdict(cfg).items()
                  if k not in per_run and v != getattr(TrainConfig.for_model(cfg.model), k)}
            for arm, cfg in {r.arm: r.config for r in runs}.items()}
    now = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git_commit": git_commit(),
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "grpo_lab": __version__},
           "arms": list(arms), "seeds": seeds, "warmstart_seed": warmstart_seed}
    path = out_dir / "sweep.json"
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        previous = {}
    declared = {**previous.get("arms", {}), **arms}
    info = {"experiment": experiment.name,
            "arms": {a: declared[a] for a in [*experiment.arms, *declared] if a in declared},
            "seeds": sorted(set(previous.get("seeds", [])) | set(seeds)), "budget": experiment.budget,
            "baseline": experiment.baseline, "knob": experiment.knob, "warmstart_seed": warmstart_seed,
            "departures": {a: experiment.departures[a] for a in [*experiment.arms] if a in experiment.departures},
            "created": previous.get("created", now["at"]),
            "git_commit": previous.get("git_commit", now["git_commit"]),
            "versions": previous.get("versions", now["versions"]),
            "invocations": [*previous.get("invocations", []), now]}
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, path)


def parse_args(experiment: Experiment, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog=f"python -m experiments.{experiment.name}",
        description=f"{experiment.name} ablation: arms {', '.join(experiment.arms)}; holds fixed: {experiment.budget}. "
                    "Any other flag is a `grpo train` flag applied to every arm (see grpo train --help).")
    parser.add_argument("--out-dir", type=Path, default=Path("runs") / experiment.name, help="sweep directory")
    parser.add_argument("--seeds", type=int, default=experiment.seeds, help="seeds per arm (0..N-1)")
    parser.add_argument("--steps", type=int, default=None, help="GRPO steps per run (overrides the arms)")
    parser.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL,
                        help="processes at once; each gets cores/parallel threads")
    parser.add_argument("--quick", action="store_true", help="small budget for smoke tests and the demo")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the grpo train commands of the runs not yet finished, run nothing")
    parser.add_argument("--population", choices=["auto", "off"], default="auto",
                        help="auto: an arm's unfinished consecutive seeds train as one `grpo train --population S` "
                             "process writing the same run dirs (preset models only: a pretrained model's "
                             "matmuls already fill the cores, so batching its seeds would not pay, and S copies of "
                             "its weights and AdamW state would share one process's memory); off: one process per run")
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="local subprocesses, or Ray tasks on a cluster (ray extra; RAY_ADDRESS)")
    parser.add_argument("--arms", type=lambda text: text.split(","), default=None,
                        help=f"comma-separated subset of the arms ({','.join(experiment.arms)})")
    parser.add_argument("--no-report", action="store_true", help="do not write the analysis report at the end")
    parser.add_argument("--warmstart-seed", default="same", metavar="same|per-seed|N",
                        help="same: every run starts from its arm's warm start (intervals are conditional on it); "
                             "per-seed: each run's warm start is seeded by its seed, so the seeds vary it too; "
                             "a number: grpo train's --warmstart-seed for every arm (as same)")
    parser.add_argument("--effect", type=float, default=experiment.effect,
                        help="the report gives the seeds each comparison needs to detect this effect "
                             f"(in points of accuracy; default {experiment.effect})")
    args, train_args = parser.parse_known_args(argv)
    if args.warmstart_seed not in ("same", "per-seed"):
        try:
            train_args = [*train_args, "--warmstart-seed", str(int(args.warmstart_seed))]
        except ValueError:
            parser.error(f"--warmstart-seed takes same, per-seed or a number, got {args.warmstart_seed!r}")
        args.warmstart_seed = "same"
    if args.seeds < 1 or args.parallel < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--seeds, --parallel and --steps must be >= 1")
    if args.effect is not None and not args.effect > 0:
        parser.error("--effect must be > 0")
    unknown = sorted(set(args.arms or ()) - set(experiment.arms))
    if unknown:
        parser.error(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(experiment.arms)}")
    return args, train_args


def main(experiment: Experiment, argv: list[str] | None = None) -> int:
    args, train_args = parse_args(experiment, sys.argv[1:] if argv is None else argv)
    try:
        return sweep(experiment, args, train_args)
    except GrpoError as err:
        print(f"{experiment.name}: error: {err}", file=sys.stderr)
        return 2


def sweep(experiment: Experiment, args: argparse.Namespace, train_args: list[str]) -> int:
    seeds = list(range(args.seeds))
    runs = plan_runs(experiment, args.out_dir, seeds,
                     {"quick": args.quick, "steps": args.steps, "train_args": train_args, "arms": args.arms,
                      "warmstart_seed": args.warmstart_seed},
                     args.parallel)
    if args.dry_run:
        todo = [r for r in runs if run_status(r) != "finished"]
        print(f"# warmstart_seed: {args.warmstart_seed} ("
              + ("each run's warm start is seeded by its seed" if args.warmstart_seed == "per-seed"
                 else "every run of an arm starts from the arm's warm start") + ")")
        if len(todo) < len(runs):
            print(f"# {len(runs) - len(todo)} of {len(runs)} runs already finished")
        for process in plan_processes(todo, args.population, args.parallel):
            print(shlex.join(["grpo", "train", *config_flags(process.config)]))
        return 0
    conflicts = [r for r in runs if run_status(r) == "conflict"]
    if conflicts:     # refused before anything is written: sweep.json still describes the runs on disk
        first = conflicts[0]
        differ = config_mismatch(json.loads((first.dir / "config.json").read_text()), first.config)
        raise GrpoError(f"{len(conflicts)} run dir(s) hold runs of another config, e.g. {first.dir} "
                        f"(differs in: {', '.join(differ)}); use another --out-dir")
    # A GGUF model converts once here, not in every parallel run; a missing extra stops the sweep (exit 2).
    ggufs = gguf_models(r.config for r in runs)

    def say(message: str) -> None:
        print(f"  {message}", flush=True)

    def convert() -> int:
        try:
            for model in ggufs:
                check_model_dir(model, log=say)
        except GrpoError as err:
            print(f"{experiment.name}: error: {err}", file=sys.stderr, flush=True)
            return 2
        return 0

    if ggufs and (code := isolated(convert)):
        return code
    write_sweep_json(experiment, args.out_dir, runs, seeds, args.warmstart_seed)
    todo = [r for r in runs if run_status(r) != "finished"]
    processes = plan_processes(todo, args.population, args.parallel)
    log_of = {run: process.log for process in processes for run in process.runs}
    populations = sum(len(p.runs) > 1 for p in processes)
    print(f"{experiment.name}: {len(runs)} runs ({len(runs) - len(todo)} already finished) in {args.out_dir}; "
          f"{len(processes)} processes ({populations} populations), {args.parallel} at a time, logs in "
          f"<run>/train.log" + (" and <arm>/population_seed<a>-<b>.log" if populations else ""), flush=True)
    started = time.perf_counter()
    if args.executor == "local" and args.parallel > 1:
        code = isolated(lambda: prebuild_warm_starts([r.config for r in todo], log=say) or 0)
        if code:
            raise GrpoError(f"building the runs' warm starts failed (exit {code})")
    if args.executor == "local" and FORK:
        preload()

    def progress(process: Process, code: int) -> None:
        # Per seed: in a population that failed, the seeds that finished before it stopped did finish.
        for run in process.runs:
            ok = code == 0 or (len(process.runs) > 1 and run_status(run) == "finished")
            word = "finished" if ok else f"FAILED (exit {code}), see {process.log}"
            print(f"  [{time.perf_counter() - started:6.0f}s] {run.arm}/seed{run.seed} {word}", flush=True)

    codes = (run_ray(processes, progress) if args.executor == "ray"
             else run_local(processes, args.parallel, progress))
    # A run that exited non-zero is failed even if it died before writing its summary.
    statuses = {r: "failed" if codes.get(str(r.dir), 0) != 0 and run_status(r) != "finished" else run_status(r)
                for r in runs}
    print(f"{experiment.name}: " + ", ".join(f"{sum(s == k for s in statuses.values())} {k}"
                                            for k in ("finished", "failed", "unfinished", "missing")))
    for run, status in statuses.items():
        if status != "finished":
            print(f"  {run.arm}/seed{run.seed}: {status}, log {log_of.get(run, run.log)}")
    if not args.no_report:
        from analysis import AnalysisError
        from analysis.report import write_report

        try:
            report = write_report([args.out_dir], x=experiment.report_x, effect=args.effect)
            print(f"report: {report}\nreport (html): {report.with_suffix('.html')}")
        except AnalysisError as err:
            print(f"{experiment.name}: no report: {err}", file=sys.stderr)
            return 1
    return 0 if all(s == "finished" for s in statuses.values()) else 1
