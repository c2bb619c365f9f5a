"""Tests for grpo/formulas/advantages.py: every expected number below is worked out by hand in a comment."""

from __future__ import annotations

import math
from typing import get_args

import pytest
import torch

from grpo import GrpoError
from grpo.formulas.advantages import ADVANTAGES, AdvantageName, compute_advantages, normalize_then_sum

ESTIMATORS = ["grpo", "dr_grpo", "batch_std", "rloo", "reinforce_pp", "opo", "gpg"]
EPS = 1e-4


def _lengths(rewards: torch.Tensor) -> torch.Tensor:
    """Unequal completion lengths 1..7 for rewards [P, G], so opo's weighting is not a plain mean."""
    num_prompts, group_size = rewards.shape
    return (torch.arange(num_prompts * group_size) % 7 + 1).view(num_prompts, group_size).float()


def test_registry_holds_exactly_the_documented_estimators():
    assert set(ADVANTAGES) == set(ESTIMATORS)


def test_advantage_name_literal_lists_the_registry_keys():
    # The Literal's values are the CLI choices: a registry entry missing from it cannot be picked.
    assert sorted(get_args(AdvantageName)) == sorted(ADVANTAGES)


# ---------------------------------------------------------------- grpo


def test_grpo_hand_values_one_success_in_six():
    # [1,0,0,0,0,0]: mean = 1/6; deviations 5/6 (once) and -1/6 (five times).
    # sum of squares = 25/36 + 5 * 1/36 = 30/36 = 5/6; unbiased var = (5/6) / 5 = 1/6;
    # std = sqrt(1/6) = 0.4082483; std + eps = 0.4083483.
    # A(1) = (5/6) / 0.4083483 = 2.040741;  A(0) = -(1/6) / 0.4083483 = -0.408148.
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    adv = compute_advantages(rewards, "grpo", eps=EPS)
    denom = math.sqrt(1 / 6) + EPS
    expected = torch.tensor([[5 / 6, -1 / 6, -1 / 6, -1 / 6, -1 / 6, -1 / 6]]) / denom
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-5)
    # The rounded numbers, at its stated tolerance.
    rounded = torch.tensor([[2.0407, -0.4081, -0.4081, -0.4081, -0.4081, -0.4081]])
    torch.testing.assert_close(adv, rounded, rtol=0, atol=1e-4)


def test_grpo_hand_values_two_successes_in_six():
    # [1,0,0,0,1,0]: mean = 1/3; deviations 2/3 (twice) and -1/3 (four times).
    # sum of squares = 2 * 4/9 + 4 * 1/9 = 12/9 = 4/3; unbiased var = (4/3) / 5 = 4/15;
    # std = sqrt(4/15) = 0.5163978; std + eps = 0.5164978.
    # A(1) = (2/3) / 0.5164978 = 1.290742;  A(0) = -(1/3) / 0.5164978 = -0.645371.
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]])
    adv = compute_advantages(rewards, "grpo", eps=EPS)
    denom = math.sqrt(4 / 15) + EPS
    expected = torch.tensor([[2 / 3, -1 / 3, -1 / 3, -1 / 3, 2 / 3, -1 / 3]]) / denom
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-5)
    rounded = torch.tensor([[1.2907, -0.6454, -0.6454, -0.6454, 1.2907, -0.6454]])
    torch.testing.assert_close(adv, rounded, rtol=0, atol=1e-4)


def test_grpo_normalises_each_group_by_its_own_std():
    # Row 0 = [0,1,2]: mean 1, deviations -1, 0, 1, unbiased var = 2/2 = 1, std 1
    #                  -> [-1, 0, 1] / (1 + eps).
    # Row 1 = [0,4,2]: mean 2, deviations -2, 2, 0, unbiased var = 8/2 = 4, std 2
    #                  -> [-2, 2, 0] / (2 + eps) = [-0.99995, 0.99995, 0].
    rewards = torch.tensor([[0.0, 1.0, 2.0], [0.0, 4.0, 2.0]])
    adv = compute_advantages(rewards, "grpo", eps=EPS)
    expected = torch.tensor([[-1.0 / (1 + EPS), 0.0, 1.0 / (1 + EPS)],
                             [-2.0 / (2 + EPS), 2.0 / (2 + EPS), 0.0]])
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)


