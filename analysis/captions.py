"""The report's sentences about numbers: CIs, paired differences and figure captions, from the data.

How a result may be worded follows from its Holm verdict (`analysis.verdicts`): the comparisons of a
figure or table are one family, and a paired difference Holm does not reject reads "not detected at this
budget" (the seeds cannot tell the arms apart; that does not show they are equal); one it rejects may be
stated as "higher" or "lower". Its interval is shown at its Holm level, so it covers 0 exactly when the
verdict is "not detected". Identical paired differences (no spread) get no verdict; with one seed there
is no interval, and the text says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis import aggregate as agg

NOT_DETECTED = "not detected at this budget"
NO_SPREAD = "no verdict: identical differences, no spread"
IQM_EQUALS_MEAN = f"= mean (n < {agg.IQM_MIN_SEEDS} trims nothing)"


@dataclass(frozen=True)
class Context:
    """What a figure or caption needs to know about the experiment besides the frame."""

    order: list[str]
    baseline: str | None
    knob: str | None
    x: str
    metric: str
    window: int
    matched: str | None = None      # "samples"/"tokens": final scores at the largest count every run reached
    effect: float | None = None     # an effect in display units (points of accuracy) to size seeds for


def run_scores(df: pd.DataFrame, ctx: Context) -> pd.DataFrame:
    """`aggregate.final_scores` of every run, at matched compute when ctx.matched names an axis."""
    budget = agg.matched_budget(df, ctx.metric, ctx.matched) if ctx.matched and ctx.metric in df else None
    at = (ctx.matched, budget) if budget is not None else None
    return agg.final_scores(df, ctx.metric, ctx.window, at=at)


def format_number(value: float, digits: int = 1) -> str:
    """Fixed-point number with a real minus sign, as in a paper."""
    return f"{value:.{digits}f}".replace("-", "−")


def scale_of(metric: str) -> float:
    """Accuracy-like metrics (fractions) are shown in percent, their differences in points."""
    return 100.0 if ("accuracy" in metric or "pass@" in metric) else 1.0


def format_ci(value: float, low: float, high: float, scale: float = 1.0, sign: bool = False,
              unit: str = "") -> str:
    """'+3.1 points [−0.4, 6.5]'; NaN bounds (one seed) read '(no CI: 1 seed)'."""
    text = ("+" if sign and value > 0 else "") + format_number(value * scale) + unit
    if pd.isna(low) or pd.isna(high):
        return f"{text} (no CI: 1 seed)"
    return f"{text} [{format_number(low * scale)}, {format_number(high * scale)}]"


def verdict(row: pd.Series) -> str:
    """What a row of `aggregate.family_verdicts` allows one to say: 'higher' or 'lower' when Holm rejects
    it, NOT_DETECTED when not, NO_SPREAD for identical differences, '' for one pair (no test)."""
    if row["tie"]:
        return NO_SPREAD
    if row["n_pairs"] < 2:
        return ""
    return {1: "higher", -1: "lower"}.get(int(row["claim"]), NOT_DETECTED)


def format_tested(row: pd.Series, scale: float = 1.0, unit: str = "") -> str:
    """'+3.1 points [−0.4, 6.5]' at the row's Holm level; a tie has no interval: '+0.5 points'."""
    if row["tie"]:
        return f"{'+' if row['diff'] > 0 else ''}{format_number(row['diff'] * scale)}{unit}"
    return format_ci(row["diff"], row["diff_lo"], row["diff_hi"], scale, True, unit)


CLAIM_WORDS = {"higher": "holds", "lower": "opposite of the claim", NOT_DETECTED: NOT_DETECTED, NO_SPREAD: NO_SPREAD}


def claim_verdict(row: pd.Series, scale: float = 1.0, unit: str = "") -> str:
    """How a tested paired difference answers a claim that predicts it to be positive: 'holds (+6.0 [2.0,
    10.0])' when Holm rejects it above 0, 'opposite of the claim (...)' below 0, NOT_DETECTED (...) when
    not rejected, NO_SPREAD (...) for a tie, and 'no verdict (+6.0; 1 seed, no CI)' for one pair."""
    word = verdict(row)
    if not word:
        return f"no verdict ({'+' if row['diff'] > 0 else ''}{format_number(row['diff'] * scale)}{unit}; 1 seed, no CI)"
    return f"{CLAIM_WORDS[word]} ({format_tested(row, scale, unit)})"


def format_difference(row: pd.Series, scale: float = 1.0, unit: str = "", pairs: str = "") -> str:
    """'+3.1 points [−0.4, 6.5] (3 pairs): not detected at this budget'; the numbers always stay."""
    word = verdict(row)
    return format_tested(row, scale, unit) + pairs + (f": {word}" if word else "")


