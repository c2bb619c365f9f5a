"""The S checks read off the group_size and kl_beta sweeps: G2, G4, G5, K5, B2 (G3 is in
experiments/sweep_claims.py; conventions there)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from analysis import verdicts
from experiments.claim_checks import CONTRADICTED, HELD, Result
from experiments.sweep_claims import NOT_DETECTED, _slope, direction_result


G4_MARGIN = 0.03          # "within a few points": 3 points of eval/accuracy (a share in [0, 1])
G2_MARGIN = 0.1           # measured vs unbiased zero-variance share: equivalence shown within +-0.1
K5_PAPER = "~14 at KL 0.005 (Schulman's Gaussian example)"


def _by_g(arms) -> list[str]:
    return sorted(arms, key=lambda arm: int(str(arm).lstrip("G")))


def _fmt_interval(mean: float, lo: float, hi: float, digits: int = 3) -> str:
    return f"{mean:+.{digits}g} [{lo:+.{digits}g}, {hi:+.{digits}g}]"


def check_g2(frame: pd.DataFrame) -> Result:
    """At the first training step (step 1; step 0 is the evaluation before training) the zero-variance
    share equals the unbiased per-prompt estimate E_q[q^G + (1-q)^G] (zero_var/unbiased_frac, from
    --zero-var-extra-samples independent completions per prompt), and that estimate exceeds the pooled
    pbar^G + (1-pbar)^G (zero_var/expected_frac) by Jensen.

    Per run and arm: jensen = unbiased_frac - expected_frac; gap = measured - unbiased_frac, measured =
    accuracy/constant_group_frac (all correct or all wrong, the event q^G + (1-q)^G is the chance of;
    zero_var/frac also needs the format reward constant). One Holm family over seeds of the 4 jensen (claimed
    > 0) and the 4 gap comparisons (claimed 0). "Equals" is an equivalence claim, so it needs evidence, not
    an absence of it: TOST on the per-seed mean gap over the arms, within +-G2_MARGIN. Verdict: contradicted
    when a jensen is detected < 0 or a gap is detected != 0 (its Holm interval excludes 0); held when every
    jensen is detected > 0 and the equivalence is shown; else not detected at this budget (with the margin
    the seeds could show)."""
    first = frame[frame["step"] == 1]
    needed = {"zero_var/unbiased_frac", "zero_var/expected_frac", "accuracy/constant_group_frac"}
    if first.empty or not needed <= set(first.columns) or first["zero_var/unbiased_frac"].isna().all():
        return Result("not applicable", "", note="no run logged zero_var/unbiased_frac at step 1 "
                                                   "(--zero-var-extra-samples)")
    runs = first.set_index(["arm", "seed"])
    arms = _by_g(first["arm"].unique())
    names, rows, gaps = [], [], {}
    for arm in arms:
        run = runs.loc[arm].dropna(subset=list(needed))
        names.append(f"jensen {arm}")
        rows.append((run["zero_var/unbiased_frac"] - run["zero_var/expected_frac"]).to_numpy())
        gaps[arm] = run["accuracy/constant_group_frac"] - run["zero_var/unbiased_frac"]
    for arm in arms:
        names.append(f"measured-estimate {arm}")
        rows.append(gaps[arm].to_numpy())
    tests = verdicts.paired_tests(verdicts.ragged(rows))
    k = len(arms)
    parts = [f"{name} {_fmt_interval(mean, lo, hi)}" for name, mean, lo, hi in
             zip(names, tests["mean"], tests["lo"], tests["hi"])]
    seeds = int(np.max(tests["n"])) if len(names) else 0
    pooled = pd.concat(gaps.values(), axis=1).mean(axis=1).dropna().to_numpy()
    tost = verdicts.equivalence_tests(pooled[None, :], G2_MARGIN)
    shown = "shown" if tost["equivalent"][0] else "not shown"
    measured = ("; ".join(parts) + f" (Holm family of {len(names)}, {seeds} seeds); mean gap over arms "
                f"{_fmt_interval(tost['mean'][0], tost['lo'][0], tost['hi'][0])} (90% TOST interval): "
                f"equivalence within +-{G2_MARGIN:g} {shown}, these seeds could show +-{tost['showable'][0]:.3g}")
    jensen, gap = tests["claim"][:k], tests["claim"][k:]
    steps = int(frame["step"].max())
    if (jensen < 0).any() or (gap != 0).any():
        why = ("the unbiased estimate is detected below the pooled one" if (jensen < 0).any()
               else "the measured share is detected away from the unbiased estimate")
        return Result(CONTRADICTED, measured, note=why, seeds=seeds, steps=steps)
    if (jensen > 0).all() and tost["equivalent"][0]:
        return Result(HELD, measured, seeds=seeds, steps=steps)
    detectable = np.nanmax(tests["detectable"][:k]) if np.isfinite(tests["detectable"][:k]).any() else float("nan")
    return Result(NOT_DETECTED, measured, seeds=seeds, steps=steps,
                  note=f"largest detectable Jensen gap with these seeds: {detectable:.3g}; equivalence of the "
                       f"measured share and the estimate within +-{G2_MARGIN:g} {shown}")


def _last_evals(frame: pd.DataFrame, column: str, last: int = 2) -> pd.Series:
    """Per (arm, seed): the mean of `column` over the run's last `last` evaluations after step 0."""
    evals = frame[(frame["step"] > 0) & frame[column].notna()].sort_values("step")
    return evals.groupby(["arm", "seed"])[column].apply(lambda values: values.iloc[-last:].mean())


