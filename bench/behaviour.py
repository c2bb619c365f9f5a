"""Behaviour check of a refactor: fixed `grpo train` runs on the old code (a git ref) and on the working tree must
log identical lines.

    python bench/behaviour.py --ref main [--out DIR] [--steps N] [--threads T] [--jobs J] [--only NAME,...]

Each config in CONFIGS runs twice as a `grpo train` command (`python -m <the tree's cli module> train`): once in a temporary
`git worktree` of REF (the old code) and once in the tree this script lives in, uncommitted changes included (the
new code). Both sides use this script's Python interpreter, the same thread count, wandb disabled, and
PYTHONPATH set to their own tree, so each imports its own `grpo`. Each side gets a GRPO_CACHE of its own, empty at
the start: the warm start is cached, and a change in how the new code builds it must show up in the runs, not be
hidden by loading the old code's weights. Then the two runs' metrics.jsonl are compared line by line as parsed
JSON (key order does not matter, float values must be equal exactly), ignoring keys that start with `time/`;
samples.jsonl and prompts.jsonl too where a side writes them (a file that only one side writes is a difference).

Prints one JSON object: per config, `identical`, the line counts, and at the first line that differs its step and
each differing key with both values; `identical` overall. Exit status 0 when every config is identical, 1 when one
is not (or a run failed: the tail of its output is in the JSON), 2 on bad input (an unknown config name, a ref git
cannot resolve). Standard library only: it never imports either side's code.

The run directories are kept under --out DIR; without it they go to a temporary folder that is removed when every
config is identical and kept (its path is in the JSON) when one is not.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The fixed configs: name -> `grpo train` flags on top of its defaults. Add one here to check it too. Every run also
# gets COMMON flags (steps, threads, output, wandb off). Small on purpose: the tiny preset, --steps steps, each run
# 20-40 s on one thread after the warm start.
CONFIGS = {
    "default": [],
    "gspo_mini_batches": ["--objective", "gspo", "--clip-eps-low", "3e-4", "--clip-eps-high", "4e-4",
                          "--mini-batches", "2"],
    "dr_grpo_inner_epochs_pool": ["--advantage", "dr_grpo", "--inner-epochs", "2", "--prompt-pool", "32"],
    "dynamic_sampling": ["--dynamic-sampling"],
    "counterfactual": ["--counterfactuals", "advantage=dr_grpo,aggregation=token_mean",
                       "--counterfactual-every", "2"],
}

# The run files compared: metrics.jsonl must exist on both sides; the others are compared where a side writes them.
REQUIRED_FILE = "metrics.jsonl"
OPTIONAL_FILES = ("samples.jsonl", "prompts.jsonl")
SIDES = ("old", "new")
ABSENT = "<absent>"          # how a key that one line lacks is shown


class BadInput(Exception):
    """A problem with the command line or the ref: one line, exit status 2."""


def ignored(key: str) -> bool:
    """Wall-clock timings differ from run to run by nature; everything else must not."""
    return key.startswith("time/")


def same_value(a, b) -> bool:
    """Equal JSON values; NaN equals NaN (a metric that is NaN on both sides has not changed)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def line_difference(old: dict, new: dict) -> dict:
    """{key: {"old": value, "new": value}} for every key, time/* aside, whose values differ or that one side lacks."""
    keys = [k for k in dict.fromkeys([*old, *new]) if not ignored(k)]
    return {k: {"old": old.get(k, ABSENT), "new": new.get(k, ABSENT)} for k in keys
            if k not in old or k not in new or not same_value(old[k], new[k])}


