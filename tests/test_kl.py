"""Tests for grpo/formulas/kl.py. Convention: d = ref_logp - logp; k1 = -d, k2 = d^2/2, k3 = e^d - d - 1."""

from __future__ import annotations

import math

import pytest
import torch

from grpo import GrpoError
from grpo.formulas.kl import KL_ESTIMATORS, kl_per_token

LN2 = math.log(2.0)
LN3 = math.log(3.0)


def test_registry_holds_exactly_k1_k2_k3_k3_is():
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3", "k3_is"}


def test_hand_values_at_ln2_zero_and_minus_ln2():
    # logp = log 1/4, ref_logp = log 1/2 -> d = ln 2 = 0.6931472:
    #   k1 = -ln 2 = -0.6931472;  k2 = (ln 2)^2 / 2 = 0.2402265;  k3 = 2 - ln 2 - 1 = 0.3068528.
    # logp = log 1/2, ref_logp = log 1/4 -> d = -ln 2:
    #   k1 = ln 2;  k2 = 0.2402265;  k3 = 1/2 + ln 2 - 1 = 0.1931472.
    # logp = ref_logp = log 1/3 -> d = 0: all three are exactly 0.
    # logp = log 1/6, ref_logp = log 1/2 -> d = ln 3 = 1.0986123:
    #   k1 = -1.0986123;  k2 = (ln 3)^2 / 2 = 0.6034745;  k3 = 3 - ln 3 - 1 = 0.9013877.
    logp = torch.log(torch.tensor([[0.25, 0.5, 1 / 3, 1 / 6]], dtype=torch.float64))
    ref_logp = torch.log(torch.tensor([[0.5, 0.25, 1 / 3, 0.5]], dtype=torch.float64))
    expected = {
        "k1": [-LN2, LN2, 0.0, -LN3],
        "k2": [LN2 ** 2 / 2, LN2 ** 2 / 2, 0.0, LN3 ** 2 / 2],
        "k3": [1 - LN2, LN2 - 0.5, 0.0, 2 - LN3],
    }
    for name, values in expected.items():
        got = kl_per_token(logp, ref_logp, name)
        assert got.shape == (1, 4)
        torch.testing.assert_close(got, torch.tensor([values], dtype=torch.float64), rtol=0, atol=1e-12)
        assert got[0, 2] == 0.0                                      # d = 0 exactly -> exactly 0
    # Rounded literals, in case the expressions above hide a slip.
    torch.testing.assert_close(kl_per_token(logp, ref_logp, "k3"),
                               torch.tensor([[0.30685, 0.19315, 0.0, 0.90139]], dtype=torch.float64),
                               rtol=0, atol=1e-5)


