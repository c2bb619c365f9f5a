"""Paper figures: each function takes the tidy frame of one experiment and returns a Figure.

None of them loads data; the statistics come from `analysis.aggregate`. Figures are sized for one
column of a paper (3.5 in wide, no font under 7 pt) and use seaborn's colour-blind palette. They are
built on `matplotlib.figure.Figure`, not pyplot, so nothing is kept in global state, no GUI backend is
touched, and saving renders through Agg (PNG) and the SVG backend.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import rc_context, ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis import aggregate as agg

WIDTH = 3.5  # inches: one column of a two-column paper
HEIGHT = 2.4
DPI = 200
_RC = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7,
       "ytick.labelsize": 7, "legend.fontsize": 7, "legend.title_fontsize": 7, "lines.linewidth": 1.2,
       "lines.markersize": 4, "axes.linewidth": 0.6, "grid.linewidth": 0.4, "figure.dpi": DPI}
X_LABELS = {"step": "training step", "samples": "completions sampled", "tokens": "completion tokens"}
KL_ESTIMATORS = ("kl/k1", "kl/k2", "kl/k3")


@contextmanager
def _style():
    """Seaborn's light grid style plus paper font sizes, only while a figure is being built."""
    with sns.axes_style("whitegrid"), rc_context(_RC):
        yield


def _figure(nrows: int = 1, height: float = HEIGHT, sharex: bool = True) -> tuple[Figure, list]:
    fig = Figure(figsize=(WIDTH, height), layout="constrained")
    axes = fig.subplots(nrows, 1, sharex=sharex, squeeze=False)[:, 0]
    return fig, list(axes)


def colors(arms: list[str]) -> dict[str, tuple]:
    """One colour-blind-safe colour per arm, stable for a given arm order."""
    return dict(zip(arms, sns.color_palette("colorblind", max(len(arms), 1))))


def _order(df: pd.DataFrame, order: list[str] | None) -> list[str]:
    present = set(df["arm"].unique())
    return [a for a in order if a in present] if order else agg.arm_order(df)


def _format_x(ax, x: str) -> None:
    """Steps are whole numbers: integer ticks, plain labels. Samples and tokens: 20000 -> 20k."""
    ax.set_xlabel(X_LABELS.get(x, x))
    if x == "step":
        # The default locator puts ticks at 0.5 on a short run, which EngFormatter writes as "500m".
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.xaxis.set_major_formatter(ticker.StrMethodFormatter("{x:.0f}"))
    else:
        ax.xaxis.set_major_formatter(ticker.EngFormatter(sep=""))


def _legend_below(fig: Figure, handles: list, labels: list[str], ncols: int = 4) -> None:
    """Legend under the axes, so it never covers a curve; at most `ncols` entries per row."""
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), ncols), frameon=False,
                   handlelength=1.5, columnspacing=1.0)


def _plot_band(ax, data: pd.DataFrame, x: str, color, label: str | None, linestyle: str = "-") -> Line2D:
    (line,) = ax.plot(data[x], data["mean"], color=color, label=label, linestyle=linestyle)
    ax.fill_between(data[x], data["lo"], data["hi"], color=color, alpha=0.2, linewidth=0)
    return line


def learning_curves(df: pd.DataFrame, metric: str = "eval/accuracy", x: agg.Axis = "step",
                    order: list[str] | None = None, smoothing: str | None = None, window: int = 10,
                    ylabel: str | None = None) -> Figure:
    """Mean of `metric` per arm over `x`, with a 95% t-interval band across seeds."""
    data = agg.curves(df, metric, x, smoothing=smoothing, window=window)
    arms = _order(df, order)
    palette = colors(arms)
    with _style():
        fig, (ax,) = _figure()
        lines = [_plot_band(ax, data[data["arm"] == arm], x, palette[arm], arm) for arm in arms
                 if (data["arm"] == arm).any()]
        _format_x(ax, x)
        ax.set_ylabel(ylabel or metric)
        _legend_below(fig, lines, [line.get_label() for line in lines])
    return fig


def _is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and values.notna().all()


