"""Captions of the probe figures: what each shows, and the papers' claims tested on this sweep's data.

A claim is tested only on arms that differ in the claimed knob and in no other config field, paired by
seed, and worded by `captions.claim_verdict`: "holds", "opposite of the claim" or "not detected at this
budget", always with the difference and its 95% t-interval. Without such a pair the caption names the
comparison that would be needed instead of guessing from arms that differ in more than the knob.
"""

from __future__ import annotations

import pandas as pd

from analysis import aggregate as agg
from analysis import probes
from analysis.captions import Context, arm_text, claim_verdict, difference_verdict, format_ci, format_number

STD_CLAIM = "std normalisation up-weights near-solved groups"
LENGTH_CLAIM = "under seq_mean_token_mean wrong completions grow longer than under seq_mean_token_sum_norm"


def _seeds(n: float) -> str:
    return f"{int(n)} seed{'s' if n != 1 else ''}"


def _pair_claim(per_run: pd.DataFrame, column: str, arm: str, other: str, scale: float, unit: str) -> str:
    """'holds (+6.0 points [2.0, 10.0]), 3 seeds' for `arm` - `other`, paired by seed."""
    diff = probes.paired_difference(per_run, column, arm, other)
    if diff is None:
        return "no shared seeds"
    return f"{claim_verdict(diff['diff'], diff.diff_lo, diff.diff_hi, scale, unit)}, {_seeds(diff.n_pairs)}"


def _interval(mean: float, low: float, high: float, digits: int = 2) -> str:
    """'−0.41 [−0.52, −0.30]', or '−0.41 (no CI: 1 seed)'."""
    if pd.isna(low) or pd.isna(high):
        return f"{format_number(mean, digits)} (no CI: 1 seed)"
    return f"{format_number(mean, digits)} [{format_number(low, digits)}, {format_number(high, digits)}]"


def _per_arm(table: pd.DataFrame, ctx: Context) -> str:
    """'grpo −0.41 [−0.52, −0.30], ...' from a one-metric `across_seeds` table, in the report's arm order."""
    rows = table.set_index("arm").reindex([a for a in ctx.order if a in set(table["arm"])])
    return ", ".join(f"{arm} {_interval(r['mean'], r.lo, r.hi)}" for arm, r in rows.iterrows())


def caption_difficulty(df: pd.DataFrame, ctx: Context) -> str:
    """The shares' definition, then the std claim: GRPO's share of the easiest level with signal minus
    Dr. GRPO's, for every pair of arms that differ only in `advantage` (grpo vs dr_grpo)."""
    text = ("Share of the gradient weight per difficulty level (by_difficulty/<d>/weight × "
            "by_difficulty/<d>/groups, mean over training steps per run, normalised over levels), mean over "
            "seeds with 95% t-interval. ")
    pairs = probes.arm_pairs(df, "advantage", "grpo", "dr_grpo")
    if not pairs:
        return text + (f'Claim "{STD_CLAIM}": not tested, it needs two arms that differ only in advantage '
                       "(grpo vs dr_grpo, every other config field equal), run on the same seeds.")
    shares = probes.difficulty_shares(df)
    parts = []
    for grpo, dr_grpo in pairs:
        level = probes.easiest_level_with_signal(df, [grpo, dr_grpo])
        if level is None:
            parts.append(f"{grpo} vs {dr_grpo}: no level with both accuracy and gradient weight")
            continue
        claim = _pair_claim(shares, level, grpo, dr_grpo, 100, " points")
        parts.append(f"{grpo} vs {dr_grpo}, easiest level with signal {level}: {claim}")
    return text + (f'Claim "{STD_CLAIM}" (the easiest level\'s share under advantage=grpo minus under '
                   "advantage=dr_grpo, paired by seed; it holds if positive): " + "; ".join(parts) + ".")


