"""analysis.probes, probe_figures and probe_captions on hand-made tidy frames, numbers worked out by hand.

Paired differences over 3 seeds use t_{0.975,2} = 4.30265 and sqrt(3) = 1.7321:
  up [0.10, 0.20, 0.15]: mean 0.15, s 0.05, half-width 4.30265 * 0.05 / 1.7321 = 0.1242 -> [0.026, 0.274]
  down: the negative of up; null [0.1, -0.1, 0.1]: mean 0.0333, s 0.1155, half-width 0.2868 -> covers 0
"""

import numpy as np
import pandas as pd
import pytest

from analysis import probe_captions, probe_figures, probes, report
from analysis.captions import NOT_DETECTED, Context

UP, DOWN, NULL = [0.10, 0.20, 0.15], [-0.10, -0.20, -0.15], [0.1, -0.1, 0.1]


def frame(rows, **config):
    """Tidy frame from (arm, seed, step, {metric: value}); config[arm] = that arm's config columns."""
    return pd.DataFrame([{"experiment": "e", "arm": arm, "seed": seed, **config.get(arm, {}), "step": step,
                          "samples": 100 * step, "tokens": 1000 * step, **values}
                         for arm, seed, step, values in rows])


def context(df):
    return Context(order=list(dict.fromkeys(df["arm"])), baseline=None, knob=None, x="step",
                   metric="eval/accuracy", window=3)


def spec(name):
    return next(s for s in report.FIGURES if s.name == name)


# ----- config pairs -----

STD_NORM = {"grpo": dict(advantage="grpo", aggregation="seq_mean_token_mean"),
            "no_std": dict(advantage="dr_grpo", aggregation="seq_mean_token_mean"),
            "dr_grpo": dict(advantage="dr_grpo", aggregation="seq_mean_token_sum_norm"),
            "token_mean": dict(advantage="grpo", aggregation="token_mean")}


def test_arm_pairs_isolate_one_config_field():
    # experiments/std_norm.py: only grpo/no_std differ in advantage alone, only no_std/dr_grpo in aggregation.
    df = frame([(arm, 0, 1, {"m": 1.0}) for arm in STD_NORM], **STD_NORM)
    assert probes.config_columns(df) == ["advantage", "aggregation"]
    assert probes.arm_pairs(df, "advantage", "grpo", "dr_grpo") == [("grpo", "no_std")]
    assert probes.arm_pairs(df, "aggregation", "seq_mean_token_mean", "seq_mean_token_sum_norm") == [
        ("no_std", "dr_grpo")]
    assert probes.arm_pairs(df, "objective", "clip", "gspo") == []  # no such column


# ----- gradient weight by difficulty -----

def test_difficulty_shares_by_hand():
    # by_difficulty/<d>/weight is the level's share of its step's gradient weight, absent at a step with no
    # weight at all. Step 1: d1 0.25, d2 0.75. Step 2: d1 not drawn (absent: counts 0), d2 1.0, d10 0 (all
    # its groups solved). Step 3: no gradient weight at all (only groups logged): left out, not counted as
    # zero shares. Step 0 (eval) has no probe. Means d1 = (0.25 + 0) / 2 = 0.125, d2 = (0.75 + 1) / 2 =
    # 0.875, d10 = 0: they already sum to 1.
    rows = [("a", 0, 0, {}),
            ("a", 0, 1, {"by_difficulty/d1/weight": 0.25, "by_difficulty/d1/groups": 0.5,
                         "by_difficulty/d2/weight": 0.75, "by_difficulty/d2/groups": 0.5}),
            ("a", 0, 2, {"by_difficulty/d2/weight": 1.0, "by_difficulty/d2/groups": 0.8,
                         "by_difficulty/d10/weight": 0.0, "by_difficulty/d10/groups": 0.2}),
            ("a", 0, 3, {"by_difficulty/d1/groups": 0.5, "by_difficulty/d2/groups": 0.5}),
            ("b", 0, 1, {"by_difficulty/d1/groups": 1.0})]  # no signal at all: no weight logged
    df = frame(rows)
    assert probes.difficulty_levels(df) == ["d1", "d2", "d10"]
    shares = probes.difficulty_shares(df)
    assert shares["arm"].tolist() == ["a"]  # b has no weight anywhere: no shares
    assert shares[["d1", "d2", "d10"]].iloc[0].tolist() == pytest.approx([0.125, 0.875, 0.0])


