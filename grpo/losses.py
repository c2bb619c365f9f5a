"""The GRPO policy loss: clipped importance ratio times advantage, plus a KL penalty to a reference.

Per completion token t of completion i (GRPO paper, eq. 3; PPO-clip with asymmetric bounds as in DAPO):
    ratio    = exp(logp - old_logp)
    loss_t   = -min(ratio * A_i, clip(ratio, 1 - clip_eps_low, 1 + clip_eps_high) * A_i) + kl_beta * KL_t

Aggregations over the [B, T] token losses (|o_i| = number of completion tokens of row i):
    seq_mean_token_mean      sum_i [sum_t loss * mask / |o_i|] / num_seqs        (GRPO paper, seed)
    token_mean               sum loss * mask / num_tokens                         (DAPO)
    seq_mean_token_sum_norm  sum loss * mask / (num_seqs * max_len)               (Dr. GRPO)
The normalisers are arguments so that a trainer splitting a batch into micro-batches passes the
whole optimizer batch's values and the micro-batch losses add up exactly to the full-batch loss.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

from grpo import GrpoError
from grpo.kl import KL_ESTIMATORS, kl_k3, kl_per_token

AggregationName = Literal["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"]


def seq_mean_token_mean(tok_loss: Tensor, mask: Tensor, *, num_seqs: float, num_tokens: float,
                        max_len: float) -> Tensor:
    # An empty row (no completion tokens) divides 0 by 1 instead of 0 by 0.
    per_seq = (tok_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_seq.sum() / num_seqs


def token_mean(tok_loss: Tensor, mask: Tensor, *, num_seqs: float, num_tokens: float,
               max_len: float) -> Tensor:
    return (tok_loss * mask).sum() / num_tokens


def seq_mean_token_sum_norm(tok_loss: Tensor, mask: Tensor, *, num_seqs: float, num_tokens: float,
                            max_len: float) -> Tensor:
    return (tok_loss * mask).sum() / (num_seqs * max_len)


AGGREGATIONS: dict[str, Callable[..., Tensor]] = {
    "seq_mean_token_mean": seq_mean_token_mean,
    "token_mean": token_mean,
    "seq_mean_token_sum_norm": seq_mean_token_sum_norm,
}


def _masked_mean(values: Tensor, mask: Tensor, num_active: Tensor) -> Tensor:
    return (values * mask).sum() / num_active


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    kl_beta: float = 0.0,
    kl_estimator: str = "k3",
    aggregation: str = "seq_mean_token_mean",
    num_seqs: float | None = None,
    num_tokens: float | None = None,
    max_len: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Scalar loss and detached statistics for one (micro-)batch.

    logp, old_logp, ref_logp, mask: [B, T]; advantages: [B]. ref_logp may be None when kl_beta == 0.
    num_seqs / num_tokens / max_len default to this batch's B, mask.sum() and T.

    Statistics (0-dim tensors, means over this batch's completion tokens):
      clip/low_frac, clip/high_frac  share of tokens whose clip bound is active for the sign of A
                                     (A < 0 and ratio < 1 - eps_low; A > 0 and ratio > 1 + eps_high);
                                     those tokens get zero policy gradient
      ratio/mean, ratio/max          importance ratio pi_theta / pi_old
      kl_old                         k3 estimate of KL(pi_old || pi_theta) (tokens come from pi_old)
      kl/k1, kl/k2, kl/k3            KL to the reference (only when ref_logp is given)
      tokens                         number of completion tokens the means are over
    """
    if aggregation not in AGGREGATIONS:
        raise GrpoError(f"unknown aggregation {aggregation!r}; choose from {sorted(AGGREGATIONS)}")
    if kl_estimator not in KL_ESTIMATORS:
        raise GrpoError(f"unknown KL estimator {kl_estimator!r}; choose from {sorted(KL_ESTIMATORS)}")
    if not kl_beta >= 0.0:
        raise GrpoError(f"kl_beta must be >= 0, got {kl_beta}")
    if kl_beta != 0.0 and ref_logp is None:
        raise GrpoError("kl_beta > 0 needs reference log-probs (ref_logp is None)")
    # Zero every log-prob outside the mask before any exp: padding may hold anything (even -inf),
    # and inf * 0 would be NaN. torch.where also sends those positions exactly zero gradient.
    active = mask > 0
    logp, old_logp = torch.where(active, logp, 0.0), torch.where(active, old_logp, 0.0)
    if ref_logp is not None:
        ref_logp = torch.where(active, ref_logp, 0.0)
    mask = mask.to(logp.dtype)
    num_seqs = logp.shape[0] if num_seqs is None else num_seqs
    num_tokens = mask.sum().clamp(min=1) if num_tokens is None else max(num_tokens, 1)
    max_len = logp.shape[1] if max_len is None else max_len

    adv = advantages.to(logp.dtype).unsqueeze(-1)                        # [B, 1]
    ratio = torch.exp(logp - old_logp)
    clipped_ratio = ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high)
    tok_loss = -torch.minimum(ratio * adv, clipped_ratio * adv)
    if kl_beta != 0.0:
        tok_loss = tok_loss + kl_beta * kl_per_token(logp, ref_logp, kl_estimator)
    loss = AGGREGATIONS[aggregation](tok_loss, mask, num_seqs=num_seqs, num_tokens=num_tokens,
                                     max_len=max_len)

    with torch.no_grad():
        num_active = mask.sum()
        denom = num_active.clamp(min=1)
        low = ((ratio < 1.0 - clip_eps_low) & (adv < 0)).to(mask.dtype)
        high = ((ratio > 1.0 + clip_eps_high) & (adv > 0)).to(mask.dtype)
        stats = {
            "clip/low_frac": _masked_mean(low, mask, denom),
            "clip/high_frac": _masked_mean(high, mask, denom),
            "ratio/mean": _masked_mean(ratio, mask, denom),
            "ratio/max": torch.where(active, ratio, torch.zeros_like(ratio)).max(),
            # The tokens were sampled from pi_old, so pi_old plays the sampling policy in k3.
            "kl_old": _masked_mean(kl_k3(old_logp, logp), mask, denom),
            "tokens": num_active,
        }
        if ref_logp is not None:
            for name, estimator in KL_ESTIMATORS.items():
                stats[f"kl/{name}"] = _masked_mean(estimator(logp, ref_logp), mask, denom)
    return loss, stats
