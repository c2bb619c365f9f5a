"""Group-relative advantage estimators: rewards [P, G] -> advantages [P, G].

Every estimator sees the group structure in the tensor shape (row = one prompt's G completions).
A group whose rewards are all equal carries no learning signal and gets advantage exactly 0 in
every estimator (the seed notebook divided 0 by a random, possibly negative, epsilon).

Sources:
  grpo       Shao et al. 2024 (DeepSeekMath), eq. for outcome supervision: (r - mean) / std.
  dr_grpo    Liu et al. 2025, "Understanding R1-Zero-like Training": r - mean, no std.
  batch_std  (r - group mean) / std over the whole batch (used in REINFORCE++ style baselines).
  rloo       Ahmadian et al. 2024 / Kool et al. 2019: r_i - mean of the other G-1 rewards.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

from grpo import GrpoError

AdvantageName = Literal["grpo", "dr_grpo", "batch_std", "rloo"]


def _centered(rewards: Tensor) -> Tensor:
    """r - group mean, forced to exactly 0 in constant groups (float means can be off by an ulp)."""
    centered = rewards - rewards.mean(dim=-1, keepdim=True)
    return torch.where(_constant(rewards), torch.zeros_like(centered), centered)


def _constant(rewards: Tensor) -> Tensor:
    return rewards.amax(dim=-1, keepdim=True) == rewards.amin(dim=-1, keepdim=True)


def _scaled(rewards: Tensor, scale: Tensor) -> Tensor:
    """centered / scale, still exactly 0 in constant groups when scale is 0 (eps = 0 gives 0/0)."""
    centered = _centered(rewards)
    return torch.where(_constant(rewards), centered, centered / scale)


def grpo_advantages(rewards: Tensor, *, eps: float) -> Tensor:
    """(r - group mean) / (unbiased group std + eps)."""
    return _scaled(rewards, rewards.std(dim=-1, keepdim=True) + eps)


def dr_grpo_advantages(rewards: Tensor, *, eps: float) -> Tensor:
    """r - group mean; eps is unused (no division)."""
    return _centered(rewards)


def batch_std_advantages(rewards: Tensor, *, eps: float) -> Tensor:
    """(r - group mean) / (unbiased std of all P*G rewards + eps)."""
    return _scaled(rewards, rewards.std() + eps)


def rloo_advantages(rewards: Tensor, *, eps: float) -> Tensor:
    """r_i - mean of the other G-1 rewards of its group, i.e. G/(G-1) * (r_i - group mean)."""
    group_size = rewards.shape[-1]
    return _centered(rewards) * (group_size / (group_size - 1))


ADVANTAGES: dict[str, Callable[..., Tensor]] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "batch_std": batch_std_advantages,
    "rloo": rloo_advantages,
}


def compute_advantages(rewards: Tensor, estimator: str = "grpo", eps: float = 1e-4) -> Tensor:
    """Advantages [P, G] for rewards [P, G] with the named estimator.

    Raises GrpoError for G < 2 (a group of one has no baseline) or an unknown estimator.
    """
    if rewards.dim() != 2:
        raise GrpoError(f"rewards must have shape [P, G], got {tuple(rewards.shape)}")
    if rewards.shape[-1] < 2:
        raise GrpoError(f"group size must be at least 2 to form a group baseline, got {rewards.shape[-1]}")
    if estimator not in ADVANTAGES:
        raise GrpoError(f"unknown advantage estimator {estimator!r}; choose from {sorted(ADVANTAGES)}")
    if not rewards.is_floating_point():
        rewards = rewards.float()
    return ADVANTAGES[estimator](rewards, eps=eps)
