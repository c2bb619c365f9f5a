"""Statistics over seeds, as pure functions of the tidy frame from `analysis.load`.

A claim is a mean over seeds with a 95% Student-t interval (Student 1908, "The probable error of a
mean"): mean ± t_{(1+c)/2, n-1} · s/√n, s the sample std (ddof=1), n the number of seeds (or of
seed-paired differences). It is used for per-arm means, paired differences, `across_seeds` and the
curve bands. Why not the percentile bootstrap (rliable's default)? With the 2-5 seeds a GRPO sweep
affords, resampling n values cannot show spread the n values do not already have, so its intervals are
too narrow: with 3 paired differences it excludes 0 whenever all three share a sign, which a null
ablation does 2 · (1/2)^3 = 25% of the time instead of 5%. The t-interval pays for the small n in its
quantile (12.71 at n=2, 4.30 at n=3, 2.78 at n=5) and keeps its coverage when the per-run scores are
roughly normal (a score averages many graded answers, so it is close to normal).

What the interval says at small n: at n=2 it is mean ± 6.35 · |a - b|, valid but so wide that two
seeds can only show a very large effect; usually n is too small to tell. An interval that covers 0
means this budget cannot tell the arms apart, not that they are equal. At n=1 there is no interval
(NaN bounds); constant values give (value, value).

IQM is `scipy.stats.trim_mean(x, 0.25)` (rliable's interquartile mean). It cuts int(0.25·n) values
from each end, none below n=4, so it is reported only from 4 seeds on, and as a point value without a
CI: no interval for it has known coverage at a handful of seeds.
Smoothing is an option for curves only; final scores are never smoothed.

Claims (`paired_verdicts`) are not these per-comparison intervals: the comparisons of a report are tested
as one family with Holm's step-down t-tests (`analysis.verdicts`), beside the smallest effect the seeds
could detect. At matched compute (`matched_budget`), a run is scored at the largest sample or token count
every run reached, its eval curve interpolated there.
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from analysis import verdicts

RUN_KEYS = ["experiment", "arm", "seed"]
ARM_KEYS = ["experiment", "arm"]
CONFIDENCE = 0.95
IQM_MIN_SEEDS = 4  # trim_mean(x, 0.25) cuts int(0.25 * n) from each end: nothing below 4 seeds
Axis = Literal["step", "samples", "tokens"]


def iqm(values: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Interquartile mean: mean after cutting 25% from each end (rliable's convention)."""
    return stats.trim_mean(values, 0.25, axis=axis)


def band(matrix: np.ndarray, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per column of an [S, X] matrix: mean, lo, hi (t-interval of the mean) and n_seeds, NaN-aware.

    Each column uses the seeds present in it (n_seeds). Columns with no seed get a NaN mean; columns
    with fewer than 2 get NaN bounds; constant columns get lo = hi = the value.
    """
    present = ~np.isnan(matrix)
    n_seeds = present.sum(axis=0)
    count = np.maximum(n_seeds, 1)  # an empty column divides by 1, and its NaN mean is set below
    mean = np.where(n_seeds > 0, np.where(present, matrix, 0.0).sum(axis=0) / count, np.nan)
    squares = np.where(present, (matrix - mean) ** 2, 0.0).sum(axis=0)
    std = np.sqrt(squares / np.maximum(n_seeds - 1, 1))  # ddof=1; used only where n_seeds >= 2
    # Rounding can leave a tiny std on equal values (their summed mean need not be exact): test
    # equality instead, and report the value itself as the mean.
    smallest = np.where(present, matrix, np.inf).min(axis=0, initial=np.inf)
    constant = smallest == np.where(present, matrix, -np.inf).max(axis=0, initial=-np.inf)
    mean = np.where(constant, smallest, mean)
    quantile = stats.t.ppf((1 + confidence) / 2, np.maximum(n_seeds - 1, 1))
    half_width = np.where(constant, 0.0, quantile * std / np.sqrt(count))
    half_width = np.where(n_seeds >= 2, half_width, np.nan)
    return pd.DataFrame({"mean": mean, "lo": mean - half_width, "hi": mean + half_width, "n_seeds": n_seeds})


def t_interval(values, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """(low, high) Student-t interval of the mean of `values` (NaNs dropped); `band` of one column.

    Fewer than 2 values: (nan, nan), no interval is possible. Constant values: (value, value).
    """
    column = band(np.asarray(values, dtype=float).reshape(-1, 1), confidence).iloc[0]
    return float(column["lo"]), float(column["hi"])


def natural_key(name: object) -> list:
    """Sort key that puts G4 before G16 (digit runs compare as numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(name))]


