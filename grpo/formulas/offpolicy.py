"""Off-policy corrections for rollouts whose sampler is not exactly pi_old, and the metrics of the mismatch.

The sampler's own log-probs `rollout_logp` differ from pi_old's `old_logp` (the learner's log-probs at the start
of the step) through bf16 sampling, another kernel, or stale weights. Per sampled token t of completion i:

    rollout_logp, old_logp   [N, T]  log pi_rollout, log pi_old of the sampled token
    mask                     [N, T]  loss tokens: 1 / True = completion token, 0 = prompt or padding after EOS
    d_t = old_logp - rollout_logp = log r_t      r_t = pi_old / pi_rollout, the token's importance weight
    s_i = sum_t mask d_t                         the sequence's log-ratio; R_i = exp(s_i) its importance weight

Positions outside the mask read d = 0 whatever they hold (padding may be -inf). Every weight and mask returned
here is detached: it changes the measure the loss averages over, not the objective (verl, rollout_corr_math.md
3.2.2; TRL multiplies the per-token loss by its weights the same way). See docs/offpolicy-formulas.md.

ROLLOUT_IS: fn(rollout_logp, old_logp, mask, *, c_min, c_max) -> RolloutIS; weights [N, T] multiply the
per-token policy loss. c_min / c_max = None: no bound on that side (c_min = 0 is the same as None).
  none               w = 1 on every loss token
  token_truncate     w_t = clamp(r_t, c_min, c_max)                    TRL; verl rollout_is="token" (c_max only)
  token_mask         w_t = r_t inside [c_min, c_max], else 0           TRL
  sequence_truncate  w_t = clamp(R_i, c_min, c_max) on i's tokens      TRL; verl rollout_is="sequence" (c_max only)
  sequence_mask      w_t = R_i inside [c_min, c_max], else 0           TRL (its default mode, c_max = 3)
  (TRL: vllm_importance_sampling_mode in trl/trainer/grpo_trainer.py; verl: compute_rollout_correction_weights)
  icepop             token_mask with both bounds required: IcePop (Ling Team 2025, "Every Step Evolves: Scaling
                     RL for Trillion-Scale Thinking Model" (Ring-1T), arXiv 2510.18855): M(k) = k for k in
                     [alpha, beta], else 0, with k = pi_train(theta_old) / pi_infer(theta_old) = r_t; the kept
                     tokens are reweighted by r_t, not only masked (OpenRLHF and NeMo-RL do the same);
                     the paper's alpha = 0.5, beta = 5.
Bounds are inclusive and compared in log space (d against log c), so a sequence ratio that overflows exp is
still masked or clamped correctly.

ROLLOUT_RS (verl's rollout rejection sampling, verl/trainer/ppo/rollout_corr_helper.py,
compute_rollout_rejection_mask): fn(rollout_logp, old_logp, mask, *, lower, upper) -> rejected [N, T] bool.
  none          nothing rejected
  token_k1      reject t when r_t outside [lower, upper] (ratio bounds; lower = None means 1 / upper)
  token_k2      reject t when d_t^2 / 2 > upper
  token_k3      reject t when r_t - 1 - d_t > upper          (k3 of KL(pi_rollout || pi_old))
  seq_mean_k1   reject all of i when exp(mean_t d_t) (the geometric-mean ratio) is outside [lower, upper]
  seq_mean_k2   reject all of i when mean_t d_t^2 / 2 > upper
  seq_mean_k3   reject all of i when mean_t (r_t - 1 - d_t) > upper
lower is read by the k1 modes only. Departure: verl's code bounds k1 = -d = log(pi_rollout / pi_old) by
[log lower, log upper], i.e. r in [1/upper, 1/lower]; its docs (rollout_corr_math.md 3.3.3) bound r itself by
[lower, upper]. They agree for verl's symmetric default (lower = 1/upper); here the docs' reading is used, so
lower and upper bound the same r as the IS weights' c_min and c_max.

off_policy_sequence_mask: DeepSeek-V3.2 (DeepSeek-AI 2025, arXiv 2512.02556, "Scaling GRPO": "Off-Policy Sequence
Masking", eq. 9 as TRL cites it). Drop the tokens of completion i where A_i,t < 0 and
    (1/|o_i|) sum_t log(pi_sampler / pi_theta) > delta
the k1 estimate of KL(pi_sampler || pi_theta) from the sampler's own tokens, pi_theta the current learner
(detached). The paper's pi_old there is the inference engine's probability, so the one number covers both the
sampler mismatch and the staleness of pi_old. Its unbiased KL to the reference (the same section's
(pi_theta / pi_old) k3) is grpo/formulas/kl.py's `k3_is`, which reads the learner's old_logp for pi_old.

Metrics (mismatch_metrics), 0-dim detached tensors; an empty mask gives 0 for every key, never NaN:
  mismatch/k1                  token mean of -d = log(pi_rollout / pi_old): k1 estimate of KL(pi_rollout || pi_old)
  mismatch/k3                  token mean of r - 1 - log r: k3 estimate of the same KL (>= 0)
  mismatch/chi2_token          token mean of r^2, minus 1: chi^2(pi_old || pi_rollout) per token
  mismatch/chi2_seq            mean over completions of R_i^2, minus 1 (log R_i clamped to +-20, as verl)
  mismatch/ppl_ratio           mean over completions of PPL_old / PPL_rollout = exp(-mean_t d_t)
  mismatch/ess                 (sum w)^2 / (n sum w^2) over the n loss tokens' weights w: 1 when all weights are
                               equal, 1/n when one token carries all; 0 when every weight is 0
  mismatch/weight_mean, mismatch/weight_max   token mean and max of the weights (without weights: the raw
                               ratios r_t, their logs clamped to +-20 as verl does)
  mismatch/masked_token_frac   share of loss tokens the correction zeroed (IS mask modes, rejection; the DeepSeek
                               sequence mask, decided at each update, is offpolicy/masked_token_frac)
  mismatch/masked_seq_frac     share of non-empty completions with at least one zeroed token
  mismatch/truncated_token_frac  share of loss tokens whose weight a truncate mode clamped
"""

