"""analysis.aggregate on hand-made frames whose answers are computed by hand in the comments."""

import math

import numpy as np
import pandas as pd
import pytest

from analysis import aggregate as agg


def frame(rows):
    """Tidy frame from (arm, seed, step, {metric: value}) tuples, samples = 8 * step."""
    return pd.DataFrame([{"experiment": "e", "arm": arm, "seed": seed, "step": step, "samples": 8 * step,
                          "tokens": 80 * step, **values} for arm, seed, step, values in rows])


def scores(values_by_arm):
    """Final-score frame: {arm: [score of seed 0, seed 1, ...]}."""
    return pd.DataFrame([{"experiment": "e", "arm": arm, "seed": seed, "score": v}
                         for arm, values in values_by_arm.items() for seed, v in enumerate(values)])


def test_final_score_averages_the_last_window_of_eval_points_after_step_0():
    evals = {0: 0.9, 10: 0.2, 20: 0.4, 30: 0.6}
    rows = [("a", 0, s, {"eval/accuracy": v}) for s, v in evals.items()]
    rows += [("a", 0, s, {"loss": 1.0}) for s in (5, 15, 25)]  # training-only steps: no eval value
    rows += [("b", 0, 0, {"eval/accuracy": 0.9})]  # only the pre-training eval: no final score
    df = frame(rows)
    result = agg.final_scores(df, window=3)
    assert result["arm"].tolist() == ["a"]
    assert result["score"].iloc[0] == pytest.approx((0.2 + 0.4 + 0.6) / 3)  # 0.4
    assert result["last_step"].iloc[0] == 30 and result["n_points"].iloc[0] == 3
    assert agg.final_scores(df, window=2)["score"].iloc[0] == pytest.approx(0.5)  # (0.4 + 0.6) / 2
    # Window larger than the run: all post-step-0 points, still not the step-0 eval.
    assert agg.final_scores(df, window=10)["score"].iloc[0] == pytest.approx(0.4)


def test_iqm_is_the_mean_of_the_middle_half():
    assert agg.iqm(np.array([1, 2, 3, 4, 5, 6, 7, 8.0])) == pytest.approx(4.5)  # mean(3, 4, 5, 6)
    assert agg.iqm(np.array([1, 2, 3, 100.0])) == pytest.approx(2.5)  # mean(2, 3)


def test_summary_mean_and_iqm_with_cis():
    summary = agg.summarize_scores(scores({"a": [1, 2, 3, 4, 10]})).iloc[0]
    assert summary["n_seeds"] == 5
    assert summary["mean"] == pytest.approx(4.0)  # 20 / 5
    assert summary["iqm"] == pytest.approx(3.0)  # trim int(0.25 * 5) = 1 from each end: mean(2, 3, 4)
    assert 1 <= summary["mean_lo"] < 4.0 < summary["mean_hi"] <= 10
    assert 1 <= summary["iqm_lo"] <= 3.0 <= summary["iqm_hi"] <= 10
    again = agg.summarize_scores(scores({"a": [1, 2, 3, 4, 10]})).iloc[0]
    assert again["mean_lo"] == summary["mean_lo"]  # fixed bootstrap seed: reproducible


def test_bootstrap_ci_of_the_mean_matches_the_normal_approximation():
    values = np.arange(20.0)  # mean 9.5, population sd 5.766, se = 5.766 / sqrt(20) = 1.289
    low, high = agg.bootstrap_ci(values)
    assert low == pytest.approx(9.5 - 1.96 * 1.289, abs=0.3)  # 6.97
    assert high == pytest.approx(9.5 + 1.96 * 1.289, abs=0.3)  # 12.03


def test_one_seed_gives_nan_bounds_and_constant_data_collapses():
    one = agg.summarize_scores(scores({"a": [0.7]})).iloc[0]
    assert one["mean"] == pytest.approx(0.7) and one["iqm"] == pytest.approx(0.7)
    assert math.isnan(one["mean_lo"]) and math.isnan(one["mean_hi"]) and math.isnan(one["iqm_hi"])
    constant = agg.summarize_scores(scores({"a": [0.5, 0.5, 0.5]})).iloc[0]
    assert (constant["mean_lo"], constant["mean_hi"], constant["iqm_lo"]) == (0.5, 0.5, 0.5)
    diff = agg.paired_differences(scores({"base": [0.5], "a": [0.7]}), "base").iloc[0]
    assert diff["diff"] == pytest.approx(0.2) and diff["n_pairs"] == 1 and math.isnan(diff["diff_lo"])