def test_grpo_eps_is_added_to_the_std():
    # [0, 2]: mean 1, unbiased std = sqrt((1+1)/1) = sqrt(2). With eps = 0.5 the denominator is
    # sqrt(2) + 0.5 = 1.9142136, so A = [-1, 1] / 1.9142136 = [-0.5224077, 0.5224077].
    rewards = torch.tensor([[0.0, 2.0]])
    adv = compute_advantages(rewards, "grpo", eps=0.5)
    expected = torch.tensor([[-1.0, 1.0]]) / (math.sqrt(2) + 0.5)
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- dr_grpo / batch_std / rloo


def test_dr_grpo_is_reward_minus_group_mean():
    # Row 0 [1,0,0,0]: mean 1/4 -> [3/4, -1/4, -1/4, -1/4].
    # Row 1 [3,1,2,2]: mean 2   -> [1, -1, 0, 0]. No division by any std.
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [3.0, 1.0, 2.0, 2.0]])
    adv = compute_advantages(rewards, "dr_grpo", eps=EPS)
    expected = torch.tensor([[0.75, -0.25, -0.25, -0.25], [1.0, -1.0, 0.0, 0.0]])
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-7)


def test_batch_std_divides_group_centred_rewards_by_std_of_whole_batch():
    # rewards [[0,2],[2,4]]: group-centred = [[-1,1],[-1,1]].
    # All four rewards {0,2,2,4}: mean 2, squared deviations 4+0+0+4 = 8, unbiased var = 8/3,
    # std = sqrt(8/3) = 1.6329932 -> A = ±1 / 1.6330932 = ±0.6123349.
    # (grpo would divide by the group std sqrt(2) = 1.414 instead, giving ±0.7070.)
    rewards = torch.tensor([[0.0, 2.0], [2.0, 4.0]])
    adv = compute_advantages(rewards, "batch_std", eps=EPS)
    expected = torch.tensor([[-1.0, 1.0], [-1.0, 1.0]]) / (math.sqrt(8 / 3) + EPS)
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)


def test_batch_std_counts_constant_groups_in_the_std_but_gives_them_zero():
    # rewards [[1,1],[0,2]]: row 0 constant -> exactly 0. All rewards {1,1,0,2}: mean 1,
    # squared deviations 0+0+1+1 = 2, unbiased var = 2/3, std = 0.8164966.
    # Row 1 centred = [-1, 1] -> ±1 / (0.8164966 + 1e-4) = ±1.2245451.
    rewards = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    adv = compute_advantages(rewards, "batch_std", eps=EPS)
    assert torch.equal(adv[0], torch.zeros(2))
    expected = torch.tensor([-1.0, 1.0]) / (math.sqrt(2 / 3) + EPS)
    torch.testing.assert_close(adv[1], expected, rtol=0, atol=1e-6)


def test_rloo_hand_values():
    # [1,0,0,0]: A_0 = 1 - mean(0,0,0) = 1;  A_j = 0 - mean(1,0,0) = -1/3 for j = 1,2,3.
    # [2,4,6]:   A_0 = 2 - (4+6)/2 = -3;  A_1 = 4 - (2+6)/2 = 0;  A_2 = 6 - (2+4)/2 = 3.
    adv = compute_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), "rloo", eps=EPS)
    torch.testing.assert_close(adv, torch.tensor([[1.0, -1 / 3, -1 / 3, -1 / 3]]), rtol=0, atol=1e-6)
    adv = compute_advantages(torch.tensor([[2.0, 4.0, 6.0]]), "rloo", eps=EPS)
    torch.testing.assert_close(adv, torch.tensor([[-3.0, 0.0, 3.0]]), rtol=0, atol=1e-6)


def _rloo_literal_loop(rewards: torch.Tensor) -> torch.Tensor:
    """r_i minus the plain mean of the other G-1 rewards, one element at a time (float64)."""
    num_prompts, group_size = rewards.shape
    out = torch.zeros(num_prompts, group_size, dtype=torch.float64)
    for p in range(num_prompts):
        for i in range(group_size):
            others = [float(rewards[p, j]) for j in range(group_size) if j != i]
            out[p, i] = float(rewards[p, i]) - sum(others) / len(others)
    return out


