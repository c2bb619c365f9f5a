"""`grpo sync <run-or-sweep-dir>...`: push offline wandb runs once you are online (wraps `wandb sync`)."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from grpo import GrpoError


def offline_runs(path: Path) -> list[Path]:
    """wandb's offline run folders below a run or sweep directory."""
    if not path.is_dir():
        raise GrpoError(f"{path} is not a directory")
    return sorted(p for p in path.rglob("offline-run-*") if p.is_dir())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="grpo sync", description=__doc__)
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep directories")
    parser.add_argument("--dry-run", action="store_true", help="list the offline runs, push nothing")
    args = parser.parse_args(argv)
    runs = [run for d in args.dirs for run in offline_runs(d)]
    if not runs:
        raise GrpoError(f"no offline wandb runs under {', '.join(map(str, args.dirs))}")
    if args.dry_run:
        print("\n".join(map(str, runs)))
        return 0
    wandb = shutil.which("wandb") or str(Path(sys.executable).parent / "wandb")
    return subprocess.run([wandb, "sync", *map(str, runs)]).returncode