def test_paired_difference_pairs_by_seed_and_drops_unpaired_seeds():
    table = scores({"base": [0.5, 0.6, 0.7], "a": [0.6, 0.6, 0.9, 0.1]})  # a has an extra seed 3
    diff = agg.paired_differences(table, "base")
    assert diff["arm"].tolist() == ["a"]
    row = diff.iloc[0]
    assert row["n_pairs"] == 3
    assert row["diff"] == pytest.approx(0.1)  # mean of (0.1, 0.0, 0.2)
    # A resample is all 0.0 (or all 0.2) with probability (1/3)^3 = 3.7%, more than the 2.5% in
    # each tail, so the percentile CI is exactly [0.0, 0.2].
    assert (row["diff_lo"], row["diff_hi"]) == pytest.approx((0.0, 0.2))


def test_curves_on_samples_interpolate_each_seed_onto_one_grid():
    # Seed 0 reaches 20 samples with y = samples / 10; seed 1 reaches 40 samples with y = samples / 20.
    rows = [("a", 0, 0, {"m": 0.0}), ("a", 0, 1, {"m": 1.0}), ("a", 0, 2, {"m": 2.0}),
            ("a", 1, 0, {"m": 0.0}), ("a", 1, 5, {"m": 2.0})]
    df = frame(rows).assign(samples=[0, 10, 20, 0, 40])
    result = agg.curves(df, "m", x="samples", grid_points=5)  # grid 0, 10, 20, 30, 40
    assert result["samples"].tolist() == [0, 10, 20, 30, 40]
    # At 10: (1 + 0.5) / 2; at 20: (2 + 1) / 2; past 20 only seed 1 (no extrapolation of seed 0).
    assert result["mean"].tolist() == pytest.approx([0.0, 0.75, 1.5, 1.5, 2.0])
    assert result["n_seeds"].tolist() == [2, 2, 2, 1, 1]
    assert result["lo"].iloc[0] == 0.0 and result["hi"].iloc[0] == 0.0  # both seeds 0: constant
    assert result[["lo", "hi"]].iloc[3:].isna().all().all()  # one seed: no band


def test_curves_on_steps_average_seeds_with_a_two_point_bootstrap_band():
    rows = [("a", 0, 1, {"m": 0.0}), ("a", 1, 1, {"m": 1.0}), ("a", 0, 2, {"m": 2.0})]
    result = agg.curves(frame(rows), "m", x="step")
    assert result["step"].tolist() == [1, 2]
    assert result["mean"].tolist() == pytest.approx([0.5, 2.0])
    # Resampling two values: means 0, 0.5, 1 with probability 1/4, 1/2, 1/4, so the 2.5th and
    # 97.5th percentiles are 0 and 1.
    assert (result["lo"].iloc[0], result["hi"].iloc[0]) == pytest.approx((0.0, 1.0))
    assert result["n_seeds"].tolist() == [2, 1]


def test_curves_are_per_arm_on_a_shared_grid():
    rows = [("a", 0, 0, {"m": 0.0}), ("a", 0, 1, {"m": 1.0}), ("b", 0, 0, {"m": 0.0}), ("b", 0, 4, {"m": 4.0})]
    result = agg.curves(frame(rows), "m", x="samples", grid_points=5)  # samples 0..32, step 8
    assert result.loc[result["arm"] == "a", "samples"].tolist() == [0, 8]
    assert result.loc[result["arm"] == "b", "mean"].tolist() == pytest.approx([0, 1, 2, 3, 4])


def test_smoothing_ema_and_rolling_stay_within_a_run():
    rows = [("a", 0, s, {"m": v}) for s, v in enumerate([0.0, 3.0, 6.0])] + [("a", 1, 0, {"m": 100.0})]
    df = frame(rows)
    rolling = agg.smooth(df, ["m"], "rolling", window=2)
    assert rolling["m"].tolist() == pytest.approx([0.0, 1.5, 4.5, 100.0])
    # span 3 -> alpha 0.5, adjusted weights: (3 + 0.5 * 0) / 1.5 = 2; (6 + 1.5 + 0) / 1.75 = 4.2857
    ema = agg.smooth(df, ["m"], "ema", window=3)
    assert ema["m"].tolist() == pytest.approx([0.0, 2.0, 7.5 / 1.75, 100.0])
    assert df["m"].tolist() == [0.0, 3.0, 6.0, 100.0]  # input untouched


def test_late_run_means_and_inner_epoch_table():
    rows = [("a", 0, s, {"m": float(s), "inner/1/clip_frac": 0.0, "inner/2/clip_frac": 0.1 * s})
            for s in range(0, 11)]
    df = frame(rows)
    # Last 10% of 10 steps: steps 9 and 10.
    assert agg.late_run_means(df, ["m"])["m"].iloc[0] == pytest.approx(9.5)
    table = agg.inner_epoch_table(df, ("clip_frac",))
    assert table["epoch"].tolist() == [1, 2]
    assert table["mean"].tolist() == pytest.approx([0.0, 0.55])  # 0.1 * mean(1..10), step 0 excluded


def test_natural_arm_order():
    df = frame([(arm, 0, 0, {}) for arm in ("G16", "G4", "G8")])
    assert agg.arm_order(df) == ["G4", "G8", "G16"]
