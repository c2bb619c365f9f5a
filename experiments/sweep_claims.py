"""The statistical (S) checks of experiments.paper_checks: a direction of effect read off a shared sweep's runs.

Each check takes the tidy frame of its sweep's runs (analysis.load.load_runs: one row per run and step, the
columns experiment, arm, seed, step and the metrics) restricted to the claim's arms, and returns a Result whose
verdict comes from Holm's paired t-tests over seeds (analysis.verdicts): held when every comparison of the
claim's family is detected in the claimed direction, contradicted when one is detected the other way, else not
detected at this budget with the smallest effect those seeds could detect. No torch here.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from analysis import verdicts
from experiments.claim_checks import CONTRADICTED, HELD, Result

NOT_DETECTED = "not detected at this budget"
NOT_APPLICABLE = "not applicable"


def direction_result(names: list[str], diffs: np.ndarray, unit: str = "", digits: int = 4) -> Result:
    """The verdict on a family of paired differences diffs [m, n] that the claim says are all > 0."""
    tests = verdicts.paired_tests(diffs)
    fmt = f"{{:+.{digits}g}}"
    parts = [f"{name} {fmt.format(mean)} [{fmt.format(lo)}, {fmt.format(hi)}]{unit}"
             for name, mean, lo, hi in zip(names, tests["mean"], tests["lo"], tests["hi"])]
    seeds = int(np.max(tests["n"])) if len(names) else 0
    measured = "; ".join(parts) + f" (Holm family of {len(names)}, {seeds} seeds)"
    if (tests["claim"] < 0).any():
        return Result(CONTRADICTED, measured, note="a difference the claim says is positive is detected negative",
                      seeds=seeds)
    if (tests["claim"] > 0).all():
        return Result(HELD, measured, seeds=seeds)
    detectable = np.nanmax(tests["detectable"]) if np.isfinite(tests["detectable"]).any() else float("nan")
    return Result(NOT_DETECTED, measured, seeds=seeds,
                  note=f"largest detectable size in the family with these seeds: {detectable:.3g}{unit}")


def check_m2(frame: pd.DataFrame) -> Result:
    """Clip fraction and KL(pi_old || pi) rise with the inner epoch index k: within each run of the largest mu,
    the step-mean of inner/<k+1>/q minus inner/<k>/q, for q = clip_frac and kl_old, paired over seeds.
    Steps from 1 on (step 0 is the warm start's)."""
    epochs = sorted(int(c.split("/")[1]) for c in frame.columns if c.startswith("inner/") and c.endswith("/clip_frac"))
    if len(epochs) < 2:
        return Result("not applicable", "", note="no run logged two inner epochs (inner/<k>/clip_frac)")
    runs = frame[frame["step"] >= 1].groupby(["arm", "seed"])
    names, rows = [], []
    for quantity in ("clip_frac", "kl_old"):
        for k in epochs[:-1]:
            columns = [f"inner/{k}/{quantity}", f"inner/{k + 1}/{quantity}"]
            means = runs[columns].mean().dropna()
            names.append(f"{quantity} k{k}->{k + 1}")
            rows.append((means[columns[1]] - means[columns[0]]).to_numpy())
    result = direction_result(names, verdicts.ragged(rows))
    return replace(result, steps=int(frame["step"].max()))


def _slope(steps: np.ndarray, values: np.ndarray) -> float:
    """Least-squares slope of values on steps (NaN values dropped; NaN with fewer than 2 points)."""
    keep = ~np.isnan(values)
    return float(np.polyfit(steps[keep], values[keep], 1)[0]) if keep.sum() >= 2 else float("nan")


def check_g3(frame: pd.DataFrame) -> Result:
    """At the same steps the zero-variance share falls as G grows, and the all-correct share rises over training.

    One Holm family over seeds: for each pair of consecutive G arms, zero_var/frac of the smaller G minus the
    larger's, mean over the first 10% of training steps (at least step 1: the arms share their warm start, so
    early steps compare nearly one policy at several G); and for each arm, the least-squares slope of
    zero_var/all_correct_frac on the step, per run. The claim says all of them are > 0."""
    trained = frame[frame["step"] >= 1]
    arms = sorted(trained["arm"].unique(), key=lambda arm: int(str(arm).lstrip("G")))
    early_end = max(1, int(0.1 * trained["step"].max()))
    early = trained[trained["step"] <= early_end].groupby(["arm", "seed"])["zero_var/frac"].mean()
    names, rows = [], []
    for small, large in zip(arms, arms[1:]):
        paired = pd.concat([early[small], early[large]], axis=1, keys=["small", "large"]).dropna()
        names.append(f"zero_var/frac {small}-{large}")
        rows.append((paired["small"] - paired["large"]).to_numpy())
    for arm in arms:
        slopes = [_slope(run["step"].to_numpy(float), run["zero_var/all_correct_frac"].to_numpy(float))
                  for _, run in trained[trained["arm"] == arm].groupby("seed")]
        names.append(f"all_correct slope {arm}")
        rows.append(np.array([s for s in slopes if not np.isnan(s)]))
    result = direction_result(names, verdicts.ragged(rows))
    return replace(result, steps=int(frame["step"].max()),
                   note=(result.note + f"; early = steps 1..{early_end}").lstrip("; "))