@pytest.mark.parametrize("group_size", [2, 3, 8])
def test_rloo_matches_literal_leave_one_out_loop(group_size):
    gen = torch.Generator().manual_seed(1234)
    continuous = torch.rand(5, group_size, generator=gen) * 3 - 1
    binary = (torch.rand(5, group_size, generator=gen) < 0.4).float()
    for rewards in (continuous, binary):
        adv = compute_advantages(rewards, "rloo", eps=EPS)
        torch.testing.assert_close(adv.double(), _rloo_literal_loop(rewards), rtol=1e-5, atol=1e-6)


def test_rloo_equals_g_over_g_minus_one_times_centred_reward():
    # r_i - (sum - r_i)/(G-1) = (G r_i - sum)/(G-1) = G/(G-1) * (r_i - mean).
    gen = torch.Generator().manual_seed(7)
    rewards = torch.randn(4, 6, generator=gen)
    group_size = 6
    identity = group_size / (group_size - 1) * (rewards - rewards.mean(-1, keepdim=True))
    torch.testing.assert_close(compute_advantages(rewards, "rloo", eps=EPS), identity)
    # ... and rloo is dr_grpo scaled by G/(G-1) = 6/5.
    torch.testing.assert_close(compute_advantages(rewards, "rloo", eps=EPS),
                               1.2 * compute_advantages(rewards, "dr_grpo", eps=EPS))


# ---------------------------------------------------------------- reinforce_pp


def test_reinforce_pp_hand_values_with_a_constant_group():
    # rewards [[1,1],[0,2],[0,4]] -> group-centred c = [[0,0],[-1,1],[-2,2]]; mean(c) = 0.
    # squares 0+0+1+1+4+4 = 10 over N-1 = 5: unbiased var 2, std sqrt(2) = 1.4142136; + eps = 1.4143136.
    # Row 0 constant -> exactly 0 (its zeros still count in the std).
    # Row 1: ±1 / 1.4143136 = ±0.7070568;  row 2: ±2 / 1.4143136 = ±1.4141136.
    rewards = torch.tensor([[1.0, 1.0], [0.0, 2.0], [0.0, 4.0]])
    adv = compute_advantages(rewards, "reinforce_pp", eps=EPS)
    assert torch.equal(adv[0], torch.zeros(2))
    expected = torch.tensor([[-1.0, 1.0], [-2.0, 2.0]]) / (math.sqrt(2) + EPS)
    torch.testing.assert_close(adv[1:], expected, rtol=0, atol=1e-6)
    rounded = torch.tensor([[-0.7070568, 0.7070568], [-1.4141136, 1.4141136]])
    torch.testing.assert_close(adv[1:], rounded, rtol=0, atol=1e-6)


def test_reinforce_pp_whitens_centred_rewards_not_raw_rewards():
    # rewards [[0,2],[2,4]]: c = [[-1,1],[-1,1]], squares 4 over N-1 = 3: std(c) = sqrt(4/3) = 1.1547005,
    # A = ±1 / 1.1548005 = ±0.8659504. batch_std divides by the std of the raw rewards {0,2,2,4},
    # sqrt(8/3) = 1.6329932, giving ±0.6123349: the group means' spread (1 vs 3) inflates it.
    rewards = torch.tensor([[0.0, 2.0], [2.0, 4.0]])
    adv = compute_advantages(rewards, "reinforce_pp", eps=EPS)
    torch.testing.assert_close(adv, torch.tensor([[-0.8659504, 0.8659504], [-0.8659504, 0.8659504]]),
                               rtol=0, atol=1e-6)
    assert not torch.allclose(adv, compute_advantages(rewards, "batch_std", eps=EPS), atol=1e-2)


def test_reinforce_pp_output_has_unit_std():
    # No constant group: every completion has signal, and the whitened batch has mean 0, std 1.
    gen = torch.Generator().manual_seed(5)
    rewards = torch.rand(6, 6, generator=gen) * 4 - 1
    adv = compute_advantages(rewards, "reinforce_pp", eps=1e-8)
    assert abs(float(adv.std()) - 1.0) < 1e-5
    assert abs(float(adv.mean())) < 1e-6
    # Two constant groups added (N = 48, 36 of them in groups with signal): the std is taken over all
    # N values, zeros included, so the whole batch still has std 1 ...
    with_constant = torch.cat([rewards, torch.full((2, 6), 0.3)])
    adv = compute_advantages(with_constant, "reinforce_pp", eps=1e-8)
    assert torch.equal(adv[6:], torch.zeros(2, 6))
    assert abs(float(adv.std()) - 1.0) < 1e-5
    # ... and the 36 non-constant values carry the whole sum of squares, 47: their unbiased std is
    # sqrt(47 / 35) = 1.1588171, not 1.
    assert abs(float(adv[:6].std()) - math.sqrt(47 / 35)) < 1e-5