def test_default_estimator_is_k3():
    logp = torch.tensor([[-1.0, -2.0]])
    ref_logp = torch.tensor([[-1.5, -0.5]])
    assert torch.equal(kl_per_token(logp, ref_logp), kl_per_token(logp, ref_logp, "k3"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_k3_is_nonnegative_and_finite_over_a_wide_range(dtype):
    # Grid over d in [-50, 50] plus tiny |d| where e^d - 1 - d is at the edge of precision.
    d = torch.cat([torch.linspace(-50, 50, 20001, dtype=dtype),
                   torch.tensor([1e-30, -1e-30, 1e-12, -1e-12, 1e-7, -1e-7, 1e-4, -1e-4], dtype=dtype)])
    logp = torch.full_like(d, -3.0)
    k3 = kl_per_token(logp, logp + d, "k3")
    assert torch.isfinite(k3).all()
    assert (k3 >= 0).all()


def test_k3_extremes():
    # d = -50: e^-50 + 50 - 1 = 49 + 1.9e-22 -> 49.
    # d = +50: e^50 - 51 = 5.1847e21 (finite in float32, whose max is 3.4e38).
    logp = torch.tensor([[0.0, -60.0]])
    ref_logp = torch.tensor([[-50.0, -10.0]])
    k3 = kl_per_token(logp, ref_logp, "k3")
    torch.testing.assert_close(k3[0, 0], torch.tensor(49.0))
    torch.testing.assert_close(k3[0, 1], torch.tensor(math.exp(50) - 51), rtol=1e-5, atol=0)
    # d = -1000: no overflow, no NaN; k3 = 999 + e^-1000 = 999.
    k3 = kl_per_token(torch.tensor([0.0]), torch.tensor([-1000.0]), "k3")
    assert k3.item() == 999.0


def test_k3_from_tiny_probabilities_uses_log_difference():
    # pi = e^-200, pi_ref = e^-199: both underflow to 0 in float32, so a ratio of exps would be 0/0.
    # d = -199 - (-200) = 1 exactly -> k3 = e - 1 - 1 = 0.7182818.
    k3 = kl_per_token(torch.tensor([-200.0]), torch.tensor([-199.0]), "k3")
    torch.testing.assert_close(k3, torch.tensor([math.e - 2]))


def test_k3_is_accurate_for_small_log_ratios():
    # For d = 1e-6, e^d - d - 1 = d^2/2 + d^3/6 + d^4/24 + ... = 5.000001666667e-13.
    # exp(d) - 1 - d in float64 loses ~1e-16 absolute, i.e. ~1e-3 relative here; expm1 keeps it.
    for d in (1e-6, -1e-6, 1e-3):
        logp = torch.tensor([-0.5], dtype=torch.float64)
        k3 = kl_per_token(logp, logp + d, "k3")
        # logp + d is itself rounded: recover the d the function actually sees.
        d_seen = ((logp + d) - logp).item()
        taylor = d_seen ** 2 / 2 + d_seen ** 3 / 6 + d_seen ** 4 / 24 + d_seen ** 5 / 120
        torch.testing.assert_close(k3, torch.tensor([taylor], dtype=torch.float64), rtol=1e-8, atol=0)


def test_k3_gradient_hand_value():
    # d k3 / d logp = d/d logp (e^d - d - 1) with d = ref - logp  ->  -e^d + 1.
    # At d = ln 2: 1 - 2 = -1;  at d = -ln 2: 1 - 1/2 = 0.5;  at d = 0: 0.
    logp = torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    ref_logp = torch.tensor([LN2, -LN2, 0.0], dtype=torch.float64)
    kl_per_token(logp, ref_logp, "k3").sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([-1.0, 0.5, 0.0], dtype=torch.float64))


def test_estimators_keep_shape():
    logp = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    for name in KL_ESTIMATORS:
        assert kl_per_token(logp, logp * 0.5, name, old_logp=logp + 0.1).shape == (3, 5)


def test_k3_is_by_hand_value_and_gradient():
    """k3_is = r k3 with r = pi/pi_old. logp = log 1/4, ref = log 1/2 (d = ln 2, k3 = 1 - ln 2),
    old_logp = log 1/8 (r = 2): k3_is = 2 (1 - ln 2) = 0.6137056.
    d/dlogp of r k3 = r k3 + r dk3/dlogp, dk3/dlogp = 1 - e^d = 1 - 2 = -1: 2 (1 - ln 2) - 2 = -2 ln 2."""
    logp = torch.log(torch.tensor([0.25], dtype=torch.float64)).requires_grad_()
    ref_logp = torch.log(torch.tensor([0.5], dtype=torch.float64))
    old_logp = torch.log(torch.tensor([0.125], dtype=torch.float64))
    value = kl_per_token(logp, ref_logp, "k3_is", old_logp=old_logp)
    torch.testing.assert_close(value, torch.tensor([2 * (1 - LN2)], dtype=torch.float64))
    value.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([-2 * LN2], dtype=torch.float64))
    # On-policy (old = logp) it is k3 itself.
    same = kl_per_token(logp.detach(), ref_logp, "k3_is", old_logp=logp.detach())
    torch.testing.assert_close(same, kl_per_token(logp.detach(), ref_logp, "k3"))


def test_k3_is_without_old_logp_is_an_error():
    with pytest.raises(GrpoError, match="old_logp"):
        kl_per_token(torch.zeros(1, 1), torch.zeros(1, 1), "k3_is")


