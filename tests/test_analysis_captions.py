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


# Paired differences to base [0.5, 0.6, 0.7], in points (t_{0.975,2} = 4.30265, sqrt(3) = 1.7321):
#   null: [0.1, -0.1, 0.1], mean 3.33, s = sqrt((0.0667^2 * 2 + 0.1333^2) / 2) = 0.1155,
#         half-width 4.30265 * 0.1155 / 1.7321 = 28.68: [-25.4, 32.0], covers 0
#   up:   [0.1, 0.2, 0.15], mean 15.0, s = 0.05, half-width 4.30265 * 0.05 / 1.7321 = 12.42: [2.6, 27.4]
#   down: the negative of up: [-27.4, -2.6]
SCORES = {"base": [0.5, 0.6, 0.7], "null": [0.6, 0.5, 0.8], "up": [0.6, 0.8, 0.85], "down": [0.4, 0.4, 0.55]}


def test_caption_says_not_detected_when_the_ci_covers_0_and_keeps_the_numbers():
    caption = captions.caption_final(final_frame(SCORES), context(SCORES))
    assert caption == ("null vs base: +3.3 points [−25.4, 32.0], 3 seeds: not detected at this budget; "
                       "up vs base: +15.0 points [2.6, 27.4], 3 seeds: higher; "
                       "down vs base: −15.0 points [−27.4, −2.6], 3 seeds: lower "
                       "(final eval/accuracy, paired by seed, 95% t-interval).")


def test_score_table_words_each_difference_by_its_ci():
    _heading, (_, paragraph), (_, header, rows) = report.scores_section(final_frame(SCORES), context(SCORES))
    delta = {row[0]: row[-1] for row in rows}
    assert header[-1] == "Δ vs base [95% CI]"
    assert delta == {"base": "baseline", "null": f"+3.3 [−25.4, 32.0] (3 pairs): {NOT_DETECTED}",
                     "up": "+15.0 [2.6, 27.4] (3 pairs): higher",
                     "down": "−15.0 [−27.4, −2.6] (3 pairs): lower"}
    assert f"one that covers 0 is {NOT_DETECTED}" in paragraph and "Student-t" in paragraph


def test_one_seed_has_no_ci_and_no_verdict():
    scores = {"base": [0.5], "a": [0.7]}
    caption = captions.caption_final(final_frame(scores), context(scores))
    assert caption == ("a vs base: +20.0 points (no CI: 1 seed), 1 seed "
                       "(final eval/accuracy, paired by seed, 95% t-interval).")


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
