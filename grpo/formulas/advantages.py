"""Group-relative advantage estimators: rewards [P, G] -> advantages [P, G].

Every estimator sees the group structure in the tensor shape (row = one prompt's G completions) and
has the one signature `fn(rewards, *, eps, lengths)`, where lengths [P, G] holds each completion's
token count (EOS included) or is None; estimators that do not weigh by length ignore it.
A group whose rewards are all equal carries no learning signal and gets advantage exactly 0 in
every estimator (the seed notebook divided 0 by a random, possibly negative, epsilon).

Sources:
  grpo          Shao et al. 2024 (DeepSeekMath), eq. for outcome supervision: (r - mean) / std.
  dr_grpo       Liu et al. 2025, "Understanding R1-Zero-like Training": r - mean, no std.
  batch_std     (r - group mean) / std of the raw rewards over the whole batch.
  rloo          Ahmadian et al. 2024 / Kool et al. 2019: r_i - mean of the other G-1 rewards.
  reinforce_pp  Hu et al. 2025, "REINFORCE++": group-centred rewards whitened over the batch.
                Departure: whitened per completion, where verl whitens per response token.
  opo           Hao et al. 2025, "On-Policy RL with Optimal Reward Baseline": length-weighted baseline.
  gpg           Chu et al. 2025, "GPG: A Simple and Strong Reinforcement Learning Baseline for Model
                Reasoning": r - group mean, rescaled by P / (groups with signal).

Several reward functions: the estimators above see their weighted sum (sum, then normalise).
`normalize_then_sum` is GDPO's alternative (Liu et al. 2026, NVIDIA, arXiv 2601.05242): normalise each reward
within its group, sum, then whiten over the batch. It takes the rewards one [P, G] tensor per function.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

from grpo import GrpoError

AdvantageName = Literal["grpo", "dr_grpo", "batch_std", "rloo", "reinforce_pp", "opo", "gpg"]


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


def grpo_advantages(rewards: Tensor, *, eps: float, lengths: Tensor | None) -> Tensor:
    """(r - group mean) / (unbiased group std + eps); lengths is unused."""
    return _scaled(rewards, rewards.std(dim=-1, keepdim=True) + eps)


def dr_grpo_advantages(rewards: Tensor, *, eps: float, lengths: Tensor | None) -> Tensor:
    """r - group mean; eps and lengths are unused (no division, no weighting)."""
    return _centered(rewards)


def batch_std_advantages(rewards: Tensor, *, eps: float, lengths: Tensor | None) -> Tensor:
    """(r - group mean) / (unbiased std of all P*G rewards + eps); lengths is unused."""
    return _scaled(rewards, rewards.std() + eps)


def rloo_advantages(rewards: Tensor, *, eps: float, lengths: Tensor | None) -> Tensor:
    """r_i - mean of the other G-1 rewards of its group, i.e. G/(G-1) * (r_i - group mean); lengths unused."""
    group_size = rewards.shape[-1]
    return _centered(rewards) * (group_size / (group_size - 1))


def reinforce_pp_advantages(rewards: Tensor, *, eps: float, lengths: Tensor | None) -> Tensor:
    """REINFORCE++-baseline (Hu et al. 2025, "REINFORCE++"): group mean out, then batch whitening.

        c = r - group mean                                   [P, G]
        A = (c - mean(c)) / (std(c) + eps)                   mean, unbiased std over all P*G values

    mean(c) is 0 in exact arithmetic (each group's centred values sum to 0); it is kept so the code
    reads as the formula, and is only float rounding. Constant groups count in std(c) with their
    zeros (so the whole batch's A has std ~1) but get exactly 0, also when every group is constant
    (std(c) = 0, and 0/0 with eps = 0, is never returned). lengths is unused.
    Departure: verl whitens token-weighted (masked_whiten over response tokens), so there long
    completions weigh more in mean and std; here each completion counts once.
    """
    centered = _centered(rewards)
    whitened = (centered - centered.mean()) / (centered.std() + eps)
    return torch.where(_constant(rewards), torch.zeros_like(whitened), whitened)


def opo_advantages(rewards: Tensor, *, eps: float, lengths: Tensor | None) -> Tensor:
    """OPO (Hao et al. 2025, "On-Policy RL with Optimal Reward Baseline"): length-weighted baseline.

        b = sum_i |o_i| r_i / sum_i |o_i|       over the G completions of a group
        A_i = r_i - b

    |o_i| = lengths [P, G], token counts with EOS. The paper's optimal baseline weighs each reward by
    its squared gradient norm, taken as proportional to length. A is not zero-sum within a group;
    sum_i |o_i| A_i is. Constant groups get exactly 0. eps is unused.
    Raises GrpoError when lengths is None.
    """
    if lengths is None:
        raise GrpoError("advantage estimator 'opo' weighs rewards by completion length; pass lengths [P, G]")
    weights = lengths.to(rewards.dtype)
    # Token counts are whole numbers, so a group's total is >= 1 unless every completion in it is empty;
    # then the numerator is 0 as well (b = 0) and the advantages touch no tokens: the clamp only keeps 0/0 out.
    baseline = (weights * rewards).sum(-1, keepdim=True) / weights.sum(-1, keepdim=True).clamp(min=1)
    advantages = rewards - baseline
    return torch.where(_constant(rewards), torch.zeros_like(advantages), advantages)


def gpg_advantages(rewards: Tensor, *, eps: float, lengths: Tensor | None) -> Tensor:
    """GPG: group-mean baseline rescaled by the share of groups with signal.

    Chu et al. 2025, "GPG: A Simple and Strong Reinforcement Learning Baseline for Model Reasoning":

        A = (r - group mean) * P / max(P_valid, 1)     P_valid = groups whose rewards are not all equal

    Equivalently B / (B - M) with B = P*G completions and M of them in constant groups: the batch-mean
    loss is rescaled so the groups with signal are not diluted by zero-advantage ones. No std division.
    Constant groups get exactly 0; a batch of only constant groups gives all 0. eps and lengths are unused.
    """
    num_prompts = rewards.shape[0]
    num_valid = (~_constant(rewards)).sum().to(rewards.dtype)
    # max(P_valid, 1): with no valid group every centred value is already 0, and 0 * P / 1 stays 0.
    return _centered(rewards) * (num_prompts / num_valid.clamp(min=1))


ADVANTAGES: dict[str, Callable[..., Tensor]] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "batch_std": batch_std_advantages,
    "rloo": rloo_advantages,
    "reinforce_pp": reinforce_pp_advantages,
    "opo": opo_advantages,
    "gpg": gpg_advantages,
}


def compute_advantages(rewards: Tensor, estimator: str = "grpo", eps: float = 1e-4,
                       lengths: Tensor | None = None) -> Tensor:
    """Advantages [P, G] for rewards [P, G] (and completion lengths [P, G], or None) with the named estimator.

    Raises GrpoError for G < 2 (a group of one has no baseline), an unknown estimator, rewards not
    [P, G], lengths of another shape than rewards, or no lengths for an estimator that needs them (opo).
    """
    if rewards.dim() != 2:
        raise GrpoError(f"rewards must have shape [P, G], got {tuple(rewards.shape)}")
    if rewards.shape[-1] < 2:
        raise GrpoError(f"group size must be at least 2 to form a group baseline, got {rewards.shape[-1]}")
    if estimator not in ADVANTAGES:
        raise GrpoError(f"unknown advantage estimator {estimator!r}; choose from {sorted(ADVANTAGES)}")
    if lengths is not None and lengths.shape != rewards.shape:
        raise GrpoError(f"lengths must have the rewards' shape {tuple(rewards.shape)}, got {tuple(lengths.shape)}")
    if not rewards.is_floating_point():
        rewards = rewards.float()
    return ADVANTAGES[estimator](rewards, eps=eps, lengths=lengths)


def normalize_then_sum(parts: dict[str, Tensor], weights: dict[str, float] | None = None,
                       eps: float = 1e-4) -> Tensor:
    """GDPO advantages [P, G] from several reward functions' rewards, parts[name] [P, G].

    Liu et al. 2026, "GDPO: Group reward-Decoupled Normalization Policy Optimization for Multi-reward RL
    Optimization" (arXiv 2601.05242; NVlabs/GDPO's TRL patch, TRL's multi_objective_aggregation=
    "normalize_then_sum"):
        A_k = (r_k - group mean) / (unbiased group std + eps)      per reward k: grpo_advantages
        S   = sum_k w_k A_k                                        weights: name -> w_k; None: all 1
        A   = (S - mean(S)) / (std(S) + eps)                       mean, unbiased std over all P*G values
    Summing the rewards first maps distinct reward combinations to one advantage: with G = 2 and two
    binary rewards, totals (0, 1) and (0, 2) both give (-1/sqrt 2, 1/sqrt 2); GDPO keeps them apart
    (the second is twice the first before the batch step). A reward constant within a group adds exactly 0
    there; a group whose S is constant (every reward constant, or their terms cancel) gets exactly 0, as
    in reinforce_pp (mean(S) is 0 up to rounding: each A_k row sums to 0).
    Raises GrpoError for no parts, parts of different shapes, or weights naming other rewards than parts.
    """
    if not parts:
        raise GrpoError("normalize_then_sum needs at least one reward function's rewards")
    shapes = {name: tuple(r.shape) for name, r in parts.items()}
    if len(set(shapes.values())) != 1:
        raise GrpoError(f"every reward function's rewards must have one shape [P, G], got {shapes}")
    if weights is not None and set(weights) != set(parts):
        raise GrpoError(f"reward weights name {sorted(weights)}, the rewards are {sorted(parts)}")
    summed = sum((1.0 if weights is None else weights[name]) * compute_advantages(rewards, "grpo", eps)
                 for name, rewards in parts.items())
    whitened = (summed - summed.mean()) / (summed.std() + eps)
    return torch.where(_constant(summed), torch.zeros_like(whitened), whitened)
