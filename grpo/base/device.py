"""The torch device a run computes on, from its --device, and the dtypes of --dtype / --rollout-dtype."""

from __future__ import annotations

import torch

from grpo import GrpoError
from grpo.base import distributed as dist

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}       # --dtype and --rollout-dtype names


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise GrpoError("--device cuda was asked for, but torch sees no CUDA device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return dist.local_device(torch.device(name))
