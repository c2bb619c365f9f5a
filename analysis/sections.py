"""The report's sections besides the figures: what was run, warnings, final scores, run statuses.

Each function takes the tidy frame of one experiment (and its Context) and returns report blocks:
("h", level, text) | ("p", text) | ("ul", [text]) | ("table", header, rows); `analysis.report` puts
them together and renders them. The final-score table states each comparison's Holm verdict
(`analysis.verdicts`) beside the smallest effect its seeds could detect.
"""

from __future__ import annotations

import pandas as pd

from analysis import aggregate as agg
from analysis import captions as cap
from analysis import verdicts
from analysis.captions import Context

# Below this many seeds the t quantile is large (t_{0.975,n-1} >= 3.18, against 1.96 for many seeds):
# the intervals keep their coverage but are wide, and lean on the scores being roughly normal.
FEW_SEEDS = 5
STATUS_NOTES = {
    "missing": "missing (declared in sweep.json, no run on disk)",
    "running": "unfinished (running, or killed before writing summary.json); final scores use the evals so far",
}


def is_rescored(arms: pd.Series) -> pd.Series:
    """Arms `grpo rescore` wrote ('<arm>@<name>'): they share their run's rollouts, so they were not trained."""
    return arms.astype(str).str.contains("@", regex=False)


def warm_start_text(warm: pd.DataFrame) -> str:
    """What the seeds vary, from the runs' warmstart_seed (experiment, arm, seed, warmstart_seed frame)."""
    known = warm.dropna(subset=["warmstart_seed"]) if "warmstart_seed" in warm else warm.iloc[:0]
    if known.empty:
        return ("not recorded; if the seeds shared one warm start (the default), every interval is conditional "
                "on it")
    varies = known.groupby("arm")["warmstart_seed"].nunique() > 1
    if not varies.any():
        values = ", ".join(map(str, sorted(known["warmstart_seed"].astype(int).unique())))
        return (f"one shared by all seeds of an arm (warmstart_seed {values}): the seeds vary the RL run only, so "
                "every interval is conditional on that warm start")
    if varies.all():
        return ("one per seed (warmstart_seed varies with the seed): the intervals include the warm start's "
                "variance")
    return (f"one per seed in {', '.join(varies.index[varies])} (their intervals include the warm start's "
            f"variance); one shared in {', '.join(varies.index[~varies])} (their intervals are conditional on it)")


def what_was_run(spec: dict, df: pd.DataFrame, ctx: Context, warm: pd.DataFrame | None = None) -> list[tuple]:
    """The sweep's declaration, the config fields that differ between arms, and its departures from the papers."""
    versions = ", ".join(f"{k} {v}" for k, v in (spec.get("versions") or {}).items()) or "not recorded"
    seeds = sorted(df["seed"].unique().tolist())
    declared = spec.get("seeds")
    seeds_text = ", ".join(map(str, seeds)) + (f" (declared: {', '.join(map(str, declared))})"
                                               if declared and list(declared) != seeds else "")
    arms = [f"{a} (baseline)" if a == ctx.baseline else f"{a} (rescored, not trained)" if "@" in a else a
            for a in ctx.order]
    warm = warm if warm is not None else pd.DataFrame(columns=["arm", "warmstart_seed"])
    rows = [["arms", ", ".join(arms)], ["seeds", seeds_text], ["warm start", warm_start_text(warm)],
            ["budget held fixed", spec.get("budget") or "not recorded (no sweep.json)"],
            ["ablated knob", ctx.knob or "none"], ["git commit", spec.get("git_commit") or "not recorded"],
            ["versions", versions], ["created", spec.get("created") or "not recorded"]]
    blocks = [("h", 3, "What was run"), ("table", ["", ""], rows)]
    fields = [c for c in df.columns[3:df.columns.get_loc("step")] if df[c].nunique() > 1 or c == ctx.knob]
    if fields:
        values = df.groupby("arm")[fields].first().reindex(ctx.order)
        blocks += [("p", "Config fields that differ between arms:"),
                   ("table", ["arm", *fields], [[a, *map(str, r)] for a, r in zip(values.index, values.values)])]
    departures = spec.get("departures") or {}
    if departures:
        blocks += [("p", "Deliberate departures from the paper:"),
                   ("table", ["arm", "departure"], [[str(arm), str(text)] for arm, text in departures.items()])]
    return blocks


def _samples_at_final_step(df: pd.DataFrame, scores: pd.DataFrame) -> pd.Series:
    """Per arm: mean over its runs of the samples drawn by the step its final score ends at."""
    ends = scores[[*agg.RUN_KEYS, "last_step"]].rename(columns={"last_step": "step"})
    reached = df.merge(ends, on=[*agg.RUN_KEYS, "step"])
    return reached.groupby("arm")["samples"].mean()


