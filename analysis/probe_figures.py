"""Figures of the trainer's probes: gradient weight by difficulty, the prompt ledger, counterfactual
gradients. Same conventions as `analysis.figures` (one paper column, colour-blind palette, no pyplot);
the statistics come from `analysis.probes`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import ticker
from matplotlib.figure import Figure

from analysis import aggregate as agg
from analysis import probes
from analysis.captions import format_number
from analysis.figures import _figure, _legend_below, _order, _style, colors

# Stacked from the bottom: the three moves up, the three moves down, then the prompts that stayed.
LEDGER_BARS = {
    "ledger/wrong_to_correct": "wrong → correct", "ledger/wrong_to_mixed": "wrong → mixed",
    "ledger/mixed_to_correct": "mixed → correct", "ledger/mixed_to_wrong": "mixed → wrong",
    "ledger/correct_to_mixed": "correct → mixed", "ledger/correct_to_wrong": "correct → wrong",
    "rest": "kept its state",
}
_LEDGER_COLORS = (2, 0, 9, 1, 8, 3, 7)  # indices into the colour-blind palette: greens/blues up, warm down
_DODGE = 0.08  # horizontal offset between arms at one level, so their error bars do not overlap


def gradient_weight_by_difficulty(df: pd.DataFrame, order: list[str] | None = None) -> Figure:
    """Each level's share of the gradient weight per arm (`probes.difficulty_share_table`): mean over
    seeds with 95% t-interval error bars, levels on x in natural order."""
    table = probes.difficulty_share_table(df)
    levels = sorted(table["level"].unique(), key=agg.natural_key)
    arms = [a for a in _order(df, order) if a in set(table["arm"])]
    palette = colors(arms)
    with _style():
        fig, (ax,) = _figure()
        for k, arm in enumerate(arms):
            data = table[table["arm"] == arm].set_index("level").reindex(levels)
            errors = np.abs(data[["lo", "hi"]].to_numpy().T - data["mean"].to_numpy())
            ax.errorbar(np.arange(len(levels)) + (k - (len(arms) - 1) / 2) * _DODGE, data["mean"],
                        yerr=np.nan_to_num(errors), fmt="o-", capsize=2, color=palette[arm], label=arm)
        ax.set_xticks(np.arange(len(levels)), levels)
        ax.set_xlabel("difficulty level")
        ax.set_ylabel("share of gradient weight")
        ax.yaxis.set_major_formatter(ticker.PercentFormatter(1.0))
        handles, names = ax.get_legend_handles_labels()
        _legend_below(fig, handles, names)
    return fig


def prompt_ledger(df: pd.DataFrame, order: list[str] | None = None) -> Figure:
    """Stacked bars per arm: the share of revisited prompts that made each of the six moves, mean over
    training steps per run and over seeds; on top, the rest (1 - their sum, clipped at 0), which kept
    its state. A move not logged by an arm counts 0."""
    moves = list(probes.LEDGER_MOVES)
    table = agg.across_seeds(agg.run_means(df, moves), moves)
    arms = [a for a in _order(df, order) if a in set(table["arm"])]
    means = table.pivot_table(index="arm", columns="metric", values="mean").reindex(index=arms, columns=moves)
    means = means.fillna(0.0)
    means["rest"] = (1.0 - means[moves].sum(axis=1)).clip(lower=0)
    positions = np.arange(len(arms))
    palette = sns.color_palette("colorblind")
    with _style():
        fig, (ax,) = _figure(height=3.2)
        bottom, handles = np.zeros(len(arms)), []
        for (key, label), color in zip(LEDGER_BARS.items(), _LEDGER_COLORS):
            handles.append(ax.bar(positions, means[key], width=0.6, bottom=bottom, color=palette[color],
                                  label=label))
            bottom = bottom + means[key].to_numpy()
        handles.reverse()  # legend rows in the order the bars stack, top first
        ax.set_xticks(positions, arms)
        ax.set_ylabel("share of revisited prompts")
        ax.yaxis.set_major_formatter(ticker.PercentFormatter(1.0))
        _legend_below(fig, handles, [h.get_label() for h in handles], ncols=2)
    return fig


def counterfactual_gradients(df: pd.DataFrame, order: list[str] | None = None) -> Figure:
    """Heatmap arms x alternatives of the mean cf/<name>/cos (`probes.counterfactual_table`), each cell
    annotated with its value; a cell the arm never computed is blank and marked '–'."""
    table = probes.counterfactual_table(df, "cos")
    alternatives = sorted(table["alternative"].unique(), key=agg.natural_key)
    arms = [a for a in _order(df, order) if a in set(table["arm"])]
    matrix = (table.pivot_table(index="arm", columns="alternative", values="mean")
              .reindex(index=arms, columns=alternatives).to_numpy(dtype=float))
    with _style():
        fig, (ax,) = _figure(height=2.4 + 0.35 * len(arms))
        fig.set_figwidth(max(fig.get_figwidth(), 2.0 + 2.2 * len(alternatives)))
        image = ax.imshow(matrix, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
        for (row, column), value in np.ndenumerate(matrix):
            dark = not np.isnan(value) and abs(value) > 0.6
            ax.text(column, row, "–" if np.isnan(value) else format_number(value, 2), ha="center", va="center",
                    color="white" if dark else "black")
        labels = [name.replace("+", "\n") for name in alternatives]      # one changed field per line
        ax.set_xticks(np.arange(len(alternatives)), labels, fontsize="small")
        ax.set_yticks(np.arange(len(arms)), arms)
        ax.grid(False)
        ax.set_xlabel("alternative")
        fig.colorbar(image, ax=ax, label="cosine to the run's gradient")
    return fig
