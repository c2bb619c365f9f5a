"""Statistics over seeds, as pure functions of the tidy frame from `analysis.load`.

A claim is a mean or IQM over seeds with a 95% bootstrap CI, following rliable (Agarwal et al. 2021,
"Deep RL at the Edge of the Statistical Precipice"): IQM is `scipy.stats.trim_mean(x, 0.25)` (the mean
of the middle 50%), and CIs are percentile bootstraps over seeds (`scipy.stats.bootstrap`,
method="percentile", fixed seed), so a report is reproducible to the digit.

Edge cases, handled here once: with fewer than two seeds no CI exists, so bounds are NaN (scipy would
raise); with constant data the CI collapses to the value (every resample gives the same statistic).
Smoothing is an option for curves only; final scores are never smoothed.
"""

from __future__ import annotations

import inspect
import re
from typing import Callable, Literal

import numpy as np
import pandas as pd
from scipy import stats

RUN_KEYS = ["experiment", "arm", "seed"]
ARM_KEYS = ["experiment", "arm"]
CONFIDENCE = 0.95
N_RESAMPLES = 9999
CURVE_RESAMPLES = 2000  # per x point; 2000 keeps a 1,000-step band under a second
BOOTSTRAP_SEED = 0
Axis = Literal["step", "samples", "tokens"]
# scipy renamed random_state to rng in 1.15; the project allows scipy >= 1.11.
_RNG_KWARG = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"