from __future__ import annotations

import math
from typing import Callable, Literal, NamedTuple

import torch
from torch import Tensor

from grpo import GrpoError
from grpo.formulas.kl import kl_k1, kl_k2, kl_k3

RolloutISName = Literal["none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask", "icepop"]
RolloutRSName = Literal["none", "token_k1", "token_k2", "token_k3", "seq_mean_k1", "seq_mean_k2", "seq_mean_k3"]

# verl's SAFETY_BOUND: chi2_seq clamps log R_i to [-20, 20] so exp(2 log R) stays finite in float32.
LOG_RATIO_BOUND = 20.0


class RolloutIS(NamedTuple):
    weights: Tensor    # [N, T] detached importance weights, 0 outside the mask
    truncated: Tensor  # [N, T] bool: loss tokens whose weight a truncate mode clamped
    masked: Tensor     # [N, T] bool: loss tokens whose weight a mask mode set to 0


def _log_ratio(rollout_logp: Tensor, old_logp: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """d = old_logp - rollout_logp on loss tokens, exactly 0 elsewhere, detached [N, T]; and the mask as bool."""
    active = mask != 0
    # torch.where, not a product: padding may hold -inf, and -inf - -inf is NaN.
    return torch.where(active, (old_logp - rollout_logp).detach(), 0.0), active


def _sequence_mean(values: Tensor, active: Tensor) -> Tensor:
    """Per row, the mean over its loss tokens [N]; an empty row gives 0 (divides by 1)."""
    return (values * active).sum(-1) / active.sum(-1).clamp(min=1)


def _log_bounds(c_min: float | None, c_max: float | None) -> tuple[float, float]:
    """The bounds in log space: log c_min (-inf for None or 0) and log c_max (inf for None)."""
    if c_min is not None and not c_min >= 0.0:
        raise GrpoError(f"the rollout IS lower bound c_min must be >= 0, got {c_min}")
    if c_max is not None and not c_max > 0.0:
        raise GrpoError(f"the rollout IS upper bound c_max must be > 0, got {c_max}")
    if c_min is not None and c_max is not None and not c_min < c_max:
        raise GrpoError(f"the rollout IS bounds need c_min < c_max, got c_min={c_min}, c_max={c_max}")
    low = -math.inf if not c_min else math.log(c_min)
    high = math.inf if c_max is None else math.log(c_max)
    return low, high


def _bounded(log_weight: Tensor, active: Tensor, c_min: float | None, c_max: float | None,
             truncate: bool) -> RolloutIS:
    """Weights exp(log_weight) [N, T] clamped to [c_min, c_max] (truncate) or zeroed outside it (mask)."""
    low, high = _log_bounds(c_min, c_max)
    outside = ((log_weight < low) | (log_weight > high)) & active
    none = torch.zeros_like(outside)
    if truncate:
        weights = torch.exp(log_weight.clamp(min=low, max=high))
        return RolloutIS(torch.where(active, weights, 0.0), outside, none)
    weights = torch.where(outside, 0.0, torch.exp(log_weight))
    return RolloutIS(torch.where(active, weights, 0.0), none, outside)


def _sequence_log_weight(d: Tensor) -> Tensor:
    """s_i = sum_t d_t, broadcast over the row's T positions [N, T] (d is already 0 off the mask)."""
    return d.sum(-1, keepdim=True).expand_as(d)


def is_none(rollout_logp, old_logp, mask, *, c_min=None, c_max=None) -> RolloutIS:
    d, active = _log_ratio(rollout_logp, old_logp, mask)
    none = torch.zeros_like(active)
    return RolloutIS(active.to(d.dtype), none, none)


def is_token_truncate(rollout_logp, old_logp, mask, *, c_min=None, c_max=None) -> RolloutIS:
    d, active = _log_ratio(rollout_logp, old_logp, mask)
    return _bounded(d, active, c_min, c_max, truncate=True)


def is_token_mask(rollout_logp, old_logp, mask, *, c_min=None, c_max=None) -> RolloutIS:
    d, active = _log_ratio(rollout_logp, old_logp, mask)
    return _bounded(d, active, c_min, c_max, truncate=False)


def is_sequence_truncate(rollout_logp, old_logp, mask, *, c_min=None, c_max=None) -> RolloutIS:
    d, active = _log_ratio(rollout_logp, old_logp, mask)
    return _bounded(_sequence_log_weight(d), active, c_min, c_max, truncate=True)


def is_sequence_mask(rollout_logp, old_logp, mask, *, c_min=None, c_max=None) -> RolloutIS:
    d, active = _log_ratio(rollout_logp, old_logp, mask)
    return _bounded(_sequence_log_weight(d), active, c_min, c_max, truncate=False)


def is_icepop(rollout_logp, old_logp, mask, *, c_min=None, c_max=None) -> RolloutIS:
    if c_min is None or c_max is None:
        raise GrpoError(f"icepop masks on both sides: it needs c_min and c_max (the paper's 0.5 and 5), "
                        f"got c_min={c_min}, c_max={c_max}")
    return is_token_mask(rollout_logp, old_logp, mask, c_min=c_min, c_max=c_max)


ROLLOUT_IS: dict[str, Callable[..., RolloutIS]] = {
    "none": is_none,
    "token_truncate": is_token_truncate,
    "token_mask": is_token_mask,
    "sequence_truncate": is_sequence_truncate,
    "sequence_mask": is_sequence_mask,
    "icepop": is_icepop,
}


def rollout_is_weights(rollout_logp: Tensor, old_logp: Tensor, mask: Tensor, mode: str = "none", *,
                       c_min: float | None = None, c_max: float | None = None) -> RolloutIS:
    """Detached importance weights [N, T] (and which tokens were truncated / masked) for log-probs [N, T]."""
    if mode not in ROLLOUT_IS:
        raise GrpoError(f"unknown rollout IS mode {mode!r}; choose from {sorted(ROLLOUT_IS)}")
    return ROLLOUT_IS[mode](rollout_logp, old_logp, mask, c_min=c_min, c_max=c_max)


# ---------------------------------------------------------------- rejection sampling


def _k1_bounds(lower: float | None, upper: float) -> tuple[float, float]:
    """log lower, log upper of the ratio bounds; lower = None means 1 / upper (verl's default)."""
    lower = 1.0 / upper if lower is None and upper > 0 else lower
    if not (upper > 0 and lower > 0 and lower < upper):
        raise GrpoError(f"k1 rejection needs ratio bounds 0 < lower < upper, got lower={lower}, upper={upper}")
    return math.log(lower), math.log(upper)


def _check_threshold(upper: float) -> None:
    if not upper > 0:
        raise GrpoError(f"a k2 / k3 rejection threshold must be > 0, got {upper}")


# verl's token_k1 / k2 / k3 are Schulman's estimators of KL(pi_rollout || pi_old) from the sampler's tokens:
# grpo/formulas/kl.py's, with (logp, ref_logp) = (rollout_logp, old_logp). They read only ref_logp - logp = d.
def _k2(d: Tensor) -> Tensor:
    return kl_k2(torch.zeros_like(d), d)          # d^2 / 2


def _k3(d: Tensor) -> Tensor:
    return kl_k3(torch.zeros_like(d), d)          # expm1(d) - d = r - 1 - log r


def rs_none(rollout_logp, old_logp, mask, *, lower=None, upper=None) -> Tensor:
    return torch.zeros_like(mask, dtype=torch.bool)


def rs_token_k1(rollout_logp, old_logp, mask, *, lower=None, upper) -> Tensor:
    d, active = _log_ratio(rollout_logp, old_logp, mask)
    low, high = _k1_bounds(lower, upper)
    return ((d < low) | (d > high)) & active


def rs_token_k2(rollout_logp, old_logp, mask, *, lower=None, upper) -> Tensor:
    _check_threshold(upper)
    d, active = _log_ratio(rollout_logp, old_logp, mask)
    return (_k2(d) > upper) & active


def rs_token_k3(rollout_logp, old_logp, mask, *, lower=None, upper) -> Tensor:
    _check_threshold(upper)
    d, active = _log_ratio(rollout_logp, old_logp, mask)
    return (_k3(d) > upper) & active


def _whole_rows(rejected_rows: Tensor, active: Tensor) -> Tensor:
    return rejected_rows[:, None] & active


def rs_seq_mean_k1(rollout_logp, old_logp, mask, *, lower=None, upper) -> Tensor:
    d, active = _log_ratio(rollout_logp, old_logp, mask)
    low, high = _k1_bounds(lower, upper)
    mean_log_ratio = _sequence_mean(d, active)
    return _whole_rows((mean_log_ratio < low) | (mean_log_ratio > high), active)


def rs_seq_mean_k2(rollout_logp, old_logp, mask, *, lower=None, upper) -> Tensor:
    _check_threshold(upper)
    d, active = _log_ratio(rollout_logp, old_logp, mask)
    return _whole_rows(_sequence_mean(_k2(d), active) > upper, active)


def rs_seq_mean_k3(rollout_logp, old_logp, mask, *, lower=None, upper) -> Tensor:
    _check_threshold(upper)
    d, active = _log_ratio(rollout_logp, old_logp, mask)
    return _whole_rows(_sequence_mean(_k3(d), active) > upper, active)


ROLLOUT_RS: dict[str, Callable[..., Tensor]] = {
    "none": rs_none,
    "token_k1": rs_token_k1,
    "token_k2": rs_token_k2,
    "token_k3": rs_token_k3,
    "seq_mean_k1": rs_seq_mean_k1,
    "seq_mean_k2": rs_seq_mean_k2,
    "seq_mean_k3": rs_seq_mean_k3,
}


def rollout_rejection(rollout_logp: Tensor, old_logp: Tensor, mask: Tensor, mode: str = "none", *,
                      lower: float | None = None, upper: float | None = None) -> Tensor:
    """The loss tokens [N, T] bool the named rejection rule drops (every token of a dropped sequence)."""
    if mode not in ROLLOUT_RS:
        raise GrpoError(f"unknown rollout rejection mode {mode!r}; choose from {sorted(ROLLOUT_RS)}")
    if mode != "none" and upper is None:
        raise GrpoError(f"rollout rejection {mode!r} needs a threshold (upper)")
    return ROLLOUT_RS[mode](rollout_logp, old_logp, mask, lower=lower, upper=upper)


# ---------------------------------------------------------------- DeepSeek-V3.2 off-policy sequence mask


def off_policy_sequence_mask(rollout_logp: Tensor, logp: Tensor, advantages: Tensor, mask: Tensor, *,
                             delta: float) -> Tensor:
    """The loss tokens [N, T] bool that DeepSeek-V3.2's off-policy sequence masking drops.

    rollout_logp: the sampler's log-probs [N, T]; logp: the current learner's [N, T] (detached here);
    advantages: [N] (one per completion) or [N, T]. Token t of i is dropped when A_i,t < 0 and
    mean over i's loss tokens of (rollout_logp - logp) > delta (strict, as TRL's get_off_policy_mask keeps
    KL <= delta). A row without loss tokens drops nothing.
    """
    d, active = _log_ratio(rollout_logp, logp, mask)           # d = logp - rollout_logp
    sequence_kl = _sequence_mean(-d, active)                  # [N]
    adv = advantages.detach()
    adv = (adv[:, None] if adv.dim() == 1 else adv).expand_as(d)
    return (adv < 0) & (sequence_kl[:, None] > delta) & active


# ---------------------------------------------------------------- metrics


def mismatch_metrics(rollout_logp: Tensor, old_logp: Tensor, mask: Tensor, weights: Tensor | None = None,
                     masked: Tensor | None = None, truncated: Tensor | None = None) -> dict[str, Tensor]:
    """The mismatch/* metrics (module docstring) for log-probs and mask [N, T].

    weights [N, T]: the IS weights applied (None: the raw token ratios r_t, what uncorrected token IS would
    apply). masked / truncated [N, T] bool: the tokens a correction zeroed / clamped (None: none); the step
    ORs together the IS mask and the rejection.
    """
    d, active = _log_ratio(rollout_logp, old_logp, mask)
    tokens = active.to(d.dtype)
    num_tokens = tokens.sum().clamp(min=1)                    # an empty mask gives 0 / 1, never 0 / 0
    rows = (tokens.sum(-1) > 0).to(d.dtype)
    num_rows = rows.sum().clamp(min=1)

    def token_mean(values: Tensor) -> Tensor:
        return (values * tokens).sum() / num_tokens

    def row_mean(values: Tensor) -> Tensor:
        return (values * rows).sum() / num_rows

    sequence_log_ratio = d.sum(-1).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)
    if weights is None:
        w = torch.exp(d.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND))   # verl clamps its IS weights' logs the same way
    else:
        w = weights.detach().to(d.dtype)
    w = torch.where(active, w, 0.0)
    # ESS is scale-free: divide by the largest weight first, so w^2 cannot overflow (float32 overflows at
    # w > 1.8e19). Identity: the largest weight is 1 and the division is exact.
    scaled = w / w.max().clamp(min=torch.finfo(d.dtype).tiny)
    scaled_sum, scaled_sq_sum = scaled.sum(), (scaled ** 2).sum()
    no = torch.zeros_like(active)
    masked = no if masked is None else masked & active
    truncated = no if truncated is None else truncated & active
    return {
        "mismatch/k1": token_mean(kl_k1(torch.zeros_like(d), d)),     # -d = log(pi_rollout / pi_old)
        "mismatch/k3": token_mean(_k3(d)),
        # E[r^2] - 1 as the mean of expm1(2d): exactly 0 when d = 0, and 0 (not -1) for an empty mask.
        "mismatch/chi2_token": token_mean(torch.expm1(2.0 * d.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND))),
        "mismatch/chi2_seq": row_mean(torch.expm1(2.0 * sequence_log_ratio)),
        "mismatch/ppl_ratio": row_mean(torch.exp(-_sequence_mean(d, active))),
        # The largest scaled weight is 1, so the denominator is >= 1 unless every weight is 0 (then the
        # numerator is 0 too): the clamp only keeps 0/0 out.
        "mismatch/ess": scaled_sum ** 2 / (num_tokens * scaled_sq_sum).clamp(min=1.0),
        "mismatch/weight_mean": token_mean(w),
        # Weights are >= 0 and 0 off the mask, so the max over all positions is the loss tokens' (0 if none).
        "mismatch/weight_max": w.max(),
        "mismatch/masked_token_frac": token_mean(masked.to(d.dtype)),
        "mismatch/masked_seq_frac": row_mean(masked.any(-1).to(d.dtype)),
        "mismatch/truncated_token_frac": token_mean(truncated.to(d.dtype)),
    }