def compare_lines(old: list[dict], new: list[dict]) -> dict:
    """Compare two runs' records line by line. Returns {"identical", "lines": {"old", "new"}} and, when they differ,
    "first_difference": {"line" (1-based), "step", "keys"} at the first differing line, where "keys" maps each
    differing key to both values; a line that one side lacks has "missing_in" instead of "keys"."""
    result = {"identical": True, "lines": {"old": len(old), "new": len(new)}}
    for index in range(max(len(old), len(new))):
        if index >= len(old) or index >= len(new):
            present = new[index] if index >= len(old) else old[index]
            result["identical"] = False
            result["first_difference"] = {"line": index + 1, "step": present.get("step"),
                                          "missing_in": "old" if index >= len(old) else "new"}
            return result
        keys = line_difference(old[index], new[index])
        if keys:
            result["identical"] = False
            result["first_difference"] = {"line": index + 1, "step": old[index].get("step", new[index].get("step")),
                                          "keys": keys}
            return result
    return result


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compare_runs(old_dir: Path, new_dir: Path) -> dict:
    """{file name: compare_lines result} for metrics.jsonl and each optional file that either side wrote; a file
    that only one side wrote reads {"identical": false, "only_in": side}."""
    files = {}
    for name in (REQUIRED_FILE, *OPTIONAL_FILES):
        paths = {"old": old_dir / name, "new": new_dir / name}
        present = [side for side in SIDES if paths[side].is_file()]
        if len(present) == 2:
            files[name] = compare_lines(read_jsonl(paths["old"]), read_jsonl(paths["new"]))
        elif present or name == REQUIRED_FILE:
            files[name] = {"identical": False, "only_in": present[0] if present else None}
    return files


def git(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)


def resolve_ref(ref: str) -> str:
    """The full commit id `ref` names; BadInput if git cannot resolve it to a commit."""
    out = git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if out.returncode != 0 or not out.stdout.strip():
        raise BadInput(f"--ref {ref!r}: git cannot resolve it to a commit in {REPO}")
    return out.stdout.strip()


