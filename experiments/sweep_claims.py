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


# --- inner_epochs, dapo, entropy: M3, P5, Q1, P7, H1, H2, H3

NOT_APPLICABLE = "not applicable"
P7_LEVEL = 0.5               # P7's threshold: this share of the way from the start's accuracy to the lower peak
H3_ACCURACY_MARGIN = 0.05    # H3: "similar accuracy" = not worse than the baseline by more than this (5 points)


def _per_run(frame: pd.DataFrame, arm: str, value) -> pd.Series:
    """value(one run's rows, sorted by step) -> float, for each seed of `arm`: a Series by seed, NaN dropped."""
    runs = frame[frame["arm"] == arm].sort_values("step").groupby("seed")
    return pd.Series({seed: value(run) for seed, run in runs}, dtype=float).dropna()


def _paired(a: pd.Series, b: pd.Series) -> np.ndarray:
    """a - b over the seeds both have (the pairs of a paired test)."""
    both = pd.concat([a, b], axis=1, keys=["a", "b"]).dropna()
    return (both["a"] - both["b"]).to_numpy()


def _run_slope(column: str):
    """A run's least-squares slope of `column` on the step, steps from 1 (step 0 is the warm start's eval)."""
    def slope(run: pd.DataFrame) -> float:
        run = run[run["step"] >= 1]
        return _slope(run["step"].to_numpy(float), run[column].to_numpy(float)) if column in run else float("nan")
    return slope


def _run_mean(column: str, first_step: int = 1):
    """A run's mean of `column` over its steps from first_step on (NaN where it never logged it)."""
    def mean(run: pd.DataFrame) -> float:
        return float(run.loc[run["step"] >= first_step, column].mean()) if column in run else float("nan")
    return mean


def _missing(frame: pd.DataFrame, arms: tuple[str, ...], columns: tuple[str, ...]) -> Result | None:
    """not applicable naming what the frame lacks (an arm without runs, a metric no run logged), else None."""
    absent = [a for a in arms if a not in set(frame["arm"])]
    unlogged = [c for c in columns if c not in frame or frame[c].isna().all()]
    if not absent and not unlogged:
        return None
    what = "; ".join(filter(None, [absent and f"no runs of arm(s) {', '.join(absent)}",
                                   unlogged and f"no run logged {', '.join(unlogged)}"]))
    return Result(NOT_APPLICABLE, "", note=what)


def _with_verdict(base: Result, verdict: str, note: str, frame: pd.DataFrame) -> Result:
    """`base` (direction_result's text and seeds) with another verdict and note, and the runs' steps."""
    return replace(base, verdict=verdict, note=note.strip("; "), steps=int(frame["step"].max()))


