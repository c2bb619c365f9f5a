"""Tests for grpo/probes.py: hand-built tensors with hand-computed values."""

from __future__ import annotations

import math
import re

import pytest
import torch

from grpo import GrpoError, metrics, probes
from grpo.losses import AGGREGATIONS
from grpo.probes import (aggregation_token_weights, difficulty_metrics, ledger_metrics, length_bias_metrics,
                         solve_state)

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


def test_difficulty_metrics_by_hand():
    out = difficulty_metrics(CORRECT.clone(), CORRECT, ADVANTAGES, LABELS)
    # The empty label makes no level: 2 levels x 4 keys.
    assert sorted(out) == sorted(f"by_difficulty/{d}/{k}" for d in ("d1", "d2")
                                 for k in ("accuracy", "zero_var_frac", "weight", "groups"))
    # d1 = prompts 0 and 2: correctness [1, 1, 0, 1] -> 3/4; prompt 0 constant, 2 not -> 1/2;
    # |A| = [0, 0, 0.5, 0.5] -> 1/4; 2 of the 4 groups -> 1/2 (the unlabelled prompt counts in the 4).
    assert out["by_difficulty/d1/accuracy"].item() == 0.75
    assert out["by_difficulty/d1/zero_var_frac"].item() == 0.5
    assert out["by_difficulty/d1/weight"].item() == 0.25
    assert out["by_difficulty/d1/groups"].item() == 0.5
    # d2 = prompt 1: correctness [1, 0] -> 1/2; not constant -> 0; |A| = [1, 1] -> 1; 1 of 4 groups.
    assert out["by_difficulty/d2/accuracy"].item() == 0.5
    assert out["by_difficulty/d2/zero_var_frac"].item() == 0.0
    assert out["by_difficulty/d2/weight"].item() == 1.0
    assert out["by_difficulty/d2/groups"].item() == 0.25
    # weight * groups summed over levels = 0.25 * 0.5 + 1 * 0.25 = 0.375 = adv/abs_mean (3 / 8), since
    # the unlabelled prompt has A = 0.
    parts = sum(out[f"by_difficulty/{d}/weight"] * out[f"by_difficulty/{d}/groups"] for d in ("d1", "d2"))
    assert parts.item() == ADVANTAGES.abs().mean().item() == 0.375


def test_difficulty_zero_var_uses_the_total_reward():
    # Prompt 0 is all correct but a format reward makes its total vary ([1.1, 1.0]): it carries signal,
    # so d1 has no constant group left -> 0, while its accuracy is still 3/4.
    total = CORRECT + torch.tensor([[0.1, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    out = difficulty_metrics(total, CORRECT, ADVANTAGES, LABELS)
    assert out["by_difficulty/d1/zero_var_frac"].item() == 0.0
    assert out["by_difficulty/d1/accuracy"].item() == 0.75        # correctness itself is unchanged


def test_difficulty_without_correct_reward_or_labels():
    out = difficulty_metrics(CORRECT, None, ADVANTAGES, LABELS)
    assert not any(key.endswith("/accuracy") for key in out) and len(out) == 6
    assert difficulty_metrics(CORRECT, CORRECT, ADVANTAGES, [""] * 4) == {}
    with pytest.raises(GrpoError, match="3 labels for 4 prompts"):
        difficulty_metrics(CORRECT, CORRECT, ADVANTAGES, LABELS[:3])


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

# Three correct and three wrong completions of lengths 1, 2, 4, all with |A| = 1.
EQUAL_ADV = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
LENGTHS = torch.tensor([1, 2, 4, 1, 2, 4])
NORMS = dict(num_seqs=6.0, num_tokens=14.0, max_len=4.0)


def test_seq_mean_token_mean_length_bias_by_hand():
    # w = 1 / (6 |o|) = (1/6, 1/12, 1/24): not linear in |o|, so the correlation is not -1.
    # Deviations: |o| - 7/3 = (-4, -1, 5) / 3; w * 6 - 7/12 = (5, -1, -4) / 12. The scales cancel:
    #   r = (-20 + 1 - 20) / sqrt(42 * 42) = -39/42 = -13/14.
    out = length_bias_metrics(EQUAL_ADV, LENGTHS, "seq_mean_token_mean", **NORMS)
    assert out["bias/len_corr_pos"].item() == pytest.approx(-13 / 14, abs=1e-6)
    assert out["bias/len_corr_neg"].item() == pytest.approx(-13 / 14, abs=1e-6)   # same |A|, same lengths
    # Two distinct lengths (2, 2, 4): three points on two abscissae lie on a line -> exactly -1.
    out = length_bias_metrics(EQUAL_ADV, torch.tensor([2, 2, 4, 2, 2, 4]), "seq_mean_token_mean", **NORMS)
    assert out["bias/len_corr_pos"].item() == pytest.approx(-1.0, abs=1e-6)
    assert out["bias/len_corr_neg"].item() == pytest.approx(-1.0, abs=1e-6)


def test_no_length_bias_without_per_sequence_normalisation():
    # token_mean and sum_norm: equal A gives equal w, a constant variable -> no key (never NaN).
    for aggregation in ("token_mean", "seq_mean_token_sum_norm"):
        assert length_bias_metrics(EQUAL_ADV, LENGTHS, aggregation, **NORMS) == {}, aggregation


def test_length_correlation_comes_from_advantages_under_token_mean():
    # A = (1, 2, 3) on lengths (1, 2, 4). token_mean: w ∝ |A|, deviations (-1, 0, 1) and (-4, -1, 5)/3:
    #   r = (4 + 0 + 5) / sqrt(2 * 42) = 9 / sqrt(84)  (positive: here the longer completions got more A)
    # seq_mean_token_mean: w ∝ |A| / |o| = (1, 1, 3/4), deviations (1, 1, -2)/12:
    #   r = (-4 - 1 - 10) / sqrt(42 * 6) = -15 / sqrt(252)  (the 1/|o| turns the sign)
    advantages, lengths = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1, 2, 4])
    norms = dict(num_seqs=3.0, num_tokens=7.0, max_len=4.0)
    for aggregation in ("token_mean", "seq_mean_token_sum_norm"):
        out = length_bias_metrics(advantages, lengths, aggregation, **norms)
        assert set(out) == {"bias/len_corr_pos"}                      # no A < 0 at all
        assert out["bias/len_corr_pos"].item() == pytest.approx(9 / math.sqrt(84), abs=1e-6)
    out = length_bias_metrics(advantages, lengths, "seq_mean_token_mean", **norms)
    assert out["bias/len_corr_pos"].item() == pytest.approx(-15 / math.sqrt(252), abs=1e-6)
    # The same magnitudes with A < 0 land on the other key, with the same value (w uses |A|).
    out = length_bias_metrics(-advantages, lengths, "token_mean", **norms)
    assert set(out) == {"bias/len_corr_neg"}
    assert out["bias/len_corr_neg"].item() == pytest.approx(9 / math.sqrt(84), abs=1e-6)


def test_length_bias_needs_three_completions_with_tokens():
    # Two with A > 0 -> no pos key; three with A < 0 and varying lengths -> a neg key. A = 0 counts in neither.
    advantages = torch.tensor([1.0, 1.0, 0.0, -1.0, -1.0, -1.0])
    out = length_bias_metrics(advantages, torch.tensor([1, 2, 3, 1, 2, 4]), "seq_mean_token_mean", **NORMS)
    assert set(out) == {"bias/len_corr_neg"}
    # Three A > 0 but one has no token in the loss (e.g. masked truncated): only two remain -> absent.
    out = length_bias_metrics(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0, 2, 4]), "seq_mean_token_mean",
                              num_seqs=3.0, num_tokens=6.0, max_len=4.0)
    assert out == {}


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
    # Predicted from the previous rates q: q^2 + (1-q)^2 = 1 at q in {0, 1} and 0.5 at q = 0.5:
    #   prompts 0..6, 9 -> 1 + .5 + 1 + 1 + .5 + 1 + .5 + 1 = 6.5, over 8 = 13/16: not the measured 5/8.
    assert out["ledger/zero_var_predicted"].item() == 13 / 16
    assert len(out) == 1 + 6 + 2


