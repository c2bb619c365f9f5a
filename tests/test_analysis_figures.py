"""analysis.figures on hand-made tidy frames: what would be drawn (ticks, bar heights, markers)."""

import pandas as pd
import pytest

from analysis import figures


def frame(rows, **config):
    """Tidy frame from (arm, seed, step, {metric: value}) tuples, samples = 1000 * step."""
    return pd.DataFrame([{"experiment": "e", "arm": arm, "seed": seed, **config.get(arm, {}), "step": step,
                          "samples": 1000 * step, "tokens": 80 * step, **values}
                         for arm, seed, step, values in rows])


def drawn_ticks(fig):
    """(tick values, tick labels) of the last axes' x axis, as they would be drawn."""
    fig.draw_without_rendering()
    ax = fig.axes[-1]
    low, high = sorted(ax.get_xlim())
    shown = [(t, label.get_text()) for t, label in zip(ax.get_xticks(), ax.get_xticklabels()) if low <= t <= high]
    return [t for t, _ in shown], [text for _, text in shown]


def test_step_axis_has_integer_ticks_and_plain_labels():
    # Three steps used to get ticks every 0.25, written by EngFormatter as "250m", "500m", ...
    rows = [("a", seed, step, {"m": 0.1 * step + 0.01 * seed}) for seed in (0, 1) for step in (0, 1, 2)]
    ticks, labels = drawn_ticks(figures.learning_curves(frame(rows), "m", x="step"))
    assert ticks == [0, 1, 2]
    assert labels == ["0", "1", "2"]


def test_samples_axis_keeps_engineering_labels():
    rows = [("a", 0, step, {"m": 0.1 * step}) for step in range(0, 21, 5)]  # samples 0 .. 20000
    _, labels = drawn_ticks(figures.learning_curves(frame(rows), "m", x="samples"))
    assert "20k" in labels and "10k" in labels


def zero_variance_frame(with_constant_group_frac=True):
    """G4: zero_var/frac 0.5 then 0.3 (mean 0.4), all wrong 0.2 then 0.1 (0.15), all correct 0.1 (0.1),
    so 0.4 - 0.15 - 0.1 = 0.15 is zero-variance with mixed correctness; constant correctness 0.6 then
    0.4 (0.5), theory 0.3. G8: all wrong + all correct (0.25) exceed zero_var/frac (0.2), as in a run
    from before the split was restricted to zero-variance groups: the rest is clipped to 0."""
    steps = {"G4": [dict(frac=0.5, wrong=0.2, correct=0.1, constant=0.6, expected=0.3),
                    dict(frac=0.3, wrong=0.1, correct=0.1, constant=0.4, expected=0.3)],
             "G8": [dict(frac=0.2, wrong=0.1, correct=0.15, constant=0.3, expected=0.1)] * 2}
    rows = []
    for arm, values in steps.items():
        for seed in (0, 1):
            for step, v in enumerate(values, start=1):
                record = {"zero_var/frac": v["frac"], "zero_var/all_wrong_frac": v["wrong"],
                          "zero_var/all_correct_frac": v["correct"], "zero_var/expected_frac": v["expected"]}
                if with_constant_group_frac:
                    record["accuracy/constant_group_frac"] = v["constant"]
                rows.append((arm, seed, step, record))
    return frame(rows, G4={"group_size": 4}, G8={"group_size": 8})


def markers(ax):
    return {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}


def test_zero_variance_stacks_all_wrong_all_correct_and_the_rest_with_two_markers():
    fig = figures.zero_variance(zero_variance_frame())
    ax = fig.axes[0]
    assert [label.get_text() for label in ax.get_xticklabels()] == ["G=4", "G=8"]
    wrong, correct, rest = ([patch.get_height() for patch in bars] for bars in ax.containers)
    assert wrong == pytest.approx([0.15, 0.1])
    assert correct == pytest.approx([0.1, 0.15])
    assert rest == pytest.approx([0.15, 0.0])  # G8: 0.2 - 0.1 - 0.15 < 0, clipped
    assert [patch.get_y() for patch in ax.containers[2]] == pytest.approx([0.25, 0.25])  # on top of the two
    drawn = markers(ax)
    assert drawn[figures.ZERO_VAR_MARKERS["accuracy/constant_group_frac"][2]] == pytest.approx([0.5, 0.3])
    assert drawn[figures.ZERO_VAR_MARKERS["zero_var/expected_frac"][2]] == pytest.approx([0.3, 0.1])
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert len(legend) == 5 and any("bar p^G+(1-\\bar p)^G" in text for text in legend)


def test_zero_variance_draws_without_constant_group_frac():
    fig = figures.zero_variance(zero_variance_frame(with_constant_group_frac=False))
    ax = fig.axes[0]
    assert len(ax.containers) == 3
    drawn = markers(ax)
    # The measured marker is left out; the theory marker stays.
    assert list(drawn) == [figures.ZERO_VAR_MARKERS["zero_var/expected_frac"][2]]
    fig.draw_without_rendering()
