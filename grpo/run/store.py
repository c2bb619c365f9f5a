"""Where a run's results go: the run directory, the source of truth (its wandb mirror: grpo/run/wandb_mirror.py).

Run directory layout:
  config.json      the exact config the trainer read
  metrics.jsonl    one flat JSON object per step, appended and flushed as the step ends
  samples.jsonl    every log_samples_every steps, a few prompts with completions, rewards, advantages
  prompts.jsonl    with --prompt-pool: every prompt visit (step, index, difficulty, solve_rate, visit)
  rollouts/        with --store-rollouts: step_<n>_rank<r>.safetensors, every step's rollouts (grpo rescore)
  summary.json     status (running | finished | failed), steps done, final metrics, error, compute_dtype
                   (the dtype the forwards ran in: --dtype, or its default for the model and hardware),
                   onednn_linears (whether large fp32 CPU linear layers ran through oneDNN: grpo/engine/gemm.py)
  checkpoints/     see grpo/run/checkpoint.py
  wandb/           wandb's offline files, unless wandb_dir points elsewhere (a sweep shares one)
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from pathlib import Path

from grpo import GrpoError
from grpo.setup.config import TrainConfig, config_mismatch


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def read_summary(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


class RunStore:
    """The run directory. Refuses a directory that holds a run of another config."""

    def __init__(self, config: TrainConfig) -> None:
        self.dir = config.run_dir
        self.metrics_path = self.dir / "metrics.jsonl"
        self.samples_path = self.dir / "samples.jsonl"
        self.prompts_path = self.dir / "prompts.jsonl"
        self.summary_path = self.dir / "summary.json"
        config_path = self.dir / "config.json"
        if config_path.exists():
            try:
                saved = json.loads(config_path.read_text())
            except (OSError, ValueError) as err:
                raise GrpoError(f"{config_path} is unreadable ({err}); refusing to overwrite that run") from None
            differ = config_mismatch(saved, config)
            if differ:
                raise GrpoError(f"{self.dir} holds a run with another config (differs in: {', '.join(differ)}); "
                                f"choose another --out-dir")
        elif any((p / "config.json").exists() for p in self.dir.glob("seed*")):
            raise GrpoError(f"{self.dir} holds a population's runs (seed<k>/ folders): resume it with --population, "
                            f"or one seed's run with --out-dir {self.dir}/seed<k>")
        elif self.dir.exists() and any(p.name not in ("wandb", "train.log", ".lock") for p in self.dir.iterdir()):
            raise GrpoError(f"{self.dir} exists and is not a grpo-lab run directory; choose another --out-dir")
        self.dir.mkdir(parents=True, exist_ok=True)
        # One writer per run directory: a second process (a sweep restarted while an orphan of the
        # first still runs, a user typing the command twice) is refused instead of interleaving lines.
        self._lock = open(self.dir / ".lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GrpoError(f"{self.dir} is being written by another grpo process") from None
        write_json(config_path, config.to_dict())

    def close(self) -> None:
        """Give up the directory's lock (also given up when the store is collected, or the process ends)."""
        self._lock.close()

    def summary(self) -> dict:
        return read_summary(self.dir)

    def write_summary(self, **fields) -> None:
        write_json(self.summary_path, {**self.summary(), **fields})

    def truncate_after(self, step: int) -> None:
        """Drop logged lines of steps > `step` (they will be recomputed from the checkpoint at `step`)."""
        for path in (self.metrics_path, self.samples_path, self.prompts_path):
            if not path.exists():
                continue
            kept = []
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= step:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    break   # a torn last line from a kill: everything after it is gone too
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, path)

    def last_record(self) -> dict:
        lines = self.metrics_path.read_text().splitlines() if self.metrics_path.exists() else []
        return json.loads(lines[-1]) if lines else {}

    def append(self, path: Path, record: dict) -> None:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
