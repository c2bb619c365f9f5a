"""Write report.md and report.html for one or more sweeps: what ran, final scores with CIs, figures, and the
paper checks when a paper_checks.json is there (analysis/paper_checks.py).

    python -m analysis.report <sweep-dir>... [--out DIR] [--x step|samples|tokens] [--effect POINTS]

The report is assembled as a list of blocks (heading, paragraph, list, table, figure) and rendered
twice: Markdown with figures linked, and self-contained HTML with the PNGs embedded as base64.
Every caption is computed from the data. Bad input (missing dir, no runs) raises AnalysisError, which
the CLI prints as one `error: ...` line with exit code 2.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import pandas as pd

from analysis import aggregate as agg
from analysis import captions as cap
from analysis import figures as fig
from analysis import probe_captions as probe_cap
from analysis import probe_figures as probe_fig
from analysis import probes
from analysis.captions import Context
from analysis.load import (AnalysisError, AnalysisWarning, find_run_dirs, load_run_field, load_runs, load_statuses,
                           load_sweep_specs)
from analysis.paper_checks import load_paper_checks, paper_checks_section
from analysis.render import render_html, render_markdown
from analysis.sections import (experiment_warnings, is_rescored, scores_section, status_section, warm_start_text,
                               what_was_run)


def _has(*columns: str) -> Callable[[pd.DataFrame, Context], bool]:
    return lambda df, ctx: all(c in df.columns and df[c].notna().any() for c in columns)


def _knob_varies(df: pd.DataFrame, ctx: Context) -> bool:
    return ctx.knob is not None and cap.run_scores(df, ctx)["arm"].nunique() >= 2


# A budget line that starts by naming samples or tokens holds compute fixed: score at matched compute.
_COMPUTE_BUDGET = re.compile(r"\s*(?:generated |completion )?(samples|tokens)\b")


def matched_axis(budget: str | None, x: str) -> str | None:
    """'samples' or 'tokens' when the report's x axis is one, or the budget held fixed is; else None."""
    if x in ("samples", "tokens"):
        return x
    match = _COMPUTE_BUDGET.match(budget or "")
    return match.group(1) if match else None


@dataclass(frozen=True)
class FigureSpec:
    """A figure of the report: drawn when `when` holds (absent metrics skip it; that is no error)."""

    name: str
    title: str
    when: Callable[[pd.DataFrame, Context], bool]
    build: Callable[[pd.DataFrame, Context], object]
    caption: Callable[[pd.DataFrame, Context], str]
    rescored: bool = False  # shows rescored arms: probes on the same rollouts, not outcomes of training


