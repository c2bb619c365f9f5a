"""The run's wandb mirror: every metrics line and samples table of the run directory (grpo/run/store.py),
logged to wandb as well. Offline by default (--wandb-mode); an absent, offline or failing wandb costs one
warning and never stops or stalls the run.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from grpo.engine import gemm
from grpo.run.store import git_commit
from grpo.setup.config import TrainConfig


class WandbMirror:
    """Mirrors metrics to wandb; absent, offline or failing wandb only costs one warning."""

    def __init__(self, config: TrainConfig, run_dir: Path, resume_id: str | None) -> None:
        self.run = None
        mode = config.wandb_mode or os.environ.get("WANDB_MODE") or "offline"
        if mode == "disabled":
            return
        try:
            import wandb

            wandb_dir = Path(config.wandb_dir) if config.wandb_dir else run_dir
            wandb_dir.mkdir(parents=True, exist_ok=True)
            name = "/".join(p for p in (config.experiment, config.arm, f"seed{config.seed}") if p)
            commit = git_commit()
            self.run = wandb.init(
                project=config.wandb_project, entity=config.wandb_entity,
                group=config.wandb_group or config.experiment or None, name=name, dir=str(wandb_dir),
                mode=mode, id=resume_id, resume="allow" if resume_id else None,
                # A population's seeds each log to a run of their own, open side by side in one process.
                reinit="create_new",
                config={**config.to_dict(), "compute_dtype": config.compute_dtype, "onednn_linears": gemm.available()},
                tags=[t for t in (config.arm and f"arm:{config.arm}", f"seed:{config.seed}",
                                  commit and f"git:{commit}") if t],
                settings=wandb.Settings(silent=True, console="off"),
            )
            for axis in ("samples", "tokens"):
                self.run.define_metric(axis)
            self.run.define_metric("*", step_metric="step")
        except Exception as err:  # never let the mirror kill or stall a run
            warnings.warn(f"wandb unavailable ({type(err).__name__}: {err}); logging to {run_dir} only")
            self.run = None

    @property
    def id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def log(self, record: dict) -> None:
        if self.run is not None:
            try:
                # An explicit step: after a resume, wandb drops the steps it already holds (they are
                # recomputed identically from the checkpoint) instead of appending duplicate rows.
                self.run.log(record, step=int(record["step"]))
            except Exception as err:
                warnings.warn(f"wandb log failed ({err}); continuing with the local store only")
                self.run = None

    def log_samples(self, step: int, rows: list[dict]) -> None:
        if self.run is None or not rows:
            return
        try:
            import wandb

            columns = list(rows[0])
            table = wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in rows])
            self.run.log({"samples": table}, step=step)
        except Exception as err:
            warnings.warn(f"wandb table failed ({err})")

    def finish(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception:
                pass