def arm_order(df: pd.DataFrame) -> list[str]:
    """The arms in `df`, naturally sorted."""
    return sorted(df["arm"].unique(), key=natural_key)


def matched_budget(df: pd.DataFrame, metric: str, axis: Axis, min_step: int = 1) -> float | None:
    """The largest `axis` value (samples or tokens) every run reached with a `metric` point after min_step:
    the smallest, over runs, of the axis at the run's last such point. None without any."""
    if metric not in df.columns or axis not in df.columns:
        return None
    points = df.loc[df[metric].notna() & (df["step"] >= min_step), [*RUN_KEYS, axis]].dropna()
    if points.empty:
        return None
    return float(points.groupby(RUN_KEYS)[axis].max().min())


def matched_grid(points: pd.DataFrame, metric: str, axis: str, at: float, window: int, min_step: int) -> np.ndarray:
    """The axis values every run is scored at, at matched compute: the last `window` eval points (step >=
    min_step) of the run that reached the least (its last one is `at`), so all runs average the same
    stretch of compute. points: RUN_KEYS, step, axis, metric rows of all runs."""
    evals = points.loc[points[metric].notna() & (points["step"] >= min_step)]
    last = evals.groupby(RUN_KEYS)[axis].transform("max")
    limiting = evals.loc[last == last.min()]
    key = tuple(limiting.iloc[0][RUN_KEYS])       # the first run (in sort order) that reached only `at`
    own = limiting.loc[(limiting[RUN_KEYS] == pd.Series(key, index=RUN_KEYS)).all(axis=1), axis]
    grid = np.sort(own.to_numpy(float))[-window:]
    return grid[grid <= at]


def _score_on(points: pd.DataFrame, metric: str, axis: str, grid: np.ndarray) -> dict:
    """One run's score at matched compute: its eval curve (step 0 included, as the left end) interpolated at
    each axis value of `grid`, averaged; last_step is its first eval step at or past the grid's end."""
    points = points.sort_values(axis).drop_duplicates(axis, keep="last")
    values = np.interp(grid, points[axis].to_numpy(float), points[metric].to_numpy(float))
    reached = points.loc[points[axis] >= grid[-1], "step"]
    return {"score": float(np.mean(values)), "last_step": int(reached.min()), "n_points": len(grid)}


def final_scores(df: pd.DataFrame, metric: str = "eval/accuracy", window: int = 3,
                 min_step: int = 1, at: tuple[Axis, float] | None = None) -> pd.DataFrame:
    """Final score of each run: mean of `metric` over its last `window` points with step >= min_step.

    min_step=1 leaves out the step-0 eval, which scores the model before training. A run with no such
    point has no row. An unfinished run is scored on its points so far (the report warns).
    at=(axis, value), matched compute: every run's curve is interpolated at the same `window` axis values
    (`matched_grid`: the eval points of the run that reached the least, ending at `value`, the
    `matched_budget`) and averaged there; last_step is then the first eval step at or past `value`. Returns experiment, arm, seed, score, last_step, n_points.
    """
    columns = [*RUN_KEYS, "score", "last_step", "n_points"]
    if metric not in df.columns:
        return pd.DataFrame(columns=columns)
    if at is not None:
        axis, value = at
        points = df.loc[df[metric].notna(), [*RUN_KEYS, "step", axis, metric]].dropna(subset=[axis])
        reached = [(key, run) for key, run in points.groupby(RUN_KEYS, sort=True)
                   if ((run["step"] >= min_step) & (run[axis] >= value)).any()]
        if not reached:
            return pd.DataFrame(columns=columns)
        grid = matched_grid(pd.concat([run for _, run in reached]), metric, axis, value, window, min_step)
        rows = [{**dict(zip(RUN_KEYS, key)), **_score_on(run, metric, axis, grid)} for key, run in reached]
        return pd.DataFrame(rows, columns=columns)
    points = df.loc[df[metric].notna() & (df["step"] >= min_step), [*RUN_KEYS, "step", metric]]
    last = points.sort_values("step").groupby(RUN_KEYS).tail(window)
    grouped = last.groupby(RUN_KEYS)
    out = pd.DataFrame({"score": grouped[metric].mean(), "last_step": grouped["step"].max(),
                        "n_points": grouped.size()})
    return out.reset_index()[columns]