LATE = "over the last 10% of steps"
FIGURES = [
    FigureSpec("eval_curve", "Eval accuracy", _has("eval/accuracy"),
               lambda df, c: fig.learning_curves(df, "eval/accuracy", c.x, c.order),
               lambda df, c: cap.caption_final(df, c) if c.metric == "eval/accuracy" else
               f"eval/accuracy {LATE}: {cap.arm_text(df, ['eval/accuracy'], c, 100, 1)}%."),
    FigureSpec("reward_curve", "Training reward", _has("reward/mean"),
               lambda df, c: fig.learning_curves(df, "reward/mean", c.x, c.order),
               lambda df, c: f"reward/mean {LATE}: {cap.arm_text(df, ['reward/mean'], c)}."),
    FigureSpec("train_accuracy", "Training accuracy", _has("accuracy"),
               lambda df, c: fig.learning_curves(df, "accuracy", c.x, c.order, smoothing="ema",
                                                 ylabel="share of the step's completions correct"),
               lambda df, c: "accuracy: the share of each step's sampled completions that the run's correctness "
               f"reward judges right (curves EMA-smoothed); {LATE}: {cap.arm_text(df, ['accuracy'], c)}."),
    *(FigureSpec(name, title, _has(key),
                 lambda df, c, key=key: fig.learning_curves(df, key, c.x, c.order, smoothing="ema", ylabel=key),
                 lambda df, c, key=key, text=text:
                 f"{key}: {text}, mean over the step's completions, unweighted (curves EMA-smoothed); {LATE}: "
                 f"{cap.arm_text(df, [key], c)}.")
      for name, key, title, text in [
          ("format_partial", "reward/format_partial/mean", "Format reward (partial credit)",
           "a fifth per tag present once and a fifth for a parsable answer"),
          ("format_strict", "reward/format/mean", "Format reward (strict)",
           "1 for exactly <think>...</think><answer>...</answer>")]),
    FigureSpec("length_curve", "Completion length", _has("len/mean"),
               lambda df, c: fig.learning_curves(df, "len/mean", c.x, c.order, smoothing="ema",
                                                 ylabel="completion tokens (EOS included)"),
               lambda df, c: "len/mean: completion tokens per sampled completion, EOS included, truncated ones at "
               f"--max-new-tokens (curves EMA-smoothed); {LATE}: {cap.arm_text(df, ['len/mean'], c, digits=1)}."),
    FigureSpec("final_vs_knob", "Final score against the ablated knob", _knob_varies,
               lambda df, c: fig.final_vs_knob(df, c.knob, c.metric, c.window, c.order, cap.run_scores(df, c)),
               cap.caption_knob),
    FigureSpec("zero_variance", "Groups without signal",  # the bars; the two markers are optional
               _has("zero_var/frac", "zero_var/all_correct_frac", "zero_var/all_wrong_frac"),
               lambda df, c: fig.zero_variance(df, order=c.order), cap.caption_zero_variance),
    FigureSpec("kl", "KL to the reference policy", _has("kl/k3"),
               lambda df, c: fig.kl_over_training(df, c.x, c.order),
               lambda df, c: f"kl/k3 {LATE}: {cap.arm_text(df, ['kl/k3'], c, digits=4)} "
               "(curves EMA-smoothed, span 10)."),
    FigureSpec("inner_epochs", "Inner epochs: clipping and KL from π_old", _has("inner/2/clip_frac"),
               lambda df, c: fig.inner_epochs(df, c.order), cap.caption_inner),
    FigureSpec("length", "Length of correct vs wrong completions over generated samples",
               _has("len/correct_mean", "len/wrong_mean"),
               lambda df, c: fig.length_by_correctness(df, "samples", c.order), probe_cap.caption_length),
    FigureSpec("length_bias", "Length bias: within-group correlation of per-token gradient weight with length",
               _has("bias/len_corr_neg"),
               lambda df, c: fig.learning_curves(df, "bias/len_corr_neg", c.x, c.order, smoothing="ema",
                                                 ylabel="corr(weight, length), A<0"),
               probe_cap.caption_length_bias, True),
    FigureSpec("entropy", "Sampling entropy over generated samples", _has("entropy"),
               lambda df, c: fig.learning_curves(df, "entropy", "samples", c.order, smoothing="ema",
                                                 ylabel="entropy per token (nats)"),
               lambda df, c: "Entropy of the sampling distribution per completion token (nats), mean over "
               f"training: {cap.arm_text(df, ['entropy'], c, late=False)}; {LATE}: "
               f"{cap.arm_text(df, ['entropy'], c)} (curves EMA-smoothed)."),
    FigureSpec("dynamic", "Dynamic sampling: zero-variance groups dropped per step", _has("dynamic/dropped_groups"),
               lambda df, c: fig.learning_curves(df, "dynamic/dropped_groups", "step", c.order, smoothing="ema",
                                                 ylabel="groups dropped per step"),
               lambda df, c: "Zero-variance groups generated and dropped per step, mean over training: "
               f"{cap.arm_text(df, ['dynamic/dropped_groups'], c, digits=1, late=False)}; kept anyway because "
               f"the round limit was hit: {cap.arm_text(df, ['dynamic/filled_groups'], c, digits=2, late=False)}."),
    FigureSpec("difficulty_weight", "Gradient weight by difficulty",
               lambda df, c: not probes.difficulty_shares(df).empty,
               lambda df, c: probe_fig.gradient_weight_by_difficulty(df, c.order), probe_cap.caption_difficulty, True),
    FigureSpec("ledger", "Prompt ledger", _has(*probes.LEDGER_MOVES),
               lambda df, c: probe_fig.prompt_ledger(df, c.order), probe_cap.caption_ledger, True),
    FigureSpec("counterfactual", "Counterfactual gradients",
               lambda df, c: bool(probes.keyed_columns(df, probes.COUNTERFACTUAL, "cos")),
               lambda df, c: probe_fig.counterfactual_gradients(df, c.order), probe_cap.caption_counterfactual,
               True),
]


# ----- report blocks: ("h", level, text) | ("p", text) | ("ul", [text]) | ("table", header, rows)
#       | ("fig", title, png, svg, caption) with paths relative to the report; rendered below.


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _context(df: pd.DataFrame, spec: dict, x: str, metric: str, window: int,
             effect: float | None = None) -> Context:
    """Arm order of sweep.json (then any extra arms), its baseline and knob, matched compute, effect."""
    arms = [str(a) for a in spec.get("arms") or []]
    order = [a for a in arms if a in set(df["arm"])] + [a for a in agg.arm_order(df) if a not in arms]
    return Context(order, spec.get("baseline"), spec.get("knob"), x, metric, window,
                   matched_axis(spec.get("budget"), x), effect)


def figures_section(df: pd.DataFrame, ctx: Context, out_dir: Path, prefix: str) -> tuple[list[tuple], list[str]]:
    """Build, save and caption every figure whose metrics are present; a failing figure becomes a warning."""
    blocks, problems = [("h", 3, "Figures")], []
    trained = df.loc[~is_rescored(df["arm"])]
    for spec in FIGURES:
        data = df if spec.rescored else trained
        if data.empty or not spec.when(data, ctx):
            continue
        try:
            figure = spec.build(data, ctx)
            png, svg = fig.save(figure, out_dir / "figures", f"{prefix}{spec.name}")
            paths = [path.relative_to(out_dir).as_posix() for path in (png, svg)]
            blocks.append(("fig", spec.title, *paths, spec.caption(data, ctx)))
        except Exception as err:  # one broken figure must not cost the whole report
            problems.append(f"figure {spec.name} failed: {type(err).__name__}: {err}")
    return blocks, problems