def experiment_warnings(df: pd.DataFrame, statuses: pd.DataFrame, ctx: Context) -> list[str]:
    """Plain-language warnings: failed, missing and unfinished runs; too few seeds; no baseline; unmatched
    compute; rescored arms left out of the outcomes."""
    notes = []
    for row in statuses[statuses["status"] == "failed"].itertuples():
        done = "?" if pd.isna(row.steps_done) else row.steps_done
        notes.append(f"{row.arm}/seed{row.seed} failed after {done} steps: {row.error or 'no error recorded'}")
    others = statuses[~statuses["status"].isin(["finished", "failed"])]
    for status, runs in others.groupby("status"):
        names = ", ".join(f"{r.arm}/seed{r.seed}" for r in runs.itertuples())
        notes.append(f"{len(runs)} run(s) {STATUS_NOTES.get(status, status)}: {names}")
    rescored = sorted(set(df.loc[is_rescored(df["arm"]), "arm"]))
    if rescored:
        notes.append(f"Rescored arms ({', '.join(rescored)}) share their run's rollouts: they appear in the probe "
                     "figures and claims only, not in the final scores or the curves of training outcomes.")
        df = df.loc[~is_rescored(df["arm"])]
    scores = cap.run_scores(df, ctx)
    if scores.empty:
        notes.append(f"No {ctx.metric} after step 0 yet: no final scores.")
        return notes
    counts = scores.groupby("arm").size().reindex(ctx.order).dropna().astype(int)
    if (counts == 1).all():
        notes.append("Only one seed per arm: no confidence interval is possible. "
                     "This is a smoke test, not a result.")
    elif (counts == 1).any():
        notes.append("One seed only, so no confidence interval: " + ", ".join(counts.index[counts == 1]) + ".")
    few = counts[(counts > 1) & (counts < FEW_SEEDS)]
    if len(few):
        notes.append(f"Fewer than {FEW_SEEDS} seeds ({', '.join(f'{a}: {n}' for a, n in few.items())}): "
                     "the t-intervals are valid but wide (at 2 seeds ±6.4 times the gap between them), "
                     f"so a real difference smaller than its half-width will read '{cap.NOT_DETECTED}'.")
    if ctx.baseline is None:
        notes.append("No baseline arm declared: no paired differences.")
    elif ctx.baseline not in set(scores["arm"]):
        notes.append(f"Baseline arm {ctx.baseline!r} has no final score: no paired differences.")
    if ctx.matched is None and scores["last_step"].nunique() > 1:
        notes.append(f"Final scores come from different steps ({scores['last_step'].min()}–"
                     f"{scores['last_step'].max()}): runs of unequal length are compared.")
    if ctx.matched is None and "samples" in df.columns:
        samples = _samples_at_final_step(df, scores).reindex(ctx.order).dropna()
        if len(samples) > 1 and samples.max() > 1.1 * samples.min():
            notes.append("Compared at equal steps, but the arms had sampled different numbers of completions by "
                         "then (" + ", ".join(f"{a} {v:.0f}" for a, v in samples.items()) + ", mean over seeds): "
                         "not matched compute; --x samples scores every run at the samples all of them reached.")
    return notes


def _detectable_cells(r: pd.Series, scale: float, ctx: Context) -> list[str]:
    """The 'detectable' cell, and the 'seeds for <effect>' cell when ctx.effect is set."""
    if r["tie"] or r["n_pairs"] < 2:
        why = "no spread" if r["tie"] else ""
        return [why] + ([why] if ctx.effect is not None else [])
    cells = [cap.format_number(r["detectable"] * scale)]
    if ctx.effect is not None:
        needed = verdicts.seeds_needed(r["sd"] * scale, ctx.effect, int(r["m"]))
        cells.append(f"> {verdicts.MAX_SEEDS}" if needed is None else str(needed))
    return cells


