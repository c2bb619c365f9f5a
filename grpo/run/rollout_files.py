"""The stored rollouts of `grpo train --store-rollouts`, read back by `grpo rescore`.

Every step, each rank writes <run>/rollouts/step_<n>_rank<r>.safetensors (written to a .tmp name and
renamed, so a kill leaves a whole file or none): its rows' prompt and completion tokens and masks, the
loss mask, the truncation flags, the sampler's log-probs and entropies, the advantages, the prompts'
indices and each reward function's values as reward/<name>, with the step, rank, group size and the
prompts' difficulty labels in the metadata.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from grpo.base import distributed as dist

# A stored rollout file, or its temporary form before the rename.
ROLLOUT_NAME = re.compile(r"step_(\d+)_rank(\d+)\.(safetensors|tmp)")


def rollout_tensors(result, group_size: int) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of this rank's rows of a step (a step's StepResult, grpo/algorithm/step.py)."""
    batch, rollout = result.batch, result.batch.rollout
    tensors = {
        "prompt_ids": rollout.prompt_ids, "prompt_mask": rollout.prompt_mask,
        "completion_ids": rollout.completion_ids, "completion_mask": rollout.completion_mask,
        "loss_mask": result.loss_mask, "truncated": rollout.truncated.to(torch.uint8), "logp": rollout.logp,
        "entropy": rollout.entropy, "advantages": result.advantages,
        "prompt_index": torch.tensor([e.index for e in batch.examples]),
        **{f"reward/{name}": values.flatten() for name, values in batch.parts.items()},
    }
    meta = {"step": result.step, "group_size": group_size, "rank": dist.rank(),
            "difficulty": [e.difficulty for e in batch.examples]}
    return tensors, meta


def write_rollout_file(run_dir: Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    folder = run_dir / "rollouts"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{meta['step']:06d}_rank{meta['rank']}.safetensors"     # ROLLOUT_NAME
    tensors = {k: v.detach().cpu().clone() for k, v in tensors.items()}           # no shared storage
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta)})
    os.replace(tmp, path)
    return path


def stored_files(run_dir: Path) -> dict[int, dict[int, Path]]:
    """{step: {rank: path}} of the complete rollout files in <run>/rollouts (none: {})."""
    found: dict[int, dict[int, Path]] = {}
    folder = run_dir / "rollouts"
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        match = ROLLOUT_NAME.fullmatch(path.name)
        if match and match[3] == "safetensors":
            found.setdefault(int(match[1]), {})[int(match[2])] = path
    return found


def prune_rollouts(run_dir: Path, step: int) -> None:
    """Delete every rank's stored rollout files (and leftover temporary ones) of steps > `step`."""
    folder = run_dir / "rollouts"
    for path in folder.iterdir() if folder.is_dir() else []:
        match = ROLLOUT_NAME.fullmatch(path.name)
        if match and int(match[1]) > step:
            path.unlink(missing_ok=True)
