"""analysis.aggregate on hand-made frames whose answers are computed by hand in the comments."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import aggregate as agg

# Student-t quantiles t_{0.975, df}, closed forms: df=1 is Cauchy, tan(pi * (0.975 - 1/2)); df=2 is
# (2p - 1) * sqrt(2 / (4p(1 - p))) = 0.95 * sqrt(2 / 0.0975). df=4 from a printed table.
T1 = math.tan(math.pi * 0.475)  # 12.7062
T2 = 0.95 * math.sqrt(2 / 0.0975)  # 4.30265
T4 = 2.776445


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


def test_t_interval_by_hand():
    # [1, 2, 3]: mean 2, sample std 1 (squares 1 + 0 + 1 over n - 1 = 2), half-width t_{0.975,2} / sqrt(3).
    low, high = agg.t_interval([1.0, 2.0, 3.0])
    assert (low, high) == pytest.approx((2 - T2 / math.sqrt(3), 2 + T2 / math.sqrt(3)))  # (-0.484, 4.484)
    # [0, 1]: mean 0.5, std sqrt(0.5), half-width t_{0.975,1} * sqrt(0.5) / sqrt(2) = T1 / 2: very wide.
    assert agg.t_interval([0.0, 1.0]) == pytest.approx((0.5 - T1 / 2, 0.5 + T1 / 2))  # (-5.85, 6.85)
    assert agg.t_interval([1.0, np.nan, 3.0]) == pytest.approx((2 - T1, 2 + T1))  # NaN dropped: n = 2
    # A 90% interval uses t_{0.95,2} = 0.9 * sqrt(2 / 0.19) = 2.91999 instead.
    t90 = 0.9 * math.sqrt(2 / 0.19)
    assert agg.t_interval([1.0, 2.0, 3.0], 0.9) == pytest.approx((2 - t90 / math.sqrt(3), 2 + t90 / math.sqrt(3)))


def test_band_matches_scipy_one_sample_t_interval_column_by_column():
    rng = np.random.default_rng(1)
    matrix = rng.normal(size=(5, 6))
    matrix[[0, 3], 1] = np.nan  # 3 seeds present
    matrix[:4, 2] = np.nan  # 1 seed: no interval
    matrix[:, 3] = np.nan  # no seed: no mean either
    matrix[:, 4] = 0.3  # constant: the value itself, not a rounding-sized interval around it
    result = agg.band(matrix)
    assert result["n_seeds"].tolist() == [5, 3, 1, 0, 5, 5]
    for column in (0, 1, 5):
        values = matrix[~np.isnan(matrix[:, column]), column]
        interval = stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
        assert result.loc[column, "mean"] == pytest.approx(values.mean())
        assert (result.loc[column, "lo"], result.loc[column, "hi"]) == pytest.approx((interval.low, interval.high))
    assert result.loc[2, "mean"] == matrix[4, 2] and result.loc[2, ["lo", "hi"]].isna().all()
    assert result.loc[3, ["mean", "lo", "hi"]].isna().all()
    assert result.loc[4, ["mean", "lo", "hi"]].tolist() == [0.3, 0.3, 0.3]


def test_summary_mean_with_t_interval_and_iqm_only_from_4_seeds():
    summary = agg.summarize_scores(scores({"a": [1, 2, 3, 4, 10]})).iloc[0]
    assert summary["n_seeds"] == 5
    assert summary["mean"] == pytest.approx(4.0)  # 20 / 5
    # Squares of (-3, -2, -1, 0, 6) add to 50, s = sqrt(50 / 4) = 3.5355, s / sqrt(5) = 1.5811.
    assert summary["mean_lo"] == pytest.approx(4.0 - T4 * 1.58114, rel=1e-5)  # -0.390
    assert summary["mean_hi"] == pytest.approx(4.0 + T4 * 1.58114, rel=1e-5)  # 8.390
    assert summary["iqm"] == pytest.approx(3.0)  # trim int(0.25 * 5) = 1 from each end: mean(2, 3, 4)
    assert "iqm_lo" not in summary.index  # no interval is claimed for the IQM
    four = agg.summarize_scores(scores({"a": [1, 2, 3, 100]})).iloc[0]
    assert four["iqm"] == pytest.approx(2.5)  # 4 seeds trim one from each end: mean(2, 3)
    # 3 seeds: trim_mean would cut int(0.75) = 0 values and return the mean (11); not reported as an IQM.
    three = agg.summarize_scores(scores({"a": [1, 2, 30]})).iloc[0]
    assert three["mean"] == pytest.approx(11.0) and math.isnan(three["iqm"])


def test_one_seed_gives_nan_bounds_and_constant_data_collapses():
    one = agg.summarize_scores(scores({"a": [0.7]})).iloc[0]
    assert one["mean"] == pytest.approx(0.7) and math.isnan(one["iqm"])
    assert math.isnan(one["mean_lo"]) and math.isnan(one["mean_hi"])
    constant = agg.summarize_scores(scores({"a": [0.1, 0.1, 0.1]})).iloc[0]
    assert constant["mean"] == pytest.approx(0.1)
    assert (constant["mean_lo"], constant["mean_hi"]) == (0.1, 0.1)  # exactly, no rounding-sized interval
    diff = agg.paired_differences(scores({"base": [0.5], "a": [0.7]}), "base").iloc[0]
    assert diff["diff"] == pytest.approx(0.2) and diff["n_pairs"] == 1 and math.isnan(diff["diff_lo"])


def test_paired_difference_pairs_by_seed_and_drops_unpaired_seeds():
    table = scores({"base": [0.5, 0.6, 0.7], "a": [0.6, 0.6, 0.9, 0.1]})  # a has an extra seed 3
    diff = agg.paired_differences(table, "base")
    assert diff["arm"].tolist() == ["a"]
    row = diff.iloc[0]
    assert row["n_pairs"] == 3
    assert row["diff"] == pytest.approx(0.1)  # mean of (0.1, 0.0, 0.2)
    # Sample std of (0.1, 0.0, 0.2) is 0.1, so the half-width is t_{0.975,2} * 0.1 / sqrt(3) = 0.2484.
    # (The percentile bootstrap gave exactly [0.0, 0.2]: it cannot reach past the values it resamples.)
    assert (row["diff_lo"], row["diff_hi"]) == pytest.approx((0.1 - T2 * 0.1 / math.sqrt(3),
                                                              0.1 + T2 * 0.1 / math.sqrt(3)))


def null_sweep(rng, seeds=3, steps=(10, 20, 30)):
    """Tidy frame of a null ablation: both arms' eval accuracies i.i.d. normal(0.5, 0.1), nothing shared."""
    rows = [("base", seed, step) for seed in range(seeds) for step in steps]
    rows += [("ablation", seed, step) for seed in range(seeds) for step in steps]
    return frame([(arm, seed, step, {"eval/accuracy": v})
                  for (arm, seed, step), v in zip(rows, rng.normal(0.5, 0.1, len(rows)))])


