"""Calibration of the probes on simulated steps with a known answer (grpo/algorithm/known_answers.py): each reads
null on a null case, at the nominal rate where it comes with a test, and finds a planted effect.

Fixed seeds; every tolerance is stated where it is used. A z bound of 4 standard errors fails a
correct probe with probability about 6e-5; the simulated effects are many standard errors away.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from grpo.algorithm import known_answers as cal
from grpo.algorithm.step_probes import MIXED, difficulty_metrics, ledger_metrics, length_bias_metrics, solve_state
from grpo.formulas.advantages import compute_advantages

# The difficulty mixture of the length-bias simulations: harder levels are solved less often and
# written longer, so |A| (1-q for A > 0, q for A < 0, times the group's scale) and length both move
# with the level, while within a group length has nothing to do with correctness.
LEVEL_RATES, LEVEL_LENGTHS = [0.8, 0.6, 0.4, 0.2], [20.0, 40.0, 60.0, 80.0]
DR_GRPO = ("dr_grpo", "seq_mean_token_sum_norm")


def mixture_step(generator, spread, num_prompts=64, group_size=8, correct_factor=1.0):
    """(labels, correct [P, G], lengths [P, G]) of one simulated step of the difficulty mixture."""
    labels, q, mean_lengths = cal.difficulty_mixture(num_prompts, LEVEL_RATES, LEVEL_LENGTHS, generator)
    correct = cal.binary_rewards(q, group_size, generator)
    lengths = cal.completion_lengths(mean_lengths, correct, spread, generator, correct_factor=correct_factor)
    return labels, correct, lengths


def norms(lengths, aggregation):
    return dict(aggregation=aggregation, num_seqs=float(lengths.numel()), num_tokens=float(lengths.sum()),
                max_len=128.0)


def pooled_correlation(weights, lengths, chosen):
    """The old probe's reading: one Pearson correlation over all chosen completions of the step."""
    return torch.corrcoef(torch.stack([weights[chosen], lengths[chosen].double()]))[0, 1].item()


def mean_and_se(values):
    values = torch.tensor(values, dtype=torch.float64)
    return values.mean().item(), (values.std() / math.sqrt(len(values))).item()


# ---------------------------------------------------------------- the helpers

def test_simulation_helpers_do_what_they_say():
    generator = torch.Generator().manual_seed(9)
    labels, q, mean_lengths = cal.difficulty_mixture(10, [0.8, 0.2], [20.0, 60.0], generator)
    assert sorted(labels) == ["d1"] * 5 + ["d2"] * 5
    level = {"d1": (0.8, 20.0), "d2": (0.2, 60.0)}
    torch.testing.assert_close(q, torch.tensor([level[label][0] for label in labels]))
    torch.testing.assert_close(mean_lengths, torch.tensor([level[label][1] for label in labels]))
    # No spread: every completion is its prompt's mean length, correct ones times correct_factor (20 * 0.7 = 14).
    correct = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    lengths = cal.completion_lengths(torch.tensor([20.0, 10.0]), correct, 0.0, generator, correct_factor=0.7)
    assert lengths.tolist() == [[14, 20], [10, 7]]
    # Bernoulli rates over 8 * 20000 draws: within 4 SE (sqrt(0.25 / 160000) = 0.00125) of q.
    rewards = cal.binary_rewards(torch.full((20000,), 0.3), 8, generator)
    assert set(rewards.unique().tolist()) == {0.0, 1.0} and abs(rewards.mean().item() - 0.3) < 0.005
    assert cal.improved(torch.tensor([0.0, 0.5, 1.0]), 0.5).tolist() == [0.5, 0.75, 1.0]
    rates = cal.solve_rates(1000, 0.1, 0.9, generator)
    assert 0.1 <= rates.min().item() and rates.max().item() <= 0.9


# ---------------------------------------------------------------- the prompt ledger

def frozen_visits(generator, num_prompts, group_size, low=0.1, high=0.9, gain=0.0, previous_group_size=None):
    """Solve rates of two visits to the same prompts; gain > 0 plants an improvement in between."""
    q = cal.solve_rates(num_prompts, low, high, generator)
    before = cal.binary_rewards(q, previous_group_size or group_size, generator).mean(-1)
    now = cal.binary_rewards(cal.improved(q, gain), group_size, generator).mean(-1)
    return q, before, now