def final_vs_knob(df: pd.DataFrame, knob: str, metric: str = "eval/accuracy", window: int = 3,
                  order: list[str] | None = None, scores: pd.DataFrame | None = None) -> Figure:
    """Final score per arm against the ablated config field: mean with 95% CI, seeds as dots.

    A numeric knob is placed at its value (log2 axis when it doubles, as G does); any other knob, or
    one missing from the frame, gets one evenly spaced position per arm. `scores`: the runs' final
    scores when given (at matched compute, say), else `aggregate.final_scores(df, metric, window)`.
    """
    scores = agg.final_scores(df, metric, window) if scores is None else scores
    summary = agg.summarize_scores(scores)
    if knob in df.columns:
        summary = summary.merge(agg.arm_values(df, knob), on=agg.ARM_KEYS)
    numeric = knob in summary.columns and _is_numeric(summary[knob]) and summary[knob].is_unique
    if numeric:
        summary = summary.sort_values(knob)
        positions = summary[knob].to_numpy(dtype=float)
    else:
        arms = _order(df, order)
        summary = summary.set_index("arm").loc[[a for a in arms if a in set(summary["arm"])]].reset_index()
        positions = np.arange(len(summary), dtype=float)
    where = dict(zip(summary["arm"], positions))
    with _style():
        fig, (ax,) = _figure()
        ax.scatter(scores["arm"].map(where), scores["score"], s=6, color="0.4", zorder=4, label="seed")
        errors = np.abs(summary[["mean_lo", "mean_hi"]].to_numpy().T - summary["mean"].to_numpy())
        ax.errorbar(positions, summary["mean"], yerr=np.nan_to_num(errors), fmt="o-", color="C0",
                    capsize=2, zorder=3, label="mean, 95% CI")
        ax.set_xticks(positions)
        if numeric and positions.min() > 0 and positions.max() / positions.min() >= 4:
            ax.set_xscale("log", base=2)
        labels = [f"{v:g}" for v in positions] if numeric else list(summary["arm"])
        ax.set_xticks(positions, labels)
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.set_xlabel(knob if numeric else "arm")
        ax.set_ylabel(f"final {metric}")
        ax.legend(frameon=False, loc="best")
    return fig


ZERO_VAR_BARS = {  # stacked from the bottom; "other" is what is left of zero_var/frac
    "zero_var/all_wrong_frac": "zero var., all wrong",
    "zero_var/all_correct_frac": "zero var., all correct",
    "other": "zero var., mixed",
}
ZERO_VAR_MARKERS = {  # key: (marker, size, label); drawn where logged (older runs lack the first)
    "accuracy/constant_group_frac": ("D", 4, "all correct or all wrong"),
    "zero_var/expected_frac": ("_", 14, r"theory $\bar p^G+(1-\bar p)^G$"),
}


def _group_labels(df: pd.DataFrame, arms: list[str], by: str, order: list[str] | None) -> tuple[list, list]:
    """(arms, tick labels): sorted by `by` (G=4, G=8) when it is a number, else in arm order."""
    values = agg.arm_values(df, by).set_index("arm")[by] if by in df.columns else None
    short = by.replace("group_size", "G")
    if values is not None and _is_numeric(values) and values.reindex(arms).is_unique:
        arms = sorted(arms, key=lambda a: values[a])
        return arms, [f"{short}={values[a]:g}" for a in arms]
    arms = [a for a in _order(df, order) if a in arms]
    if values is not None and _is_numeric(values):      # several arms share a G: name the arm too
        return arms, [f"{a}\n({short}={values[a]:g})" for a in arms]
    return arms, arms


def zero_variance(df: pd.DataFrame, by: str = "group_size", order: list[str] | None = None) -> Figure:
    """Share of groups without signal per arm, mean over training steps and seeds.

    Bars: zero reward variance (zero_var/frac), split into all wrong, all correct and the rest
    (correctness mixed but total reward equal; clipped at 0 against rounding). Markers: groups with
    constant correctness (accuracy/constant_group_frac) against pbar^G + (1-pbar)^G, the share expected
    if every prompt had the step's solve rate (zero_var/expected_frac); by Jensen, measured exceeds
    theory (in expectation) exactly when prompts differ in difficulty. A marker not logged is left out.
    """
    frac, wrong, correct = "zero_var/frac", "zero_var/all_wrong_frac", "zero_var/all_correct_frac"
    keys = [frac, wrong, correct, *ZERO_VAR_MARKERS]
    table = agg.across_seeds(agg.run_means(df, keys), keys)
    means = table.pivot_table(index="arm", columns="metric", values="mean")
    arms, labels = _group_labels(df, list(means.index), by, order)
    means = means.reindex(index=arms, columns=keys).fillna({frac: 0.0, wrong: 0.0, correct: 0.0})
    means["other"] = (means[frac] - means[wrong] - means[correct]).clip(lower=0)
    positions = np.arange(len(arms))
    palette = sns.color_palette("colorblind")
    with _style():
        fig, (ax,) = _figure(height=2.8)
        bottom, handles = np.zeros(len(arms)), []
        for (key, label), color in zip(ZERO_VAR_BARS.items(), (palette[3], palette[2], palette[7])):
            handles.append(ax.bar(positions, means[key], width=0.6, bottom=bottom, color=color, label=label))
            bottom = bottom + means[key].to_numpy()
        handles.reverse()  # legend rows in the order the bars stack, top first
        for key, (marker, size, label) in ZERO_VAR_MARKERS.items():
            if means[key].notna().any():
                handles += ax.plot(positions, means[key], linestyle="none", marker=marker, markersize=size,
                                   color="k", markeredgewidth=1.5, label=label)
        ax.set_xticks(positions, labels)
        ax.set_ylabel("share of groups")
        ax.yaxis.set_major_formatter(ticker.PercentFormatter(1.0))
        _legend_below(fig, handles, [h.get_label() for h in handles], ncols=2)
    return fig


