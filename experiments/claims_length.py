"""The S checks read off the length 2x2 sweep: R4, R5, P8, D5 (experiments/paper_checks.py;
conventions in experiments/sweep_claims.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from analysis import verdicts
from experiments.claim_checks import Result
from experiments.sweep_claims import _slope, direction_result


def _run_slopes(frame: pd.DataFrame, metric: str) -> dict[str, pd.Series]:
    """arm -> seed -> least-squares slope of `metric` on the step, over the steps from 1 (step 0 is the warm
    start's evaluation) of each run; runs without two values of the metric are left out."""
    trained = frame[frame["step"] >= 1]
    out = {}
    for arm, runs in trained.groupby("arm"):
        slopes = {seed: _slope(run["step"].to_numpy(float), run[metric].to_numpy(float))
                  for seed, run in runs.groupby("seed")}
        out[arm] = pd.Series(slopes, dtype=float).dropna()
    return out


def _contrast(series: dict[str, pd.Series], weights: dict[str, float]) -> np.ndarray:
    """sum over arms of weight * value, per seed that every named arm has (the contrast's paired values)."""
    table = pd.concat([series[arm] for arm in weights], axis=1, keys=list(weights)).dropna()
    return sum(weight * table[arm] for arm, weight in weights.items()).to_numpy(float)


def _interval(name: str, values: np.ndarray, unit: str = "") -> str:
    """'name mean [lo, hi]': a lone comparison's 95% paired t-interval (as direction_result writes it)."""
    tests = verdicts.paired_tests(values[None, :])
    return f"{name} {tests['mean'][0]:+.4g} [{tests['lo'][0]:+.4g}, {tests['hi'][0]:+.4g}]{unit}"


def _missing_metric(frame: pd.DataFrame, arms: tuple[str, ...], metric: str) -> Result | None:
    """not applicable when an arm has no run or no value of the metric, else None."""
    absent = [arm for arm in arms if arm not in set(frame["arm"])]
    if absent:
        return Result("not applicable", "", note=f"no runs of arm(s) {', '.join(absent)}")
    unlogged = [arm for arm in arms
                if metric not in frame.columns or frame.loc[frame["arm"] == arm, metric].isna().all()]
    if unlogged:
        return Result("not applicable", "", note=f"no run of arm(s) {', '.join(unlogged)} logged {metric}")
    return None


def _accuracy_note(frame: pd.DataFrame, first: str, second: str, margin: float = 0.05) -> str:
    """The training accuracy (mean over steps from 1) of arm `first` minus `second`, paired over seeds, and
    whether it is about equal: its 95% interval inside +-margin."""
    means = frame[frame["step"] >= 1].groupby(["arm", "seed"])["accuracy"].mean()
    diffs = _contrast({arm: means[arm] for arm in (first, second)}, {first: 1.0, second: -1.0})
    tests = verdicts.paired_tests(diffs[None, :])
    equal = bool(np.isfinite(tests["lo"][0]) and -margin < tests["lo"][0] and tests["hi"][0] < margin)
    return (f"{_interval(f'accuracy {first}-{second}', diffs)}: "
            + ("about equal" if equal else f"not shown within +-{margin}"))


def check_r4(frame: pd.DataFrame) -> Result:
    """GRPO makes wrong completions longer over training than Dr. GRPO: per seed, the least-squares slope of
    len/wrong_mean on the step (tokens per step, steps from 1) of grpo minus dr_grpo's, > 0. The note gives
    the training accuracy difference and whether it is about equal (interval within +-0.05): the paper's
    "at about equal accuracy", reported, not part of the verdict."""
    result = _slope_difference(frame, "len/wrong_mean", "grpo", "dr_grpo")
    if result.verdict == "not applicable":
        return result
    return replace(result, note="; ".join(filter(None, [result.note, _accuracy_note(frame, "grpo", "dr_grpo")])))


# R5's 2x2: arm -> (length normalisation 1/|o| on, group std on).
CELLS = {"grpo": (1, 1), "no_std": (1, 0), "std_sum_norm": (0, 1), "dr_grpo": (0, 0)}


def check_r5(frame: pd.DataFrame) -> Result:
    """The length effect follows the length normalisation, not std: per seed, with s the slope of
    len/wrong_mean of each cell of the 2x2, the normalisation main effect N = (s_grpo + s_no_std - s_std_sum_norm
    - s_dr_grpo) / 2 and the std main effect S = (s_grpo + s_std_sum_norm - s_no_std - s_dr_grpo) / 2.

    Held means N > 0 and N > |S|, as one Holm family of three paired contrasts all claimed > 0: N, N + S
    (grpo - dr_grpo) and N - S (no_std - std_sum_norm): the normalisation's effect is found and is larger than
    the std's whatever the std's sign. Contradicted when one is detected < 0 (the normalisation lowers the
    slope, or the std effect outweighs it). S itself, two-sided, is in the note; a detected S smaller than N
    does not change the verdict."""
    missing = _missing_metric(frame, tuple(CELLS), "len/wrong_mean")
    if missing:
        return missing
    slopes = _run_slopes(frame, "len/wrong_mean")
    norm = {arm: (1.0 if on else -1.0) / 2 for arm, (on, _) in CELLS.items()}
    std = {arm: (1.0 if on else -1.0) / 2 for arm, (_, on) in CELLS.items()}
    rows = [_contrast(slopes, norm), _contrast(slopes, {"grpo": 1.0, "dr_grpo": -1.0}),
            _contrast(slopes, {"no_std": 1.0, "std_sum_norm": -1.0})]
    result = direction_result(["norm main effect N", "N+S (grpo-dr_grpo)", "N-S (no_std-std_sum_norm)"],
                              verdicts.ragged(rows), " tok/step")
    std_effect = _contrast(slopes, std)
    detected = verdicts.paired_tests(std_effect[None, :])["claim"][0] != 0
    std_note = (_interval("std main effect S", std_effect, " tok/step")
                + (" (detected)" if detected else " (not detected)"))
    return replace(result, steps=int(frame["step"].max()), note="; ".join(filter(None, [result.note, std_note])))


def check_p8(frame: pd.DataFrame) -> Result:
    """DAPO's token-level loss gives less length growth than the sample-level one: per seed, the slope of
    len/mean on the step (steps from 1) of grpo (seq_mean_token_mean) minus token_mean's, > 0."""
    return _slope_difference(frame, "len/mean", "grpo", "token_mean")


def _slope_difference(frame: pd.DataFrame, metric: str, arm: str, other: str) -> Result:
    """Per seed, the least-squares slope of `metric` on the step (tokens per step, steps from 1) of `arm`
    minus `other`'s, claimed > 0; not applicable when either arm lacks runs or the metric."""
    missing = _missing_metric(frame, (arm, other), metric)
    if missing:
        return missing
    result = direction_result([f"{metric} slope {arm}-{other}"],
                              _contrast(_run_slopes(frame, metric), {arm: 1.0, other: -1.0})[None, :], " tok/step")
    return replace(result, steps=int(frame["step"].max()))


def check_d5(frame: pd.DataFrame) -> Result:
    """RL sharpens: per grpo run, the change of the held-out unbiased pass@1 from the first evaluation (step 0,
    the warm start) to the last, minus the change of pass@16, > 0. The note gives both changes' intervals
    (pass@16 "roughly flat" is read there, not tested)."""
    missing = _missing_metric(frame, ("grpo",), "eval/pass@16")
    if missing:
        return Result(missing.verdict, "", note=missing.note + " (pass@16 needs --eval-samples >= 16)")
    evals = frame[(frame["arm"] == "grpo")].dropna(subset=["eval/pass@1", "eval/pass@16"]).sort_values("step")
    runs = evals.groupby("seed")
    change = {key: (runs[key].last() - runs[key].first()).to_numpy(float) for key in ("eval/pass@1", "eval/pass@16")}
    result = direction_result(["change of pass@1 - change of pass@16"],
                              (change["eval/pass@1"] - change["eval/pass@16"])[None, :])
    note = "; ".join(filter(None, [result.note, _interval("change of pass@1", change["eval/pass@1"]),
                                   _interval("change of pass@16", change["eval/pass@16"])]))
    return replace(result, steps=int(evals["step"].max()), note=note)