def constant_share_se(before, now):
    """Standard error of the mean per-prompt difference between the two visits' constant indicators."""
    d = (solve_state(before) != MIXED).double() - (solve_state(now) != MIXED).double()
    return (d.std() / math.sqrt(len(d))).item()


def test_ledger_reads_null_for_a_frozen_policy():
    """G = 8, q ~ U[0.1, 0.9], two visits of 20000 prompts by one policy. The measured share estimates
    E[q^8 + (1-q)^8] = 2 (0.9^9 - 0.1^9) / (9 * 0.8) = 0.1076; predicted must match it within 4 SE,
    where plugging the previous rate into q^8 + (1-q)^8 (the old predictor) reads about 0.216."""
    G = 8
    q, before, now = frozen_visits(torch.Generator().manual_seed(0), 20000, G)
    out = ledger_metrics(before, now, G)
    predicted, measured = out["ledger/zero_var_predicted"].item(), out["ledger/zero_var_measured"].item()
    se = constant_share_se(before, now)                                 # about 0.0031
    assert abs(predicted - measured) < 4 * se, (predicted, measured, se)
    assert abs(measured - 2 * (0.9 ** 9 - 0.1 ** 9) / (9 * 0.8)) < 4 * se
    plug_in = (before ** G + (1 - before) ** G).mean().item()
    assert plug_in - measured > 0.09                                    # the old bias, about 35 SE


def test_ledger_null_rejects_at_the_nominal_rate():
    """400 frozen steps of 64 revisited prompts: a two-sided z test of predicted - measured at 5%
    (SE from the step's per-prompt differences) rejects in 5% of steps; the tolerance 1.5% to 8.5% is
    about 3 binomial standard deviations (sqrt(0.05 * 0.95 / 400) = 1.1%)."""
    generator, G, rejected = torch.Generator().manual_seed(1), 8, 0
    for _ in range(400):
        _, before, now = frozen_visits(generator, 64, G)
        out = ledger_metrics(before, now, G)
        se = constant_share_se(before, now)
        difference = out["ledger/zero_var_predicted"].item() - out["ledger/zero_var_measured"].item()
        rejected += se > 0 and abs(difference) > 1.96 * se
    assert 0.015 <= rejected / 400 <= 0.085, rejected / 400


def test_ledger_null_holds_with_a_larger_previous_group():
    """Previous visits of G' = 12, now G = 8: the hypergeometric estimate is still unbiased (4 SE, with
    the SE of the two means taken as independent, which they are: different draws)."""
    q, before, now = frozen_visits(torch.Generator().manual_seed(2), 20000, 8, previous_group_size=12)
    out = ledger_metrics(before, now, 8, previous_group_size=12)
    measured_now = (solve_state(now) != MIXED).double()
    # The predictor's per-prompt values, for their SE: C(k, 8)/C(12, 8) + C(12-k, 8)/C(12, 8), k = 12 * rate.
    k = (before.double() * 12).round()
    per_prompt = torch.tensor([(math.comb(int(c), 8) + math.comb(12 - int(c), 8)) / math.comb(12, 8) for c in k])
    assert abs(out["ledger/zero_var_predicted"].item() - per_prompt.mean().item()) < 1e-6
    se = math.sqrt(per_prompt.var().item() / len(k) + measured_now.var().item() / len(k))
    assert abs(out["ledger/zero_var_predicted"].item() - out["ledger/zero_var_measured"].item()) < 4 * se


def test_ledger_finds_a_planted_improvement():
    """q ~ U[0.5, 0.95], then a gain of 0.5 (half of each prompt's failures now succeed): more groups are
    all correct now than the previous visit predicts, and more mixed groups turn all correct than the
    other way round. Under the frozen policy the two moves balance (4 SE)."""
    G = 8
    _, before, now = frozen_visits(torch.Generator().manual_seed(3), 20000, G, low=0.5, high=0.95, gain=0.5)
    out = ledger_metrics(before, now, G)
    se = constant_share_se(before, now)
    assert out["ledger/zero_var_measured"].item() - out["ledger/zero_var_predicted"].item() > 10 * se
    assert out["ledger/mixed_to_correct"].item() > out["ledger/correct_to_mixed"].item() + 0.1
    _, before, now = frozen_visits(torch.Generator().manual_seed(3), 20000, G, low=0.5, high=0.95)
    out = ledger_metrics(before, now, G)
    moves = (solve_state(before) == MIXED).double() * (solve_state(now) == 2) - \
        (solve_state(before) == 2).double() * (solve_state(now) == MIXED)
    assert abs(out["ledger/mixed_to_correct"].item() - out["ledger/correct_to_mixed"].item()) < \
        4 * (moves.std() / math.sqrt(len(moves))).item()