@pytest.mark.parametrize("scale", [0.5, 3.0, 10.0])
def test_reinforce_pp_is_scale_invariant_up_to_eps(scale):
    # c and std(c) both scale by `scale`; only eps does not (relative change <= eps * |1 - 1/scale| / std(c)).
    gen = torch.Generator().manual_seed(9)
    rewards = torch.rand(5, 4, generator=gen)
    base = compute_advantages(rewards, "reinforce_pp", eps=EPS)
    torch.testing.assert_close(compute_advantages(rewards * scale, "reinforce_pp", eps=EPS), base,
                               rtol=1e-3, atol=1e-5)


# ---------------------------------------------------------------- opo


def test_opo_hand_values():
    # Row 0: r = [1,0,0], |o| = [2,4,4]: b = (2*1 + 4*0 + 4*0) / 10 = 0.2 -> A = [0.8, -0.2, -0.2]
    #        (dr_grpo's plain mean 1/3 would give [0.667, -0.333, -0.333]).
    # Row 1: r = [0,1,1], |o| = [1,3,6]: b = (0 + 3 + 6) / 10 = 0.9 -> A = [-0.9, 0.1, 0.1].
    # Row 2: r = [0.5,0.5,0.5] constant -> exactly 0 whatever the lengths.
    rewards = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.5, 0.5, 0.5]])
    lengths = torch.tensor([[2, 4, 4], [1, 3, 6], [1, 2, 3]])
    adv = compute_advantages(rewards, "opo", eps=EPS, lengths=lengths)
    torch.testing.assert_close(adv[:2], torch.tensor([[0.8, -0.2, -0.2], [-0.9, 0.1, 0.1]]), rtol=0, atol=1e-6)
    assert torch.equal(adv[2], torch.zeros(3))


def _opo_literal_loop(rewards: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """r_i - sum_j |o_j| r_j / sum_j |o_j|, one element at a time (float64)."""
    num_prompts, group_size = rewards.shape
    out = torch.zeros(num_prompts, group_size, dtype=torch.float64)
    for p in range(num_prompts):
        total = sum(float(lengths[p, j]) for j in range(group_size))
        baseline = sum(float(lengths[p, j]) * float(rewards[p, j]) for j in range(group_size)) / total
        for i in range(group_size):
            out[p, i] = float(rewards[p, i]) - baseline
    return out


@pytest.mark.parametrize("group_size", [2, 3, 8])
def test_opo_matches_literal_weighted_baseline_loop(group_size):
    gen = torch.Generator().manual_seed(21)
    rewards = torch.rand(5, group_size, generator=gen) * 3 - 1
    lengths = torch.randint(1, 50, (5, group_size), generator=gen)
    adv = compute_advantages(rewards, "opo", eps=EPS, lengths=lengths)
    torch.testing.assert_close(adv.double(), _opo_literal_loop(rewards, lengths), rtol=1e-5, atol=1e-6)


def test_opo_length_weighted_advantages_sum_to_zero():
    # sum_i |o_i| (r_i - b) = sum_i |o_i| r_i - b sum_i |o_i| = 0 by the definition of b.
    gen = torch.Generator().manual_seed(13)
    rewards = torch.randn(5, 6, generator=gen)
    lengths = torch.randint(1, 30, (5, 6), generator=gen).float()
    adv = compute_advantages(rewards, "opo", eps=EPS, lengths=lengths)
    torch.testing.assert_close((lengths * adv).sum(-1), torch.zeros(5), rtol=0, atol=1e-4)
    assert (adv.sum(-1).abs() > 1e-3).any()           # ... while the plain sum is not 0


def test_opo_with_equal_lengths_is_dr_grpo_and_ignores_a_common_length_scale():
    gen = torch.Generator().manual_seed(17)
    rewards = torch.rand(4, 5, generator=gen)
    # Equal lengths in a group: b = |o| sum r / (G |o|) = group mean, as in dr_grpo.
    equal = torch.full((4, 5), 7.0)
    torch.testing.assert_close(compute_advantages(rewards, "opo", eps=EPS, lengths=equal),
                               compute_advantages(rewards, "dr_grpo", eps=EPS), rtol=1e-5, atol=1e-6)
    # Multiplying every length of a group by the same factor cancels in b.
    lengths = torch.randint(1, 20, (4, 5), generator=gen).float()
    factor = torch.tensor([[1.0], [3.0], [0.5], [10.0]])
    torch.testing.assert_close(compute_advantages(rewards, "opo", eps=EPS, lengths=lengths * factor),
                               compute_advantages(rewards, "opo", eps=EPS, lengths=lengths), rtol=1e-5, atol=1e-6)


def test_opo_zero_lengths_do_not_divide_by_zero():
    # Row 0: |o| = [0,2,2], r = [1,0,0]: the empty completion weighs 0, b = 0 / 4 = 0 -> A = [1, 0, 0].
    # Row 1: all |o| = 0: numerator 0, denominator clamped from 0 to 1 -> b = 0, A = r = [1, 0, 0.5],
    #        finite (and those completions have no token for the advantage to act on).
    # Row 2: constant with all |o| = 0 -> exactly 0, with eps = 0.
    rewards = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.5], [0.7, 0.7, 0.7]])
    lengths = torch.tensor([[0, 2, 2], [0, 0, 0], [0, 0, 0]])
    adv = compute_advantages(rewards, "opo", eps=0.0, lengths=lengths)
    assert torch.isfinite(adv).all()
    torch.testing.assert_close(adv[:2], torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.5]]), rtol=0, atol=0)
    assert torch.equal(adv[2], torch.zeros(3))


