"""Tests for grpo/algorithm/step_probes.py: hand-built tensors with hand-computed values."""

from __future__ import annotations

import math
import re

import pytest
import torch

from grpo import GrpoError
from grpo.algorithm import metrics
from grpo.algorithm import step_probes as probes
from grpo.algorithm.step_probes import (aggregation_token_weights, difficulty_metrics, ledger_metrics, length_bias_metrics,
                         solve_state)
from grpo.formulas.losses import AGGREGATIONS

# ---------------------------------------------------------------- difficulty levels

# Four prompts, G = 2: two at level d1, one at d2, one without a label.
LABELS = ["d1", "d2", "d1", ""]
CORRECT = torch.tensor([[1.0, 1.0],      # d1: all correct, constant -> A = 0
                        [1.0, 0.0],      # d2: mixed
                        [0.0, 1.0],      # d1: mixed
                        [0.0, 0.0]])     # "": all wrong, constant
ADVANTAGES = torch.tensor([[0.0, 0.0],
                           [1.0, -1.0],
                           [-0.5, 0.5],  # not the grpo values: the probe must average what it is given
                           [0.0, 0.0]])


# Tokens in the loss of each completion, [P, G]; 32 in all.
LOSS_LENGTHS = torch.tensor([[2, 4], [3, 1], [2, 10], [5, 5]])
TOKEN_MEAN = dict(aggregation="token_mean", num_seqs=8.0, num_tokens=32.0, max_len=10.0)


def test_difficulty_metrics_by_hand():
    out = difficulty_metrics(CORRECT.clone(), CORRECT, ADVANTAGES, LABELS, LOSS_LENGTHS, **TOKEN_MEAN)
    # The empty label makes no level: 2 levels x 4 keys.
    assert sorted(out) == sorted(f"by_difficulty/{d}/{k}" for d in ("d1", "d2")
                                 for k in ("accuracy", "zero_var_frac", "weight", "groups"))
    # d1 = prompts 0 and 2: correctness [1, 1, 0, 1] -> 3/4; prompt 0 constant, 2 not -> 1/2;
    # 2 of the 4 groups -> 1/2 (the unlabelled prompt counts in the 4).
    assert out["by_difficulty/d1/accuracy"].item() == 0.75
    assert out["by_difficulty/d1/zero_var_frac"].item() == 0.5
    assert out["by_difficulty/d1/groups"].item() == 0.5
    # d2 = prompt 1: correctness [1, 0] -> 1/2; not constant -> 0; 1 of 4 groups.
    assert out["by_difficulty/d2/accuracy"].item() == 0.5
    assert out["by_difficulty/d2/zero_var_frac"].item() == 0.0
    assert out["by_difficulty/d2/groups"].item() == 0.25
    # token_mean gives every token 1/32: a group's weight is sum |A| |o| / 32.
    #   prompt 0: 0; prompt 1: 1*3 + 1*1 = 4; prompt 2: 0.5*2 + 0.5*10 = 6; prompt 3: 0.  Total 10.
    #   d1 = 6/10, d2 = 4/10 (the mean |A| would say d2 = 1 against d1 = 0.25).
    assert out["by_difficulty/d1/weight"].item() == pytest.approx(0.6, abs=1e-6)
    assert out["by_difficulty/d2/weight"].item() == pytest.approx(0.4, abs=1e-6)