def caption_length(df: pd.DataFrame, ctx: Context) -> str:
    """Late lengths per arm, then the length claim for every pair of arms that differ only in
    `aggregation`, then bias/len_corr_neg and bias/len_corr_pos where logged."""
    text = ("Mean length in tokens, correct vs wrong, over the last 10% of steps: "
            f"{arm_text(df, ['len/correct_mean', 'len/wrong_mean'], ctx, digits=0)} (curves EMA-smoothed). ")
    pairs = probes.arm_pairs(df, "aggregation", "seq_mean_token_mean", "seq_mean_token_sum_norm")
    if pairs:
        late = agg.late_run_means(df, ["len/wrong_mean"])
        parts = [f"{mean} vs {norm}: {_pair_claim(late, 'len/wrong_mean', mean, norm, 1.0, ' tokens')}"
                 for mean, norm in pairs]
        text += (f'Claim "{LENGTH_CLAIM}" (len/wrong_mean over the last 10% of steps, seq_mean_token_mean arm '
                 "minus seq_mean_token_sum_norm arm, paired by seed; it holds if positive): "
                 + "; ".join(parts) + ". ")
    else:
        text += (f'Claim "{LENGTH_CLAIM}": not tested, it needs two arms that differ only in aggregation '
                 "(seq_mean_token_mean vs seq_mean_token_sum_norm), run on the same seeds. ")
    for key, sign in (("bias/len_corr_neg", "A<0"), ("bias/len_corr_pos", "A>0")):
        if key in df.columns and df[key].notna().any():
            table = agg.across_seeds(agg.run_means(df, [key]), [key])
            text += (f"Correlation of per-token gradient weight with length over completions with {sign} ({key}), "
                     f"mean over the steps that logged it: {_per_arm(table, ctx)}. ")
    if "bias/len_corr_neg" in df.columns and df["bias/len_corr_neg"].notna().any():
        text += "Negative: longer completions get less gradient per token."
    return text.rstrip()


def caption_ledger(df: pd.DataFrame, ctx: Context) -> str:
    """The bars' definition, revisits per arm, and measured vs predicted zero-variance groups per arm."""
    text = ("Revisited prompts by how their group moved since its previous visit (all wrong, mixed, all "
            "correct), mean over training steps per run, then over seeds; grey: kept its state. ")
    if "ledger/revisit_frac" in df.columns and df["ledger/revisit_frac"].notna().any():
        text += f"Revisits (ledger/revisit_frac), in %: {arm_text(df, ['ledger/revisit_frac'], ctx, 100, 1, False)}. "
    measured, predicted = "ledger/zero_var_measured", "ledger/zero_var_predicted"
    if not all(k in df.columns and df[k].notna().any() for k in (measured, predicted)):
        return text + f"No zero-variance comparison: {measured} or {predicted} not logged."
    table = probes.measured_vs_predicted(df, measured, predicted)
    parts = []
    for arm in [a for a in ctx.order if a in set(table["arm"])]:
        runs = table[table["arm"] == arm]
        low, high = agg.t_interval(runs["diff"])
        verdict = {"higher": "measured above prediction", "lower": "measured below prediction"}.get(
            difference_verdict(low, high), difference_verdict(low, high))
        parts.append(f"{arm} {format_number(runs['measured'].mean() * 100)} vs "
                     f"{format_number(runs['predicted'].mean() * 100)}, difference "
                     f"{format_ci(runs['diff'].mean(), low, high, 100, True, ' points')}, {_seeds(len(runs))}"
                     + (f": {verdict}" if verdict else ""))
    return text + (f"Groups without variance in %, measured ({measured}) vs predicted from each prompt's "
                   f"previous solve rate ({predicted}), mean over the training steps that logged both; the "
                   "difference is taken per run, with its t-interval over seeds: "
                   + "; ".join(parts) + ".")


def caption_counterfactual(df: pd.DataFrame, ctx: Context) -> str:
    """Per arm: the alternative whose gradient is least aligned with the run's, and every norm ratio."""
    cos, ratio = probes.counterfactual_table(df, "cos"), probes.counterfactual_table(df, "norm_ratio")
    parts = []
    for arm in [a for a in ctx.order if a in set(cos["arm"])]:
        rows = cos[cos["arm"] == arm].dropna(subset=["mean"])
        lowest = rows.loc[rows["mean"].idxmin()]
        ratios = ratio[ratio["arm"] == arm]
        ratio_text = ", ".join(f"{r.alternative} {format_number(r['mean'], 2)}" for _, r in ratios.iterrows())
        parts.append(f"{arm}: lowest cosine {lowest.alternative} {_interval(lowest['mean'], lowest.lo, lowest.hi)}"
                     + (f" (norm ratios: {ratio_text})" if ratio_text else ""))
    return ("Cosine between the gradient each alternative (cf/<name>/cos) would take on the same rollouts and "
            "the run's own gradient, mean over the steps where it was computed, then over seeds; norm ratio "
            "is the alternative's gradient norm over the run's (cf/<name>/norm_ratio). " + "; ".join(parts) + ".")