# ---------------------------------------------------------------- length bias

def test_length_bias_reads_zero_on_the_difficulty_mixture_where_the_pooled_correlation_does_not():
    """Lengths independent of correctness within groups (spread 0.25), 20 steps of 64 x 8. Dr. GRPO's
    aggregation gives every token of a group and sign the same weight: the within-group probe reads
    exactly 0 at every step. The old pooled correlation of the same weights reads the mixture: about
    +0.64 for A > 0 and -0.57 for A < 0 (SE 0.013). A planted length-correctness dependence (correct answers 30%
    shorter) is no per-token weight bias either, and reads 0 too."""
    generator = torch.Generator().manual_seed(4)
    pooled = {"pos": [], "neg": []}
    for step in range(20):
        _, correct, lengths = mixture_step(generator, spread=0.25, correct_factor=0.7 if step % 2 else 1.0)
        advantages = compute_advantages(correct, DR_GRPO[0])
        out = length_bias_metrics(advantages, lengths, **norms(lengths, DR_GRPO[1]))
        assert out["bias/len_corr_pos"].item() == 0.0 and out["bias/len_corr_neg"].item() == 0.0
        for aggregation in ("token_mean", "seq_mean_token_sum_norm"):               # grpo's A too
            out = length_bias_metrics(compute_advantages(correct, "grpo"), lengths, **norms(lengths, aggregation))
            assert out["bias/len_corr_pos"].item() == 0.0 and out["bias/len_corr_neg"].item() == 0.0
        if step % 2 == 0:
            weights = advantages.abs().double() / (lengths.numel() * 128.0)         # sum_norm's w_i
            pooled["pos"].append(pooled_correlation(weights, lengths, advantages > 0))
            pooled["neg"].append(pooled_correlation(weights, lengths, advantages < 0))
    assert mean_and_se(pooled["pos"])[0] > 0.5 and mean_and_se(pooled["neg"])[0] < -0.4, pooled


def test_length_bias_finds_seq_mean_token_mean_and_the_spread():
    """seq_mean_token_mean divides by |o_i|: within groups the weight falls with length for both signs,
    at any spread (the correlation says how consistently, near -1), while bias/len_spread_within
    recovers the planted spread: log-normal factors with sigma s have a CV of sqrt(exp(s^2) - 1), 0.1003
    and 0.3069 for s = 0.1 and 0.3; tolerance 0.01 (rounding lengths to tokens adds about 0.003 at 20).
    With no spread there is nothing to correlate and the spread reads 0."""
    generator = torch.Generator().manual_seed(5)
    for s in (0.1, 0.3):
        readings = {"bias/len_corr_pos": [], "bias/len_corr_neg": [], "bias/len_spread_within": []}
        for _ in range(10):
            _, correct, lengths = mixture_step(generator, spread=s)
            out = length_bias_metrics(compute_advantages(correct, "grpo"), lengths,
                                      **norms(lengths, "seq_mean_token_mean"))
            for key in readings:
                readings[key].append(out[key].item())
        assert max(readings["bias/len_corr_pos"]) < -0.9 and max(readings["bias/len_corr_neg"]) < -0.9, readings
        assert abs(mean_and_se(readings["bias/len_spread_within"])[0] - math.sqrt(math.exp(s * s) - 1)) < 0.01
    _, correct, lengths = mixture_step(generator, spread=0.0)
    out = length_bias_metrics(compute_advantages(correct, "grpo"), lengths, **norms(lengths, "seq_mean_token_mean"))
    assert out == {"bias/len_spread_within": 0.0}