def check_m3(frame: pd.DataFrame) -> Result:
    """Reward per rollout batch rises faster with mu = 2, 4 than with mu = 1; per optimizer step it does not.

    Per run, the least-squares slope of reward/mean on the GRPO step (steps from 1). The first half: slope(mu)
    minus slope(mu1), paired over seeds, must be detected > 0 for mu = 2 and 4. The second half divides each
    slope by the run's optimizer steps per GRPO step (inner_epochs, times mini_batches where the arms differ
    in it; a factor all arms share scales every slope alike) and takes the same paired differences. "Does
    not rise faster" needs evidence: a one-sided paired t-test per mu that its per-update difference lies
    below M3_MARGIN x mu1's mean per-update slope (non-superiority, Holm over the two). All four direction
    comparisons form one Holm family for contradiction. Held: both per-batch differences detected > 0 and
    non-superiority shown for both; contradicted: a per-batch one detected < 0 or a per-update one > 0.
    """
    missing = _missing(frame, ("mu1", "mu2", "mu4"), ("reward/mean",))
    if missing:
        return missing

    def per_update(run: pd.DataFrame) -> float:
        updates = run["inner_epochs"].iloc[0] if "inner_epochs" in run else int(str(run["arm"].iloc[0])[2:])
        updates *= run["mini_batches"].iloc[0] if "mini_batches" in run else 1
        return _run_slope("reward/mean")(run) / float(updates)

    per_step = {arm: _per_run(frame, arm, _run_slope("reward/mean")) for arm in ("mu1", "mu2", "mu4")}
    per_opt = {arm: _per_run(frame, arm, per_update) for arm in ("mu1", "mu2", "mu4")}
    names = ["reward slope/step mu2-mu1", "reward slope/step mu4-mu1",
             "reward slope/update mu2-mu1", "reward slope/update mu4-mu1"]
    diffs = verdicts.ragged([_paired(per_step["mu2"], per_step["mu1"]), _paired(per_step["mu4"], per_step["mu1"]),
                             _paired(per_opt["mu2"], per_opt["mu1"]), _paired(per_opt["mu4"], per_opt["mu1"])])
    base, claims = direction_result(names, diffs), verdicts.paired_tests(diffs)["claim"]
    per_batch, updates = claims[:2], claims[2:]
    if (per_batch < 0).any() or (updates > 0).any():
        return _with_verdict(base, CONTRADICTED, "detected: " + ", ".join(
            name for name, c, bad in zip(names, claims, (-1, -1, 1, 1)) if c == bad), frame)
    margin = M3_MARGIN * float(per_opt["mu1"].mean()) if len(per_opt["mu1"]) else float("nan")
    below = _non_superior(diffs[2:], margin) if margin > 0 else np.zeros(2, dtype=bool)
    shown = (f"per-update not faster by {M3_MARGIN:g} x mu1's per-update slope ({margin:.3g}): "
             f"{'shown' if below.all() else 'not shown'}")
    if (per_batch > 0).all() and below.all():
        return _with_verdict(base, HELD, shown, frame)
    return _with_verdict(base, NOT_DETECTED, "; ".join(filter(None, [
        base.note if base.verdict == NOT_DETECTED else "", shown])), frame)


# M3's margin for "per optimizer step, mu > 1 does not raise reward faster": a quarter of mu1's own slope.
M3_MARGIN = 0.25


def _non_superior(diffs: np.ndarray, margin: float, alpha: float = verdicts.ALPHA) -> np.ndarray:
    """Per row of paired differences diffs [m, n] (NaN: no pair): whether mean < margin is shown, one-sided
    paired t-tests of H0: mean >= margin with Holm's step-down over the m rows."""
    from scipy import stats

    p = []
    for row in diffs:
        row = row[~np.isnan(row)]
        sd = row.std(ddof=1) if len(row) >= 2 else float("nan")
        p.append(stats.t.cdf((row.mean() - margin) / (sd / np.sqrt(len(row))), len(row) - 1)
                 if len(row) >= 2 and sd > 0 else 1.0)
    order, reject, m = np.argsort(p), np.zeros(len(p), dtype=bool), len(p)
    for rank, i in enumerate(order):          # Holm: stop at the first p above its level
        if p[i] > alpha / (m - rank):
            break
        reject[i] = True
    return reject


def check_p5(frame: pd.DataFrame) -> Result:
    """Clip-higher slows the fall of entropy: per run the least-squares slope of `entropy` on the step (steps
    from 1), mu2_clip_higher's minus mu2's, paired over seeds, > 0."""
    missing = _missing(frame, ("mu2", "mu2_clip_higher"), ("entropy",))
    if missing:
        return missing
    slopes = {arm: _per_run(frame, arm, _run_slope("entropy")) for arm in ("mu2", "mu2_clip_higher")}
    result = direction_result(["entropy slope mu2_clip_higher-mu2"],
                              verdicts.ragged([_paired(slopes["mu2_clip_higher"], slopes["mu2"])]))
    return replace(result, steps=int(frame["step"].max()))


