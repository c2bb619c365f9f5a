"""Captions of the probe figures: what each shows, and the papers' claims tested on this sweep's data.

A claim is tested only on arms that differ in the claimed knob and in no other config field, paired by
seed. The pairs a caption tests are one family, held family-wise with Holm (`analysis.verdicts`), and
worded by `captions.claim_verdict`: "holds", "opposite of the claim" or "not detected at this budget",
always with the difference and its interval at the comparison's Holm level; identical differences get
no verdict. Without such a pair the caption names the comparison that would be needed instead of
guessing from arms that differ in more than the knob. The counterfactual caption's lowest cosine is
picked after seeing every alternative, so it gets no verdict, only an interval simultaneous over them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import aggregate as agg
from analysis import probes, verdicts
from analysis.captions import (Context, arm_text, claim_verdict, format_number, format_tested, holm_note,
                               verdict)

STD_CLAIM = "std normalisation up-weights near-solved groups"
LENGTH_CLAIM = "under seq_mean_token_mean wrong completions grow longer than under seq_mean_token_sum_norm"


def _seeds(n: float) -> str:
    return f"{int(n)} seed{'s' if n != 1 else ''}"


def _versus(arm: str, other: str) -> str:
    """'a vs b', marked '(same rollouts)' when one is the other rescored (`grpo rescore`: '<arm>@<name>'),
    where the paired difference of a probe has no rollout noise at all."""
    same = arm.startswith(f"{other}@") or other.startswith(f"{arm}@")
    return f"{arm} vs {other}" + (" (same rollouts)" if same else "")


def _pair_claims(diffs: dict[str, np.ndarray], scale: float, unit: str) -> tuple[dict[str, str], str]:
    """({name: 'holds (+6.0 points [2.0, 10.0]), 3 seeds'}, how the intervals were made) for one family
    of paired differences, tested together with Holm."""
    table = agg.family_verdicts(diffs)
    words = {name: "no shared seeds" if r.n_pairs == 0 else f"{claim_verdict(r, scale, unit)}, {_seeds(r.n_pairs)}"
             for name, r in table.iterrows()}
    return words, holm_note(int(table["m"].max()) if len(table) else 0)


def _interval(mean: float, low: float, high: float, digits: int = 2) -> str:
    """'−0.41 [−0.52, −0.30]', '−0.41 (no CI: 1 seed)', or '−0.41 (no spread)' for equal values."""
    if pd.isna(low) or pd.isna(high):
        return f"{format_number(mean, digits)} (no CI: 1 seed)"
    if low == high:
        return f"{format_number(mean, digits)} (no spread)"
    return f"{format_number(mean, digits)} [{format_number(low, digits)}, {format_number(high, digits)}]"


def _per_arm(table: pd.DataFrame, ctx: Context) -> str:
    """'grpo −0.41 [−0.52, −0.30], ...' from a one-metric `across_seeds` table, in the report's arm order."""
    rows = table.set_index("arm").reindex([a for a in ctx.order if a in set(table["arm"])])
    return ", ".join(f"{arm} {_interval(r['mean'], r.lo, r.hi)}" for arm, r in rows.iterrows())


def caption_difficulty(df: pd.DataFrame, ctx: Context) -> str:
    """The shares' definition, then the std claim: GRPO's share of the easiest level with signal minus
    Dr. GRPO's, for every pair of arms that differ only in `advantage` (grpo vs dr_grpo)."""
    text = ("Share of the gradient weight per difficulty level (by_difficulty/<d>/weight: the level's part of "
            "the step's |A| × per-token weight × tokens under the run's aggregation; mean over training steps "
            "per run, normalised over levels), mean over seeds with 95% t-interval. ")
    pairs = probes.arm_pairs(df, "advantage", "grpo", "dr_grpo")
    if not pairs:
        return text + (f'Claim "{STD_CLAIM}": not tested, it needs two arms that differ only in advantage '
                       "(grpo vs dr_grpo, every other config field equal), run on the same seeds.")
    shares = probes.difficulty_shares(df)
    levels = {pair: probes.easiest_level_with_signal(df, list(pair)) for pair in pairs}
    claims, note = _pair_claims({_versus(a, b): probes.paired_values(shares, level, a, b)
                                 for (a, b), level in levels.items() if level is not None}, 100, " points")
    parts = [f"{_versus(a, b)}: no level with both accuracy and gradient weight" if level is None else
             f"{_versus(a, b)}, easiest level with signal {level}: {claims[_versus(a, b)]}"
             for (a, b), level in levels.items()]
    return text + (f'Claim "{STD_CLAIM}" (the easiest level\'s share under advantage=grpo minus under '
                   f"advantage=dr_grpo, paired by seed; it holds if positive; {note}): " + "; ".join(parts) + ".")