def difficulty_frame(grpo_minus_dr, other_aggregation=False):
    """Arms grpo and dr_grpo (differing only in advantage), 3 seeds, one training step, three levels on a
    third of the groups each: d1 all solved (accuracy 1, weight 0: no signal), d2 accuracy 0.8 with
    weight w, d3 accuracy 0.3 with weight 1 - w. So d2's share is w, and d2 is the easiest level with
    signal. dr_grpo's w is 0.5, 0.4, 0.6 by seed; grpo's adds `grpo_minus_dr`."""
    rows = []
    for arm, shift in (("grpo", grpo_minus_dr), ("dr_grpo", [0.0] * 3)):
        for seed, w in enumerate(np.array([0.5, 0.4, 0.6]) + np.array(shift)):
            values = {}
            for level, accuracy, weight in (("d1", 1.0, 0.0), ("d2", 0.8, w), ("d3", 0.3, 1 - w)):
                values.update({f"by_difficulty/{level}/accuracy": accuracy, f"by_difficulty/{level}/weight": weight,
                               f"by_difficulty/{level}/groups": 1 / 3})
            rows.append((arm, seed, 1, values))
    config = {"grpo": {"advantage": "grpo", "group_size": 4},
              "dr_grpo": {"advantage": "dr_grpo", "group_size": 8 if other_aggregation else 4}}
    return frame(rows, **config)


@pytest.mark.parametrize("diff, expected", [
    (UP, "holds (+15.0 points [2.6, 27.4]), 3 seeds"),
    (DOWN, "opposite of the claim (−15.0 points [−27.4, −2.6]), 3 seeds"),
    (NULL, f"{NOT_DETECTED} (+3.3 points [−25.4, 32.0]), 3 seeds"),
])
def test_std_claim_three_ways(diff, expected):
    df = difficulty_frame(diff)
    assert probes.easiest_level_with_signal(df, ["grpo", "dr_grpo"]) == "d2"  # d1 is solved: no signal
    caption = probe_captions.caption_difficulty(df, context(df))
    assert f'Claim "{probe_captions.STD_CLAIM}"' in caption
    assert f"grpo vs dr_grpo, easiest level with signal d2: {expected}." in caption


def test_std_claim_without_an_isolating_pair_names_the_comparison_needed():
    df = difficulty_frame(UP, other_aggregation=True)  # dr_grpo also changes group_size
    caption = probe_captions.caption_difficulty(df, context(df))
    assert "not tested, it needs two arms that differ only in advantage (grpo vs dr_grpo" in caption
    assert "holds" not in caption


