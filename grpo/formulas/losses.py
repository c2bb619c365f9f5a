"""The policy loss: a policy objective per token, a KL penalty to a reference, an entropy bonus, and
one aggregation over the tokens.

Per completion token t of completion i (GRPO paper, eq. 3, with the objective a registry entry of
grpo/formulas/objectives.py; the default `clip` is PPO-clip with asymmetric bounds as in DAPO):
    loss_t = keep_t * objective_t + kl_beta * KL_t - entropy_coef * H_t
where keep_t = 1 unless --top-entropy-quantile rho < 1 keeps the policy term only on the top-rho share
of tokens by sampling entropy (Wang et al. 2025; the KL term stays on every token), and H_t is the
learner's entropy at t (differentiable). With token_mean the bonus is exactly -coef * mean entropy.

Aggregations over the [B, T] token losses (|o_i| = number of completion tokens of row i):
    seq_mean_token_mean      sum_i [sum_t loss * mask / |o_i|] / num_seqs        (GRPO paper, seed)
    token_mean               sum loss * mask / num_tokens                         (DAPO)
    seq_mean_token_sum_norm  sum loss * mask / (num_seqs * max_len)               (Dr. GRPO)
The normalisers are arguments so that a trainer splitting a batch into micro-batches passes the
whole optimizer batch's values and the micro-batch losses add up exactly to the full-batch loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

from grpo import GrpoError
from grpo.formulas.kl import KL_ESTIMATORS, KLName, kl_k3, kl_per_token
from grpo.formulas.objectives import (OBJECTIVES, SELECTIONS, ObjectiveName, ObjectiveParams, masked_mean, token_covariance,
                             top_entropy_keep)

AggregationName = Literal["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"]


@dataclass(frozen=True, kw_only=True)
class LossSettings(ObjectiveParams):
    """Every setting of policy_loss: the objectives' (ObjectiveParams) and these. The one declaration
    of the loss's settings: each field is the TrainConfig field of the same name, which holds its
    default and --help text (grpo.algorithm.update.loss_settings builds this from a config by these names; the
    counterfactual's LOSS_FIELDS are these names too)."""
    objective: ObjectiveName
    aggregation: AggregationName
    kl_beta: float
    kl_estimator: KLName
    entropy_coef: float
    top_entropy_quantile: float


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


def loss_token_mask(mask: Tensor, truncated: Tensor, mask_truncated: bool) -> Tensor:
    """The tokens the policy loss covers: mask [N, T] (float 0/1; 0 = padding after EOS), with every token
    of a truncated completion (truncated [N], bool) zeroed under DAPO's overlong filtering (--mask-truncated:
    Yu et al. 2025, a truncated completion carries no loss at all)."""
    return mask * (~truncated).to(mask.dtype)[:, None] if mask_truncated else mask


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    settings: LossSettings,
    *,
    num_seqs: float | None = None,
    num_tokens: float | None = None,
    max_len: float | None = None,
    generator: torch.Generator | None = None,
    cov_selected: Tensor | None = None,
    entropy: Tensor | None = None,
    sampling_entropy: Tensor | None = None,
    entropy_keep: Tensor | None = None,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Scalar loss and detached statistics for one (micro-)batch.

    logp, old_logp, ref_logp, mask: [B, T]; advantages: [B] (one per completion) or [B, T].
    ref_logp may be None when kl_beta == 0. settings: the objective, its parameters (read by the
    objectives that use them), the aggregation, the KL and entropy terms. num_seqs / num_tokens /
    max_len default to this batch's B, mask.sum() and T.

    Batch-level selections: kl_cov / clip_cov pick tokens by Cov(A, logp) and --top-entropy-quantile by
    sampling entropy. A caller that splits a batch into micro-batches passes the whole batch's choice
    (cov_selected, entropy_keep: [B, T] bool rows of it); otherwise they are made on this batch
    (cov from logp detached, clip_cov's draw with `generator`; the quantile of `sampling_entropy`).
    entropy: the learner's per-token entropy [B, T], needed when entropy_coef > 0.
    token_weights: detached per-token weights [B, T] on the policy term only (the KL and entropy terms
    and the aggregation's normalisers are left as they are): the off-policy corrections'
    importance weights and masks (grpo/formulas/offpolicy.py), applied as TRL applies its
    vllm_importance_sampling_correction. A token of weight 0 counts as cut in grad/cut_frac.

    Statistics (0-dim tensors, means over this batch's completion tokens unless named in
    objectives.SEQUENCE_STATS): the objective's own (clip/low_frac, clip/high_frac, ...), and
      grad/cut_frac            share of tokens with A != 0 whose policy term gets no gradient (clip
                               bound, detached, or outside the entropy selection)
      ratio/mean, ratio/max    importance ratio pi_theta / pi_old
      kl_old                   k3 estimate of KL(pi_old || pi_theta) (tokens come from pi_old)
      kl/k1, kl/k2, kl/k3, kl/k3_is   KL to the reference (only when ref_logp is given)
      entropy/kept_frac        share of tokens the entropy selection keeps (only when rho < 1)
      tokens, seqs             completion tokens and non-empty completions the means are over
    """
    objective, aggregation, kl_beta, kl_estimator = (settings.objective, settings.aggregation, settings.kl_beta,
                                                     settings.kl_estimator)
    entropy_coef, top_entropy_quantile = settings.entropy_coef, settings.top_entropy_quantile
    if aggregation not in AGGREGATIONS:
        raise GrpoError(f"unknown aggregation {aggregation!r}; choose from {sorted(AGGREGATIONS)}")
    if kl_estimator not in KL_ESTIMATORS:
        raise GrpoError(f"unknown KL estimator {kl_estimator!r}; choose from {sorted(KL_ESTIMATORS)}")
    if objective not in OBJECTIVES:
        raise GrpoError(f"unknown objective {objective!r}; choose from {sorted(OBJECTIVES)}")
    if not kl_beta >= 0.0:
        raise GrpoError(f"kl_beta must be >= 0, got {kl_beta}")
    if kl_beta != 0.0 and ref_logp is None:
        raise GrpoError("kl_beta > 0 needs reference log-probs (ref_logp is None)")
    if entropy_coef != 0.0 and entropy is None:
        raise GrpoError("entropy_coef != 0 needs the learner's token entropy (entropy is None)")
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

    adv = advantages.to(logp.dtype)
    adv = (adv.unsqueeze(-1) if adv.dim() == 1 else adv).expand_as(logp)       # [B, T]
    if top_entropy_quantile < 1.0 and entropy_keep is None:
        if sampling_entropy is None:
            raise GrpoError("top_entropy_quantile < 1 needs the sampling entropy (or a precomputed entropy_keep)")
        entropy_keep = top_entropy_keep(sampling_entropy, mask, top_entropy_quantile)
    if objective in SELECTIONS and cov_selected is None:
        cov_selected = SELECTIONS[objective](token_covariance(adv, logp, mask), mask, settings, generator)
    # The policy term covers the kept tokens: a token-level objective's loss is zeroed elsewhere, a
    # sequence-level one (gmpo) forms its sequence value from the kept tokens only.
    tok_loss, cut, objective_stats, per_sequence = OBJECTIVES[objective](logp, old_logp, adv, mask, settings,
                                                                         cov_selected, entropy_keep)
    if entropy_keep is not None:
        tok_loss = tok_loss if per_sequence else tok_loss * entropy_keep.to(tok_loss.dtype)
        cut = cut | ~entropy_keep
    if token_weights is not None:
        tok_loss = tok_loss * token_weights.detach().to(tok_loss.dtype)
        cut = cut | (token_weights == 0)
    if kl_beta != 0.0:
        tok_loss = tok_loss + kl_beta * kl_per_token(logp, ref_logp, kl_estimator, old_logp)
    if entropy_coef != 0.0:
        tok_loss = tok_loss - entropy_coef * torch.where(active, entropy, 0.0)
    loss = AGGREGATIONS[aggregation](tok_loss, mask, num_seqs=num_seqs, num_tokens=num_tokens,
                                     max_len=max_len)

    with torch.no_grad():
        ratio = torch.exp(logp - old_logp)
        stats = {
            **objective_stats,
            "grad/cut_frac": masked_mean((cut & (adv != 0)).to(mask.dtype), mask),
            "ratio/mean": masked_mean(ratio, mask),
            "ratio/max": torch.where(active, ratio, torch.zeros_like(ratio)).max(),
            # The tokens were sampled from pi_old, so pi_old plays the sampling policy in k3.
            "kl_old": masked_mean(kl_k3(old_logp, logp), mask),
            "tokens": mask.sum(),
            "seqs": (mask.sum(-1) > 0).sum().to(mask.dtype),
        }
        if entropy_keep is not None:
            stats["entropy/kept_frac"] = masked_mean(entropy_keep.to(mask.dtype), mask)
        if ref_logp is not None:
            for name, estimator in KL_ESTIMATORS.items():
                stats[f"kl/{name}"] = masked_mean(estimator(logp, ref_logp, old_logp), mask)
    return loss, stats
