"""Policy objectives of the GRPO family: one pure function per paper, in the registry OBJECTIVES.

Every objective maps (logp, old_logp, advantages, mask) [B, T] to a per-token policy loss [B, T], a
boolean `cut` [B, T] marking the tokens whose policy-gradient term it sets to zero (a clip bound, a
detached token), and its own statistics. `losses.policy_loss` adds the KL and entropy terms around it
and applies one aggregation, so every objective composes with every aggregation, estimator and KL.
Notation: r = exp(logp - old_logp) per token, A the advantage (broadcast over a completion's tokens),
sg = stop-gradient, eps_low / eps_high = --clip-eps-low / --clip-eps-high.

  clip      PPO / GRPO (Schulman et al. 2017; Shao et al. 2024): -min(r A, clip(r, 1-eps_low, 1+eps_high) A).
            --dual-clip c (Ye et al. 2020, verl's clip_ratio_c): for A < 0 the loss is capped at -c A.
            --delta d (INTELLECT-2, Prime Intellect 2025): the unclipped branch uses min(r, d).
  gspo      GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"): one ratio per sequence,
            s_i = exp(mean over i's tokens of (logp - old_logp)), clipped at [1-eps_low, 1+eps_high], in
            the token form s_i,t = sg(s_i) r_t / sg(r_t): value s_i, gradient s_i grad logp_t on every
            token. The paper's eps are ~1e-4 scale (3e-4 / 4e-4), not 0.2: a sequence ratio moves far
            less than a token's. With seq_mean_token_mean and a sequence-constant A this is GSPO exactly.
  cispo     CISPO (MiniMax-M1, 2025): -sg(clip(r, 1-eps_low, 1+eps_high)) A logp: the clipped ratio only
            weights the REINFORCE term, so every token keeps a gradient (the paper sets no lower bound:
            use a large --clip-eps-low). The loss value is not comparable with clip's; its gradient is.
  sapo      SAPO (Gao et al. 2025, "Soft Adaptive Policy Optimization"): -(4/tau) sigmoid(tau (r - 1)) A
            with tau = --sapo-tau-pos for A > 0 and --sapo-tau-neg for A <= 0: a soft trust region whose
            gradient weight 4 s (1 - s) (s the sigmoid) is 1 on-policy and fades off-policy.
  gmpo      GMPO (Zhao et al. 2025, "Geometric-Mean Policy Optimization"): -A_i times the geometric mean
            of the token ratios of sequence i, each clipped in log space at [-eps_low, eps_high] on the
            side the sign of A chooses (the paper's range is e^+-0.4: use eps 0.4). A sequence-level
            loss: every token of i carries it, so seq_mean_token_mean averages it over sequences. A
            token selection (`keep`, e.g. top-entropy) narrows the geometric mean to the kept tokens.
  gpg       GPG (Chu et al. 2025) / REINFORCE: -A logp, no ratio, no clip.
  kl_cov    KL-Cov (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs"): -r A, plus
            --kl-cov-coef |log r| on the top --kl-cov-ratio share of tokens by Cov(A, logp). No clip.
            On-policy (r = 1) the penalty's gradient is 0: it acts from the second mini-batch / epoch on.
  clip_cov  Clip-Cov (same paper): the clip loss, with a --clip-cov-ratio share of the tokens whose
            Cov(A, logp) lies in (--clip-cov-lb, --clip-cov-ub), drawn at random, detached.

Cov(A, logp)_t = (A_t - mean A)(logp_t - mean logp), means over the batch's completion tokens, from
detached log-probs. Departure from verl: tokens the ratio already clips are not excluded from clip_cov's
candidates (they get no gradient either way). The trainer selects over a whole mini-batch with
pi_old's log-probs, so the selection does not depend on the micro-batch split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, NamedTuple

import torch
from torch import Tensor

ObjectiveName = Literal["clip", "gspo", "cispo", "sapo", "gmpo", "gpg", "kl_cov", "clip_cov"]


@dataclass(frozen=True, kw_only=True)
class ObjectiveParams:
    """The objectives' and token selections' hyper-parameters (each objective reads the ones it needs).
    The loss's other settings extend it in losses.LossSettings, the one declaration of the loss's
    settings; the field names are TrainConfig's, whose defaults and --help text they take (no defaults here)."""
    clip_eps_low: float
    clip_eps_high: float
    dual_clip: float | None
    delta: float | None
    sapo_tau_pos: float
    sapo_tau_neg: float
    kl_cov_ratio: float
    kl_cov_coef: float
    clip_cov_ratio: float
    clip_cov_lb: float
    clip_cov_ub: float