def test_gradient_weight_figure_draws_the_shares_per_arm():
    df = difficulty_frame(UP)
    fig = probe_figures.gradient_weight_by_difficulty(df, order=["grpo", "dr_grpo"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["d1", "d2", "d3"]
    drawn = {c.get_label(): list(c.lines[0].get_ydata()) for c in ax.containers}
    # dr_grpo: d2 = mean(0.5, 0.4, 0.6) = 0.5; grpo: d2 = mean(0.6, 0.6, 0.75) = 0.65; d3 = 1 - d2.
    assert drawn["dr_grpo"] == pytest.approx([0.0, 0.5, 0.5])
    assert drawn["grpo"] == pytest.approx([0.0, 0.65, 0.35])
    fig.draw_without_rendering()


# ----- length of wrong completions -----

def length_frame(mean_minus_norm):
    """Arms `mean` and `norm` differing only in aggregation, 3 seeds, steps 1-10. The last 10% of 10 steps
    is steps 9 and 10: there len/wrong_mean is 100, 110, 120 by seed for `norm`, plus `mean_minus_norm`
    in hundreds of tokens for `mean`; earlier steps log 1000 for `mean` (they must not count).
    bias/len_corr_neg is -0.3, -0.4, -0.5 by seed: mean -0.4, s 0.1, half-width 0.248."""
    rows = []
    for arm, shift in (("mean", mean_minus_norm), ("norm", [0.0] * 3)):
        for seed in range(3):
            for step in range(1, 11):
                late = 100 + 10 * seed + 100 * shift[seed]
                wrong = late if step >= 9 or arm == "norm" else 1000.0
                rows.append((arm, seed, step, {"len/correct_mean": 50.0, "len/wrong_mean": wrong,
                                               "bias/len_corr_neg": -0.3 - 0.1 * seed}))
    return frame(rows, mean={"aggregation": "seq_mean_token_mean"}, norm={"aggregation": "seq_mean_token_sum_norm"})


@pytest.mark.parametrize("diff, expected", [
    (UP, "holds (+15.0 tokens [2.6, 27.4]), 3 seeds"),
    (DOWN, "opposite of the claim (−15.0 tokens [−27.4, −2.6]), 3 seeds"),
    (NULL, f"{NOT_DETECTED} (+3.3 tokens [−25.4, 32.0]), 3 seeds"),
])
def test_length_claim_three_ways(diff, expected):
    df = length_frame(diff)
    caption = probe_captions.caption_length(df, context(df))
    assert f'Claim "{probe_captions.LENGTH_CLAIM}"' in caption
    assert f"mean vs norm: {expected}." in caption
    assert "bias/len_corr" not in caption                # the probe has its own figure and caption
    bias = probe_captions.caption_length_bias(df, context(df))
    assert "(bias/len_corr_neg), mean over the steps that logged it: mean −0.40 [−0.65, −0.15]" in bias
    assert "bias/len_corr_pos" not in bias  # not logged, not reported


def test_length_claim_without_an_isolating_pair():
    df = length_frame(UP).assign(aggregation="token_mean")  # no arm pair differs in aggregation
    caption = probe_captions.caption_length(df, context(df))
    assert "not tested, it needs two arms that differ only in aggregation" in caption


def test_length_figure_is_drawn_over_samples_in_the_report():
    df = length_frame(UP)
    figure = spec("length").build(df, context(df))
    assert figure.axes[0].get_xlabel() == "completions sampled"
    assert spec("length").title == "Length of correct vs wrong completions over generated samples"


# ----- prompt ledger -----

def ledger_frame(measured_minus_predicted=UP):
    """One arm, 3 seeds, steps 1-2. Moves: wrong_to_correct 0.1 then 0.3 (mean 0.2), wrong_to_mixed 0.2,
    mixed_to_correct 0.05, mixed_to_wrong 0.05, correct_to_mixed 0.1, correct_to_wrong 0.0; the rest,
    1 - 0.6 = 0.4, kept its state. Step 3 had no revisit (NaN): it does not count. zero_var predicted 0.4,
    measured 0.4 + diff by seed; at step 3 measured is 1.0 but not predicted: left out of both."""
    rows = []
    for seed in range(3):
        for step, first in ((1, 0.1), (2, 0.3)):
            rows.append(("a", seed, step, {
                "ledger/wrong_to_correct": first, "ledger/wrong_to_mixed": 0.2, "ledger/mixed_to_correct": 0.05,
                "ledger/mixed_to_wrong": 0.05, "ledger/correct_to_mixed": 0.1, "ledger/correct_to_wrong": 0.0,
                "ledger/revisit_frac": 0.5, "ledger/zero_var_predicted": 0.4,
                "ledger/zero_var_measured": 0.4 + measured_minus_predicted[seed]}))
        rows.append(("a", seed, 3, {"ledger/zero_var_measured": 1.0}))
    return frame(rows)


def test_ledger_bars_are_the_mean_shares_of_each_move():
    fig = probe_figures.prompt_ledger(ledger_frame())
    ax = fig.axes[0]
    heights = [bar.get_height() for bars in ax.containers for bar in bars]  # one arm: one bar per segment
    assert heights == pytest.approx([0.2, 0.2, 0.05, 0.05, 0.1, 0.0, 0.4])
    assert [bars.get_label() for bars in ax.containers][-1] == "kept its state"
    assert ax.containers[-1][0].get_y() == pytest.approx(0.6)  # stacked on the six moves
    fig.draw_without_rendering()


@pytest.mark.parametrize("diff, expected", [
    (UP, "a 55.0 vs 40.0, difference +15.0 points [2.6, 27.4], 3 seeds: measured above prediction."),
    (DOWN, "a 25.0 vs 40.0, difference −15.0 points [−27.4, −2.6], 3 seeds: measured below prediction."),
    (NULL, f"a 43.3 vs 40.0, difference +3.3 points [−25.4, 32.0], 3 seeds: {NOT_DETECTED}."),
])
def test_ledger_caption_compares_measured_and_predicted_zero_variance(diff, expected):
    df = ledger_frame(diff)
    caption = probe_captions.caption_ledger(df, context(df))
    assert caption.endswith(expected)
    assert "Revisits (ledger/revisit_frac), in %: a 50.0." in caption


# ----- counterfactual gradients -----

def counterfactual_frame():
    """Arms a (2 seeds) and b (1 seed); cf computed at steps 2 and 4 only (NaN at 1 and 3).
    a: 'advantage=dr_grpo' cos 0.9/0.7 (seed 0) and 0.8/0.8 (seed 1): 0.8; 'objective=gspo,clip=0.2' cos 0.5.
    b: only 'advantage=dr_grpo', cos 0.2. Norm ratios: a 2.0 and 1.0, b 0.5."""
    name, other = "advantage=dr_grpo", "objective=gspo,clip=0.2"
    cos_a = {(0, 2): 0.9, (0, 4): 0.7, (1, 2): 0.8, (1, 4): 0.8}
    rows = []
    for step in (1, 2, 3, 4):
        computed = step % 2 == 0
        for seed in (0, 1):
            rows.append(("a", seed, step, {f"cf/{name}/cos": cos_a[seed, step], f"cf/{name}/norm_ratio": 2.0,
                                           f"cf/{other}/cos": 0.5, f"cf/{other}/norm_ratio": 1.0}
                         if computed else {"loss": 0.0}))
        rows.append(("b", 0, step, {f"cf/{name}/cos": 0.2, f"cf/{name}/norm_ratio": 0.5} if computed else {}))
    return frame(rows)


def test_counterfactual_heatmap_shows_the_mean_cosines():
    df = counterfactual_frame()
    fig = probe_figures.counterfactual_gradients(df)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["advantage=dr_grpo", "objective=gspo,clip=0.2"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    cells = np.ma.filled(ax.images[0].get_array(), np.nan)
    np.testing.assert_allclose(cells, [[0.8, 0.5], [0.2, np.nan]])
    assert [t.get_text() for t in ax.texts] == ["0.80", "0.50", "0.20", "–"]
    fig.draw_without_rendering()


def test_counterfactual_caption_names_the_lowest_cosine_and_the_norm_ratios():
    df = counterfactual_frame()
    caption = probe_captions.caption_counterfactual(df, context(df))
    # a: seeds 0.8 and 0.5 for the two alternatives are constant across seeds: no spread, no interval.
    assert ("a: lowest cosine objective=gspo,clip=0.2 0.50 (no spread) of 2 "
            "(norm ratios: advantage=dr_grpo 2.00, objective=gspo,clip=0.2 1.00)") in caption
    assert "b: lowest cosine advantage=dr_grpo 0.20 (no CI: 1 seed) (norm ratios: advantage=dr_grpo 0.50)" in caption


def test_lowest_cosine_gets_an_interval_simultaneous_over_the_alternatives_and_no_verdict():
    # Alternative x: cos 0.1, 0.2, 0.3 by seed (mean 0.2, s 0.1); y: 0.8, 0.9, 1.0. x is the lowest of k = 2,
    # picked after seeing both, so its interval is at 1 - 0.05/2: t_{0.9875,2} = 0.975 * sqrt(2 / 0.049375)
    # = 6.2053, half-width 6.2053 * 0.1 / sqrt(3) = 0.358: [-0.16, 0.56] (its own 95% would be [-0.05, 0.45]).
    df = frame([("a", seed, 1, {"cf/x/cos": 0.1 * (seed + 1), "cf/y/cos": 0.8 + 0.1 * seed}) for seed in range(3)])
    caption = probe_captions.caption_counterfactual(df, context(df))
    assert "a: lowest cosine x 0.20 [−0.16, 0.56] of 2." in caption
    assert "higher" not in caption and "lower" not in caption and NOT_DETECTED not in caption


def test_ledger_comparisons_of_several_arms_are_one_holm_family():
    # Three arms, each measured - predicted = UP: alone each is measured above prediction (p = 0.0351,
    # [2.6, 27.4]). Holm over 3 needs 0.0351 <= 0.05/3: none is claimed, each interval at 1 - 0.05/3:
    # t_{0.991667,2} = 0.983333 * sqrt(2 / 0.0330556) = 7.6488, half-width 7.6488 * 5 / sqrt(3) = 22.08 points:
    # [−7.1, 37.1].
    one = ledger_frame(UP)
    df = pd.concat([one.assign(arm=arm) for arm in ("a", "b", "c")], ignore_index=True)
    caption = probe_captions.caption_ledger(df, context(df))
    for arm in ("a", "b", "c"):
        assert f"{arm} 55.0 vs 40.0, difference +15.0 points [−7.1, 37.1], 3 seeds: {NOT_DETECTED}" in caption
    assert "Holm over 3 comparisons" in caption and "measured above" not in caption


def test_key_with_slashes_in_the_name_splits_on_first_and_last_slash():
    df = frame([("a", 0, 1, {"cf/objective=clip/cov/cos": 0.3, "by_difficulty/x/y/weight": 1.0})])
    assert probes.keyed_columns(df, probes.COUNTERFACTUAL, "cos") == {"objective=clip/cov": "cf/objective=clip/cov/cos"}
    assert probes.keyed_columns(df, probes.DIFFICULTY, "weight") == {"x/y": "by_difficulty/x/y/weight"}


# ----- absent keys -----

@pytest.mark.parametrize("name", ["difficulty_weight", "ledger", "counterfactual", "length"])
def test_absent_keys_skip_the_probe_figures(name):
    df = frame([("a", 0, 1, {"reward/mean": 0.5, "cf/advantage=dr_grpo/cos": np.nan,
                             "by_difficulty/d1/groups": 1.0})])  # no weight, and a cf column without data
    assert not spec(name).when(df, context(df))


def test_probe_figures_are_drawn_when_their_keys_exist():
    for name, df in (("difficulty_weight", difficulty_frame(UP)), ("ledger", ledger_frame()),
                     ("counterfactual", counterfactual_frame()), ("length", length_frame(UP))):
        assert spec(name).when(df, context(df)), name
