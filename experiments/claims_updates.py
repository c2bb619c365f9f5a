"""The S checks read off the inner_epochs, dapo and entropy sweeps: M3, P5, Q1, P7, H1, H2, H3
(experiments/paper_checks.py; conventions in experiments/sweep_claims.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from analysis import verdicts
from experiments.claim_checks import CONTRADICTED, HELD, Result
from experiments.sweep_claims import NOT_APPLICABLE, NOT_DETECTED, _slope, direction_result


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
    below = verdicts.equivalence_tests(diffs[2:], margin)["below"] if margin > 0 else np.zeros(2, dtype=bool)
    shown = (f"per-update not faster by {M3_MARGIN:g} x mu1's per-update slope ({margin:.3g}): "
             f"{'shown' if below.all() else 'not shown'}")
    if (per_batch > 0).all() and below.all():
        return _with_verdict(base, HELD, shown, frame)
    return _with_verdict(base, NOT_DETECTED, "; ".join(filter(None, [
        base.note if base.verdict == NOT_DETECTED else "", shown])), frame)


# M3's margin for "per optimizer step, mu > 1 does not raise reward faster": a quarter of mu1's own slope.
M3_MARGIN = 0.25


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