def test_null_ablation_with_3_seeds_finds_an_effect_about_5_percent_of_the_time():
    # The percentile bootstrap excluded 0 whenever the 3 paired differences shared a sign:
    # 2 * (1/2)^3 = 25% of null sweeps. A 95% interval with coverage should do so ~5% of the time;
    # with 300 repetitions the share has standard error sqrt(0.05 * 0.95 / 300) = 1.3 points.
    rng = np.random.default_rng(0)
    excluded = []
    for _ in range(300):
        diff = agg.paired_differences(agg.final_scores(null_sweep(rng)), "base").iloc[0]
        assert diff["n_pairs"] == 3
        excluded.append(diff["diff_lo"] > 0 or diff["diff_hi"] < 0)
    assert 0.02 <= np.mean(excluded) <= 0.09


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


def test_curves_on_steps_average_seeds_with_a_two_seed_t_band():
    rows = [("a", 0, 1, {"m": 0.0}), ("a", 1, 1, {"m": 1.0}), ("a", 0, 2, {"m": 2.0})]
    result = agg.curves(frame(rows), "m", x="step")
    assert result["step"].tolist() == [1, 2]
    assert result["mean"].tolist() == pytest.approx([0.5, 2.0])
    # Two seeds 0 and 1: s = sqrt(0.5), half-width t_{0.975,1} * sqrt(0.5) / sqrt(2) = 12.71 / 2.
    assert (result["lo"].iloc[0], result["hi"].iloc[0]) == pytest.approx((0.5 - T1 / 2, 0.5 + T1 / 2))
    assert result[["lo", "hi"]].iloc[1].isna().all()  # one seed at step 2
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


def test_final_scores_at_matched_compute_interpolate_at_the_samples_every_run_reached():
    # Run a: evals at samples 0, 10, 20, 30 (steps 0-3) of 0.0, 0.2, 0.4, 0.6. Run b samples twice as fast:
    # samples 0, 20, 40, 60 with 0.0, 0.3, 0.5, 0.7. Every run reached 30 samples (a's last eval).
    df = frame([("a", 0, s, {"eval/accuracy": v}) for s, v in enumerate([0.0, 0.2, 0.4, 0.6])]
               + [("b", 0, s, {"eval/accuracy": v}) for s, v in enumerate([0.0, 0.3, 0.5, 0.7])])
    df.loc[df["arm"] == "b", "samples"] = 20 * df.loc[df["arm"] == "b", "step"]
    df.loc[df["arm"] == "a", "samples"] = 10 * df.loc[df["arm"] == "a", "step"]
    assert agg.matched_budget(df, "eval/accuracy", "samples") == 30.0
    result = agg.final_scores(df, window=3, at=("samples", 30.0)).set_index("arm")
    # Both are scored at a's last 3 eval points, samples 10, 20 and 30, so both average the same compute.
    # a: its own evals there: mean(0.2, 0.4, 0.6) = 0.4, as at equal steps.
    assert result.loc["a", "score"] == pytest.approx(0.4) and result.loc["a", "last_step"] == 3
    # b: interpolated at 10 (between 0 and 20: 0.15), 20 (0.3) and 30 (between 20 and 40: 0.4): mean 0.85 / 3.
    assert result.loc["b", "score"] == pytest.approx(0.85 / 3)
    assert result.loc["b", "n_points"] == 3 and result.loc["b", "last_step"] == 2
    assert agg.matched_budget(df.drop(columns="samples"), "eval/accuracy", "samples") is None  # old runs
    # At equal steps b would score mean(0.3, 0.5, 0.7) = 0.5, with twice a's samples.
    assert agg.final_scores(df, window=3).set_index("arm").loc["b", "score"] == pytest.approx(0.5)


def test_a_family_with_no_pair_at_all_gives_rows_without_a_test():
    # Two arms run on disjoint seeds: every comparison of the family has 0 pairs. No crash, no verdict.
    tests = agg.family_verdicts({"a vs b": np.array([]), "c vs b": np.array([])})
    assert tests["n_pairs"].tolist() == [0, 0]
    assert tests["claim"].tolist() == [0, 0]
    assert tests[["diff", "diff_lo", "diff_hi", "p_holm", "detectable"]].isna().all().all()