def test_length_bias_null_rejects_at_the_nominal_rate():
    """A reward that varies within a sign but not with length (correct + 0.5 * a coin-flip format bonus)
    under grpo and token_mean: the weight follows |A| alone. Over 400 steps of 32 x 8 the test
    |r| sqrt(dof) > 1.96 (dof: within-group degrees of freedom of the sign) rejects in 5% of steps;
    tolerance 1.5% to 8.5% (3 binomial SD), and the mean reading is 0 within 4 SE."""
    generator, rejected, readings = torch.Generator().manual_seed(6), 0, []
    for _ in range(400):
        _, correct, lengths = mixture_step(generator, spread=0.3, num_prompts=32)
        rewards = correct + 0.5 * cal.binary_rewards(torch.full((32,), 0.5), 8, generator)
        advantages = compute_advantages(rewards, "grpo")
        out = length_bias_metrics(advantages, lengths, **norms(lengths, "token_mean"))
        for key, sign in (("bias/len_corr_pos", advantages > 0), ("bias/len_corr_neg", advantages < 0)):
            dof = int((sign.sum(-1) - 1).clamp(min=0).sum())
            readings.append(out[key].item())
            rejected += abs(out[key].item()) * math.sqrt(dof) > 1.96
    assert 0.015 <= rejected / 800 <= 0.085, rejected / 800
    mean, se = mean_and_se(readings)
    assert abs(mean) < 4 * se, (mean, se)


def test_length_bias_finds_a_planted_length_penalty():
    """A reward that falls with length within the group (correct - 0.3 |o| / 128, a soft length
    penalty), under Dr. GRPO's aggregation, which adds no length bias of its own: among correct
    answers the longer get a smaller A (pos < 0), among wrong ones a more negative A (neg > 0)."""
    generator = torch.Generator().manual_seed(7)
    readings = {"bias/len_corr_pos": [], "bias/len_corr_neg": []}
    for _ in range(10):
        _, correct, lengths = mixture_step(generator, spread=0.3)
        advantages = compute_advantages(correct - 0.3 * lengths / 128.0, DR_GRPO[0])
        out = length_bias_metrics(advantages, lengths, **norms(lengths, DR_GRPO[1]))
        for key in readings:
            readings[key].append(out[key].item())
    # Each group is a line (A is linear in |o| within a sign) but the groups' slopes in relative terms
    # differ (about 0.3 m_p / (128 mean|A|_p)), so the pooled reading is about -0.5 and +0.6, not +-1.
    # Bound +-0.3: over 4 SE of the null reading (1 / sqrt(dof), dof about 200 per sign and step).
    assert max(readings["bias/len_corr_pos"]) < -0.3 and min(readings["bias/len_corr_neg"]) > 0.3, readings


# ---------------------------------------------------------------- gradient weight by difficulty

def difficulty_shares(generator, level_rates, level_lengths, advantage, aggregation, steps=20):
    """Mean over steps of each level's by_difficulty/<d>/weight, 64 prompts x 8, spread 0.3."""
    totals = {}
    for _ in range(steps):
        labels, q, mean_lengths = cal.difficulty_mixture(64, level_rates, level_lengths, generator)
        correct = cal.binary_rewards(q, 8, generator)
        lengths = cal.completion_lengths(mean_lengths, correct, 0.3, generator)
        out = difficulty_metrics(correct, correct, compute_advantages(correct, advantage), labels, lengths,
                                 **norms(lengths, aggregation))
        for key, value in out.items():
            if key.endswith("/weight"):
                totals[key.split("/")[1]] = totals.get(key.split("/")[1], 0.0) + value.item() / steps
    return totals