def iqm(values: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Interquartile mean: mean after cutting 25% from each end (rliable's convention)."""
    return stats.trim_mean(values, 0.25, axis=axis)


def _bootstrap(data: np.ndarray, statistic: Callable, confidence: float, n_resamples: int,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap bounds of `statistic` over axis 0 of `data` ([S] or [S, X], S >= 2)."""
    result = stats.bootstrap((data,), statistic, axis=0, vectorized=True, method="percentile",
                             confidence_level=confidence, n_resamples=n_resamples, batch=500,
                             **{_RNG_KWARG: np.random.default_rng(seed)})
    return result.confidence_interval.low, result.confidence_interval.high


def bootstrap_ci(values, statistic: Callable = np.mean, confidence: float = CONFIDENCE,
                 n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """(low, high) percentile-bootstrap CI of `statistic` over `values` (NaNs dropped).

    Fewer than 2 values: (nan, nan), no CI is possible. Constant values: (value, value).
    `statistic` must accept an `axis` keyword (np.mean and `iqm` do).
    """
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size < 2:
        return float("nan"), float("nan")
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    low, high = _bootstrap(x, statistic, confidence, n_resamples, seed)
    return float(low), float(high)


def natural_key(name: object) -> list:
    """Sort key that puts G4 before G16 (digit runs compare as numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(name))]


def arm_order(df: pd.DataFrame) -> list[str]:
    """The arms in `df`, naturally sorted."""
    return sorted(df["arm"].unique(), key=natural_key)


def final_scores(df: pd.DataFrame, metric: str = "eval/accuracy", window: int = 3,
                 min_step: int = 1) -> pd.DataFrame:
    """Final score of each run: mean of `metric` over its last `window` points with step >= min_step.

    min_step=1 leaves out the step-0 eval, which scores the model before training. A run with no such
    point has no row. An unfinished run is scored on its points so far (the report warns).
    Returns experiment, arm, seed, score, last_step, n_points.
    """
    columns = [*RUN_KEYS, "score", "last_step", "n_points"]
    if metric not in df.columns:
        return pd.DataFrame(columns=columns)
    points = df.loc[df[metric].notna() & (df["step"] >= min_step), [*RUN_KEYS, "step", metric]]
    last = points.sort_values("step").groupby(RUN_KEYS).tail(window)
    grouped = last.groupby(RUN_KEYS)
    out = pd.DataFrame({"score": grouped[metric].mean(), "last_step": grouped["step"].max(),
                        "n_points": grouped.size()})
    return out.reset_index()[columns]


def summarize_scores(scores: pd.DataFrame, confidence: float = CONFIDENCE,
                     n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> pd.DataFrame:
    """Per arm: n_seeds, mean, IQM and their bootstrap CIs (mean_lo, mean_hi, iqm_lo, iqm_hi)."""
    rows = []
    for (experiment, arm), group in scores.groupby(ARM_KEYS, sort=False):
        values = group["score"].to_numpy(dtype=float)
        mean_lo, mean_hi = bootstrap_ci(values, np.mean, confidence, n_resamples, seed)
        iqm_lo, iqm_hi = bootstrap_ci(values, iqm, confidence, n_resamples, seed)
        rows.append({"experiment": experiment, "arm": arm, "n_seeds": len(values),
                     "mean": float(np.mean(values)), "mean_lo": mean_lo, "mean_hi": mean_hi,
                     "iqm": float(iqm(values)), "iqm_lo": iqm_lo, "iqm_hi": iqm_hi})
    return pd.DataFrame(rows, columns=["experiment", "arm", "n_seeds", "mean", "mean_lo", "mean_hi",
                                       "iqm", "iqm_lo", "iqm_hi"])


def paired_differences(scores: pd.DataFrame, baseline: str, confidence: float = CONFIDENCE,
                       n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> pd.DataFrame:
    """Per non-baseline arm: mean over shared seeds of (arm score - baseline score), with bootstrap CI.

    Pairing by seed removes the seed-to-seed variance both arms share (same prompts, same init).
    Seeds missing from either arm are left out; n_pairs says how many remain.
    """
    base = scores.loc[scores["arm"] == baseline, ["experiment", "seed", "score"]]
    paired = scores.loc[scores["arm"] != baseline].merge(base, on=["experiment", "seed"],
                                                          suffixes=("", "_baseline"))
    rows = []
    for (experiment, arm), group in paired.groupby(ARM_KEYS, sort=False):
        diffs = (group["score"] - group["score_baseline"]).to_numpy(dtype=float)
        low, high = bootstrap_ci(diffs, np.mean, confidence, n_resamples, seed)
        rows.append({"experiment": experiment, "arm": arm, "baseline": baseline, "n_pairs": len(diffs),
                     "diff": float(np.mean(diffs)), "diff_lo": low, "diff_hi": high})
    return pd.DataFrame(rows, columns=["experiment", "arm", "baseline", "n_pairs", "diff", "diff_lo",
                                       "diff_hi"])


def smooth(df: pd.DataFrame, metrics: list[str], method: Literal["ema", "rolling"] = "ema",
           window: int = 10) -> pd.DataFrame:
    """Copy of `df` with `metrics` smoothed within each run, over its non-missing points in step order.

    ema: exponential moving average with span `window`; rolling: trailing mean of `window` points.
    """
    smoothers = {
        "ema": lambda s: s.ewm(span=window).mean(),
        "rolling": lambda s: s.rolling(window, min_periods=1).mean(),
    }
    out = df.sort_values([*RUN_KEYS, "step"]).copy()
    for metric in metrics:
        valid = out[metric].notna()
        out.loc[valid, metric] = out.loc[valid].groupby(RUN_KEYS)[metric].transform(smoothers[method])
    return out


def common_grid(df: pd.DataFrame, metric: str, x: Axis, grid_points: int = 100) -> np.ndarray:
    """Evenly spaced x values from the smallest to the largest x where `metric` was logged."""
    xs = df.loc[df[metric].notna(), x].to_numpy(dtype=float)
    return np.linspace(xs.min(), xs.max(), grid_points) if xs.size else np.array([])


def seed_matrix(runs: pd.DataFrame, metric: str, x: Axis,
                grid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(x values, [S, X] matrix) of one arm's seeds; NaN where a seed has no value at that x.

    grid None: the logged x values themselves (for steps, which line up across seeds). Otherwise each
    seed's curve is linearly interpolated onto `grid`, and never extrapolated past its own range:
    a seed that has not reached x yet does not count at x.
    """
    points = runs.loc[runs[metric].notna(), ["seed", x, metric]]
    if grid is None:
        table = points.pivot_table(index="seed", columns=x, values=metric, aggfunc="mean")
        return table.columns.to_numpy(dtype=float), table.to_numpy(dtype=float)
    rows = []
    for _, seed_points in points.groupby("seed"):
        # Keep the last value at a repeated x (xp must increase for np.interp).
        seed_points = seed_points.sort_values(x).drop_duplicates(x, keep="last")
        rows.append(np.interp(grid, seed_points[x].to_numpy(float), seed_points[metric].to_numpy(float),
                              left=np.nan, right=np.nan))
    return grid, np.vstack(rows) if rows else np.empty((0, grid.size))


def band(matrix: np.ndarray, confidence: float = CONFIDENCE, n_resamples: int = CURVE_RESAMPLES,
         seed: int = BOOTSTRAP_SEED) -> pd.DataFrame:
    """Per column of an [S, X] matrix: mean, lo, hi (bootstrap CI of the mean) and n_seeds, NaN-aware.

    Columns are bootstrapped in groups that share the same present seeds, so one scipy call covers
    all the steps where every seed has a value.
    """
    present = ~np.isnan(matrix)
    n_seeds = present.sum(axis=0)
    with np.errstate(invalid="ignore"):
        mean = np.where(n_seeds > 0, np.nansum(matrix, axis=0) / np.maximum(n_seeds, 1), np.nan)
    low, high = np.full(matrix.shape[1], np.nan), np.full(matrix.shape[1], np.nan)
    patterns, group_of = np.unique(present.T, axis=0, return_inverse=True)
    for index, pattern in enumerate(patterns):
        columns = np.flatnonzero(group_of.ravel() == index)
        if pattern.sum() < 2:
            continue
        values = matrix[pattern][:, columns]
        constant = np.all(values == values[:1], axis=0)
        low[columns[constant]] = high[columns[constant]] = values[0, constant]
        if (~constant).any():
            lo, hi = _bootstrap(values[:, ~constant], np.mean, confidence, n_resamples, seed)
            low[columns[~constant]], high[columns[~constant]] = lo, hi
    return pd.DataFrame({"mean": mean, "lo": low, "hi": high, "n_seeds": n_seeds})


def curves(df: pd.DataFrame, metric: str, x: Axis = "step", grid_points: int = 100,
           smoothing: Literal["ema", "rolling"] | None = None, window: int = 10,
           confidence: float = CONFIDENCE, n_resamples: int = CURVE_RESAMPLES) -> pd.DataFrame:
    """Per arm and x: mean of `metric` across seeds with a bootstrap CI band.

    x="step" uses the logged steps. x="samples"/"tokens" interpolates every seed onto one grid per
    experiment before averaging, so arms are compared at matched compute: an arm that draws more
    completions per step does not look better just for having seen more of them.
    Returns experiment, arm, <x>, mean, lo, hi, n_seeds (rows with no seed dropped).
    """
    if metric not in df.columns:
        return pd.DataFrame(columns=[*ARM_KEYS, x, "mean", "lo", "hi", "n_seeds"])
    if smoothing is not None:
        df = smooth(df, [metric], smoothing, window)
    frames = []
    for experiment, runs in df.groupby("experiment", sort=False):
        grid = None if x == "step" else common_grid(runs, metric, x, grid_points)
        for arm, arm_runs in runs.groupby("arm", sort=False):
            xs, matrix = seed_matrix(arm_runs, metric, x, grid)
            if matrix.size == 0:
                continue
            stats_frame = band(matrix, confidence, n_resamples)
            frames.append(stats_frame.assign(experiment=experiment, arm=arm, **{x: xs}))
    if not frames:
        return pd.DataFrame(columns=[*ARM_KEYS, x, "mean", "lo", "hi", "n_seeds"])
    out = pd.concat(frames, ignore_index=True)
    return out.loc[out["n_seeds"] > 0, [*ARM_KEYS, x, "mean", "lo", "hi", "n_seeds"]].reset_index(drop=True)


def run_means(df: pd.DataFrame, metrics: list[str], min_step: int = 1) -> pd.DataFrame:
    """Per run: the mean of each metric over its training steps (step >= min_step)."""
    present = [m for m in metrics if m in df.columns]
    training = df.loc[df["step"] >= min_step]
    return training.groupby(RUN_KEYS)[present].mean().reset_index()


def late_run_means(df: pd.DataFrame, metrics: list[str], fraction: float = 0.1) -> pd.DataFrame:
    """Per run: the mean of each metric over the last `fraction` of the steps it has done (>= 1 step).

    Used to describe where training ended up without leaning on a single noisy step.
    """
    last = df.groupby(RUN_KEYS)["step"].transform("max")
    late = df.loc[(df["step"] >= 1) & (df["step"] >= np.floor(last * (1 - fraction)))]
    return run_means(late, metrics)


def across_seeds(per_run: pd.DataFrame, metrics: list[str], confidence: float = CONFIDENCE,
                 n_resamples: int = N_RESAMPLES) -> pd.DataFrame:
    """Long frame: per arm and metric, mean over seeds with bootstrap CI (lo, hi) and n_seeds."""
    rows = []
    for (experiment, arm), group in per_run.groupby(ARM_KEYS, sort=False):
        for metric in metrics:
            values = group[metric].dropna().to_numpy(dtype=float) if metric in group else np.array([])
            if values.size == 0:
                continue
            low, high = bootstrap_ci(values, np.mean, confidence, n_resamples)
            rows.append({"experiment": experiment, "arm": arm, "metric": metric, "mean": float(values.mean()),
                         "lo": low, "hi": high, "n_seeds": int(values.size)})
    return pd.DataFrame(rows, columns=[*ARM_KEYS, "metric", "mean", "lo", "hi", "n_seeds"])


def arm_values(df: pd.DataFrame, field: str) -> pd.DataFrame:
    """experiment, arm and the arm's value of a config column (the ablated knob, say)."""
    return df.groupby(ARM_KEYS, sort=False)[field].first().reset_index()


def inner_epoch_table(df: pd.DataFrame, quantities: tuple[str, ...] = ("clip_frac", "kl_old")) -> pd.DataFrame:
    """Long frame of `inner/<k>/<quantity>` averaged over training, then over seeds with a CI.

    Returns experiment, arm, epoch (k, int), quantity, mean, lo, hi, n_seeds.
    """
    pattern = re.compile(rf"inner/(\d+)/({'|'.join(quantities)})")
    metrics = [c for c in df.columns if pattern.fullmatch(c)]
    table = across_seeds(run_means(df, metrics), metrics)
    parts = table["metric"].str.extract(pattern.pattern)
    table = table.assign(epoch=parts[0].astype(int), quantity=parts[1]).drop(columns="metric")
    return table[[*ARM_KEYS, "epoch", "quantity", "mean", "lo", "hi", "n_seeds"]]