def test_difficulty_weight_is_the_share_the_aggregation_gives():
    """Two levels, equal |A| = 1, lengths 20 and 40 (G = 2, every completion of a prompt as long)."""
    total = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    advantages = torch.tensor([[1.0, -1.0], [1.0, -1.0]])
    lengths = torch.tensor([[20, 20], [40, 40]])
    norms = dict(num_seqs=4.0, num_tokens=120.0, max_len=64.0)
    # token_mean: every token weighs 1/120, so a level's share is its share of the tokens: 40 vs 80 -> 1/3, 2/3.
    out = difficulty_metrics(total, total, advantages, ["d1", "d2"], lengths, "token_mean", **norms)
    assert out["by_difficulty/d1/weight"].item() == pytest.approx(1 / 3, abs=1e-6)
    assert out["by_difficulty/d2/weight"].item() == pytest.approx(2 / 3, abs=1e-6)
    # seq_mean_token_sum_norm: every token 1 / (4 * 64): again proportional to tokens.
    out = difficulty_metrics(total, total, advantages, ["d1", "d2"], lengths, "seq_mean_token_sum_norm", **norms)
    assert out["by_difficulty/d2/weight"].item() == pytest.approx(2 / 3, abs=1e-6)
    # seq_mean_token_mean: a completion's tokens together weigh |A| / num_seqs whatever its length -> 1/2 each.
    out = difficulty_metrics(total, total, advantages, ["d1", "d2"], lengths, "seq_mean_token_mean", **norms)
    assert out["by_difficulty/d1/weight"].item() == pytest.approx(0.5, abs=1e-6)
    assert out["by_difficulty/d2/weight"].item() == pytest.approx(0.5, abs=1e-6)