def scores_section(df: pd.DataFrame, ctx: Context, warm_note: str = "") -> list[tuple]:
    """The final-score table: mean with CI, IQM (from 4 seeds), the Holm verdict on the paired difference
    to the baseline with its interval, level and adjusted p, and the smallest effect the seeds detect."""
    scores = cap.run_scores(df, ctx)
    if scores.empty:
        return [("h", 3, "Final scores"), ("p", f"No {ctx.metric} recorded after step 0 yet.")]
    summary = agg.summarize_scores(scores).set_index("arm")
    has_baseline = ctx.baseline in summary.index
    diffs = agg.paired_verdicts(scores, ctx.baseline).set_index("arm") if has_baseline else pd.DataFrame()
    m = int(diffs["m"].max()) if len(diffs) else 0
    scale = cap.scale_of(ctx.metric)
    effect_unit = " points" if scale == 100 else ""
    header = ["arm", "seeds", "mean [95% CI]", "IQM (no CI)"]
    if has_baseline:
        header += [f"Δ vs {ctx.baseline} [Holm CI]", "CI level", "p (Holm)", "detectable"]
        header += [f"seeds for {cap.format_number(ctx.effect, 1)}{effect_unit}"] if ctx.effect is not None else []
    rows = []
    for arm in [a for a in ctx.order if a in summary.index]:
        r = summary.loc[arm]
        iqm = cap.IQM_EQUALS_MEAN if pd.isna(r.iqm) else cap.format_number(r.iqm * scale)
        row = [arm, str(int(r.n_seeds)), cap.format_ci(r["mean"], r.mean_lo, r.mean_hi, scale), iqm]
        if has_baseline and arm == ctx.baseline:
            row += ["baseline"] + [""] * (len(header) - len(row) - 1)
        elif has_baseline and arm not in diffs.index:
            row += ["no shared seeds"] + [""] * (len(header) - len(row) - 1)
        elif has_baseline:
            d = diffs.loc[arm]
            tested = not d["tie"] and d["n_pairs"] >= 2
            row += [cap.format_difference(d, scale, pairs=f" ({int(d.n_pairs)} pairs)"),
                    f"{cap.format_number(100 * (1 - d.level), 1)}%" if tested else "",
                    f"{d.p_holm:.3f}" if tested else "", *_detectable_cells(d, scale, ctx)]
        rows.append(row)
    unit = " in %, differences in points" if scale == 100 else ""
    # What was averaged: the last `window` points, or fewer where a run logged fewer.
    fewest, most = int(scores["n_points"].min()), int(scores["n_points"].max())
    averaged = f"its last {ctx.window} eval points after step 0"
    if most < ctx.window or fewest < most:
        averaged += f" (here {fewest})" if fewest == most else f" (here {fewest}–{most})"
    budget = agg.matched_budget(df, ctx.metric, ctx.matched) if ctx.matched else None
    matched = ("" if budget is None else
               f" At matched compute: every run is scored at {budget:.0f} {ctx.matched}, the most that all of them "
               f"reached: each run's eval curve is interpolated at the same {ctx.matched} values (the eval points of "
               f"the run that reached the least, its last {ctx.window} after step 0), so every run averages the same "
               f"stretch of compute.")
    text = (f"Score of a run: {ctx.metric}{unit}, averaged over {averaged} (no smoothing).{matched} "
            "Mean over seeds with a 95% Student-t interval, mean ± t·s/√n: valid at few seeds "
            f"but wide. IQM (25% trimmed mean) only from {agg.IQM_MIN_SEEDS} seeds on, where it trims "
            "something, and without a CI: no interval for it has known coverage at so few seeds.")
    if has_baseline:
        family = (f"The {m} comparisons are tested together with Holm's step-down paired t-tests, so the chance "
                  "that a report with no real difference claims one stays under 5%." if m > 1 else
                  "With one comparison, Holm's step-down procedure is the paired t-test at 5%.")
        text += (f" Δ is the per-seed paired difference to {ctx.baseline}. {family} Each interval is at its comparison's Holm level (CI level), so it excludes 0 "
                 "exactly when the verdict is higher or lower, and p (Holm) ≤ 0.05 then too; one that covers 0 is "
                 f"{cap.NOT_DETECTED}: these seeds cannot tell the arms apart, which does not show that they are "
                 "equal. Identical differences for every seed have no spread and get no verdict. detectable: the "
                 "smallest true Δ these seeds find 80% of the time, (t(1−α/2m) + t(0.8))·s/√n with n−1 degrees "
                 f"of freedom and s the observed spread of the paired differences, at α/m = 0.05/{max(m, 1)}, the "
                 "strictest Holm step (so the verdict finds it at least that often).")
        if ctx.effect is not None:
            text += (f" seeds for {cap.format_number(ctx.effect, 1)}{effect_unit}: the seeds the same test would need to "
                     "detect that effect 80% of the time, if the paired spread stays as observed.")
    text += f" {warm_note}" if warm_note else ""
    return [("h", 3, "Final scores"), ("p", text), ("table", header, rows)]


def status_section(statuses: pd.DataFrame, order: list[str]) -> list[tuple]:
    rank = {arm: i for i, arm in enumerate(order)}
    statuses = statuses.assign(rank=statuses["arm"].map(rank).fillna(len(rank))).sort_values(["rank", "seed"])
    rows = [[r.arm, str(r.seed), r.status, "" if pd.isna(r.steps_done) else str(int(r.steps_done)),
             "" if pd.isna(r.steps) else str(int(r.steps))] for r in statuses.itertuples()]
    return [("h", 3, "Runs"), ("table", ["arm", "seed", "status", "steps done", "steps planned"], rows)]