def side_env(tree: Path, cache: Path, threads: int) -> dict:
    """The environment of one side's runs: its own code on PYTHONPATH, its own warm-start cache, the thread count."""
    env = dict(os.environ)
    env.update(PYTHONPATH=str(tree), GRPO_CACHE=str(cache), WANDB_MODE="disabled", WANDB_SILENT="true",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def cli_module(tree: Path) -> str:
    """The tree's `grpo` CLI module: grpo.commands.cli since the layer packages, grpo.cli before them."""
    return "grpo.commands.cli" if (tree / "grpo" / "commands" / "cli.py").is_file() else "grpo.cli"


def train_command(tree: Path, flags: list[str], run_dir: Path, steps: int, threads: int) -> list[str]:
    """`grpo train` of `tree` with this interpreter (the module, not the `grpo` script: the script imports the
    installed code)."""
    return [sys.executable, "-m", cli_module(tree), "train", *flags, "--steps", str(steps), "--threads", str(threads),
            "--wandb-mode", "disabled", "--quiet", "--out-dir", str(run_dir)]


def check_imports_own_code(tree: Path, env: dict) -> None:
    """Each side must import the `grpo` of its tree, not an installed copy: else the comparison compares nothing."""
    out = subprocess.run([sys.executable, "-c", "import grpo; print(grpo.__file__)"], cwd=tree, env=env,
                         capture_output=True, text=True)
    where = Path(out.stdout.strip()).resolve() if out.returncode == 0 else None
    if where is None or tree.resolve() not in where.parents:
        raise BadInput(f"{tree}: `import grpo` found {where or out.stderr.strip()[-200:]}, not this tree's grpo")


def run_one(side: str, tree: Path, name: str, out: Path, steps: int, threads: int) -> dict:
    """One `grpo train` run; {"side", "name", "dir", "seconds", "rc", "tail"}."""
    run_dir = out / side / name
    env = side_env(tree, out / side / "cache", threads)
    tick = time.perf_counter()
    proc = subprocess.run(train_command(tree, CONFIGS[name], run_dir, steps, threads), cwd=tree, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return {"side": side, "name": name, "dir": run_dir, "seconds": round(time.perf_counter() - tick, 1),
            "rc": proc.returncode, "tail": proc.stdout[-2000:]}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/behaviour.py", description=__doc__.splitlines()[0])
    def error(message: str):
        raise BadInput(message)

    parser.error = error              # argparse's own complaints also become one line and exit 2
    parser.add_argument("--ref", required=True, help="the old code: a branch, tag or commit git can resolve")
    parser.add_argument("--out", type=Path, default=None,
                        help="keep the run directories here (must be empty or new); default: a temporary folder")
    parser.add_argument("--steps", type=int, default=12, help="GRPO steps of every run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every run (both sides alike)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (the two sides of a config run together)")
    parser.add_argument("--only", default="", metavar="NAME,...", help=f"configs to run, of {', '.join(CONFIGS)}")
    args = parser.parse_args(argv)
    args.names = [n.strip() for n in args.only.split(",") if n.strip()] or list(CONFIGS)
    unknown = [n for n in args.names if n not in CONFIGS]
    if unknown:
        raise BadInput(f"--only: unknown config {', '.join(map(repr, unknown))}; choose from {', '.join(CONFIGS)}")
    for flag in ("steps", "threads", "jobs"):
        if getattr(args, flag) < 1:
            raise BadInput(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.out is not None and args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise BadInput(f"--out {args.out}: not an empty folder (old runs there would be resumed, not rerun)")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    commit = resolve_ref(args.ref)
    started = time.perf_counter()
    out = args.out.resolve() if args.out else Path(tempfile.mkdtemp(prefix="behaviour-"))
    out.mkdir(parents=True, exist_ok=True)
    old_tree = out / "old-tree"
    added = git("worktree", "add", "--detach", str(old_tree), commit)
    if added.returncode != 0:
        raise BadInput(f"git worktree add {commit}: {added.stderr.strip().splitlines()[-1:]}")
    trees = {"old": old_tree, "new": REPO}
    try:
        for side in SIDES:
            check_imports_own_code(trees[side], side_env(trees[side], out / side / "cache", args.threads))
        # Old and new of a config side by side: each side's first run builds that side's warm start.
        jobs = [(side, name) for name in args.names for side in SIDES]
        runs = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(run_one, side, trees[side], name, out, args.steps, args.threads)
                       for side, name in jobs]
            for future in concurrent.futures.as_completed(futures):
                run = future.result()
                runs[run["side"], run["name"]] = run
                print(f"{run['name']} {run['side']}: {run['seconds']} s, exit {run['rc']}", file=sys.stderr,
                      flush=True)
    finally:
        git("worktree", "remove", "--force", str(old_tree))
        git("worktree", "prune")

    configs = {}
    for name in args.names:
        old, new = runs["old", name], runs["new", name]
        entry = {"flags": CONFIGS[name], "seconds": {"old": old["seconds"], "new": new["seconds"]}}
        failed = {side: runs[side, name]["tail"] for side in SIDES if runs[side, name]["rc"] != 0}
        if failed:
            entry.update(identical=False, failed=failed)
        else:
            files = compare_runs(old["dir"], new["dir"])
            entry.update(identical=all(f["identical"] for f in files.values()), files=files)
        configs[name] = {"identical": entry.pop("identical"), **entry}
    identical = all(c["identical"] for c in configs.values())
    result = {"identical": identical, "ref": args.ref, "old_commit": commit,
              "new": f"working tree of {REPO} at {git('rev-parse', 'HEAD').stdout.strip()}"
                     + (" with uncommitted changes" if git("status", "--porcelain").stdout.strip() else ""),
              "steps": args.steps, "threads": args.threads, "python": sys.executable,
              "wall_s": round(time.perf_counter() - started, 1), "configs": configs}
    if args.out or not identical:
        result["out"] = str(out)
    else:
        shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0 if identical else 1


if __name__ == "__main__":
    try:
        raise SystemExit(main(sys.argv[1:]))
    except BadInput as err:
        print(f"bench/behaviour.py: error: {err}", file=sys.stderr)
        raise SystemExit(2)