def summarize_scores(scores: pd.DataFrame, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per arm: n_seeds, mean with its t-interval (mean_lo, mean_hi), and IQM (no interval).

    iqm is NaN below IQM_MIN_SEEDS seeds, where trimming 25% removes nothing and it is the mean again.
    """
    rows = []
    for (experiment, arm), group in scores.groupby(ARM_KEYS, sort=False):
        values = group["score"].to_numpy(dtype=float)
        mean_lo, mean_hi = t_interval(values, confidence)
        rows.append({"experiment": experiment, "arm": arm, "n_seeds": len(values),
                     "mean": float(np.mean(values)), "mean_lo": mean_lo, "mean_hi": mean_hi,
                     "iqm": float(iqm(values)) if len(values) >= IQM_MIN_SEEDS else float("nan")})
    return pd.DataFrame(rows, columns=["experiment", "arm", "n_seeds", "mean", "mean_lo", "mean_hi", "iqm"])


def paired_differences(scores: pd.DataFrame, baseline: str, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per non-baseline arm: mean over shared seeds of (arm score - baseline score), with its t-interval.

    Pairing by seed removes the seed-to-seed variance both arms share (same prompts, same init).
    Seeds missing from either arm are left out; n_pairs says how many remain.
    """
    base = scores.loc[scores["arm"] == baseline, ["experiment", "seed", "score"]]
    paired = scores.loc[scores["arm"] != baseline].merge(base, on=["experiment", "seed"],
                                                          suffixes=("", "_baseline"))
    rows = []
    for (experiment, arm), group in paired.groupby(ARM_KEYS, sort=False):
        diffs = (group["score"] - group["score_baseline"]).to_numpy(dtype=float)
        low, high = t_interval(diffs, confidence)
        rows.append({"experiment": experiment, "arm": arm, "baseline": baseline, "n_pairs": len(diffs),
                     "diff": float(np.mean(diffs)), "diff_lo": low, "diff_hi": high})
    return pd.DataFrame(rows, columns=["experiment", "arm", "baseline", "n_pairs", "diff", "diff_lo",
                                       "diff_hi"])


VERDICT_COLUMNS = ["n_pairs", "diff", "diff_lo", "diff_hi", "level", "p_holm", "tie", "claim", "sd",
                   "detectable", "m"]


def family_verdicts(diffs: dict[str, np.ndarray]) -> pd.DataFrame:
    """One Holm family {name: its paired differences} tested with `verdicts.paired_tests`, indexed by name.

    Columns: n_pairs, diff (mean), diff_lo, diff_hi (the interval at the comparison's Holm level; NaN for
    one pair or a tie), level, p_holm, tie, claim (+1 higher, -1 lower, 0 none), sd, detectable, m.
    """
    tests = verdicts.paired_tests(verdicts.ragged([np.asarray(d, dtype=float) for d in diffs.values()]))
    names = {"n": "n_pairs", "mean": "diff", "lo": "diff_lo", "hi": "diff_hi"}
    frame = pd.DataFrame({names.get(k, k): v for k, v in tests.items() if k != "p"}, index=list(diffs))
    return frame[VERDICT_COLUMNS]


def paired_verdicts(scores: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Per non-baseline arm: the paired difference to `baseline` as `paired_differences` pairs it, tested
    with the experiment's other arms as one Holm family (`family_verdicts`).

    Returns experiment, arm, baseline and the VERDICT_COLUMNS.
    """
    columns = ["experiment", "arm", "baseline", *VERDICT_COLUMNS]
    base = scores.loc[scores["arm"] == baseline, ["experiment", "seed", "score"]]
    paired = scores.loc[scores["arm"] != baseline].merge(base, on=["experiment", "seed"],
                                                          suffixes=("", "_baseline"))
    frames = []
    for experiment, runs in paired.groupby("experiment", sort=False):
        diffs = {arm: (g["score"] - g["score_baseline"]).to_numpy(float) for arm, g in runs.groupby("arm", sort=False)}
        table = family_verdicts(diffs).rename_axis("arm").reset_index()
        frames.append(table.assign(experiment=experiment, baseline=baseline))
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


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


def curves(df: pd.DataFrame, metric: str, x: Axis = "step", grid_points: int = 100,
           smoothing: Literal["ema", "rolling"] | None = None, window: int = 10,
           confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per arm and x: mean of `metric` across seeds with a t-interval band (`band`).

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
            stats_frame = band(matrix, confidence)
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


def across_seeds(per_run: pd.DataFrame, metrics: list[str], confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Long frame: per arm and metric, mean over seeds with its t-interval (lo, hi) and n_seeds."""
    rows = []
    for (experiment, arm), group in per_run.groupby(ARM_KEYS, sort=False):
        for metric in metrics:
            values = group[metric].dropna().to_numpy(dtype=float) if metric in group else np.array([])
            if values.size == 0:
                continue
            low, high = t_interval(values, confidence)
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
