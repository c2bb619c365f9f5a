"""Statistics of the trainer's probes, as pure functions of the tidy frame of one experiment.

Keys read (their meanings are defined once, where the trainer computes them):
  by_difficulty/<d>/{accuracy,weight,groups}  per difficulty level d, logged for the levels drawn that step
  ledger/<from>_to_<to>, ledger/zero_var_measured, ledger/zero_var_predicted  fixed prompt pool only
  cf/<name>/{cos,norm_ratio}  every K steps only (NaN between); <name> may hold '=', ',' and '/'
A key is split on its first and last '/', so the middle part is the level or the alternative's name.
A run's value is its mean over training steps (step >= 1); seeds are then summarised with
`aggregate.across_seeds` (mean, 95% t-interval) or paired by seed (`paired_values`) and tested as a family
with `aggregate.family_verdicts` (Holm).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from analysis import aggregate as agg
from analysis.load import AXES

DIFFICULTY = re.compile(r"by_difficulty/(.+)/([^/]+)")
COUNTERFACTUAL = re.compile(r"cf/(.+)/([^/]+)")
# The six moves between the three states of a prompt's group (all wrong, mixed, all correct); the
# rest of the revisited prompts stayed where they were.
LEDGER_MOVES = ("ledger/wrong_to_correct", "ledger/wrong_to_mixed", "ledger/mixed_to_correct",
                "ledger/mixed_to_wrong", "ledger/correct_to_mixed", "ledger/correct_to_wrong")


def keyed_columns(df: pd.DataFrame, pattern: re.Pattern, quantity: str) -> dict[str, str]:
    """{middle part: column} for the columns `pattern` splits into (middle, quantity), with data,
    naturally sorted (d2 before d10)."""
    found = {}
    for column in df.columns:
        match = pattern.fullmatch(str(column))
        if match and match.group(2) == quantity and df[column].notna().any():
            found[match.group(1)] = column
    return {key: found[key] for key in sorted(found, key=agg.natural_key)}


def config_columns(df: pd.DataFrame) -> list[str]:
    """The config fields that differ between arms: `load_runs` puts them between seed and the axes."""
    columns = list(df.columns)
    return columns[columns.index("seed") + 1:min(columns.index(a) for a in AXES if a in columns)]


def _same(a: object, b: object) -> bool:
    """Config values equal, a field missing from both configs (NaN) included."""
    if pd.isna(a) or pd.isna(b):
        return pd.isna(a) and pd.isna(b)
    return a == b


def arm_pairs(df: pd.DataFrame, field: str, first: str, second: str) -> list[tuple[str, str]]:
    """(arm with `field` = first, arm with `field` = second) for every two arms that differ in `field`
    and in no other config column, so that the pair isolates `field`. [] when `field` is no column."""
    if field not in df.columns:
        return []
    others = [c for c in config_columns(df) if c != field]
    values = df.groupby("arm")[[field, *others]].first()
    arms = agg.arm_order(df)
    return [(a, b) for a in arms for b in arms
            if values.at[a, field] == first and values.at[b, field] == second
            and all(_same(values.at[a, c], values.at[b, c]) for c in others)]


def paired_values(per_run: pd.DataFrame, column: str, arm: str, baseline: str) -> np.ndarray:
    """`arm` - `baseline` in a per-run column, one value per seed both have a value for (in seed order);
    empty when they share none."""
    runs = per_run.loc[per_run["arm"].isin([arm, baseline]), [*agg.RUN_KEYS, column]].dropna()
    wide = runs.pivot_table(index=["experiment", "seed"], columns="arm", values=column)
    if arm not in wide or baseline not in wide:
        return np.array([])
    return (wide[arm] - wide[baseline]).dropna().to_numpy(dtype=float)


# ----- difficulty levels -----

def difficulty_levels(df: pd.DataFrame) -> list[str]:
    """Levels with both by_difficulty/<d>/weight and by_difficulty/<d>/groups logged, naturally sorted."""
    weight, groups = keyed_columns(df, DIFFICULTY, "weight"), keyed_columns(df, DIFFICULTY, "groups")
    return [level for level in groups if level in weight]


def difficulty_shares(df: pd.DataFrame, min_step: int = 1) -> pd.DataFrame:
    """Per run, each level's share of the gradient weight: wide frame experiment, arm, seed, <level>...

    by_difficulty/<d>/weight is already level d's share of its step's gradient weight (|A| x per-token
    weight x tokens, as the run's aggregation gives it), logged only at steps with some weight. The
    shares are averaged over the run's training steps that logged them, then normalised to sum 1 over
    levels (they sum to less than 1 only where some prompts have no level). A level absent at such a
    step was not drawn and counts 0 there, not as a gap. A run with no gradient weight at any step (no
    signal at all) has no shares.
    """
    levels = difficulty_levels(df)
    if not levels:
        return pd.DataFrame(columns=agg.RUN_KEYS)
    training = df.loc[df["step"] >= min_step]
    weight = training[[f"by_difficulty/{d}/weight" for d in levels]].to_numpy(dtype=float)
    probed = ~np.isnan(weight).all(axis=1)
    mass = pd.DataFrame(np.nan_to_num(weight)[probed], columns=levels,
                        index=pd.MultiIndex.from_frame(training.loc[probed, agg.RUN_KEYS]))
    mass = mass.groupby(level=agg.RUN_KEYS).mean()
    total = mass.sum(axis=1)
    shares = mass.div(total.where(total > 0), axis=0).dropna(how="all")
    return shares.reset_index()


def difficulty_share_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per arm and level: mean share over seeds with its t-interval.

    Returns experiment, arm, level, mean, lo, hi, n_seeds, levels naturally sorted within an arm.
    """
    levels = difficulty_levels(df)
    table = agg.across_seeds(difficulty_shares(df), levels).rename(columns={"metric": "level"})
    return table[[*agg.ARM_KEYS, "level", "mean", "lo", "hi", "n_seeds"]]


def easiest_level_with_signal(df: pd.DataFrame, arms: list[str]) -> str | None:
    """Over the runs of `arms`: the level with the highest mean by_difficulty/<d>/accuracy among the
    levels that took some gradient weight (share > 0). Ties go to the lower label; None if no level has
    both an accuracy and weight. A level every group solves takes no weight and is never chosen."""
    runs = df[df["arm"].isin(arms)]
    shares = difficulty_shares(runs).drop(columns=agg.RUN_KEYS).mean()
    accuracy = keyed_columns(runs, DIFFICULTY, "accuracy")
    candidates = {d: accuracy[d] for d in shares.index[shares > 0] if d in accuracy}
    if not candidates:
        return None
    means = agg.run_means(runs, list(candidates.values()))[list(candidates.values())].mean()
    ranked = sorted((-means[column], agg.natural_key(d), d) for d, column in candidates.items()
                    if pd.notna(means[column]))
    return ranked[0][2] if ranked else None


# ----- prompt ledger and counterfactual gradients -----

def measured_vs_predicted(df: pd.DataFrame, measured: str = "ledger/zero_var_measured",
                          predicted: str = "ledger/zero_var_predicted") -> pd.DataFrame:
    """Per run, over the training steps that logged both: mean measured, mean predicted, and their
    difference. Returns experiment, arm, seed, measured, predicted, diff."""
    both = df.loc[(df["step"] >= 1) & df[measured].notna() & df[predicted].notna()]
    out = both.groupby(agg.RUN_KEYS)[[measured, predicted]].mean()
    out.columns = ["measured", "predicted"]
    return out.assign(diff=out["measured"] - out["predicted"]).reset_index()


def counterfactual_table(df: pd.DataFrame, quantity: str = "cos") -> pd.DataFrame:
    """Per arm and alternative: each run's mean of cf/<name>/<quantity> over the steps that computed it,
    then the mean over seeds with its t-interval. Returns experiment, arm, alternative, mean, lo, hi,
    n_seeds, alternatives naturally sorted within an arm."""
    columns = keyed_columns(df, COUNTERFACTUAL, quantity)
    table = agg.across_seeds(agg.run_means(df, list(columns.values())), list(columns.values()))
    names = {column: name for name, column in columns.items()}
    table = table.assign(alternative=table["metric"].map(names))
    return table[[*agg.ARM_KEYS, "alternative", "mean", "lo", "hi", "n_seeds"]]