def check_g4(frame: pd.DataFrame) -> Result:
    """At equal completions per step G = 2 trains about as well as G = 16: an equivalence test.

    Per seed: eval/accuracy of G2 minus G16, each the mean of the run's last two evaluations after step 0.
    TOST (analysis.verdicts.equivalence_tests) with margin G4_MARGIN = 0.03 (3 accuracy points; the claim:
    "within a few points"). held = equivalence within the margin shown; contradicted = a difference beyond
    the margin detected; else not detected at this budget, with the margin these seeds could show."""
    scores = _last_evals(frame, "eval/accuracy")
    arms = _by_g(scores.index.get_level_values("arm").unique())
    if len(arms) < 2:
        return Result("not applicable", "", note="needs eval/accuracy of two G arms")
    small, large = arms[0], arms[-1]
    paired = pd.concat([scores[small], scores[large]], axis=1, keys=["small", "large"]).dropna()
    diffs = (paired["small"] - paired["large"]).to_numpy()
    tests = verdicts.equivalence_tests(diffs[None, :], G4_MARGIN)
    seeds, steps = int(tests["n"][0]), int(frame["step"].max())
    measured = (f"eval/accuracy {small}-{large} {_fmt_interval(tests['mean'][0], tests['lo'][0], tests['hi'][0])}"
                f" (90% interval, TOST margin +-{G4_MARGIN:g}, {seeds} seeds)")
    if tests["beyond"][0] != 0:
        return Result(CONTRADICTED, measured, seeds=seeds, steps=steps,
                      note=f"a difference beyond +-{G4_MARGIN:g} is detected")
    if tests["equivalent"][0]:
        return Result(HELD, measured, seeds=seeds, steps=steps)
    return Result(NOT_DETECTED, measured, seeds=seeds, steps=steps,
                  note=f"equivalence not shown; these seeds could show a margin of about {tests['showable'][0]:.3g}")


def persistence(run: pd.DataFrame) -> tuple[float, float]:
    """(P(constant now | constant at the previous visit), P(constant now | mixed then)) over a run's steps,
    from the ledger's per-step shares of revisited prompts: the revisited count of a step is proportional
    to ledger/revisit_frac (prompts per step is fixed in a run), so each share times it is a count."""
    keys = ["ledger/revisit_frac", "ledger/zero_var_before", "ledger/zero_var_kept", "ledger/zero_var_measured"]
    if not set(keys) <= set(run.columns):
        return float("nan"), float("nan")
    steps = run[keys].dropna()
    weight = steps["ledger/revisit_frac"]
    before = (weight * steps["ledger/zero_var_before"]).sum()
    kept = (weight * steps["ledger/zero_var_kept"]).sum()
    after_mixed = (weight * (steps["ledger/zero_var_measured"] - steps["ledger/zero_var_kept"])).sum()
    mixed = (weight * (1 - steps["ledger/zero_var_before"])).sum()
    return (kept / before if before > 0 else float("nan"), after_mixed / mixed if mixed > 0 else float("nan"))


def check_g5(frame: pd.DataFrame) -> Result:
    """Zero variance persists: P(zero-var at the next visit | zero-var at the previous) minus P(zero-var next |
    informative previous), per run (persistence: over every revisit of the run's prompt pool), paired over
    seeds, one comparison per arm in a Holm family; the claim says each is > 0."""
    names, rows, probabilities = [], [], []
    for arm in _by_g(frame["arm"].unique()):
        pairs = [persistence(run) for _, run in frame[frame["arm"] == arm].groupby("seed")]
        pairs = [p for p in pairs if np.isfinite(p).all()]
        names.append(f"P(zv|zv)-P(zv|mixed) {arm}")
        rows.append(np.array([a - b for a, b in pairs]))
        if pairs:
            probabilities.append(f"{arm}: {np.mean([a for a, _ in pairs]):.3f} vs {np.mean([b for _, b in pairs]):.3f}")
    if not any(len(r) for r in rows):
        return Result("not applicable", "", note="no revisited prompts (ledger/zero_var_kept; needs --prompt-pool)")
    result = direction_result(names, verdicts.ragged(rows), digits=3)
    return replace(result, measured=result.measured + "; mean P(zv|zv) vs P(zv|mixed): " + ", ".join(probabilities),
                   steps=int(frame["step"].max()))