def test_difficulty_weights_sum_to_one_only_over_labelled_prompts():
    # Prompt 2 has no label and a third of the tokens with |A| > 0 -> the two levels share 2/3.
    total = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    advantages = torch.tensor([[1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    lengths = torch.full((3, 2), 10)
    out = difficulty_metrics(total, total, advantages, ["d1", "d2", ""], lengths, "token_mean", 6.0, 60.0, 16.0)
    assert out["by_difficulty/d1/weight"].item() == pytest.approx(1 / 3, abs=1e-6)
    assert out["by_difficulty/d2/weight"].item() == pytest.approx(1 / 3, abs=1e-6)
    # A truncated completion masked out of the loss (0 tokens) takes no share: d1 now has 10 of 50 tokens.
    lengths = torch.tensor([[10, 0], [10, 10], [10, 10]])
    out = difficulty_metrics(total, total, advantages, ["d1", "d2", ""], lengths, "token_mean", 6.0, 50.0, 16.0)
    assert out["by_difficulty/d1/weight"].item() == pytest.approx(1 / 5, abs=1e-6)


def test_difficulty_weight_is_absent_when_no_gradient():
    # Every group constant: A = 0 everywhere, nothing to share; the other keys stay.
    total = torch.ones(2, 2)
    out = difficulty_metrics(total, total, torch.zeros(2, 2), ["d1", "d2"], torch.full((2, 2), 5), **TOKEN_MEAN)
    assert not any(key.endswith("/weight") for key in out)
    assert out["by_difficulty/d1/zero_var_frac"].item() == 1.0 and len(out) == 2 * 3


def test_difficulty_zero_var_uses_the_total_reward():
    # Prompt 0 is all correct but a format reward makes its total vary ([1.1, 1.0]): it carries signal,
    # so d1 has no constant group left -> 0, while its accuracy is still 3/4.
    total = CORRECT + torch.tensor([[0.1, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    out = difficulty_metrics(total, CORRECT, ADVANTAGES, LABELS, LOSS_LENGTHS, **TOKEN_MEAN)
    assert out["by_difficulty/d1/zero_var_frac"].item() == 0.0
    assert out["by_difficulty/d1/accuracy"].item() == 0.75        # correctness itself is unchanged


def test_difficulty_without_correct_reward_or_labels():
    out = difficulty_metrics(CORRECT, None, ADVANTAGES, LABELS, LOSS_LENGTHS, **TOKEN_MEAN)
    assert not any(key.endswith("/accuracy") for key in out) and len(out) == 6
    assert difficulty_metrics(CORRECT, CORRECT, ADVANTAGES, [""] * 4, LOSS_LENGTHS, **TOKEN_MEAN) == {}
    with pytest.raises(GrpoError, match="3 labels for 4 prompts"):
        difficulty_metrics(CORRECT, CORRECT, ADVANTAGES, LABELS[:3], LOSS_LENGTHS, **TOKEN_MEAN)


# ---------------------------------------------------------------- aggregation weights

def test_aggregation_token_weights_by_hand():
    lengths = torch.tensor([2, 4])
    kwargs = dict(num_seqs=2.0, num_tokens=6.0, max_len=5.0)
    # seq_mean_token_mean: 1 / (num_seqs |o_i|) = 1 / (2*2), 1 / (2*4)
    torch.testing.assert_close(aggregation_token_weights(lengths, "seq_mean_token_mean", **kwargs),
                               torch.tensor([0.25, 0.125]))
    # token_mean: 1 / num_tokens = 1/6 for every token
    torch.testing.assert_close(aggregation_token_weights(lengths, "token_mean", **kwargs),
                               torch.tensor([1 / 6, 1 / 6]))
    # seq_mean_token_sum_norm: 1 / (num_seqs max_len) = 1 / 10
    torch.testing.assert_close(aggregation_token_weights(lengths, "seq_mean_token_sum_norm", **kwargs),
                               torch.tensor([0.1, 0.1]))


def test_aggregation_token_weights_empty_row_and_no_grad():
    # A zero-length row gets 0 (no token to weigh); the others 1 / (3 |o_i|) = 1/6, 1/12. Under no_grad,
    # as the trainer's metric code may run.
    with torch.no_grad():
        weights = aggregation_token_weights(torch.tensor([2, 0, 4]), "seq_mean_token_mean",
                                            num_seqs=3.0, num_tokens=6.0, max_len=4.0)
    torch.testing.assert_close(weights, torch.tensor([1 / 6, 0.0, 1 / 12]))
    with pytest.raises(GrpoError, match="unknown aggregation"):
        aggregation_token_weights(torch.tensor([2]), "seq_sum", 1.0, 2.0, 2.0)


def test_aggregation_token_weights_sum_over_tokens():
    # sum_i |o_i| w_i is the loss of all-ones token losses: 1 for the two means, sum|o| / (B L) for
    # sum_norm. lengths sum to 3+7+1+5+5 = 21, B = 5, L = 8 -> 21/40.
    lengths = torch.tensor([3, 7, 1, 5, 5])
    kwargs = dict(num_seqs=5.0, num_tokens=21.0, max_len=8.0)
    for aggregation, expected in (("seq_mean_token_mean", 1.0), ("token_mean", 1.0),
                                  ("seq_mean_token_sum_norm", 21 / 40)):
        total = (lengths * aggregation_token_weights(lengths, aggregation, **kwargs)).sum()
        assert total.item() == pytest.approx(expected, rel=1e-6), aggregation


def test_aggregation_token_weights_follow_the_registry(monkeypatch):
    """The weights are read off AGGREGATIONS, so a changed aggregation changes the probe with it."""
    doubled = lambda tok_loss, mask, **kw: 2 * AGGREGATIONS["token_mean"](tok_loss, mask, **kw)  # noqa: E731
    monkeypatch.setitem(AGGREGATIONS, "seq_mean_token_sum_norm", doubled)
    weights = aggregation_token_weights(torch.tensor([2, 4]), "seq_mean_token_sum_norm", 2.0, 6.0, 5.0)
    torch.testing.assert_close(weights, torch.tensor([2 / 6, 2 / 6]))          # 2 / num_tokens


# ---------------------------------------------------------------- length bias

# One group: three correct and three wrong completions of lengths 1, 2, 4, all with |A| = 1. [P, G] = [1, 6].
EQUAL_ADV = torch.tensor([[1.0, 1.0, 1.0, -1.0, -1.0, -1.0]])
LENGTHS = torch.tensor([[1, 2, 4, 1, 2, 4]])
NORMS = dict(num_seqs=6.0, num_tokens=14.0, max_len=4.0)


def test_seq_mean_token_mean_length_bias_by_hand():
    # w = 1 / (6 |o|) = (1/6, 1/12, 1/24), mean 7/72: relative deviations w / mean - 1 = (5, -1, -4) / 7;
    # lengths (1, 2, 4), mean 7/3: (-4, -1, 5) / 7. The sevens cancel:
    #   r = (-20 + 1 - 20) / sqrt(42 * 42) = -39/42 = -13/14  (1/|o| is not linear in |o|: not -1).
    out = length_bias_metrics(EQUAL_ADV, LENGTHS, "seq_mean_token_mean", **NORMS)
    assert out["bias/len_corr_pos"].item() == pytest.approx(-13 / 14, abs=1e-6)
    assert out["bias/len_corr_neg"].item() == pytest.approx(-13 / 14, abs=1e-6)   # same |A|, same lengths
    # Two distinct lengths (2, 2, 4): three points on two abscissae lie on a line -> exactly -1.
    out = length_bias_metrics(EQUAL_ADV, torch.tensor([[2, 2, 4, 2, 2, 4]]), "seq_mean_token_mean", **NORMS)
    assert out["bias/len_corr_pos"].item() == pytest.approx(-1.0, abs=1e-6)
    assert out["bias/len_corr_neg"].item() == pytest.approx(-1.0, abs=1e-6)


def test_no_length_bias_without_per_sequence_normalisation():
    # token_mean and sum_norm: equal |A| in a group gives equal w, which does not move with length -> 0.
    for aggregation in ("token_mean", "seq_mean_token_sum_norm"):
        out = length_bias_metrics(EQUAL_ADV, LENGTHS, aggregation, **NORMS)
        assert out["bias/len_corr_pos"].item() == 0.0 and out["bias/len_corr_neg"].item() == 0.0, aggregation
    # Exactly 0 also where the group mean of equal weights is off by an ulp: |A| = 0.1 three times
    # (0.1 + 0.1 + 0.1 = 0.30000000000000004 in float64) in each of 4 groups of various lengths.
    advantages = torch.tensor([[0.1, 0.1, 0.1, -0.3]] * 4, dtype=torch.float64)
    lengths = torch.tensor([[3, 7, 11, 2], [5, 1, 9, 2], [13, 2, 6, 2], [1, 4, 8, 2]])
    out = length_bias_metrics(advantages, lengths, "token_mean", 16.0, float(lengths.sum()), 16.0)
    assert out["bias/len_corr_pos"].item() == 0.0
    # And where float32 advantages equal in exact arithmetic differ in their last bits (a KL-in-reward penalty's
    # rounding): |A| = 0.5 * (1 + 3e-7 * e_i) with e a ramp in length order reads a correlation of +1 without
    # the rounding tolerance (relative spread 6e-7 < ROUNDING = 1e-6), 0 with it.
    ramp = torch.tensor([[0.0, 1.0, 2.0]] * 4)
    noisy = torch.cat([0.5 * (1 + 3e-7 * ramp), torch.full((4, 1), -1.0)], dim=1)
    ordered = torch.tensor([[3, 7, 11, 2], [1, 5, 9, 2], [2, 6, 13, 2], [1, 4, 8, 2]])
    out = length_bias_metrics(noisy, ordered, "token_mean", 16.0, float(ordered.sum()), 16.0)
    assert out["bias/len_corr_pos"].item() == 0.0
    # A group whose A is only rounding (|A| ~ 1e-8 beside a real group's 1: a KL-in-reward penalty's last
    # bits at step 1) sorts no completion into a sign: the correlation is the real groups' alone.
    real = torch.tensor([[1.0, 2.0, -3.0], [3.0, 1.0, -4.0]])
    real_lengths = torch.tensor([[2, 4, 3], [10, 30, 20]])
    alone = length_bias_metrics(real, real_lengths, "token_mean", 6.0, 69.0, 30.0)
    rounding = torch.tensor([[2.6e-8, 1.8e-8, -2.9e-9]])       # lengths in anti-order to the noise
    both = length_bias_metrics(torch.cat([real, rounding]), torch.cat([real_lengths, torch.tensor([[5, 9, 12]])]),
                               "token_mean", 6.0, 69.0, 30.0)
    assert both["bias/len_corr_pos"].item() == pytest.approx(alone["bias/len_corr_pos"].item(), abs=1e-12)


def test_length_correlation_is_within_groups_by_hand():
    # token_mean: w is |A| / num_tokens, so only |A| varies. Two groups of three:
    #   group 0: A = (1, 2, -3), lengths (2, 4, 3); group 1: A = (3, 1, -4), lengths (10, 30, 20).
    # A > 0, relative to the group's mean (over its A > 0 completions):
    #   group 0: |A| (1, 2) / 1.5 - 1 = (-1/3, 1/3); lengths (2, 4) / 3 - 1 = (-1/3, 1/3)
    #   group 1: |A| (3, 1) / 2 - 1 = (1/2, -1/2);  lengths (10, 30) / 20 - 1 = (-1/2, 1/2)
    #   sum dx dy = 2/9 - 1/2 = -5/18; sum dx^2 = sum dy^2 = 2/9 + 1/2 = 13/18 -> r = -5/13.
    advantages = torch.tensor([[1.0, 2.0, -3.0], [3.0, 1.0, -4.0]])
    lengths = torch.tensor([[2, 4, 3], [10, 30, 20]])
    norms = dict(num_seqs=6.0, num_tokens=69.0, max_len=30.0)
    for aggregation in ("token_mean", "seq_mean_token_sum_norm"):
        out = length_bias_metrics(advantages, lengths, aggregation, **norms)
        # One A < 0 per group: no within-group degree of freedom -> no neg key.
        assert set(out) == {"bias/len_corr_pos", "bias/len_spread_within"}, aggregation
        assert out["bias/len_corr_pos"].item() == pytest.approx(-5 / 13, abs=1e-6)
    # The same magnitudes with A < 0 land on the other key, with the same value (w uses |A|).
    out = length_bias_metrics(-advantages, lengths, "token_mean", **norms)
    assert out["bias/len_corr_neg"].item() == pytest.approx(-5 / 13, abs=1e-6) and "bias/len_corr_pos" not in out


def test_length_spread_within_by_hand():
    # The groups above: (2, 4, 3), mean 3 -> relative (-1/3, 1/3, 0); (10, 30, 20), mean 20 -> (-1/2, 1/2, 0).
    #   sum of squares 2/9 + 1/2 = 13/18 over sum (n_p - 1) = 2 + 2 = 4 -> sqrt(13/72).
    assert probes.length_spread_within(torch.tensor([[2, 4, 3], [10, 30, 20]])).item() == \
        pytest.approx(math.sqrt(13 / 72), abs=1e-9)
    # A completion with no token in the loss is left out: (2, 4, 0) is (2, 4), 1 degree of freedom:
    #   (-1/3)^2 + (1/3)^2 = 2/9 over 1 + 2 -> sqrt(13/54).
    assert probes.length_spread_within(torch.tensor([[2, 4, 0], [10, 30, 20]])).item() == \
        pytest.approx(math.sqrt(13 / 54), abs=1e-9)
    # A group scaled by 10 has the same relative spread; equal lengths within groups give 0; no pair gives None.
    assert probes.length_spread_within(torch.tensor([[20, 40, 30], [100, 300, 200]])).item() == \
        pytest.approx(math.sqrt(13 / 72), abs=1e-9)
    assert probes.length_spread_within(torch.tensor([[3, 3], [8, 8]])).item() == 0.0
    assert probes.length_spread_within(torch.tensor([[3, 0], [0, 8]])) is None


def test_length_bias_needs_two_degrees_of_freedom_and_varying_lengths():
    norms = dict(num_seqs=4.0, num_tokens=10.0, max_len=4.0)
    # One group with two A > 0: one degree of freedom (a pair always correlates +-1) -> absent.
    out = length_bias_metrics(torch.tensor([[1.0, 1.0, -1.0, 0.0]]), torch.tensor([[1, 3, 2, 4]]),
                              "seq_mean_token_mean", **norms)
    assert set(out) == {"bias/len_spread_within"}
    # Two such groups: two degrees of freedom -> present (each pair falls: w = 1 / (4 |o|)) -> -1.
    out = length_bias_metrics(torch.tensor([[1.0, 1.0, -1.0, 0.0]] * 2), torch.tensor([[1, 3, 2, 4]] * 2),
                              "seq_mean_token_mean", 8.0, 20.0, 4.0)
    assert out["bias/len_corr_pos"].item() == pytest.approx(-1.0, abs=1e-9) and "bias/len_corr_neg" not in out
    # Three A > 0 but one has no token in the loss (e.g. masked truncated): only two remain -> absent.
    out = length_bias_metrics(torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([[0, 2, 4]]), "seq_mean_token_mean",
                              num_seqs=3.0, num_tokens=6.0, max_len=4.0)
    assert set(out) == {"bias/len_spread_within"}
    # Lengths equal within every group (they differ only between groups): nothing to correlate.
    out = length_bias_metrics(torch.tensor([[1.0, 1.0, -1.0]] * 2), torch.tensor([[2, 2, 2], [5, 5, 5]]),
                              "seq_mean_token_mean", 6.0, 21.0, 8.0)
    assert out == {"bias/len_spread_within": pytest.approx(0.0)}


def test_length_bias_wants_the_group_shape():
    with pytest.raises(GrpoError, match=r"\[P, G\]"):
        length_bias_metrics(EQUAL_ADV.flatten(), LENGTHS.flatten(), "token_mean", **NORMS)


# ---------------------------------------------------------------- prompt ledger

def test_solve_state():
    # Only exactly 0 and exactly 1 are constant groups; 0.75 (3 of 4 right) is still mixed.
    rates = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    assert solve_state(rates).tolist() == [probes.ALL_WRONG, probes.MIXED, probes.MIXED, probes.MIXED,
                                           probes.ALL_CORRECT]
    assert solve_state(rates).tolist() == [0, 1, 1, 1, 2]


def test_ledger_by_hand():
    # G = 2, ten prompts; 7 and 8 are new (NaN). The eight revisited prompts make each of the six moves
    # once (0..5) and two stay (6 mixed -> mixed, 9 wrong -> wrong).
    nan = float("nan")
    previous = torch.tensor([0.0, 0.5, 0.0, 1.0, 0.5, 1.0, 0.5, nan, nan, 0.0])
    current = torch.tensor([0.5, 1.0, 1.0, 0.5, 0.0, 0.0, 0.5, 1.0, 0.0, 0.0])
    out = ledger_metrics(previous, current, group_size=2)
    assert out["ledger/revisit_frac"].item() == pytest.approx(8 / 10)
    for move in ("wrong_to_mixed", "mixed_to_correct", "wrong_to_correct", "correct_to_mixed",
                 "mixed_to_wrong", "correct_to_wrong"):
        assert out[f"ledger/{move}"].item() == 1 / 8, move
    # Now constant among the revisited: prompts 1, 2 (correct), 4, 5, 9 (wrong) -> 5/8. The new prompts
    # 7 (correct) and 8 (wrong) are not counted (counting them would give 7/10).
    assert out["ledger/zero_var_measured"].item() == 5 / 8
    # Predicted: with the same G, the unbiased estimate of q^2 + (1-q)^2 is the previous visit's own
    # indicator of a constant group: prompts 0, 2, 9 (wrong), 3, 5 (correct) -> 5/8. (Plugging the previous
    # rates into q^2 + (1-q)^2, the old predictor, gives 1 at q in {0, 1} and 0.5 at q = 0.5: 13/16.)
    assert out["ledger/zero_var_predicted"].item() == 5 / 8
    # Constant at the previous visit: 0, 2, 9 (wrong), 3, 5 (correct) -> 5/8; constant at both visits:
    # 2 (wrong -> correct), 5 (correct -> wrong), 9 (wrong -> wrong) -> 3/8 (G5's persistence reads these).
    assert out["ledger/zero_var_before"].item() == 5 / 8
    assert out["ledger/zero_var_kept"].item() == 3 / 8
    assert len(out) == 1 + 6 + 2 + 2


def test_ledger_predicted_from_a_larger_previous_group():
    # G = 4 now. Previous groups of G' = 4 with q = 0.5, 0.25 were mixed: predicted 0 (the plug-in gave
    # (2/16 + 82/256) / 2). Both groups are all correct now (measured 1), which does not enter the prediction.
    out = ledger_metrics(torch.tensor([0.5, 0.25]), torch.tensor([1.0, 1.0]), group_size=4)
    assert out["ledger/zero_var_predicted"].item() == 0.0
    assert out["ledger/zero_var_measured"].item() == 1.0
    assert out["ledger/mixed_to_correct"].item() == 1.0
    # Previous groups of G' = 8: k correct -> C(k, 4)/C(8, 4) + C(8-k, 4)/C(8, 4), C(8, 4) = 70.
    #   k = 6: 15/70 + 0; k = 8: 1 + 0; k = 2: 0 + 15/70; k = 4: 1/70 + 1/70. Mean (15 + 70 + 15 + 2) / 280.
    previous = torch.tensor([6, 8, 2, 4]) / 8
    out = ledger_metrics(previous, torch.full((4,), 0.5), group_size=4, previous_group_size=8)
    assert out["ledger/zero_var_predicted"].item() == pytest.approx(102 / 280, abs=1e-7)
    # G' = 2 < G = 4: no unbiased estimate -> no predicted key (the moves and measured stay).
    out = ledger_metrics(torch.tensor([0.5, 1.0]), torch.tensor([0.5, 1.0]), group_size=4, previous_group_size=2)
    assert "ledger/zero_var_predicted" not in out and out["ledger/zero_var_measured"].item() == 0.5


def test_unbiased_power_is_unbiased():
    """E[C(k, m) / C(n, m)] over k ~ Binomial(n, q) is q^m: summed over the binomial pmf, not sampled."""
    for n, m in ((5, 3), (8, 8), (8, 1), (6, 0)):
        k = torch.arange(n + 1)
        estimates = probes.unbiased_power(k, n, m)
        for q in (0.0, 0.3, 0.77, 1.0):
            pmf = torch.tensor([math.comb(n, j) * q ** j * (1 - q) ** (n - j) for j in range(n + 1)],
                               dtype=torch.float64)
            assert (pmf * estimates).sum().item() == pytest.approx(q ** m, abs=1e-12), (n, m, q)
    # m = n: the indicator that every trial succeeded.
    assert probes.unbiased_power(torch.arange(5), 4, 4).tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]
    with pytest.raises(GrpoError, match="q\\^4 from 2 trials"):
        probes.unbiased_power(torch.arange(3), 2, 4)


def test_ledger_without_revisits_has_only_the_revisit_share():
    nan = float("nan")
    out = ledger_metrics(torch.tensor([nan, nan]), torch.tensor([0.5, 1.0]), group_size=2)
    assert set(out) == {"ledger/revisit_frac"} and out["ledger/revisit_frac"].item() == 0.0


# ---------------------------------------------------------------- catalogue

def test_every_emitted_key_is_in_the_catalogue():
    """The metric catalogue (grpo/algorithm/metrics.py) lists each key once (key at column 2, text at column 30)."""
    doc = metrics.__doc__
    catalogue = doc[doc.index("\nby difficulty level"):doc.index("\ncounterfactual gradients")]   # the probes' part
    entries = [line for line in catalogue.splitlines() if line.startswith("  ") and line[2] != " "]
    listed = {line.split()[0] for line in entries}
    for line in entries:
        if len(line.split()[0]) < 28:                   # a longer key is followed by one space
            assert line[30] != " " and line[2:30].rstrip() == line.split()[0], line
    emitted = set(difficulty_metrics(CORRECT, CORRECT, ADVANTAGES, LABELS, LOSS_LENGTHS, **TOKEN_MEAN))
    emitted |= set(length_bias_metrics(EQUAL_ADV, LENGTHS, "seq_mean_token_mean", **NORMS))
    emitted |= set(ledger_metrics(torch.tensor([0.0, float("nan")]), torch.tensor([0.5, 0.5]), 2))
    emitted = {re.sub(r"by_difficulty/[^/]+/", "by_difficulty/<d>/", key) for key in emitted}
    assert len(emitted) == 4 + 3 + 11
    assert emitted <= listed, emitted - listed
