"""Tests for grpo/advantages.py: every expected number below is worked out by hand in a comment."""

from __future__ import annotations

import math

import pytest
import torch

from grpo import GrpoError
from grpo.advantages import ADVANTAGES, compute_advantages

ESTIMATORS = ["grpo", "dr_grpo", "batch_std", "rloo"]
EPS = 1e-4


def test_registry_holds_exactly_the_documented_estimators():
    assert set(ADVANTAGES) == set(ESTIMATORS)


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


# ---------------------------------------------------------------- constant groups


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("value", [0.0, 1.0, 0.1, 0.3, 1 / 3, 0.7, -2.9, 1e6 + 0.1])
@pytest.mark.parametrize("group_size", [2, 3, 6, 7, 16])
def test_constant_group_gets_exactly_zero(estimator, value, group_size):
    # Next to a non-constant group (so batch_std's std is > 0) and alone (batch std == 0).
    constant = torch.full((group_size,), value)
    varied = torch.arange(group_size, dtype=torch.float32)
    mixed = compute_advantages(torch.stack([constant, varied]), estimator, eps=EPS)
    assert torch.equal(mixed[0], torch.zeros(group_size))            # exactly zero, never NaN
    assert torch.isfinite(mixed).all()
    assert (mixed[1] != 0).any()
    alone = compute_advantages(torch.stack([constant, constant]), estimator, eps=EPS)
    assert torch.equal(alone, torch.zeros(2, group_size))


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_constant_group_in_float64_input_gets_exactly_zero(estimator):
    rewards = torch.tensor([[0.1] * 5, [0.0, 1.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    adv = compute_advantages(rewards, estimator, eps=EPS)
    assert torch.equal(adv[0], torch.zeros(5, dtype=adv.dtype))


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
    for rewards in (continuous, binary):
        base = compute_advantages(rewards, estimator, eps=EPS)
        shifted = compute_advantages(rewards + shift, estimator, eps=EPS)
        # float32: adding 100 to rewards in [0, 1] rounds them at ~1e-5 absolute.
        torch.testing.assert_close(shifted, base, rtol=1e-4, atol=2e-4 if shift == 100.0 else 1e-5)
    # The constant row stays exactly zero after a shift by a non-representable constant.
    assert torch.equal(compute_advantages(binary + shift, estimator, eps=EPS)[0], torch.zeros(5))


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


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_advantages_sum_to_zero_within_each_group(estimator):
    # Every estimator here is a positive multiple of (r - group mean), so each row sums to 0.
    gen = torch.Generator().manual_seed(11)
    rewards = torch.randn(5, 7, generator=gen)
    adv = compute_advantages(rewards, estimator, eps=EPS)
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