K5_STEPS = (2, 6)        # step 1 is at the reference itself (both stds 0); the first 5 steps after it


def check_k5(frame: pd.DataFrame) -> Result:
    """Near the reference std(k1)/std(k3) >> 1: per run, the mean over steps 2..6 of
    log(kl/k1_token_std / kl/k3_token_std) (the per-token stds over the step's loss tokens, at pi_old), paired
    over seeds; the claim says > 0. Reported beside it: the ratio (exp of the mean log) and the KL (kl/k3) of
    those steps, against the paper's ~14 at KL 0.005."""
    lo, hi = K5_STEPS
    early = frame[(frame["step"] >= lo) & (frame["step"] <= hi)]
    columns = ["kl/k1_token_std", "kl/k3_token_std", "kl/k3"]
    if early.empty or not set(columns) <= set(early.columns):
        return Result("not applicable", "", note="no kl/k1_token_std at steps 2-6 (needs a reference: "
                                                 "kl_beta > 0 or --kl-reference)")
    early = early.dropna(subset=columns)
    early = early[(early["kl/k1_token_std"] > 0) & (early["kl/k3_token_std"] > 0)]
    per_run = early.assign(log_ratio=np.log(early["kl/k1_token_std"] / early["kl/k3_token_std"])) \
        .groupby(["arm", "seed"])[["log_ratio", "kl/k3"]].mean()
    names, rows = [], []
    for arm, runs in per_run.groupby(level="arm"):
        names.append(f"log std(k1)/std(k3) {arm}")
        rows.append(runs["log_ratio"].to_numpy())
    if not names:
        return Result("not applicable", "", note="every k3 std is 0 at steps 2-6 (the policy never moved)")
    result = direction_result(names, verdicts.ragged(rows), digits=3)
    ratio, kl = float(np.exp(per_run["log_ratio"].mean())), float(per_run["kl/k3"].mean())
    return replace(result, measured=result.measured + f"; ratio {ratio:.3g} at KL (k3) {kl:.3g}; paper {K5_PAPER}",
                   steps=int(frame["step"].max()))


def _beta(arm: str) -> float:
    return float(str(arm).removeprefix("beta"))


def check_b2(frame: pd.DataFrame) -> Result:
    """At beta = 0 the KL grows over training; the final KL falls as beta rises. One Holm family over seeds:
    the least-squares slope of kl/k3 on the step in each run of the beta = 0 arm (it logs kl/* through
    --kl-reference, without a penalty), and for each pair of consecutive beta arms, the final kl/k3 (mean
    over the last 10% of steps, at least one) of the smaller beta minus the larger's. All claimed > 0."""
    trained = frame[(frame["step"] >= 1)]
    if "kl/k3" not in trained.columns:
        return Result("not applicable", "", note="no run logged kl/k3")
    trained = trained.dropna(subset=["kl/k3"])
    arms = sorted(trained["arm"].unique(), key=_beta)
    if not arms or _beta(arms[0]) != 0:
        return Result("not applicable", "", note="the beta = 0 arm logged no kl/k3 (needs --kl-reference)")
    last = int(trained["step"].max())
    late_start = last - max(1, int(0.1 * last)) + 1
    final = trained[trained["step"] >= late_start].groupby(["arm", "seed"])["kl/k3"].mean()
    names = [f"kl/k3 slope {arms[0]}"]
    rows = [np.array([_slope(run["step"].to_numpy(float), run["kl/k3"].to_numpy(float))
                      for _, run in trained[trained["arm"] == arms[0]].groupby("seed")])]
    for small, large in zip(arms, arms[1:]):
        paired = pd.concat([final[small], final[large]], axis=1, keys=["small", "large"]).dropna()
        names.append(f"final kl/k3 {small}-{large}")
        rows.append((paired["small"] - paired["large"]).to_numpy())
    result = direction_result(names, verdicts.ragged(rows), digits=3)
    return replace(result, steps=last, note=(result.note + f"; final = steps {late_start}..{last}").lstrip("; "))
