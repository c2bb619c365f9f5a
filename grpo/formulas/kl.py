"""Per-token estimators of KL(pi_theta || pi_ref) from log-probs of sampled tokens.

With d = ref_logp - logp = log(pi_ref / pi_theta) at the sampled token (Schulman 2020,
"Approximating KL Divergence", http://joschu.net/blog/kl-approx.html):
    k1 = -d               unbiased, high variance, can be negative
    k2 = d^2 / 2          biased, low variance
    k3 = exp(d) - d - 1   unbiased and always >= 0 (the GRPO paper's penalty)
    k3_is = r * k3        k3 reweighted by the importance ratio r = pi_theta / pi_old: the tokens were
                          drawn from pi_old, so the plain k3 mean estimates the KL of pi_old's samples;
                          r corrects it to pi_theta's (TRL's `use_bias_correction_kl`; the gradient flows
                          through r as well, as there). At r = 1 (on-policy) it equals k3.
k3 is computed as expm1(d) - d: exp of the log difference, never a ratio of two exps (the seed's
pi_ref.exp() / pi.exp() overflows and loses precision for small probabilities).

Every estimator shares one signature, (logp, ref_logp, old_logp) -> [B, T]; only k3_is reads old_logp.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

from grpo import GrpoError

KLName = Literal["k1", "k2", "k3", "k3_is"]


def kl_k1(logp: Tensor, ref_logp: Tensor, old_logp: Tensor | None = None) -> Tensor:
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor, old_logp: Tensor | None = None) -> Tensor:
    return 0.5 * (ref_logp - logp) ** 2


def kl_k3(logp: Tensor, ref_logp: Tensor, old_logp: Tensor | None = None) -> Tensor:
    log_ratio = ref_logp - logp
    return torch.expm1(log_ratio) - log_ratio


def kl_k3_is(logp: Tensor, ref_logp: Tensor, old_logp: Tensor | None = None) -> Tensor:
    if old_logp is None:
        raise GrpoError("the k3_is KL estimator needs old_logp (the sampling policy's log-probs)")
    return torch.exp(logp - old_logp) * kl_k3(logp, ref_logp)


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor, Tensor | None], Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
    "k3_is": kl_k3_is,
}


def kl_per_token(logp: Tensor, ref_logp: Tensor, estimator: str = "k3", old_logp: Tensor | None = None) -> Tensor:
    """Per-token KL estimate [B, T] from log-probs [B, T] of the same sampled tokens."""
    if estimator not in KL_ESTIMATORS:
        raise GrpoError(f"unknown KL estimator {estimator!r}; choose from {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[estimator](logp, ref_logp, old_logp)