def test_ledger_predicted_uses_the_previous_rate_and_group_size():
    # G = 4. q = 0.5: 2 * (1/2)^4 = 1/8; q = 0.25: (1/4)^4 + (3/4)^4 = (1 + 81) / 256 = 82/256.
    # Both groups are all correct now (measured 1), which does not enter the prediction.
    out = ledger_metrics(torch.tensor([0.5, 0.25]), torch.tensor([1.0, 1.0]), group_size=4)
    assert out["ledger/zero_var_predicted"].item() == pytest.approx((1 / 8 + 82 / 256) / 2)
    assert out["ledger/zero_var_measured"].item() == 1.0
    assert out["ledger/mixed_to_correct"].item() == 1.0


def test_ledger_without_revisits_has_only_the_revisit_share():
    nan = float("nan")
    out = ledger_metrics(torch.tensor([nan, nan]), torch.tensor([0.5, 1.0]), group_size=2)
    assert set(out) == {"ledger/revisit_frac"} and out["ledger/revisit_frac"].item() == 0.0


# ---------------------------------------------------------------- catalogue

def test_every_emitted_key_is_in_the_catalogue():
    """The metric catalogue (grpo/metrics.py) lists each key once (key at column 2, text at column 30)."""
    doc = metrics.__doc__
    catalogue = doc[doc.index("\nby difficulty level"):doc.index("\ncounterfactual gradients")]   # the probes' part
    entries = [line for line in catalogue.splitlines() if line.startswith("  ") and line[2] != " "]
    listed = {line.split()[0] for line in entries}
    for line in entries:
        if len(line.split()[0]) < 28:                   # a longer key is followed by one space
            assert line[30] != " " and line[2:30].rstrip() == line.split()[0], line
    emitted = set(difficulty_metrics(CORRECT, CORRECT, ADVANTAGES, LABELS))
    emitted |= set(length_bias_metrics(EQUAL_ADV, LENGTHS, "seq_mean_token_mean", **NORMS))
    emitted |= set(ledger_metrics(torch.tensor([0.0, float("nan")]), torch.tensor([0.5, 0.5]), 2))
    emitted = {re.sub(r"by_difficulty/[^/]+/", "by_difficulty/<d>/", key) for key in emitted}
    assert len(emitted) == 4 + 2 + 9
    assert emitted <= listed, emitted - listed