def _beta_label(df: pd.DataFrame, arm: str) -> str:
    if "kl_beta" not in df.columns:
        return arm
    return f"{arm} (β={df.loc[df['arm'] == arm, 'kl_beta'].iloc[0]:g})"


def kl_over_training(df: pd.DataFrame, x: agg.Axis = "step", order: list[str] | None = None,
                     smoothing: str | None = "ema", window: int = 10) -> Figure:
    """KL to the reference policy by estimator (k1, k2, k3 panels), one line per arm (per β).

    Smoothed by default (a plot, not a table): the per-step k1 estimate is very noisy.
    """
    estimators = [k for k in KL_ESTIMATORS if k in df.columns]
    arms = _order(df, order)
    palette = colors(arms)
    with _style():
        fig, axes = _figure(nrows=max(len(estimators), 1), height=1.3 * max(len(estimators), 1) + 0.6)
        lines = {}
        for ax, estimator in zip(axes, estimators):
            data = agg.curves(df, estimator, x, smoothing=smoothing, window=window)
            for arm in arms:
                arm_data = data[data["arm"] == arm]
                if not arm_data.empty:
                    lines[arm] = _plot_band(ax, arm_data, x, palette[arm], _beta_label(df, arm))
            ax.set_ylabel(estimator.split("/")[-1])
        _format_x(axes[-1], x)
        axes[0].set_title("KL(π‖π_ref) estimators")
        _legend_below(fig, list(lines.values()), [line.get_label() for line in lines.values()])
    return fig


def inner_epochs(df: pd.DataFrame, order: list[str] | None = None) -> Figure:
    """Per inner epoch k: clip fraction and KL from π_old, averaged over training, per arm (per μ)."""
    table = agg.inner_epoch_table(df)
    arms = _order(df, order)
    palette = colors(arms)
    panels = [("clip_frac", "clipped tokens"), ("kl_old", "KL(π_old‖π)")]
    with _style():
        fig, axes = _figure(nrows=2, height=3.2)
        for ax, (quantity, ylabel) in zip(axes, panels):
            rows = table[table["quantity"] == quantity]
            for arm in arms:
                data = rows[rows["arm"] == arm].sort_values("epoch")
                if data.empty:
                    continue
                errors = np.abs(data[["lo", "hi"]].to_numpy().T - data["mean"].to_numpy())
                ax.errorbar(data["epoch"], data["mean"], yerr=np.nan_to_num(errors), fmt="o-", capsize=2,
                            color=palette[arm], label=arm)
            ax.set_ylabel(ylabel)
        axes[0].yaxis.set_major_formatter(ticker.PercentFormatter(1.0))
        axes[-1].set_xlabel("inner epoch k")
        axes[-1].xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        handles, names = axes[0].get_legend_handles_labels()
        _legend_below(fig, handles, names)
    return fig


def length_by_correctness(df: pd.DataFrame, x: agg.Axis = "step", order: list[str] | None = None,
                          smoothing: str | None = "ema", window: int = 10) -> Figure:
    """Mean completion length of correct (solid) and wrong (dashed) answers over training, per arm.

    Smoothed by default (a plot, not a table): per-step lengths of small batches are noisy.
    """
    arms = _order(df, order)
    palette = colors(arms)
    styles = {"len/correct_mean": "-", "len/wrong_mean": "--"}
    with _style():
        fig, (ax,) = _figure(height=2.6)
        for metric, linestyle in styles.items():
            data = agg.curves(df, metric, x, smoothing=smoothing, window=window)
            for arm in arms:
                arm_data = data[data["arm"] == arm]
                if not arm_data.empty:
                    _plot_band(ax, arm_data, x, palette[arm], None, linestyle)
        _format_x(ax, x)
        ax.set_ylabel("completion length (tokens)")
        handles = [Line2D([], [], color=palette[a]) for a in arms]
        handles += [Line2D([], [], color="0.3", linestyle=s) for s in styles.values()]
        _legend_below(fig, handles, [*arms, "correct", "wrong"])
    return fig


def save(fig: Figure, out_dir: Path, name: str) -> tuple[Path, Path]:
    """Write `<out_dir>/<name>.png` and `.svg`; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png, svg = out_dir / f"{name}.png", out_dir / f"{name}.svg"
    fig.savefig(png, dpi=DPI)
    fig.savefig(svg)
    return png, svg