def check_q1(frame: pd.DataFrame) -> Result:
    """GSPO at eps 3e-4 / 4e-4 clips a far larger share than token-level clip at 0.2: per run, the step-mean
    (steps from 1, over both inner epochs) of mu2_gspo's clip/seq_frac minus mu2's clip/low_frac +
    clip/high_frac, paired over seeds, > 0; and, where logged, the same for grad_tokens/clipped_frac (tokens
    whose gradient the objective cuts, as a share of completion tokens: one definition for both objectives,
    the paper's "fraction of clipped tokens"). The arms' means are given beside the paper's ~15% and 0.13%."""
    missing = _missing(frame, ("mu2", "mu2_gspo"), ("clip/seq_frac", "clip/low_frac", "clip/high_frac"))
    if missing:
        return missing
    frame = frame.assign(**{"clip/token_frac": frame["clip/low_frac"] + frame["clip/high_frac"]})
    gspo = _per_run(frame, "mu2_gspo", _run_mean("clip/seq_frac"))
    token = _per_run(frame, "mu2", _run_mean("clip/token_frac"))
    names, rows = ["gspo clip/seq_frac - clip low+high"], [_paired(gspo, token)]
    means = f"gspo clip/seq_frac {100 * gspo.mean():.3g}% (paper ~15%), clip low+high {100 * token.mean():.3g}% " \
            f"(paper 0.13%)"
    cut = "grad_tokens/clipped_frac"
    if cut in frame and frame.loc[frame["arm"] == "mu2_gspo", cut].notna().any():
        gspo_cut, token_cut = (_per_run(frame, arm, _run_mean(cut)) for arm in ("mu2_gspo", "mu2"))
        names.append(f"{cut} gspo - clip")
        rows.append(_paired(gspo_cut, token_cut))
        means += f"; {cut} gspo {100 * gspo_cut.mean():.3g}%, clip {100 * token_cut.mean():.3g}%"
    result = direction_result(names, verdicts.ragged(rows))
    return replace(result, steps=int(frame["step"].max()), note=f"{means}; {result.note}".strip("; "))


def _crossing(run: pd.DataFrame, level: float) -> tuple[float, float]:
    """(step, samples) at which a run's eval/accuracy first reaches `level`, linearly interpolated between
    the evaluations either side (NaN, NaN when it never does)."""
    evals = run.dropna(subset=["eval/accuracy"])
    steps, samples, acc = (evals[c].to_numpy(float) for c in ("step", "samples", "eval/accuracy"))
    above = np.flatnonzero(acc >= level)
    if not above.size:
        return float("nan"), float("nan")
    j = above[0]
    if j == 0:
        return steps[0], samples[0]
    share = (level - acc[j - 1]) / (acc[j] - acc[j - 1])      # acc[j-1] < level <= acc[j]: no division by 0
    return steps[j - 1] + share * (steps[j] - steps[j - 1]), samples[j - 1] + share * (samples[j] - samples[j - 1])


def check_p7(frame: pd.DataFrame) -> Result:
    """Dynamic sampling reaches a reward threshold in fewer optimizer steps and more generated samples.

    The reward is the held-out eval/accuracy: the dynamic arm's training reward is over the groups it kept
    (zero-variance ones dropped), so it is not the policy's. Per seed, the two runs (token_level, dynamic)
    share a warm start; the threshold is a level both reach: the start (their step-0 accuracy) plus P7_LEVEL of
    the way to the lower of the two runs' peak accuracies (steps >= 1). Each run's step and samples at its
    first crossing are interpolated linearly between evaluations. A seed whose lower peak does not exceed
    the start (a run that never improves) has no such level and is left out; the note counts them. Paired
    over seeds: token_level's steps minus dynamic's > 0, dynamic's samples minus token_level's > 0. Steps
    are GRPO steps: each is inner_epochs x mini_batches optimizer steps, the same in both arms.
    """
    missing = _missing(frame, ("token_level", "dynamic"), ("eval/accuracy",))
    if missing:
        return missing
    crossings, dropped = {}, []
    for seed in sorted(set(frame["seed"])):
        runs = {arm: frame[(frame["arm"] == arm) & (frame["seed"] == seed)].sort_values("step")
                for arm in ("token_level", "dynamic")}
        if any(run["eval/accuracy"].notna().sum() < 2 for run in runs.values()):
            continue
        start = float(np.mean([run.dropna(subset=["eval/accuracy"])["eval/accuracy"].iloc[0] for run in runs.values()]))
        peak = min(float(run.loc[run["step"] >= 1, "eval/accuracy"].max()) for run in runs.values())
        if not peak > start:
            dropped.append(seed)
            continue
        level = start + P7_LEVEL * (peak - start)
        crossings[seed] = {arm: _crossing(run, level) for arm, run in runs.items()}
    steps = np.array([c["token_level"][0] - c["dynamic"][0] for c in crossings.values()])
    samples = np.array([c["dynamic"][1] - c["token_level"][1] for c in crossings.values()])
    result = direction_result(["steps to threshold token_level-dynamic", "samples to threshold dynamic-token_level"],
                              verdicts.ragged([steps, samples]))
    note = (f"threshold: start + {P7_LEVEL:g} x (lower peak - start) per seed"
            + (f"; seed(s) {', '.join(map(str, dropped))} left out: a run never rose above the start" if dropped else ""))
    return replace(result, steps=int(frame["step"].max()), note=f"{note}; {result.note}".strip("; "))