class ObjectiveOutput(NamedTuple):
    loss: Tensor              # [B, T] policy loss per token (aggregated by the caller)
    cut: Tensor               # [B, T] bool: the objective gives this token's policy term zero gradient
    stats: dict[str, Tensor]  # 0-dim, detached: token means (or sequence means, see SEQUENCE_STATS)
    per_sequence: bool = False  # the loss is one value per completion, repeated on each of its tokens


# Statistics that are means over sequences, not tokens (combined across micro-batches by sequence count).
SEQUENCE_STATS = frozenset({"ratio/seq_mean", "clip/seq_frac"})


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of values where mask = 1; 0 for an empty mask (never 0/0)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def _sequence_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Per row, the mean over its completion tokens [B]; an empty row gives 0 (divides by 1)."""
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def _sequences_mean(per_seq: Tensor, mask: Tensor) -> Tensor:
    """Mean over the rows that have at least one completion token."""
    return masked_mean(per_seq.float(), (mask.sum(-1) > 0).to(mask.dtype))


def clip_objective(logp, old_logp, adv, mask, p: ObjectiveParams, selected=None, keep=None) -> ObjectiveOutput:
    ratio = torch.exp(logp - old_logp)
    clipped_ratio = ratio.clamp(1.0 - p.clip_eps_low, 1.0 + p.clip_eps_high)
    capped_ratio = ratio if p.delta is None else ratio.clamp(max=p.delta)
    loss = -torch.minimum(capped_ratio * adv, clipped_ratio * adv)
    low = (ratio < 1.0 - p.clip_eps_low) & (adv < 0)
    high = (ratio > 1.0 + p.clip_eps_high) & (adv > 0)
    # A token keeps a gradient when the branch the min picks still depends on the ratio.
    picks_capped = capped_ratio * adv <= clipped_ratio * adv
    capped_live = torch.ones_like(low) if p.delta is None else ratio < p.delta
    clipped_live = (ratio > 1.0 - p.clip_eps_low) & (ratio < 1.0 + p.clip_eps_high)
    cut = ~torch.where(picks_capped, capped_live, clipped_live) & (adv != 0)
    stats = {"clip/low_frac": masked_mean(low.to(mask.dtype), mask),
             "clip/high_frac": masked_mean(high.to(mask.dtype), mask)}
    if p.delta is not None:
        delta_cut = picks_capped & (ratio > p.delta) & (adv != 0)
        stats["clip/delta_frac"] = masked_mean(delta_cut.to(mask.dtype), mask)
    if p.dual_clip is not None:
        dual_cut = (adv < 0) & (-p.dual_clip * adv < loss)
        loss = torch.where(adv < 0, torch.minimum(loss, -p.dual_clip * adv), loss)
        cut = cut | dual_cut
        stats["clip/dual_frac"] = masked_mean(dual_cut.to(mask.dtype), mask)
    return ObjectiveOutput(loss, cut, stats)


def gspo_objective(logp, old_logp, adv, mask, p: ObjectiveParams, selected=None, keep=None) -> ObjectiveOutput:
    seq_ratio = torch.exp(_sequence_mean(logp - old_logp, mask))                       # [B]
    token_ratio = seq_ratio.detach()[:, None] * torch.exp(logp - logp.detach())        # value s_i
    clipped_ratio = token_ratio.clamp(1.0 - p.clip_eps_low, 1.0 + p.clip_eps_high)
    loss = -torch.minimum(token_ratio * adv, clipped_ratio * adv)
    cut = ((token_ratio > 1.0 + p.clip_eps_high) & (adv > 0)) | ((token_ratio < 1.0 - p.clip_eps_low) & (adv < 0))
    clipped_seq = (cut & (mask > 0)).any(-1)
    return ObjectiveOutput(loss, cut, {"ratio/seq_mean": _sequences_mean(seq_ratio.detach(), mask),
                                       "clip/seq_frac": _sequences_mean(clipped_seq, mask)})


def cispo_objective(logp, old_logp, adv, mask, p: ObjectiveParams, selected=None, keep=None) -> ObjectiveOutput:
    ratio = torch.exp(logp - old_logp)
    weight = ratio.clamp(1.0 - p.clip_eps_low, 1.0 + p.clip_eps_high).detach()
    clipped = (ratio < 1.0 - p.clip_eps_low) | (ratio > 1.0 + p.clip_eps_high)
    return ObjectiveOutput(-weight * adv * logp, torch.zeros_like(clipped),
                           {"is_weight/clip_frac": masked_mean(clipped.to(mask.dtype), mask)})


def sapo_objective(logp, old_logp, adv, mask, p: ObjectiveParams, selected=None, keep=None) -> ObjectiveOutput:
    ratio = torch.exp(logp - old_logp)
    tau = torch.where(adv > 0, torch.full_like(ratio, p.sapo_tau_pos), torch.full_like(ratio, p.sapo_tau_neg))
    gate = torch.sigmoid(tau * (ratio - 1.0))
    loss = -(4.0 / tau) * gate * adv
    # d loss / d logp = -4 gate (1 - gate) r A: the gate's factor is 1 at r = 1.
    weight = (4.0 * gate * (1.0 - gate)).detach()
    return ObjectiveOutput(loss, torch.zeros_like(mask, dtype=torch.bool),
                           {"sapo/grad_weight_mean": masked_mean(weight, mask)})


def gmpo_objective(logp, old_logp, adv, mask, p: ObjectiveParams, selected=None, keep=None) -> ObjectiveOutput:
    log_ratio = logp - old_logp
    sign = torch.sign(adv)
    clamped = log_ratio.clamp(-p.clip_eps_low, p.clip_eps_high)
    # min(sign * x, sign * clip(x)) clips only the side that would grow the objective.
    token_log_ratio = sign * torch.minimum(sign * log_ratio, sign * clamped)
    in_mean = mask if keep is None else mask * keep.to(mask.dtype)       # a token selection narrows the mean
    seq_ratio = torch.exp(_sequence_mean(token_log_ratio, in_mean))                     # geometric mean
    seq_adv = _sequence_mean(adv, in_mean)
    loss = (-seq_adv * seq_ratio)[:, None].expand_as(logp)
    cut = ((log_ratio > p.clip_eps_high) & (adv > 0)) | ((log_ratio < -p.clip_eps_low) & (adv < 0))
    clipped_seq = (cut & (mask > 0)).any(-1)
    return ObjectiveOutput(loss, cut, {"ratio/seq_mean": _sequences_mean(seq_ratio.detach(), mask),
                                       "clip/seq_frac": _sequences_mean(clipped_seq, mask)}, per_sequence=True)


def gpg_objective(logp, old_logp, adv, mask, p: ObjectiveParams, selected=None, keep=None) -> ObjectiveOutput:
    return ObjectiveOutput(-adv * logp, torch.zeros_like(mask, dtype=torch.bool), {})


def kl_cov_objective(logp, old_logp, adv, mask, p: ObjectiveParams, selected=None, keep=None) -> ObjectiveOutput:
    log_ratio = logp - old_logp
    loss = -adv * torch.exp(log_ratio)
    loss = torch.where(selected, loss + p.kl_cov_coef * log_ratio.abs(), loss)
    return ObjectiveOutput(loss, torch.zeros_like(selected),
                           {"cov/selected_frac": masked_mean(selected.to(mask.dtype), mask)})


def clip_cov_objective(logp, old_logp, adv, mask, p: ObjectiveParams, selected=None, keep=None) -> ObjectiveOutput:
    loss, cut, stats, _ = clip_objective(logp, old_logp, adv, mask, p)
    return ObjectiveOutput(torch.where(selected, loss.detach(), loss), cut | selected,
                           {**stats, "cov/selected_frac": masked_mean(selected.to(mask.dtype), mask)})


OBJECTIVES: dict[str, Callable[..., ObjectiveOutput]] = {
    "clip": clip_objective,
    "gspo": gspo_objective,
    "cispo": cispo_objective,
    "sapo": sapo_objective,
    "gmpo": gmpo_objective,
    "gpg": gpg_objective,
    "kl_cov": kl_cov_objective,
    "clip_cov": clip_cov_objective,
}


# ---------------------------------------------------------------- token selections


def token_covariance(advantages: Tensor, logp: Tensor, mask: Tensor) -> Tensor:
    """Cov(A, logp) per token [B, T]: (A_t - mean A)(logp_t - mean logp) over the masked tokens; 0 elsewhere."""
    adv = advantages.expand_as(logp)
    centered_adv = adv - masked_mean(adv, mask)
    centered_logp = logp.detach() - masked_mean(logp.detach(), mask)
    return centered_adv * centered_logp * mask


def kl_cov_selection(cov: Tensor, mask: Tensor, p: ObjectiveParams, generator=None) -> Tensor:
    """The top max(1, floor(kl_cov_ratio * tokens)) tokens by covariance [B, T] bool."""
    valid = mask.flatten() > 0
    selected = torch.zeros(cov.numel(), dtype=torch.bool, device=cov.device)
    if valid.any():
        count = max(1, int(p.kl_cov_ratio * int(valid.sum())))
        scores = cov.flatten().masked_fill(~valid, float("-inf"))
        selected[torch.topk(scores, count).indices] = True
    return selected.view_as(cov) & (mask > 0)


def clip_cov_selection(cov: Tensor, mask: Tensor, p: ObjectiveParams, generator=None) -> Tensor:
    """max(1, floor(clip_cov_ratio * tokens)) tokens drawn (with `generator`) among those whose
    covariance lies strictly inside (clip_cov_lb, clip_cov_ub); fewer if fewer qualify. [B, T] bool."""
    flat_cov, valid = cov.flatten(), mask.flatten() > 0
    candidates = torch.nonzero(valid & (flat_cov > p.clip_cov_lb) & (flat_cov < p.clip_cov_ub)).squeeze(-1)
    selected = torch.zeros(cov.numel(), dtype=torch.bool, device=cov.device)
    if len(candidates):
        count = min(max(1, int(p.clip_cov_ratio * int(valid.sum()))), len(candidates))
        order = torch.randperm(len(candidates), generator=generator).to(candidates.device)
        selected[candidates[order[:count]]] = True
    return selected.view_as(cov)


# Objectives that act on a subset of tokens chosen over the batch.
SELECTIONS: dict[str, Callable[..., Tensor]] = {"kl_cov": kl_cov_selection, "clip_cov": clip_cov_selection}


def top_entropy_keep(entropy: Tensor, mask: Tensor, quantile: float) -> Tensor:
    """Tokens whose sampling entropy is among the top `quantile` share of the masked tokens [B, T] bool
    (Wang et al. 2025, "Beyond the 80/20 Rule"): entropy >= the ceil(quantile * n)-th largest value,
    so ties at the threshold are all kept."""
    values = entropy[mask > 0]
    if values.numel() == 0 or quantile >= 1.0:
        return mask > 0
    count = max(1, int(torch.tensor(quantile * values.numel()).ceil()))
    threshold = torch.topk(values, count).values[-1]
    return (entropy >= threshold) & (mask > 0)