def test_difficulty_weight_null_and_planted():
    """Null: two levels alike (q 0.5, length 40) share the weight equally (each 0.5 within 0.01, 4 SD of
    the mean share over 20 steps, whose SD is 0.0025). Planted: level d2 writes twice as long. token_mean
    weighs tokens, so d2 takes about 2/3; seq_mean_token_mean weighs completions, so both stay at 1/2
    (tolerance 0.01). And std normalisation's difficulty bias: an easy level (q 0.9) beside a medium
    one (q 0.5) takes the share the formulas give, 0.311 under grpo against 0.265 under dr_grpo."""
    generator = torch.Generator().manual_seed(8)
    alike = difficulty_shares(generator, [0.5, 0.5], [40.0, 40.0], "grpo", "token_mean")
    assert abs(alike["d1"] - 0.5) < 0.01 and abs(alike["d1"] + alike["d2"] - 1) < 1e-6, alike
    longer = difficulty_shares(generator, [0.5, 0.5], [40.0, 80.0], "grpo", "token_mean")
    assert abs(longer["d2"] - 2 / 3) < 0.01, longer
    longer = difficulty_shares(generator, [0.5, 0.5], [40.0, 80.0], "grpo", "seq_mean_token_mean")
    assert abs(longer["d2"] - 1 / 2) < 0.01, longer
    # Equal lengths, so a level's share is its share of E[sum_i |A_i|] per group, k ~ Binomial(8, q) correct:
    #   dr_grpo: sum |r - mean| = 2 k (8 - k) / 8, E = 2 * 7 q (1 - q): 1.26 at q = 0.9, 3.5 at 0.5 -> 0.2647
    #   grpo divides by the unbiased std sqrt(k (8 - k) / 56): sum 2 sqrt(7 k (8 - k) / 8), its E summed over
    #   the pmf below -> 0.3111. Tolerance 0.02 (the share of a ratio of sums over 32 prompts a level, 20 steps).
    def expected_sum(q, per_group):
        return sum(math.comb(8, k) * q ** k * (1 - q) ** (8 - k) * per_group(k) for k in range(9))

    for advantage, per_group in (("dr_grpo", lambda k: 2 * k * (8 - k) / 8),
                                 ("grpo", lambda k: 2 * math.sqrt(7 * k * (8 - k) / 8))):
        shares = difficulty_shares(generator, [0.9, 0.5], [40.0, 40.0], advantage, "token_mean")
        easy, medium = expected_sum(0.9, per_group), expected_sum(0.5, per_group)
        assert abs(shares["d1"] - easy / (easy + medium)) < 0.02, (advantage, shares)


def test_a_frozen_policy_run_reads_the_ledger_null_and_the_old_plug_in_does_not(make_cfg, tmp_path):
    """The null as a real run: --lr 0 freezes the policy, so every prompt's solve rate q stays put. A pool of
    256 drawn 32 a step is seen whole every 8 steps, so steps 9-16 revisit each prompt exactly once: 256
    independent pairs (previous visit, this visit) of one prompt's group. Under the frozen policy the two
    visits are exchangeable, so predicted - measured (the previous visit's constant-group indicator minus
    this one's) has mean 0: it must lie within 3 standard errors of 0 (the pairs' own spread). A policy
    that moved, or a biased predictor, reads off it; the old plug-in q^G + (1 - q)^G of the previous rate,
    on the same visits, must sit more than 3 standard errors above the measured share (Jensen).
    Measured 2026-12-06: gap +0.012 (SE 0.032), plug-in +0.128 (SE 0.029); the same run at --lr 1e-3, a
    policy that moves, reads +0.059 against 3 SE = 0.044 and fails the first check."""
    import conftest
    from grpo.run.runner import train
    from test_trainer import QUIET, warm_cache

    cfg = make_cfg(tmp_path, **conftest.MIXED, lr=0.0, steps=16, prompt_pool=256, prompts_per_step=32,
                   group_size=4, kl_beta=0.0, eval_every=16, save_every=16)
    warm_cache(cfg)
    train(cfg, **QUIET)
    rows = [json.loads(line) for line in (tmp_path / "run" / "prompts.jsonl").read_text().splitlines()]
    first = {r["index"]: r["solve_rate"] for r in rows if r["step"] <= 8}
    second = {r["index"]: r["solve_rate"] for r in rows if r["step"] > 8}
    assert first.keys() == second.keys() and len(first) == 256
    q_then = torch.tensor([first[i] for i in sorted(first)], dtype=torch.float64)
    q_now = torch.tensor([second[i] for i in sorted(first)], dtype=torch.float64)
    constant_then, constant_now = (q_then * (1 - q_then) == 0).double(), (q_now * (1 - q_now) == 0).double()
    gap = constant_then - constant_now                                  # the new predictor's error, per prompt
    assert abs(gap.mean()) <= 3 * gap.std() / 256 ** 0.5
    plug_in = q_then ** 4 + (1 - q_then) ** 4 - constant_now          # the old predictor's error, per prompt
    assert plug_in.mean() > 3 * plug_in.std() / 256 ** 0.5
    # The logged keys are these means over the revisiting steps (32 prompts each, 8 steps).
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r["ledger/zero_var_predicted"] - r["ledger/zero_var_measured"] for r in records if r["step"] > 8]
    assert sum(logged) / len(logged) == pytest.approx(gap.mean().item(), abs=1e-6)
