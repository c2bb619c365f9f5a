"""The report's wording of intervals, on small tidy frames whose numbers are worked out by hand."""

import pandas as pd

from analysis import captions, report
from analysis.captions import NOT_DETECTED, Context

STATUSES = pd.DataFrame(columns=["experiment", "arm", "seed", "status", "steps_done", "steps", "error"])


def final_frame(scores_by_arm):
    """One eval point after step 0 per run, so a run's final score is its value: {arm: [seed 0, ...]}."""
    return pd.DataFrame([{"experiment": "e", "arm": arm, "seed": seed, "step": 10, "eval/accuracy": score}
                         for arm, scores in scores_by_arm.items() for seed, score in enumerate(scores)])


def context(arms):
    return Context(order=list(arms), baseline="base", knob=None, x="step", metric="eval/accuracy", window=3)


# Paired differences to base [0.5, 0.6, 0.7], 3 seeds, so df = 2, where the t distribution has closed forms:
# two-sided p = 1 - t / sqrt(t^2 + 2), quantile t_q = (2q - 1) * sqrt(2 / (4q(1 - q))).
#   up:   [0.10, 0.12, 0.11], mean 0.11, s 0.01, se 0.01 / sqrt(3) = 0.0057735, t = 19.053 (t^2 = 363):
#         p = 1 - 19.053 / sqrt(365) = 0.0027435
#   down: [-0.05, -0.07, -0.06], mean -0.06, s 0.01, t = -10.392 (t^2 = 108): p = 1 - 10.392 / sqrt(110) = 0.009133
#   null: [0.1, -0.1, 0.1], mean 0.0333, s 0.11547, t = 0.5: p = 1 - 0.5 / 1.5 = 0.6667
# Holm, m = 3: up 0.0027 <= 0.05/3 rejected; down 0.0091 <= 0.05/2 rejected; null 0.667 > 0.05 stops.
# Levels: up 1 - 0.05/3 = 98.3%, down 97.5%, null 95%. Quantiles: t_{0.991667} = 0.983333 * sqrt(2 / 0.0330556)
# = 7.6488, t_{0.9875} = 0.975 * sqrt(2 / 0.049375) = 6.2053, t_{0.975} = 4.30265. Half-widths in points:
#   up 7.6488 * 0.57735 = 4.416: [6.6, 15.4]; down 6.2053 * 0.57735 = 3.583: [−9.6, −2.4];
#   null 4.30265 * 11.547 / 1.73205 = 28.68: [−25.4, 32.0].
# Adjusted p: up 3 * 0.0027435 = 0.008, down max(0.008, 2 * 0.009133) = 0.018, null 0.667.
# Detectable at alpha/m = 0.05/3: (7.6488 + t_{0.8} = 0.6 * sqrt(2 / 0.64) = 1.06066) = 8.7095 times se:
#   up and down 8.7095 * 0.57735 = 5.0 points, null 8.7095 * 6.6667 = 58.1 points.
SCORES = {"base": [0.5, 0.6, 0.7], "null": [0.6, 0.5, 0.8], "up": [0.6, 0.72, 0.81], "down": [0.45, 0.53, 0.64]}


def test_caption_words_each_difference_by_its_holm_verdict_and_keeps_the_numbers():
    caption = captions.caption_final(final_frame(SCORES), context(SCORES))
    assert caption.startswith("null vs base: +3.3 points [−25.4, 32.0], 3 seeds: not detected at this budget; "
                              "up vs base: +11.0 points [6.6, 15.4], 3 seeds: higher; "
                              "down vs base: −6.0 points [−9.6, −2.4], 3 seeds: lower "
                              "(final eval/accuracy, paired by seed; Holm over 3 comparisons")


def test_score_table_holm_verdicts_levels_adjusted_p_and_detectable():
    _heading, (_, paragraph), (_, header, rows) = report.scores_section(final_frame(SCORES), context(SCORES))
    assert header[4:] == ["Δ vs base [Holm CI]", "CI level", "p (Holm)", "detectable"]
    table = {row[0]: row[4:] for row in rows}
    assert table == {"base": ["baseline", "", "", ""],
                     "null": [f"+3.3 [−25.4, 32.0] (3 pairs): {NOT_DETECTED}", "95.0%", "0.667", "58.1"],
                     "up": ["+11.0 [6.6, 15.4] (3 pairs): higher", "98.3%", "0.008", "5.0"],
                     "down": ["−6.0 [−9.6, −2.4] (3 pairs): lower", "97.5%", "0.018", "5.0"]}
    assert f"one that covers 0 is {NOT_DETECTED}" in paragraph and "Student-t" in paragraph
    assert "Holm's step-down paired t-tests" in paragraph and "α/m = 0.05/3" in paragraph


