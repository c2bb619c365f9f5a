"""Tests for grpo/formulas/offpolicy.py: every expected number is worked out by hand in a comment.

Convention: d = old_logp - rollout_logp = log r, r = pi_old / pi_rollout per token; R = prod_t r_t per sequence.
The batch below is built from the ratios it should have: rollout_logp = log 0.1, old_logp = log(0.1 r).
"""

from __future__ import annotations

import math
from typing import get_args

import pytest
import torch

from grpo import GrpoError
from grpo.formulas.offpolicy import (
    ROLLOUT_IS,
    ROLLOUT_RS,
    RolloutISName,
    RolloutRSName,
    mismatch_metrics,
    off_policy_sequence_mask,
    rollout_is_weights,
    rollout_rejection,
)

LN2, LN3 = math.log(2.0), math.log(3.0)
PAD = None   # a padded position: its log-probs are -inf in both tensors


def _batch(ratios: list[list[float | None]], dtype=torch.float64):
    """rollout_logp, old_logp, mask [N, T] with r = pi_old / pi_rollout as given; PAD gives -inf log-probs, mask 0."""
    rollout = [[-math.inf if r is PAD else math.log(0.1) for r in row] for row in ratios]
    old = [[-math.inf if r is PAD else math.log(0.1 * r) for r in row] for row in ratios]
    mask = [[0.0 if r is PAD else 1.0 for r in row] for row in ratios]
    return torch.tensor(rollout, dtype=dtype), torch.tensor(old, dtype=dtype), torch.tensor(mask, dtype=dtype)


# Row 0: r = [2, 1/2, 4] (R = 4); row 1: r = [1, 3, pad] (R = 3); row 2: r = [1/4, pad, pad] (R = 1/4).
RATIOS = [[2.0, 0.5, 4.0], [1.0, 3.0, PAD], [0.25, PAD, PAD]]
T, F = True, False


def _close(got, expected):
    torch.testing.assert_close(got, torch.tensor(expected, dtype=got.dtype), rtol=0, atol=1e-12)


def test_registries_are_their_literals():
    assert sorted(get_args(RolloutISName)) == sorted(ROLLOUT_IS)
    assert sorted(get_args(RolloutRSName)) == sorted(ROLLOUT_RS)
    assert set(ROLLOUT_IS) == {"none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask", "icepop"}
    assert set(ROLLOUT_RS) == {"none", "token_k1", "token_k2", "token_k3", "seq_mean_k1", "seq_mean_k2", "seq_mean_k3"}


# ---------------------------------------------------------------- importance weights


def test_token_truncate_clamps_each_token_ratio():
    # [c_min, c_max] = [0.3, 2.5]: 4 -> 2.5, 3 -> 2.5, 1/4 -> 0.3; 2, 1/2, 1 stay; padding weighs 0.
    out = rollout_is_weights(*_batch(RATIOS), "token_truncate", c_min=0.3, c_max=2.5)
    _close(out.weights, [[2.0, 0.5, 2.5], [1.0, 2.5, 0.0], [0.3, 0.0, 0.0]])
    assert out.truncated.tolist() == [[F, F, T], [F, T, F], [T, F, F]]
    assert not out.masked.any()