def holm_note(m: int) -> str:
    """How the intervals beside Holm verdicts were made, for a family of m comparisons."""
    if m <= 1:
        return "95% t-interval"
    return (f"Holm over {m} comparisons: the verdicts are family-wise at 5%; each interval is at its own step's "
            "level, so it excludes 0 exactly when the verdict is a difference (the intervals are not simultaneous)")


def arm_text(df: pd.DataFrame, metrics: list[str], ctx: Context, scale: float = 1.0, digits: int = 2,
             late: bool = True) -> str:
    """'grpo 0.41, dr_grpo 0.45' (or 'grpo 120 vs 180' for two metrics): per arm, the mean over seeds
    of each run's mean over its last 10% of steps (late) or over all its training steps."""
    per_run = agg.late_run_means(df, metrics) if late else agg.run_means(df, metrics)
    table = agg.across_seeds(per_run, metrics)
    wide = table.pivot_table(index="arm", columns="metric", values="mean")
    wide = wide.reindex(columns=metrics).reindex([a for a in ctx.order if a in wide.index])
    return ", ".join(f"{arm} " + " vs ".join(format_number(v * scale, digits) for v in row)
                     for arm, row in wide.iterrows())


def caption_final(df: pd.DataFrame, ctx: Context) -> str:
    """'dr_grpo vs grpo: +3.1 points [−0.4, 6.5], 5 seeds: not detected at this budget' for every arm."""
    scores = run_scores(df, ctx)
    scale = scale_of(ctx.metric)
    if ctx.baseline not in set(scores["arm"]) or scores["arm"].nunique() < 2:
        summary = agg.summarize_scores(scores).set_index("arm").reindex(ctx.order).dropna(how="all")
        return f"Final {ctx.metric}: " + ", ".join(f"{arm} {format_ci(r['mean'], r.mean_lo, r.mean_hi, scale)}"
                                                   for arm, r in summary.iterrows()) + "."
    diffs = agg.paired_verdicts(scores, ctx.baseline).set_index("arm").reindex(ctx.order).dropna(how="all")
    unit = " points" if scale == 100 else ""
    parts = [f"{arm} vs {ctx.baseline}: " + format_difference(
        r, scale, unit, f", {int(r.n_pairs)} seed{'s' if r.n_pairs != 1 else ''}") for arm, r in diffs.iterrows()]
    m = int(diffs["m"].max()) if len(diffs) else 0
    return "; ".join(parts) + f" (final {ctx.metric}, paired by seed; {holm_note(m)})."


def caption_knob(df: pd.DataFrame, ctx: Context) -> str:
    summary = agg.summarize_scores(run_scores(df, ctx)).sort_values("mean")
    best, worst, scale = summary.iloc[-1], summary.iloc[0], scale_of(ctx.metric)
    return (f"Final {ctx.metric} against {ctx.knob}: highest {best.arm} "
            f"{format_ci(best['mean'], best.mean_lo, best.mean_hi, scale)}, lowest {worst.arm} "
            f"{format_ci(worst['mean'], worst.mean_lo, worst.mean_hi, scale)}; grey dots are seeds.")


def caption_inner(df: pd.DataFrame, ctx: Context) -> str:
    table = agg.inner_epoch_table(df, ("clip_frac",)).sort_values("epoch").groupby("arm").tail(1)
    table = table.set_index("arm").reindex([a for a in ctx.order if a in set(table["arm"])])
    text = ", ".join(f"{arm} {format_number(r['mean'] * 100)}% at k={int(r.epoch)}" for arm, r in table.iterrows())
    return f"Clipped-token fraction at the last inner epoch, mean over training: {text}."


def caption_zero_variance(df: pd.DataFrame, ctx: Context) -> str:
    """Like for like: groups with constant correctness (accuracy/constant_group_frac) against the
    equal-difficulty theory (zero_var/expected_frac); then zero_var/frac, the groups with no gradient.

    Runs from before accuracy/constant_group_frac existed get no comparison: they did not log constant
    correctness, and their zero_var/expected_frac averaged per-prompt solve rates (another quantity).
    """
    measured, theory = "accuracy/constant_group_frac", "zero_var/expected_frac"
    missing = [m for m in (measured, theory) if m not in df.columns or df[m].isna().all()]
    text = "Shares of groups in %, mean over training steps and seeds. "
    if not missing:
        text += (f"All correct or all wrong ({measured}) vs the share expected if every prompt had the "
                 f"step's solve rate pbar, pbar^G + (1-pbar)^G ({theory}): "
                 f"{arm_text(df, [measured, theory], ctx, 100, 1, late=False)}; by Jensen, measured exceeds "
                 "theory (in expectation) exactly when prompts differ in difficulty. ")
    else:
        text += f"No comparison with theory: {' and '.join(missing)} not logged"
        text += (" (a run from before it; its all-correct and all-wrong bars count correctness only). "
                 if measured in missing else ". ")
    zero_var = arm_text(df, ["zero_var/frac"], ctx, 100, 1, late=False)
    return text + f"Zero reward variance, no gradient (zero_var/frac): {zero_var}."