def test_opo_without_lengths_raises():
    with pytest.raises(GrpoError, match="lengths"):
        compute_advantages(torch.tensor([[1.0, 0.0]]), "opo", eps=EPS)


# ---------------------------------------------------------------- gpg


def test_gpg_hand_values():
    # P = 3 groups, row 1 constant -> P_valid = 2, scale P / P_valid = 3/2
    # (= B / (B - M) = 12 / (12 - 4) with B = 12 completions, M = 4 of them in the constant group).
    # Row 0 [1,0,0,0]: mean 1/4, centred [0.75, -0.25, -0.25, -0.25] * 1.5 = [1.125, -0.375, -0.375, -0.375].
    # Row 1 [1,1,1,1]: exactly 0.
    # Row 2 [0,1,1,0]: mean 1/2, centred [-0.5, 0.5, 0.5, -0.5] * 1.5 = [-0.75, 0.75, 0.75, -0.75].
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    adv = compute_advantages(rewards, "gpg", eps=EPS)
    expected = torch.tensor([[1.125, -0.375, -0.375, -0.375], [0.0, 0.0, 0.0, 0.0], [-0.75, 0.75, 0.75, -0.75]])
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-7)
    assert torch.equal(adv[1], torch.zeros(4))


@pytest.mark.parametrize("num_constant", [0, 1, 4])
def test_gpg_is_dr_grpo_scaled_by_total_over_valid_groups(num_constant):
    # 4 groups with signal plus num_constant constant ones: P = 4 + k, P_valid = 4,
    # so A = (4 + k) / 4 * dr_grpo on the first 4 rows (k = 0: exactly dr_grpo), 0 on the rest.
    gen = torch.Generator().manual_seed(19)
    varied = torch.rand(4, 5, generator=gen)
    rewards = torch.cat([varied, torch.full((num_constant, 5), 1.0)])
    adv = compute_advantages(rewards, "gpg", eps=EPS)
    torch.testing.assert_close(adv[:4], (4 + num_constant) / 4 * compute_advantages(varied, "dr_grpo", eps=EPS))
    assert torch.equal(adv[4:], torch.zeros(num_constant, 5))


def test_gpg_batch_of_only_constant_groups_is_zero():
    # P_valid = 0 is clamped to 1: no division by zero, and every centred value is 0 anyway.
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.3, 0.3, 0.3]])
    assert torch.equal(compute_advantages(rewards, "gpg", eps=0.0), torch.zeros(3, 3))