def test_token_mask_zeroes_each_token_outside_the_bounds():
    # Same bounds: 4, 3 and 1/4 fall outside and weigh 0; the kept tokens keep their ratio r (not 1).
    out = rollout_is_weights(*_batch(RATIOS), "token_mask", c_min=0.3, c_max=2.5)
    _close(out.weights, [[2.0, 0.5, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert out.masked.tolist() == [[F, F, T], [F, T, F], [T, F, F]]
    assert not out.truncated.any()


def test_icepop_keeps_the_ratio_inside_and_zeroes_outside_both_sides():
    # IcePop's M(k) = k on [alpha, beta], 0 elsewhere: with the paper's [0.5, 5] only r = 1/4 falls outside
    # (r = 1/2 sits on the bound, which is inclusive: log 0.05 - log 0.1 vs log 0.5 may differ by an ulp,
    # so the bound case uses [0.4, 5] to stay off it).
    out = rollout_is_weights(*_batch(RATIOS), "icepop", c_min=0.4, c_max=5.0)
    _close(out.weights, [[2.0, 0.5, 4.0], [1.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
    assert out.masked.tolist() == [[F, F, F], [F, F, F], [T, F, F]]
    token_mask = rollout_is_weights(*_batch(RATIOS), "token_mask", c_min=0.4, c_max=5.0)
    assert torch.equal(out.weights, token_mask.weights)


def test_bounds_are_inclusive():
    # r = 1 exactly (d = 0, log 1 = 0): kept by token_mask with c_min = 1, and not counted as truncated.
    batch = _batch([[1.0, 2.0]])
    out = rollout_is_weights(*batch, "token_mask", c_min=1.0, c_max=3.0)
    _close(out.weights, [[1.0, 2.0]])
    assert not out.masked.any()


def test_sequence_truncate_clamps_the_product_of_ratios():
    # R = 2 * 1/2 * 4 = 4 -> 3.5 (clamped); R = 1 * 3 = 3 stays; R = 1/4 stays (c_min = 0.2); broadcast per row.
    out = rollout_is_weights(*_batch(RATIOS), "sequence_truncate", c_min=0.2, c_max=3.5)
    _close(out.weights, [[3.5, 3.5, 3.5], [3.0, 3.0, 0.0], [0.25, 0.0, 0.0]])
    assert out.truncated.tolist() == [[T, T, T], [F, F, F], [F, F, F]]


def test_sequence_mask_drops_whole_sequences():
    # [0.2, 3.5]: row 0 (R = 4) weighs 0 on every token, rows 1 and 2 keep R.
    out = rollout_is_weights(*_batch(RATIOS), "sequence_mask", c_min=0.2, c_max=3.5)
    _close(out.weights, [[0.0, 0.0, 0.0], [3.0, 3.0, 0.0], [0.25, 0.0, 0.0]])
    assert out.masked.tolist() == [[T, T, T], [F, F, F], [F, F, F]]
    # TRL's default: c_max = 3.5 only (their default is 3.0), no lower bound: R = 1/4 is kept as it is.
    upper_only = rollout_is_weights(*_batch(RATIOS), "sequence_mask", c_min=None, c_max=3.5)
    assert torch.equal(upper_only.weights, out.weights)


def test_sequence_weights_do_not_overflow_where_the_ratio_does():
    # float32, three tokens with d = 50: s = 150 and exp(150) = inf in float32 (max ~ e^88.7).
    # Bounds are compared in log space: truncate gives exactly c_max, mask gives 0, never inf or NaN.
    rollout = torch.zeros(1, 3)
    old = torch.full((1, 3), 50.0)
    mask = torch.ones(1, 3)
    truncated = rollout_is_weights(rollout, old, mask, "sequence_truncate", c_max=2.0)
    assert torch.equal(truncated.weights, torch.full((1, 3), 2.0))
    masked = rollout_is_weights(rollout, old, mask, "sequence_mask", c_max=2.0)
    assert torch.equal(masked.weights, torch.zeros(1, 3)) and masked.masked.all()


def test_weights_match_a_per_token_loop():
    # The vectorised weights against the formulas written out token by token, on random log-probs and lengths.
    gen = torch.Generator().manual_seed(3)
    rollout = torch.log(torch.rand(6, 5, generator=gen, dtype=torch.float64))
    old = rollout + 0.4 * torch.randn(6, 5, generator=gen, dtype=torch.float64)
    lengths = [5, 3, 1, 0, 4, 2]
    mask = torch.tensor([[1.0 if t < n else 0.0 for t in range(5)] for n in lengths], dtype=torch.float64)
    c_min, c_max = 0.7, 1.5
    for mode in ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask"):
        got = rollout_is_weights(rollout, old, mask, mode, c_min=c_min, c_max=c_max).weights
        for i, n in enumerate(lengths):
            seq_ratio = math.prod(math.exp(old[i, t].item() - rollout[i, t].item()) for t in range(n))
            for t in range(5):
                ratio = seq_ratio if mode.startswith("sequence") else math.exp(old[i, t].item() - rollout[i, t].item())
                if t >= n:
                    want = 0.0
                elif mode.endswith("truncate"):
                    want = min(max(ratio, c_min), c_max)
                else:
                    want = ratio if c_min <= ratio <= c_max else 0.0
                assert got[i, t].item() == pytest.approx(want, rel=1e-12, abs=1e-12), (mode, i, t)


def test_padding_with_minus_inf_gives_zero_weight_and_no_nan():
    for mode in ROLLOUT_IS:
        out = rollout_is_weights(*_batch(RATIOS), mode, c_min=0.2, c_max=3.5)
        assert torch.isfinite(out.weights).all(), mode
        assert out.weights[1, 2] == 0 and out.weights[2, 1:].eq(0).all(), mode
        assert not (out.masked | out.truncated)[1, 2], mode


def test_padding_width_does_not_change_the_weights():
    narrow = _batch([[2.0, 0.5], [4.0, PAD]])
    wide = _batch([[2.0, 0.5, PAD, PAD], [4.0, PAD, PAD, PAD]])
    for mode in ROLLOUT_IS:
        a = rollout_is_weights(*narrow, mode, c_min=0.3, c_max=2.5)
        b = rollout_is_weights(*wide, mode, c_min=0.3, c_max=2.5)
        assert torch.equal(a.weights, b.weights[:, :2]) and b.weights[:, 2:].eq(0).all(), mode


def test_none_weighs_every_loss_token_one_and_bool_masks_work():
    rollout, old, mask = _batch(RATIOS)
    out = rollout_is_weights(rollout, old, mask.bool(), "none")
    assert torch.equal(out.weights, mask)
    assert not (out.masked | out.truncated).any()


@pytest.mark.parametrize("mode", sorted(ROLLOUT_IS))
def test_identity_gives_weight_one_on_every_loss_token(mode):
    rollout, _, mask = _batch(RATIOS)
    out = rollout_is_weights(rollout, rollout.clone(), mask, mode, c_min=0.5, c_max=2.0)
    assert torch.equal(out.weights, mask)
    assert not (out.masked | out.truncated).any()


@pytest.mark.parametrize("mode", sorted(ROLLOUT_IS))
def test_weights_are_detached(mode):
    rollout, old, mask = _batch(RATIOS)
    rollout.requires_grad_(True)
    old.requires_grad_(True)
    logp = torch.zeros_like(mask, requires_grad=True)
    out = rollout_is_weights(rollout, old, mask, mode, c_min=0.3, c_max=2.5)
    assert not out.weights.requires_grad
    (out.weights * logp).sum().backward()
    torch.testing.assert_close(logp.grad, out.weights)      # d/d logp of sum w * logp is w, a constant
    assert old.grad is None and rollout.grad is None


def test_bad_bounds_and_modes_are_one_line_errors():
    batch = _batch(RATIOS)
    with pytest.raises(GrpoError, match="c_min and c_max"):
        rollout_is_weights(*batch, "icepop", c_max=5.0)
    with pytest.raises(GrpoError, match="c_min < c_max"):
        rollout_is_weights(*batch, "token_mask", c_min=2.0, c_max=2.0)
    with pytest.raises(GrpoError, match="c_max must be > 0"):
        rollout_is_weights(*batch, "token_truncate", c_max=0.0)
    with pytest.raises(GrpoError, match="unknown rollout IS mode"):
        rollout_is_weights(*batch, "tis")


# ---------------------------------------------------------------- rejection


def test_token_k1_rejects_ratios_outside_the_bounds():
    # Ratio bounds [0.3, 2.5]: 4, 3 and 1/4 rejected; padding never.
    rejected = rollout_rejection(*_batch(RATIOS), "token_k1", lower=0.3, upper=2.5)
    assert rejected.tolist() == [[F, F, T], [F, T, F], [T, F, F]]
    # lower = None means 1 / upper (verl's default): [1/3.5, 3.5] = [0.2857, 3.5]: rejects 4 and 1/4, keeps 3.
    rejected = rollout_rejection(*_batch(RATIOS), "token_k1", upper=3.5)
    assert rejected.tolist() == [[F, F, T], [F, F, F], [T, F, F]]


def test_token_k1_asymmetric_bounds_bound_the_ratio_not_its_inverse():
    # [0.1, 3.5] bounds r = pi_old / pi_rollout (verl's docs): 4 rejected, 1/4 kept. verl's code bounds
    # 1/r by them instead (r in [1/3.5, 10]), which would keep 4 and reject 1/4.
    rejected = rollout_rejection(*_batch([[4.0, 0.25]]), "token_k1", lower=0.1, upper=3.5)
    assert rejected.tolist() == [[T, F]]


def test_token_k2_rejects_half_squared_log_ratio_above_threshold():
    # k2 = (ln r)^2 / 2: r = 2 or 1/2: 0.2402265; r = 4 or 1/4: 0.9609060; r = 3: 0.6034745; r = 1: 0.
    # threshold 0.5 -> 4, 3, 1/4 rejected; threshold 0.7 -> only 4 and 1/4 (k2 is symmetric in ln r).
    assert rollout_rejection(*_batch(RATIOS), "token_k2", upper=0.5).tolist() == [[F, F, T], [F, T, F], [T, F, F]]
    assert rollout_rejection(*_batch(RATIOS), "token_k2", upper=0.7).tolist() == [[F, F, T], [F, F, F], [T, F, F]]


def test_token_k3_rejects_r_minus_1_minus_log_r_above_threshold():
    # k3 = r - 1 - ln r: r = 2: 1 - 0.6931472 = 0.3068528; r = 1/2: -0.5 + 0.6931472 = 0.1931472;
    # r = 4: 3 - 1.3862944 = 1.6137056; r = 1: 0; r = 3: 2 - 1.0986123 = 0.9013877;
    # r = 1/4: -0.75 + 1.3862944 = 0.6362944.
    # threshold 0.25 -> 2, 4, 3, 1/4 rejected (1/2 and 1 kept); threshold 0.7 -> 4 and 3 only (k3 is not
    # symmetric in ln r: r = 1/4 passes where r = 4 does not).
    assert rollout_rejection(*_batch(RATIOS), "token_k3", upper=0.25).tolist() == [[T, F, T], [F, T, F], [T, F, F]]
    assert rollout_rejection(*_batch(RATIOS), "token_k3", upper=0.7).tolist() == [[F, F, T], [F, T, F], [F, F, F]]


def test_seq_mean_k1_bounds_the_geometric_mean_ratio():
    # Geometric mean ratio exp(mean d): row 0: 4^(1/3) = 1.5874011; row 1: 3^(1/2) = 1.7320508; row 2: 1/4.
    # Bounds [0.5, 1.6]: row 0 kept, rows 1 and 2 rejected on every loss token.
    rejected = rollout_rejection(*_batch(RATIOS), "seq_mean_k1", lower=0.5, upper=1.6)
    assert rejected.tolist() == [[F, F, F], [T, T, F], [T, F, F]]


def test_seq_mean_k2_and_k3_reject_whole_sequences_on_their_token_means():
    # k2 means: row 0 (0.2402265 + 0.2402265 + 0.9609060) / 3 = 0.4804530; row 1 (0 + 0.6034745) / 2 = 0.3017372;
    #           row 2 0.9609060.  Threshold 0.4 -> rows 0 and 2 rejected.
    # k3 means: row 0 (0.3068528 + 0.1931472 + 1.6137056) / 3 = 0.7045685; row 1 (0 + 0.9013877) / 2 = 0.4506939;
    #           row 2 0.6362944.  Threshold 0.5 -> rows 0 and 2; threshold 0.65 -> row 0 only.
    assert rollout_rejection(*_batch(RATIOS), "seq_mean_k2", upper=0.4).tolist() == [[T, T, T], [F, F, F], [T, F, F]]
    assert rollout_rejection(*_batch(RATIOS), "seq_mean_k3", upper=0.5).tolist() == [[T, T, T], [F, F, F], [T, F, F]]
    assert rollout_rejection(*_batch(RATIOS), "seq_mean_k3", upper=0.65).tolist() == [[T, T, T], [F, F, F], [F, F, F]]


@pytest.mark.parametrize("mode", sorted(ROLLOUT_RS))
def test_identity_rejects_nothing(mode):
    # d = 0: r = 1 is inside any k1 bounds, and k2 = k3 = 0 passes any threshold > 0.
    rollout, _, mask = _batch(RATIOS)
    lower, upper = (0.5, 2.0) if "k1" in mode else (None, 1e-3)
    assert not rollout_rejection(rollout, rollout.clone(), mask, mode, lower=lower, upper=upper).any()


def test_rejection_errors():
    batch = _batch(RATIOS)
    with pytest.raises(GrpoError, match="0 < lower < upper"):
        rollout_rejection(*batch, "token_k1", lower=2.0, upper=1.5)
    with pytest.raises(GrpoError, match="needs a threshold"):
        rollout_rejection(*batch, "seq_mean_k3")
    with pytest.raises(GrpoError, match="must be > 0"):
        rollout_rejection(*batch, "token_k2", upper=0.0)
    with pytest.raises(GrpoError, match="unknown rollout rejection mode"):
        rollout_rejection(*batch, "seq_sum_k1", upper=2.0)


# ---------------------------------------------------------------- DeepSeek-V3.2 off-policy sequence mask


def test_off_policy_sequence_mask_drops_negative_sequences_far_from_the_sampler():
    # Per token log(pi_sampler / pi_theta) = rollout_logp - logp:
    #   row 0: [ln2, ln2]        mean ln2 = 0.6931 > 0.5, A = -1   -> dropped
    #   row 1: [ln2, ln2]        mean 0.6931 > 0.5,       A = +1   -> kept (positive advantage)
    #   row 2: [ln2, -ln2]       mean 0 <= 0.5,           A = -1   -> kept (close to the sampler)
    #   row 3: [2 ln2, pad]      mean ln4 = 1.3863 > 0.5, A = -0.5 -> its one loss token dropped
    #   row 4: [ln2, ln2]        mean 0.6931,             A = 0    -> kept (A < 0 is strict)
    logp = torch.log(torch.tensor([[0.25, 0.25], [0.25, 0.25], [0.25, 0.5], [0.25, 0.5], [0.25, 0.25]]))
    rollout_logp = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.5, 0.25], [1.0, 0.5], [0.5, 0.5]]))
    rollout_logp[3, 1] = -math.inf
    mask = torch.tensor([[1.0, 1.0]] * 3 + [[1.0, 0.0]] + [[1.0, 1.0]])
    adv = torch.tensor([-1.0, 1.0, -1.0, -0.5, 0.0])
    dropped = off_policy_sequence_mask(rollout_logp, logp, adv, mask, delta=0.5)
    assert dropped.tolist() == [[T, T], [F, F], [F, F], [T, F], [F, F]]
    # delta = 1: row 0's 0.6931 is now within it; row 3's 1.3863 is not.
    dropped = off_policy_sequence_mask(rollout_logp, logp, adv, mask, delta=1.0)
    assert dropped.tolist() == [[F, F], [F, F], [F, F], [T, F], [F, F]]
    # Per-token advantages [N, T]: the condition is A_i,t < 0 token by token (the paper's M_i,t).
    per_token = torch.tensor([[-1.0, 1.0]] * 5)
    dropped = off_policy_sequence_mask(rollout_logp, logp, per_token, mask, delta=0.5)
    assert dropped.tolist() == [[T, F], [T, F], [F, F], [T, F], [T, F]]


def test_off_policy_sequence_mask_identity_and_no_gradient():
    logp = torch.log(torch.tensor([[0.25, 0.5]])).requires_grad_(True)
    dropped = off_policy_sequence_mask(logp.detach().clone(), logp, torch.tensor([-1.0]), torch.ones(1, 2), delta=0.0)
    assert not dropped.any() and not dropped.requires_grad     # KL = 0 is not > 0


# ---------------------------------------------------------------- metrics

# Row 0: r = [2, 1/2, pad] (R = 1); row 1: r = [4, pad, pad] (R = 4). d = [ln2, -ln2], [2 ln2].
METRIC_RATIOS = [[2.0, 0.5, PAD], [4.0, PAD, PAD]]


def test_mismatch_metrics_hand_values_with_raw_ratios():
    m = mismatch_metrics(*_batch(METRIC_RATIOS))
    # k1 = mean(-d) = (-ln2 + ln2 - 2 ln2) / 3 = -2 ln2 / 3 = -0.4620981
    # k3 = mean(r - 1 - d) = [(1 - ln2) + (-0.5 + ln2) + (3 - 2 ln2)] / 3 = (3.5 - 2 ln2) / 3 = 0.7045685
    # chi2_token = mean(r^2) - 1 = (4 + 0.25 + 16) / 3 - 1 = 6.75 - 1 = 5.75
    # chi2_seq = mean(R^2) - 1 = (1 + 16) / 2 - 1 = 7.5
    # ppl_ratio = mean over rows of exp(-mean d) = (exp(0) + exp(-ln 4)) / 2 = (1 + 0.25) / 2 = 0.625
    # weights = r = [2, 1/2, 4]: mean 6.5 / 3 = 2.1666667, max 4,
    # ess = 6.5^2 / (3 * (4 + 0.25 + 16)) = 42.25 / 60.75 = 0.6954733
    expected = {"mismatch/k1": -2 * LN2 / 3, "mismatch/k3": (3.5 - 2 * LN2) / 3, "mismatch/chi2_token": 5.75,
                "mismatch/chi2_seq": 7.5, "mismatch/ppl_ratio": 0.625, "mismatch/ess": 42.25 / 60.75,
                "mismatch/weight_mean": 6.5 / 3, "mismatch/weight_max": 4.0, "mismatch/masked_token_frac": 0.0,
                "mismatch/masked_seq_frac": 0.0, "mismatch/truncated_token_frac": 0.0}
    assert set(m) == set(expected)
    for key, value in expected.items():
        _close(m[key], value)


def test_mismatch_metrics_read_the_weights_and_flags_applied():
    batch = _batch(METRIC_RATIOS)
    # token_truncate at c_max = 2.5: w = [2, 1/2, 2.5], one of 3 tokens truncated.
    # mean 5 / 3; ess = 5^2 / (3 * (4 + 0.25 + 6.25)) = 25 / 31.5 = 0.7936508
    out = rollout_is_weights(*batch, "token_truncate", c_max=2.5)
    m = mismatch_metrics(*batch, weights=out.weights, masked=out.masked, truncated=out.truncated)
    _close(m["mismatch/weight_mean"], 5 / 3)
    _close(m["mismatch/weight_max"], 2.5)
    _close(m["mismatch/ess"], 25 / 31.5)
    _close(m["mismatch/truncated_token_frac"], 1 / 3)
    _close(m["mismatch/masked_token_frac"], 0.0)
    _close(m["mismatch/k1"], -2 * LN2 / 3)                  # the KL estimates do not depend on the weights
    # token_mask at c_max = 2.5: w = [2, 1/2, 0]: row 1's only token masked -> 1/3 of tokens, 1/2 of rows.
    # ess = 2.5^2 / (3 * 4.25) = 6.25 / 12.75 = 0.4901961
    out = rollout_is_weights(*batch, "token_mask", c_max=2.5)
    m = mismatch_metrics(*batch, weights=out.weights, masked=out.masked, truncated=out.truncated)
    _close(m["mismatch/ess"], 6.25 / 12.75)
    _close(m["mismatch/masked_token_frac"], 1 / 3)
    _close(m["mismatch/masked_seq_frac"], 0.5)
    _close(m["mismatch/weight_max"], 2.0)


def test_mismatch_metrics_identity_is_exact():
    rollout, _, mask = _batch(RATIOS)
    expected = {"mismatch/k1": 0.0, "mismatch/k3": 0.0, "mismatch/chi2_token": 0.0, "mismatch/chi2_seq": 0.0,
                "mismatch/ppl_ratio": 1.0, "mismatch/ess": 1.0, "mismatch/weight_mean": 1.0,
                "mismatch/weight_max": 1.0, "mismatch/masked_token_frac": 0.0, "mismatch/masked_seq_frac": 0.0,
                "mismatch/truncated_token_frac": 0.0}
    for mode in ROLLOUT_IS:
        out = rollout_is_weights(rollout, rollout.clone(), mask, mode, c_min=0.5, c_max=2.0)
        for weights in (None, out.weights):
            m = mismatch_metrics(rollout, rollout.clone(), mask, weights, out.masked, out.truncated)
            assert {k: v.item() for k, v in m.items()} == expected, mode     # exactly, not approximately


def test_mismatch_metrics_edge_cases_are_finite():
    rollout, old, mask = _batch(RATIOS)
    empty = mismatch_metrics(rollout, old, torch.zeros_like(mask))
    assert all(v.item() == 0.0 for v in empty.values())                     # an empty mask: 0, never NaN
    out = rollout_is_weights(rollout, old, mask, "token_mask", c_min=10.0, c_max=20.0)   # everything masked
    m = mismatch_metrics(rollout, old, mask, out.weights, out.masked)
    assert m["mismatch/ess"].item() == 0.0 and m["mismatch/masked_token_frac"].item() == 1.0
    assert m["mismatch/masked_seq_frac"].item() == 1.0
    # A long mismatched sequence: log R = 150 clamps to 20 (verl's bound), chi2_seq = e^40 - 1 stays finite.
    big = mismatch_metrics(torch.zeros(1, 3), torch.full((1, 3), 50.0), torch.ones(1, 3))
    assert all(torch.isfinite(v) for v in big.values())
    torch.testing.assert_close(big["mismatch/chi2_seq"], torch.tensor(math.expm1(40.0)))


def test_mismatch_metrics_are_detached():
    rollout, old, mask = _batch(RATIOS)
    old.requires_grad_(True)
    assert not any(v.requires_grad for v in mismatch_metrics(rollout, old, mask).values())