def test_unknown_estimator_raises():
    with pytest.raises(GrpoError, match="unknown KL estimator"):
        kl_per_token(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


# ---------------------------------------------------------------- Monte Carlo

# p = [0.5, 0.3, 0.2] (the sampling policy pi_theta), q = [0.2, 0.3, 0.5] (pi_ref).
# True KL(p || q) = 0.5 ln(0.5/0.2) + 0.3 ln 1 + 0.2 ln(0.2/0.5) = 0.5 ln 2.5 - 0.2 ln 2.5
#                 = 0.3 ln 2.5 = 0.3 * 0.9162907 = 0.2748872.
# Per-token values with d = ln(q/p):
#   x=0: d = ln 0.4 = -0.9162907; k1 = 0.9162907;  k3 = 0.4 - 1 + 0.9162907 = 0.3162907
#   x=1: d = 0;                  k1 = 0;          k3 = 0
#   x=2: d = ln 2.5 = 0.9162907;  k1 = -0.9162907; k3 = 2.5 - 1 - 0.9162907 = 0.5837093
# E[k3] = 0.5*0.3162907 + 0.2*0.5837093 = 0.1581454 + 0.1167419 = 0.2748872 (= KL, unbiased).
# Var k3 = 0.5*0.3162907^2 + 0.2*0.5837093^2 - 0.2748872^2 = 0.0500199 + 0.0681432 - 0.0755630
#        = 0.0426001 -> sd 0.2064;  standard error at n = 200k: 0.2064 / 447.2 = 4.6e-4.
# Var k1 = 0.7 * 0.9162907^2 - 0.2748872^2 = 0.5877117 - 0.0755630 = 0.5121487 -> sd 0.7156,
#        standard error 0.7156 / 447.2 = 1.6e-3.
# k2: E[k2] = 0.7 * 0.9162907^2 / 2 = 0.2938560, which is NOT the KL (biased by +0.0190).
# Tolerances are 5 standard errors: 2.3e-3 for k3, 8.0e-3 for k1.
P_PROBS = [0.5, 0.3, 0.2]
Q_PROBS = [0.2, 0.3, 0.5]
NUM_SAMPLES = 200_000


def _sample_logps():
    p = torch.tensor(P_PROBS, dtype=torch.float64)
    q = torch.tensor(Q_PROBS, dtype=torch.float64)
    gen = torch.Generator().manual_seed(2024)
    tokens = torch.multinomial(p, NUM_SAMPLES, replacement=True, generator=gen)
    return p.log()[tokens].view(1, -1), q.log()[tokens].view(1, -1)


def test_true_kl_value_is_the_hand_computed_one():
    true_kl = sum(pi * math.log(pi / qi) for pi, qi in zip(P_PROBS, Q_PROBS))
    assert abs(true_kl - 0.3 * math.log(2.5)) < 1e-12
    assert abs(true_kl - 0.2748872) < 1e-7


@pytest.mark.parametrize(("name", "tolerance"), [("k3", 2.3e-3), ("k1", 8.0e-3)])
def test_unbiased_estimators_converge_to_true_kl(name, tolerance):
    logp, ref_logp = _sample_logps()
    true_kl = 0.3 * math.log(2.5)
    estimate = kl_per_token(logp, ref_logp, name).mean().item()
    assert abs(estimate - true_kl) < tolerance, (name, estimate, true_kl)


def test_k3_has_lower_variance_than_k1_and_k2_is_biased():
    logp, ref_logp = _sample_logps()
    k1 = kl_per_token(logp, ref_logp, "k1")
    k3 = kl_per_token(logp, ref_logp, "k3")
    # Population sds 0.7156 (k1) vs 0.2064 (k3): the sample sds differ by far more than noise.
    assert k3.std() < 0.5 * k1.std()
    # k2 converges to E[d^2/2] = 0.7 * 0.4197944 = 0.2938560 (sd of k2:
    # sqrt(0.7 * 0.4197944^2 - 0.2938560^2) = sqrt(0.1233591 - 0.0863514) = 0.1924, standard error
    # 4.3e-4; 5 SE = 2.2e-3), which is 0.0190 away from the true KL: k2 is biased.
    k2_mean = kl_per_token(logp, ref_logp, "k2").mean().item()
    assert abs(k2_mean - 0.7 * math.log(2.5) ** 2 / 2) < 2.2e-3
    assert abs(k2_mean - 0.3 * math.log(2.5)) > 0.015