# ---------------------------------------------------------------- constant groups


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("value", [0.0, 1.0, 0.1, 0.3, 1 / 3, 0.7, -2.9, 1e6 + 0.1])
@pytest.mark.parametrize("group_size", [2, 3, 6, 7, 16])
def test_constant_group_gets_exactly_zero(estimator, value, group_size):
    # Next to a non-constant group (so batch_std's std is > 0) and alone (batch std == 0).
    constant = torch.full((group_size,), value)
    varied = torch.arange(group_size, dtype=torch.float32)
    lengths = _lengths(torch.zeros(2, group_size))
    mixed = compute_advantages(torch.stack([constant, varied]), estimator, eps=EPS, lengths=lengths)
    assert torch.equal(mixed[0], torch.zeros(group_size))            # exactly zero, never NaN
    assert torch.isfinite(mixed).all()
    assert (mixed[1] != 0).any()
    alone = compute_advantages(torch.stack([constant, constant]), estimator, eps=EPS, lengths=lengths)
    assert torch.equal(alone, torch.zeros(2, group_size))


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_constant_group_in_float64_input_gets_exactly_zero(estimator):
    rewards = torch.tensor([[0.1] * 5, [0.0, 1.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    adv = compute_advantages(rewards, estimator, eps=EPS, lengths=_lengths(rewards))
    assert torch.equal(adv[0], torch.zeros(5, dtype=adv.dtype))


@pytest.mark.parametrize("estimator", list(ADVANTAGES))
def test_every_estimator_takes_lengths_and_zeroes_a_constant_group_with_eps_zero(estimator):
    # Straight from the registry with the shared signature: eps = 0 would turn any 0/0 into NaN.
    rewards = torch.tensor([[0.1, 0.1, 0.1, 0.1], [0.0, 1.0, 0.0, 3.0]])
    lengths = torch.tensor([[5, 1, 3, 2], [4, 4, 1, 6]])
    adv = ADVANTAGES[estimator](rewards, eps=0.0, lengths=lengths)
    assert adv.shape == rewards.shape
    assert torch.equal(adv[0], torch.zeros(4))
    assert torch.isfinite(adv).all() and (adv[1] != 0).any()
    # A batch of only constant groups (batch-wide stds and P_valid are 0) is all exactly 0 too.
    alone = ADVANTAGES[estimator](rewards[:1].expand(2, 4), eps=0.0, lengths=lengths)
    assert torch.equal(alone, torch.zeros(2, 4))


def test_integer_and_bool_rewards_are_accepted():
    # [1,0]: mean 1/2, unbiased std = sqrt((1/4 + 1/4)/1) = sqrt(1/2) -> ±(1/2) / (0.7071068 + eps).
    expected = torch.tensor([[0.5, -0.5]]) / (math.sqrt(0.5) + EPS)
    for rewards in (torch.tensor([[1, 0]]), torch.tensor([[True, False]])):
        adv = compute_advantages(rewards, "grpo", eps=EPS)
        assert adv.is_floating_point()
        torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- invariances


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("shift", [-3.0, 0.1, 2.5, 100.0])
def test_reward_shift_changes_no_advantage(estimator, shift):
    gen = torch.Generator().manual_seed(0)
    continuous = torch.rand(6, 5, generator=gen)
    binary = (torch.rand(6, 5, generator=gen) < 0.5).float()
    binary[0] = 1.0                                   # make sure a constant group is in there
    lengths = _lengths(continuous)         # all > 0: opo's baseline is a weighted mean, so it shifts too
    for rewards in (continuous, binary):
        base = compute_advantages(rewards, estimator, eps=EPS, lengths=lengths)
        shifted = compute_advantages(rewards + shift, estimator, eps=EPS, lengths=lengths)
        # float32: adding 100 to rewards in [0, 1] rounds them at ~1e-5 absolute.
        torch.testing.assert_close(shifted, base, rtol=1e-4, atol=2e-4 if shift == 100.0 else 1e-5)
    # The constant row stays exactly zero after a shift by a non-representable constant.
    shifted_binary = compute_advantages(binary + shift, estimator, eps=EPS, lengths=lengths)
    assert torch.equal(shifted_binary[0], torch.zeros(5))


@pytest.mark.parametrize("scale", [0.5, 3.0, 10.0])
def test_grpo_is_scale_invariant_up_to_eps(scale):
    # A(c r) = (r - m) / (s + eps/c) vs A(r) = (r - m) / (s + eps): relative difference at most
    # eps * |1 - 1/c| / s. With s >= ~0.25 here and eps = 1e-4, c = 0.5 that is <= 4e-4; use 1e-3.
    gen = torch.Generator().manual_seed(3)
    rewards = torch.rand(8, 6, generator=gen)
    base = compute_advantages(rewards, "grpo", eps=EPS)
    scaled = compute_advantages(rewards * scale, "grpo", eps=EPS)
    torch.testing.assert_close(scaled, base, rtol=1e-3, atol=1e-5)
    # dr_grpo, by contrast, scales linearly with the rewards.
    torch.testing.assert_close(compute_advantages(rewards * scale, "dr_grpo", eps=EPS),
                               scale * compute_advantages(rewards, "dr_grpo", eps=EPS),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("estimator", [e for e in ESTIMATORS if e != "opo"])
def test_advantages_sum_to_zero_within_each_group(estimator):
    # Every estimator but opo is a positive multiple of (r - group mean), so each row sums to 0
    # (reinforce_pp subtracts mean(c) too, which is 0 up to rounding). opo's baseline is a
    # length-weighted mean, so only its length-weighted sum is 0 (tested below).
    gen = torch.Generator().manual_seed(11)
    rewards = torch.randn(5, 7, generator=gen)
    adv = compute_advantages(rewards, estimator, eps=EPS, lengths=_lengths(rewards))
    assert adv.shape == rewards.shape
    torch.testing.assert_close(adv.sum(-1), torch.zeros(5), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_group_of_one_raises_instead_of_nan(estimator):
    with pytest.raises(GrpoError, match="group size"):
        compute_advantages(torch.tensor([[1.0], [0.0]]), estimator, eps=EPS)


def test_unknown_estimator_raises():
    with pytest.raises(GrpoError, match="unknown advantage estimator"):
        compute_advantages(torch.tensor([[1.0, 0.0]]), "ppo", eps=EPS)


def test_rewards_must_be_two_dimensional():
    with pytest.raises(GrpoError, match=r"\[P, G\]"):
        compute_advantages(torch.tensor([1.0, 0.0, 1.0]), "grpo", eps=EPS)


def test_lengths_must_have_the_rewards_shape():
    with pytest.raises(GrpoError, match="lengths"):
        compute_advantages(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "opo", eps=EPS, lengths=torch.ones(2, 3))
    with pytest.raises(GrpoError, match="lengths"):
        compute_advantages(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "grpo", eps=EPS, lengths=torch.ones(4))


# ---------------------------------------------------------------- GDPO: normalise each reward, then sum


def _gdpo_paper_example() -> dict[str, torch.Tensor]:
    """GDPO's figure (NVlabs/GDPO imgs/gdpo_toy.png): G = 2, two binary rewards. Group A's rollouts score
    (format, correct) = (0, 0) and (0, 1), totals (0, 1); group B's (0, 0) and (1, 1), totals (0, 2)."""
    return {"format": torch.tensor([[0.0, 0.0], [0.0, 1.0]]), "correct": torch.tensor([[0.0, 1.0], [0.0, 1.0]])}


def test_summing_first_collapses_totals_0_1_and_0_2_to_one_advantage():
    # Totals [0, 1]: mean 1/2, unbiased std sqrt(1/2) -> (-1/2, 1/2) / sqrt(1/2) = (-0.7071068, 0.7071068).
    # Totals [0, 2]: mean 1, unbiased std sqrt(2)     -> (-1, 1) / sqrt(2)       = (-0.7071068, 0.7071068).
    parts = _gdpo_paper_example()
    summed = compute_advantages(parts["format"] + parts["correct"], "grpo", eps=0.0)
    torch.testing.assert_close(summed[0], summed[1], rtol=0, atol=1e-7)
    torch.testing.assert_close(summed[0], torch.tensor([-1.0, 1.0]) / math.sqrt(2), rtol=0, atol=1e-7)


def test_gdpo_hand_values_on_the_paper_example():
    # Per reward, a group [0, 1] gives (-c, c) with c = (1/2) / (sqrt(1/2) + eps); a constant group gives 0.
    #   A: format [0, 0] -> 0, correct [0, 1] -> (-c, c):   S_A = (-c, c)
    #   B: both [0, 1] -> (-c, c) each:                      S_B = (-2c, 2c)     (the paper's +-0.7071, +-1.4142)
    # Batch: S = [-c, c, -2c, 2c], mean 0, unbiased std sqrt((1 + 1 + 4 + 4) c^2 / 3) = c sqrt(10/3).
    #   A = S / (c sqrt(10/3) + eps).  With eps = 1e-4: c = 0.5 / 0.7072068 = 0.7070068,
    #   c sqrt(10/3) = 0.7070068 * 1.8257419 = 1.2908119, A_A = +-0.7070068 / 1.2909119 = +-0.5476801,
    #   A_B = +-1.0953603.
    c = 0.5 / (math.sqrt(0.5) + EPS)
    scale = c * math.sqrt(10 / 3) + EPS
    expected = torch.tensor([[-c, c], [-2 * c, 2 * c]]) / scale
    adv = normalize_then_sum(_gdpo_paper_example(), eps=EPS)
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(adv, torch.tensor([[-0.5476801, 0.5476801], [-1.0953603, 1.0953603]]),
                               rtol=0, atol=1e-6)
    # eps = 0: exactly +-1 / sqrt(10/3) = +-0.5477226 and +-2 / sqrt(10/3) = +-1.0954451.
    torch.testing.assert_close(normalize_then_sum(_gdpo_paper_example(), eps=0.0),
                               torch.tensor([[-1.0, 1.0], [-2.0, 2.0]]) / math.sqrt(10 / 3), rtol=0, atol=1e-6)


def test_gdpo_ties_1_0_and_0_1_within_a_group_where_both_rewards_have_one_rate():
    # One group, rollouts (1,0), (0,1), (0,0), (1,1). Sum first: totals [1, 1, 0, 2] tie rollouts 0 and 1.
    # GDPO: each reward is [1,0,0,1] / [0,1,0,1], mean 1/2, std s = sqrt(1/3): A_format = (1,-1,-1,1) / (2s),
    # A_correct = (-1,1,-1,1) / (2s); S = (0, 0, -1/s, 1/s): rollouts 0 and 1 tie here too (exactly 0).
    # Batch (eps = 0): mean 0, unbiased std sqrt((2 / s^2) / 3) = sqrt(2/3) / s -> A = (0, 0, -1, 1) sqrt(3/2).
    # The decoupling separates groups, not rollouts whose rewards have the same success rate in their group.
    parts = {"format": torch.tensor([[1.0, 0.0, 0.0, 1.0]]), "correct": torch.tensor([[0.0, 1.0, 0.0, 1.0]])}
    summed = compute_advantages(parts["format"] + parts["correct"], "grpo", eps=0.0)
    assert summed[0, 0] == summed[0, 1]
    adv = normalize_then_sum(parts, eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.0, -1.0, 1.0]]) * math.sqrt(1.5), rtol=0, atol=1e-6)
    assert adv[0, 0] == 0.0 and adv[0, 1] == 0.0


def test_gdpo_weights_scale_each_reward_before_the_sum():
    # a = [0, 1] -> (-c, c); b = [1, 0] -> (c, -c). Equal weights: S = (0, 0), a constant group -> exactly 0.
    # Weights a = 3, b = 1: S = (-2c, 2c); batch std of two values = sqrt(8 c^2 / 1) = 2 sqrt(2) c
    # -> (eps = 0) A = (-1, 1) / sqrt(2).
    parts = {"a": torch.tensor([[0.0, 1.0]]), "b": torch.tensor([[1.0, 0.0]])}
    assert torch.equal(normalize_then_sum(parts, eps=EPS), torch.zeros(1, 2))
    adv = normalize_then_sum(parts, {"a": 3.0, "b": 1.0}, eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([[-1.0, 1.0]]) / math.sqrt(2), rtol=0, atol=1e-6)


def test_gdpo_constant_groups_get_exactly_zero():
    # Group 0 has every reward constant; group 1 carries the signal. All-constant batch: all 0, no NaN at eps = 0.
    parts = {"a": torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]]),
             "b": torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 1.0]])}
    adv = normalize_then_sum(parts, eps=EPS)
    assert torch.equal(adv[0], torch.zeros(3)) and adv[1].abs().sum() > 0
    flat = {"a": torch.ones(2, 3), "b": torch.zeros(2, 3)}
    assert torch.equal(normalize_then_sum(flat, eps=0.0), torch.zeros(2, 3))


def test_gdpo_errors():
    with pytest.raises(GrpoError, match="at least one"):
        normalize_then_sum({}, eps=EPS)
    with pytest.raises(GrpoError, match="one shape"):
        normalize_then_sum({"a": torch.zeros(2, 3), "b": torch.zeros(3, 2)}, eps=EPS)
    with pytest.raises(GrpoError, match="reward weights"):
        normalize_then_sum({"a": torch.zeros(2, 3)}, {"b": 1.0}, eps=EPS)