def build_blocks(paths: list[Path], out_dir: Path, x: str, metric: str, window: int,
                 effect: float | None = None) -> list[tuple]:
    """Load everything and assemble the report; loader warnings are collected into the report.

    A paper_checks.json in one of `paths` adds the "Paper checks" table first; with no runs under `paths`
    the report is that table alone (experiments.paper_checks --exact-only)."""
    checks = load_paper_checks(paths)
    check_blocks = paper_checks_section(checks) if checks else []
    if checks and not any(find_run_dirs(path) for path in paths):
        return [("h", 1, "grpo-lab report"),
                ("p", f"Generated {datetime.now().isoformat(timespec='seconds')} by analysis.report from "
                      f"{', '.join(str(p.resolve()) for p in paths)}: paper checks only, no runs."), *check_blocks]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AnalysisWarning)
        df = load_runs(paths)
        statuses = load_statuses(paths)
        specs = load_sweep_specs(paths)
        warm = load_run_field(paths, "warmstart_seed")
    load_notes = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, AnalysisWarning)))
    for note in load_notes:
        print(f"warning: {note}", file=sys.stderr)
    blocks = [("h", 1, "grpo-lab report"),
              ("p", f"Generated {datetime.now().isoformat(timespec='seconds')} by analysis.report "
                    f"from {', '.join(str(p.resolve()) for p in paths)}; x axis: {x}.")]
    if load_notes:
        blocks += [("h", 2, "Skipped while loading"), ("ul", load_notes)]
    blocks += check_blocks
    experiments = list(dict.fromkeys(df["experiment"]))
    for experiment in experiments:
        exp_df = df[df["experiment"] == experiment].dropna(axis=1, how="all")
        ctx = _context(exp_df, specs.get(experiment, {}), x, metric, window, effect)
        exp_statuses = statuses[statuses["experiment"] == experiment]
        exp_warm = warm[(warm["experiment"] == experiment) & ~is_rescored(warm["arm"])]
        prefix = f"{_slug(experiment)}_" if len(experiments) > 1 else ""
        fig_blocks, problems = figures_section(exp_df, ctx, out_dir, prefix)
        notes = experiment_warnings(exp_df, exp_statuses, ctx) + problems
        blocks += [("h", 2, f"Experiment: {experiment}"),
                   *what_was_run(specs.get(experiment, {}), exp_df, ctx, exp_warm)]
        blocks += [("h", 3, "Warnings"), ("ul", notes)] if notes else []
        warm_note = f"What the seeds vary: the warm start is {warm_start_text(exp_warm)}."
        blocks += [*scores_section(exp_df.loc[~is_rescored(exp_df["arm"])], ctx, warm_note), *fig_blocks,
                   *status_section(exp_statuses, ctx.order)]
    return blocks


def write_report(sweep_dirs, out_dir=None, x: str = "step", metric: str = "eval/accuracy",
                 window: int = 3, effect: float | None = None) -> Path:
    """Write report.md, report.html and figures/ for `sweep_dirs`; return the path of report.md.

    out_dir defaults to the first sweep dir. effect: an effect in display units (points of accuracy) for
    which the table gives the seeds needed. Raises AnalysisError on bad input.
    """
    paths = [Path(p) for p in ([sweep_dirs] if isinstance(sweep_dirs, (str, Path)) else sweep_dirs)]
    if not paths:
        raise AnalysisError("no sweep directory given")
    if x not in ("step", "samples", "tokens"):
        raise AnalysisError(f"x must be step, samples or tokens, not {x!r}")
    if effect is not None and not (effect > 0 and effect < float("inf")):
        raise AnalysisError(f"effect must be a positive number, not {effect!r}")
    out = Path(out_dir) if out_dir is not None else paths[0]
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    blocks = build_blocks(paths, out, x, metric, window, effect)
    (out / "report.html").write_text(render_html(blocks, out))
    report = out / "report.md"
    report.write_text(render_markdown(blocks, out))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", nargs="+", type=Path, help="sweep dirs, run dirs, or folders of sweeps")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the report (default: the first sweep dir)")
    parser.add_argument("--x", choices=["step", "samples", "tokens"], default="step",
                        help="x axis of the curves; samples/tokens compare arms at matched compute")
    parser.add_argument("--metric", default="eval/accuracy", help="metric of the final-score table")
    parser.add_argument("--window", type=int, default=3, help="eval points averaged into a run's final score")
    parser.add_argument("--effect", type=float, default=None,
                        help="an effect in the metric's display units (points of accuracy): the table gives the "
                             "seeds each comparison would need to detect it")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.sweep_dirs, args.out, args.x, args.metric, args.window, args.effect)
    except (AnalysisError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report.html: {report.with_suffix('.html')}")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