def test_seven_unadjusted_claims_become_none_under_holm():
    # Seven arms each [0.10, 0.20, 0.15] above base: every p = 1 - 5.196 / sqrt(29) = 0.0351 (t^2 = 27).
    # Each alone is below 0.05 (the old 95% intervals all excluded 0), but Holm's first step needs
    # 0.0351 <= 0.05/7 = 0.0071: nothing is claimed, and every interval (at 1 - 0.05/7) covers 0.
    scores = {"base": [0.5, 0.6, 0.7], **{f"a{k}": [0.6, 0.8, 0.85] for k in range(7)}}
    _heading, _text, (_, _header, rows) = report.scores_section(final_frame(scores), context(scores))
    for row in rows[1:]:
        assert row[4].endswith(NOT_DETECTED) and row[5] == "99.3%", row
        low = float(row[4].split("[")[1].split(",")[0].replace("−", "-"))
        assert low < 0


def test_identical_differences_get_no_interval_and_no_verdict():
    # Every seed 0.5 points above base: accuracy is discrete, so at 3 seeds this happens. The old table read
    # "+0.5 [0.5, 0.5] (3 pairs): higher"; no spread is no evidence.
    scores = {"base": [0.5, 0.6, 0.7], "tie": [0.505, 0.605, 0.705]}
    _heading, _text, (_, _header, rows) = report.scores_section(final_frame(scores), context(scores))
    assert rows[1][4:] == [f"+0.5 (3 pairs): {captions.NO_SPREAD}", "", "", "no spread"]
    caption = captions.caption_final(final_frame(scores), context(scores))
    assert caption.startswith(f"tie vs base: +0.5 points, 3 seeds: {captions.NO_SPREAD} (")


def test_effect_option_gives_the_seeds_a_comparison_needs():
    # down's paired sd is 1 point; --effect 2 points at alpha/m = 0.05/3: the smallest n with
    # (t_{1-0.05/6, n-1} + t_{0.8, n-1}) * 1 / sqrt(n) <= 2, checked against scipy's quantiles below.
    from scipy import stats

    ctx = Context(order=list(SCORES), baseline="base", knob=None, x="step", metric="eval/accuracy", window=3,
                  effect=2.0)
    _heading, (_, paragraph), (_, header, rows) = report.scores_section(final_frame(SCORES), ctx)
    assert header[-1] == "seeds for 2.0 points" and "seeds for 2.0 points: the seeds" in paragraph
    needed = int({row[0]: row[-1] for row in rows}["down"])

    def size(n):
        return (stats.t.ppf(1 - 0.05 / 6, n - 1) + stats.t.ppf(0.8, n - 1)) / n ** 0.5

    assert size(needed) <= 2.0 < size(needed - 1)


def test_one_seed_has_no_ci_and_no_verdict():
    scores = {"base": [0.5], "a": [0.7]}
    caption = captions.caption_final(final_frame(scores), context(scores))
    assert caption == ("a vs base: +20.0 points (no CI: 1 seed), 1 seed "
                       "(final eval/accuracy, paired by seed; 95% t-interval).")


def test_few_seeds_warning_says_the_intervals_are_valid_but_wide():
    notes = report.experiment_warnings(final_frame(SCORES), STATUSES, context(SCORES))
    few = [note for note in notes if note.startswith("Fewer than 5 seeds")]
    assert len(few) == 1
    assert "(base: 3, null: 3, up: 3, down: 3): the t-intervals are valid but wide" in few[0]
    assert "too narrow" not in few[0] and "bootstrap" not in few[0]
    two = report.experiment_warnings(final_frame({"base": [0.5, 0.6], "a": [0.5, 0.6]}), STATUSES,
                                     context(["base", "a"]))
    assert any("Fewer than 5 seeds (base: 2, a: 2)" in note for note in two)
    five = report.experiment_warnings(final_frame({"base": [0.5] * 5, "a": [0.5] * 5}), STATUSES,
                                      context(["base", "a"]))
    assert not any("Fewer than" in note for note in five)
