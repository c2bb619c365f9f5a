"""Checkpoints: model weights in safetensors, optimizer + RNG states + step in a weights-only file.

A checkpoint is written to a temporary folder and renamed into place, so a run killed at any moment
leaves either the old checkpoint or the new one, never half of one. The two newest are kept.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from grpo import GrpoError

KEEP = 2
_NAME = re.compile(r"step_(\d+)")


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(_NAME.fullmatch(p.name).group(1)))


def save_checkpoint(run_dir: Path, step: int, model, optimizer, rng_states: list[dict[str, torch.Tensor]],
                    extra: dict) -> Path:
    """rng_states: one dict of generator states per rank."""
    root = run_dir / "checkpoints"
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp_step_*"):          # left behind by a kill in the middle of a save
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    # save_model stores tied tensors (embedding = lm_head) once; save_file refuses shared memory.
    save_model(model, str(tmp / "model.safetensors"))
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "rng": rng_states, **extra}, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in checkpoint_dirs(run_dir)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model, optimizer, device) -> dict:
    """Restore model and optimizer in place; return the state dict (step, rng, extras).

    Raises GrpoError naming the checkpoint when a file is missing, truncated or not ours.
    """
    try:
        state = torch.load(path / "state.pt", map_location=device, weights_only=True)
        missing, unexpected = load_model(model, path / "model.safetensors", strict=False, device=str(device))
        if missing or unexpected:
            raise ValueError(f"weights do not match the model (missing {len(missing)}, unexpected {len(unexpected)})")
        optimizer.load_state_dict(state["optimizer"])
        if not isinstance(state.get("step"), int) or "rng" not in state:
            raise ValueError("state.pt lacks step or rng")
    except GrpoError:
        raise
    except Exception as err:  # safetensors, pickle and shape errors all mean the same thing here
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise GrpoError(f"checkpoint {path} is unreadable or corrupt: {message}") from None
    return state