def check_h1(frame: pd.DataFrame) -> Result:
    """The step's entropy change has the sign of -Cov(log pi, A), and that covariance is mostly positive.

    Per run of the baseline arm: for each step t >= 1 whose next step was logged, the change entropy(t+1) -
    entropy(t) (the entropy of the rollouts after the update of step t minus before it) against -C(t), C(t) =
    entropy/cov_logp_adv over step t's tokens; the share of steps whose signs agree (a zero counts as
    disagreeing) minus 0.5, and the mean of C(t). Each is one number per run, tested over seeds (a one-sample
    t-test, as a paired difference against 0): one Holm family of the two, both > 0."""
    cov = "entropy/cov_logp_adv"
    missing = _missing(frame, ("baseline",), ("entropy", cov))
    if missing:
        return missing

    def agreement(run: pd.DataFrame) -> float:
        run = run[run["step"] >= 1].dropna(subset=["entropy", cov])
        steps, entropy, covariance = (run[c].to_numpy(float) for c in ("step", "entropy", cov))
        follows = np.diff(steps) == 1
        if not follows.any():
            return float("nan")
        change = np.diff(entropy)[follows]
        return float(np.mean(np.sign(change) * -np.sign(covariance[:-1][follows]) > 0)) - 0.5

    share = _per_run(frame, "baseline", agreement)
    mean_cov = _per_run(frame, "baseline", _run_mean(cov))
    result = direction_result(["sign agreement - 0.5", "mean Cov(logp, A)"], verdicts.ragged([share.to_numpy(),
                                                                                            mean_cov.to_numpy()]))
    return replace(result, steps=int(frame["step"].max()))


def _entropy_fit_gain(run: pd.DataFrame) -> float:
    """RMSE of a constant minus that of R = c e^H + b (c = -a), both fit by least squares on the first third
    of a run's steps (from 1) and scored on the rest. NaN with under 3 points on either side or no spread
    of e^H in the first third."""
    run = run[run["step"] >= 1].dropna(subset=["entropy", "reward/mean"])
    head = len(run) // 3
    if head < 3 or len(run) - head < 3:
        return float("nan")
    x, reward = np.exp(run["entropy"].to_numpy(float)), run["reward/mean"].to_numpy(float)
    if np.ptp(x[:head]) == 0:
        return float("nan")
    c, b = np.polyfit(x[:head], reward[:head], 1)
    rest = reward[head:]
    fit = np.sqrt(np.mean((c * x[head:] + b - rest) ** 2))
    constant = np.sqrt(np.mean((reward[:head].mean() - rest) ** 2))
    return float(constant - fit)


def check_h2(frame: pd.DataFrame) -> Result:
    """R ~ -a e^H + b: per run of the baseline arm, the fit of reward/mean on exp(entropy) over the first third
    of its steps (from 1) predicts the other two thirds better than the first third's mean reward: the
    constant's RMSE minus the fit's, paired over seeds (one number per run), > 0."""
    missing = _missing(frame, ("baseline",), ("entropy", "reward/mean"))
    if missing:
        return missing
    gains = _per_run(frame, "baseline", _entropy_fit_gain)
    result = direction_result(["RMSE constant - fit"], verdicts.ragged([gains.to_numpy()]))
    return replace(result, steps=int(frame["step"].max()),
                   note=("fit on the first third of steps, scored on the rest; " + result.note).strip("; "))