def caption_length(df: pd.DataFrame, ctx: Context) -> str:
    """Late lengths per arm, then the length claim for every pair of arms that differ only in
    `aggregation` (trained arms only: lengths are an outcome of training)."""
    text = ("Mean length in tokens, correct vs wrong, over the last 10% of steps: "
            f"{arm_text(df, ['len/correct_mean', 'len/wrong_mean'], ctx, digits=0)} (curves EMA-smoothed). ")
    pairs = probes.arm_pairs(df, "aggregation", "seq_mean_token_mean", "seq_mean_token_sum_norm")
    if pairs:
        late = agg.late_run_means(df, ["len/wrong_mean"])
        claims, note = _pair_claims({_versus(mean, norm): probes.paired_values(late, "len/wrong_mean", mean, norm)
                                     for mean, norm in pairs}, 1.0, " tokens")
        text += (f'Claim "{LENGTH_CLAIM}" (len/wrong_mean over the last 10% of steps, seq_mean_token_mean arm '
                 f"minus seq_mean_token_sum_norm arm, paired by seed; it holds if positive; {note}): "
                 + "; ".join(f"{name}: {claim}" for name, claim in claims.items()) + ". ")
    else:
        text += (f'Claim "{LENGTH_CLAIM}": not tested, it needs two arms that differ only in aggregation '
                 "(seq_mean_token_mean vs seq_mean_token_sum_norm), run on the same seeds. ")
    return text.rstrip()


def caption_length_bias(df: pd.DataFrame, ctx: Context) -> str:
    """bias/len_corr_neg, bias/len_corr_pos and bias/len_spread_within per arm, rescored arms included: a
    rescoring under another aggregation reads the same rollouts' length bias exactly."""
    text = ("Curves: bias/len_corr_neg over training (EMA-smoothed). ")
    for key, sign in (("bias/len_corr_neg", "A<0"), ("bias/len_corr_pos", "A>0")):
        if key in df.columns and df[key].notna().any():
            table = agg.across_seeds(agg.run_means(df, [key]), [key])
            text += (f"Within-group correlation of per-token gradient weight with length over completions with "
                     f"{sign} ({key}), mean over the steps that logged it: {_per_arm(table, ctx)}. ")
    spread = "bias/len_spread_within"
    if spread in df.columns and df[spread].notna().any():
        table = agg.across_seeds(agg.run_means(df, [spread]), [spread])
        text += (f"Length spread within groups (coefficient of variation, {spread}): {_per_arm(table, ctx)}. ")
    if "bias/len_corr_neg" in df.columns and df["bias/len_corr_neg"].notna().any():
        text += ("Negative: within a group, longer completions get less gradient per token; 0: the aggregation "
                 "gives every token of a group the same weight.")
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
    arms = [a for a in ctx.order if a in set(table["arm"])]
    tests = agg.family_verdicts({arm: table.loc[table["arm"] == arm, "diff"].to_numpy(float) for arm in arms})
    parts = []
    for arm in arms:
        runs, row = table[table["arm"] == arm], tests.loc[arm]
        word = {"higher": "measured above prediction", "lower": "measured below prediction"}.get(verdict(row),
                                                                                                  verdict(row))
        parts.append(f"{arm} {format_number(runs['measured'].mean() * 100)} vs "
                     f"{format_number(runs['predicted'].mean() * 100)}, difference "
                     f"{format_tested(row, 100, ' points')}, {_seeds(len(runs))}" + (f": {word}" if word else ""))
    m = int(tests["m"].max()) if len(tests) else 0
    return text + (f"Groups without variance in %, measured ({measured}) vs predicted from each prompt's "
                   f"previous solve rate ({predicted}), mean over the training steps that logged both; the "
                   f"difference is taken per run, with its t-interval over seeds ({holm_note(m)}): "
                   + "; ".join(parts) + ".")


def caption_counterfactual(df: pd.DataFrame, ctx: Context) -> str:
    """Per arm: the alternative whose gradient is least aligned with the run's, and every norm ratio."""
    cos, ratio = probes.counterfactual_table(df, "cos"), probes.counterfactual_table(df, "norm_ratio")
    columns = probes.keyed_columns(df, probes.COUNTERFACTUAL, "cos")
    per_run = agg.run_means(df, list(columns.values()))
    parts = []
    for arm in [a for a in ctx.order if a in set(cos["arm"])]:
        rows = cos[cos["arm"] == arm].dropna(subset=["mean"])
        lowest = rows.loc[rows["mean"].idxmin()]
        # Picked as the lowest of len(rows): only an interval simultaneous over all of them stays valid.
        values = per_run.loc[per_run["arm"] == arm, columns[lowest.alternative]]
        low, high = agg.t_interval(values, 1 - verdicts.ALPHA / len(rows))
        ratios = ratio[ratio["arm"] == arm]
        ratio_text = ", ".join(f"{r.alternative} {format_number(r['mean'], 2)}" for _, r in ratios.iterrows())
        parts.append(f"{arm}: lowest cosine {lowest.alternative} {_interval(lowest['mean'], low, high)}"
                     + (f" of {len(rows)}" if len(rows) > 1 else "")
                     + (f" (norm ratios: {ratio_text})" if ratio_text else ""))
    return ("Cosine between the gradient each alternative (cf/<name>/cos) would take on the same rollouts and "
            "the run's own gradient, mean over the steps where it was computed, then over seeds; norm ratio "
            "is the alternative's gradient norm over the run's (cf/<name>/norm_ratio). The lowest is picked "
            "after seeing them all, so it gets no verdict: its interval is simultaneous over the arm's "
            "alternatives (t-interval at 1 − 0.05/k for k alternatives). " + "; ".join(parts) + ".")