def check_h3(frame: pd.DataFrame) -> Result:
    """Clip-Cov and KL-Cov keep entropy higher than the clip baseline at similar accuracy.

    Late = the last third of a run's steps (step > 2/3 of the last). Entropy: each arm's late mean of `entropy`
    minus the baseline's, paired over seeds, one Holm family of 2, must be detected > 0. Accuracy: the late
    mean of eval/accuracy (the evaluations in that third), arm minus baseline, one Holm family of 2, read as
    non-inferiority with margin H3_ACCURACY_MARGIN (the paper reports the remedies at equal or better
    accuracy): each interval's lower end must be >= -margin (an exact tie: its mean); an upper end below
    -margin contradicts. Held: both entropy differences detected > 0 and both accuracies within the margin;
    contradicted: an entropy difference detected < 0 or an accuracy detected worse by more than the margin.
    """
    arms = ("kl_cov", "clip_cov")
    missing = _missing(frame, ("baseline", *arms), ("entropy", "eval/accuracy"))
    if missing:
        return missing
    late_start = 2 * int(frame["step"].max()) / 3

    def late(column: str):
        def mean(run: pd.DataFrame) -> float:
            values = run.loc[run["step"] > late_start, column].dropna()
            values = values if len(values) else run[column].dropna().iloc[-1:]    # no eval that late: the last
            return float(values.mean()) if len(values) else float("nan")
        return mean

    entropy = {arm: _per_run(frame, arm, late("entropy")) for arm in ("baseline", *arms)}
    accuracy = {arm: _per_run(frame, arm, late("eval/accuracy")) for arm in ("baseline", *arms)}
    entropy_diffs = verdicts.ragged([_paired(entropy[a], entropy["baseline"]) for a in arms])
    accuracy_tests = verdicts.paired_tests(verdicts.ragged([_paired(accuracy[a], accuracy["baseline"]) for a in arms]))
    base = direction_result([f"late entropy {a}-baseline" for a in arms], entropy_diffs)
    entropy_claims = verdicts.paired_tests(entropy_diffs)["claim"]
    lower = np.where(accuracy_tests["tie"], accuracy_tests["mean"], accuracy_tests["lo"])
    upper = np.where(accuracy_tests["tie"], accuracy_tests["mean"], accuracy_tests["hi"])
    accuracy_text = "; ".join(f"late accuracy {a}-baseline {m:+.3g} [{lo:+.3g}, {hi:+.3g}]"
                              for a, m, lo, hi in zip(arms, accuracy_tests["mean"], lower, upper))
    base = replace(base, measured=f"{base.measured}; {accuracy_text} (margin {H3_ACCURACY_MARGIN:g})")
    if (entropy_claims < 0).any() or (upper < -H3_ACCURACY_MARGIN).any():
        return _with_verdict(base, CONTRADICTED, "an entropy difference detected < 0 or an accuracy detected worse "
                             "than the baseline by more than the margin", frame)
    if (entropy_claims > 0).all() and (lower >= -H3_ACCURACY_MARGIN).all():
        return _with_verdict(base, HELD, "", frame)
    why = [] if (entropy_claims > 0).all() else [base.note or "an entropy difference is not detected"]
    if not (lower >= -H3_ACCURACY_MARGIN).all():
        why.append(f"accuracy not shown within {H3_ACCURACY_MARGIN:g} of the baseline")
    return _with_verdict(base, NOT_DETECTED, "; ".join(why), frame)


# --- group_size, kl_beta: G2, G4, G5, K5, B2

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


# --- length_2x2: R4, R5, P8, D5


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
    missing = _missing_metric(frame, ("grpo", "dr_grpo"), "len/wrong_mean")
    if missing:
        return missing
    slopes = _run_slopes(frame, "len/wrong_mean")
    result = direction_result(["len/wrong_mean slope grpo-dr_grpo"],
                              _contrast(slopes, {"grpo": 1.0, "dr_grpo": -1.0})[None, :], " tok/step")
    note = "; ".join(filter(None, [result.note, _accuracy_note(frame, "grpo", "dr_grpo")]))
    return replace(result, steps=int(frame["step"].max()), note=note)


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
    missing = _missing_metric(frame, ("grpo", "token_mean"), "len/mean")
    if missing:
        return missing
    slopes = _run_slopes(frame, "len/mean")
    result = direction_result(["len/mean slope grpo-token_mean"],
                              _contrast(slopes, {"grpo": 1.0, "token_mean": -1.0})[None, :], " tok/step")
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
