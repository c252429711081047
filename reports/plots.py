"""Plots of the tidy run frame, drawn with seaborn.

Each ``fig_*`` function returns ``(figure, frame)``: the :class:`matplotlib.figure.Figure` and the
data frame it drew, so a test (or a reader) can check the numbers behind a picture. Figures are
bare ``Figure`` objects with the Agg canvas: no pyplot, no global backend switch, nothing opened on
a display. :func:`save_png` writes one atomically (temporary file + rename).

Names on a figure (titles, legend entries, tick labels, annotations) come from results folders and
are drawn literally: each passes through :func:`benchmark.core.escape.mathtext` (a ``$`` never starts
mathtext, which would raise on ``$\\x$``) and figures are drawn with ``text.usetex`` off whatever the
user's matplotlibrc says. The frames returned keep the names as they are.
"""

from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from benchmark.core.escape import mathtext
from benchmark.core.files import atomic_writer
from reports.run_rows import SELECTION_RULES
from reports.summary import AVG, GROUP_KEYS, ordered_methods, ratio_label

PANEL_COLUMNS = 3


def _literal(func):
    """Run a figure function (or the save that draws it) with TeX rendering off: with
    ``text.usetex`` every label would be LaTeX source, which :func:`mathtext` does not escape."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context({"text.usetex": False}):
            return func(*args, **kwargs)
    return wrapper


def _shown(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """A copy of ``frame`` whose name columns are as drawn (:func:`mathtext`)."""
    return frame.assign(**{c: frame[c].map(mathtext) for c in columns if c in frame})


def _shown_colors(colors: dict) -> dict:
    return {mathtext(m): c for m, c in colors.items()}


def _colors(present, method_order: Sequence[str] | None) -> dict[str, tuple]:
    """One colour per method, the same in every panel and in every figure of a report: assigned over
    ``method_order`` (the report passes all its methods) and then the methods present."""
    methods = ordered_methods(set(present) | set(method_order or []), method_order)
    cmap = matplotlib.colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def _title(keys: tuple) -> str:
    dataset, protocol, mask_protocol, profile = (mathtext(k) for k in keys)
    return f"{dataset} · {protocol}\nmask {mask_protocol} · profile {profile}"


def _panels(n: int, width: float = 5.0, height: float = 4.0) -> tuple[Figure, list]:
    ncols = max(1, min(n, PANEL_COLUMNS))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


@_literal
def save_png(fig: Figure, out_png: str | Path, dpi: int = 110) -> Path:
    """Render with the Agg canvas and move the file into place atomically."""
    out_png = Path(out_png)
    FigureCanvasAgg(fig)
    with atomic_writer(out_png, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi)
    return out_png


@_literal
def fig_map_vs_ratio(df: pd.DataFrame, selection: str = "val", metric: str = "mAP",
                     method_order: Sequence[str] | None = None) -> tuple[Figure, pd.DataFrame]:
    """``metric`` against the known-label proportion, one panel per group, one line per method
    (mean over seeds) with a min-max band over seeds. The frame: one row per run drawn."""
    if selection not in SELECTION_RULES:
        raise ValueError(f"unknown selection {selection!r}; choose one of {list(SELECTION_RULES)}")
    rows = df[(df["selection"] == selection) & df[metric].notna()]
    if rows.empty:
        raise ValueError(f"no run has a {metric} value under selection {selection!r}")
    drawn = rows[[*GROUP_KEYS, "variant", "ratio", "seed", metric]].assign(percent=rows["ratio"] * 100)
    groups = list(drawn.groupby(list(GROUP_KEYS), sort=True))
    fig, axes = _panels(len(groups))
    colors = _colors(drawn["variant"], method_order)
    for ax, (keys, group) in zip(axes, groups):
        present = [mathtext(m) for m in colors if m in set(group["variant"])]
        sns.lineplot(data=_shown(group, ["variant"]), x="percent", y=metric, hue="variant", hue_order=present,
                     palette=_shown_colors(colors),
                     estimator="mean", errorbar=("pi", 100), marker="o", err_style="band", ax=ax)
        ticks = sorted(set(group["percent"]))
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        if len(ticks) == 1:
            ax.set_xlim(ticks[0] - 10, ticks[0] + 10)
        ax.set_title(_title(keys), fontsize=10)
        ax.set_xlabel("known labels (%)")
        ax.set_ylabel(f"test {metric} (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, title=None)
    fig.suptitle(f"test {metric} vs known-label proportion (selection: {selection})\n"
                 "line: mean over seeds; band: min-max over seeds", fontsize=10)
    return fig, drawn.reset_index(drop=True)


def plot_map_vs_ratio(df: pd.DataFrame, out_png: str | Path, selection: str = "val",
                      metric: str = "mAP", method_order: Sequence[str] | None = None) -> Path:
    """Write :func:`fig_map_vs_ratio` to ``out_png`` (``map_vs_ratio.png`` in a report)."""
    fig, _ = fig_map_vs_ratio(df, selection, metric, method_order)
    return save_png(fig, out_png, dpi=120)


@_literal
def fig_difference_heatmap(tests: pd.DataFrame, method_order: Sequence[str] | None = None,
                           metric: str = "mAP") -> tuple[Figure, pd.DataFrame]:
    """Methods x proportions heatmap of the mean paired difference to the baseline, one panel per
    group and baseline (from :func:`reports.stats.paired_tests`); the frame is the drawn matrix in
    tidy form (group, against, method, column, mean_diff)."""
    if tests.empty:
        raise ValueError("no paired differences to draw")
    panels = list(tests.groupby([*GROUP_KEYS, "against"], sort=True))
    fig, axes = _panels(len(panels), width=6.0, height=1.6 + 0.45 * tests["method"].nunique())
    drawn = []
    limit = float(np.nanmax(np.abs(tests["mean_diff"].to_numpy(dtype=float)))) or 1.0
    for ax, (keys, sub) in zip(axes, panels):
        sub = sub.assign(column=[ratio_label(r) for r in sub["ratio"]])
        columns = [ratio_label(r) for r in sorted({r for r in sub["ratio"] if r != AVG})]
        columns += [ratio_label(AVG)] if (sub["ratio"] == AVG).any() else []
        matrix = sub.pivot_table(index="method", columns="column", values="mean_diff", aggfunc="first")
        matrix = matrix.reindex(index=ordered_methods(matrix.index, method_order), columns=columns)
        with warnings.catch_warnings():            # seaborn 0.13 calls a colormap method matplotlib deprecates
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            sns.heatmap(matrix.rename(index=mathtext).astype(float), annot=True, fmt="+.1f", cmap="RdBu", center=0.0, vmin=-limit, vmax=limit,
                        cbar_kws={"label": f"Δ test {metric} (points)"}, ax=ax, linewidths=0.5)
        ax.set_title(f"{' · '.join(map(mathtext, keys[:4]))}\ndifference to {mathtext(keys[4])}", fontsize=10)
        ax.set_xlabel("known labels")
        ax.set_ylabel("")
        tidy = matrix.stack().rename("mean_diff").reset_index()
        drawn.append(tidy.assign(**dict(zip([*GROUP_KEYS, "against"], keys))))
    fig.suptitle("mean paired difference to the baseline over seeds (red: worse, blue: better)", fontsize=10)
    return fig, pd.concat(drawn, ignore_index=True)


@_literal
def fig_cd_diagram(average: pd.DataFrame, cd: float, cliques: list[list[str]], n_cells: int,
                   title: str = "") -> tuple[Figure, pd.DataFrame]:
    """Critical-difference diagram (Demšar 2006): methods on an axis of average ranks (1 = best, on
    the left), the Nemenyi CD as a scale bar, and a thick bar joining methods that are not
    significantly different. The frame: method, avg_rank, side and the clique ids it belongs to."""
    if average.empty:
        raise ValueError("no ranks to draw")
    ranked = average.sort_values("avg_rank").reset_index(drop=True)
    k = len(ranked)
    half = math.ceil(k / 2)
    fig = Figure(figsize=(8.0, 1.8 + 0.32 * half + 0.2 * len(cliques)), layout="constrained")
    ax = fig.subplots()
    low, high = 1, max(k, 2)
    ax.set_xlim(low - 0.3, high + 0.3)
    top = 0.0
    ax.hlines(top, low, high, color="black", linewidth=1)
    for r in range(low, high + 1):
        ax.vlines(r, top, top + 0.12, color="black", linewidth=1)
        ax.text(r, top + 0.18, str(r), ha="center", va="bottom", fontsize=9)
    for r in np.arange(low + 0.5, high, 1.0):
        ax.vlines(r, top, top + 0.06, color="black", linewidth=0.6)
    if math.isfinite(cd):
        ax.hlines(top + 0.55, low, low + cd, color="black", linewidth=1.5)
        ax.vlines([low, low + cd], top + 0.5, top + 0.6, color="black", linewidth=1.5)
        ax.text(low + cd / 2, top + 0.62, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=9)
    rows = []
    clique_y0 = top - 0.15
    members = {m: [] for m in ranked["method"]}
    for i, group in enumerate(cliques):
        y = clique_y0 - 0.12 * i
        ranks = ranked.set_index("method").loc[group, "avg_rank"]
        ax.hlines(y, ranks.min() - 0.03, ranks.max() + 0.03, color="black", linewidth=3.5)
        for m in group:
            members[m].append(i)
    label_y0 = clique_y0 - 0.12 * max(len(cliques), 1) - 0.15
    for i, (method, rank) in enumerate(zip(ranked["method"], ranked["avg_rank"])):
        left = i < half
        j = i if left else k - 1 - i
        y = label_y0 - 0.3 * j
        x_text = low - 0.25 if left else high + 0.25
        ax.plot([rank, rank, x_text], [top, y, y], color="0.3", linewidth=0.9)
        ax.text(x_text + (-0.05 if left else 0.05), y, f"{mathtext(method)} ({rank:.2f})", ha="right" if left else "left",
                va="center", fontsize=9)
        rows.append({"method": method, "avg_rank": rank, "side": "left" if left else "right",
                     "cliques": ",".join(map(str, members[method]))})
    ax.set_ylim(label_y0 - 0.3 * half - 0.1, top + 0.9)
    ax.axis("off")
    fig.suptitle(mathtext(title) if title else f"average rank over {n_cells} cells (1 = best); bars: no significant difference "
                 "(Nemenyi, alpha 0.05)", fontsize=9)
    # Labels sit outside the axis range: leave room for them.
    fig.get_layout_engine().set(w_pad=0.3)
    ax.set_xlim(low - 2.2, high + 2.2)
    return fig, pd.DataFrame(rows)


@_literal
def fig_cost(cost: pd.DataFrame, metric: str = "mAP",
             method_order: Sequence[str] | None = None) -> tuple[Figure, pd.DataFrame]:
    """Test ``metric`` against mean train time and against peak memory, one point per (group, method)
    (from :func:`reports.stats.cost_table`)."""
    drawn = cost.dropna(subset=[metric])
    if drawn.empty:
        raise ValueError("no cost rows to draw")
    colors = _colors(drawn["method"], method_order)
    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, x, label in ((axes[0], "train_seconds", "train time per run (s)"),
                         (axes[1], "peak_memory_mb", "peak memory (MB)")):
        data = drawn.dropna(subset=[x])
        if data.empty:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        else:
            style = "dataset" if data["dataset"].nunique() > 1 else None
            sns.scatterplot(data=_shown(data, ["method", "dataset"]), x=x, y=metric, hue="method", style=style,
                            s=70, ax=ax, hue_order=[mathtext(m) for m in colors if m in set(data["method"])],
                            palette=_shown_colors(colors))
            for _, row in data.iterrows():        # name each point: the legend alone needs colour matching
                ax.annotate(mathtext(row["method"]), (row[x], row[metric]), textcoords="offset points",
                            xytext=(5, 4), fontsize=7, color=colors.get(row["method"], "black"))
            ax.margins(x=0.15, y=0.12)           # the cheapest and the best points stay inside the axes
            ax.legend(fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel(f"test {metric} (%), mean over runs")
        ax.grid(True, alpha=0.3)
    fig.suptitle("cost: accuracy against train time and peak memory", fontsize=10)
    return fig, drawn.reset_index(drop=True)


SMALL_COUNT = 10     # precision points from fewer recovered labels than this carry their count


def _mark_small_counts(ax, drawn: pd.DataFrame, colors: dict) -> None:
    """On the precision panel: an open marker at 0 labelled "none" where nothing was recovered (no
    precision exists there), and the count beside points that rest on fewer than SMALL_COUNT labels."""
    if "recovered" not in drawn:
        return
    for _, row in drawn.iterrows():
        count = row["recovered"]
        if not (isinstance(count, (int, float)) and math.isfinite(count)) or count >= SMALL_COUNT:
            continue
        color = colors.get(row["method"], "black")
        if count == 0:
            ax.scatter([row["percent"]], [0], marker="o", facecolors="none", edgecolors=[color], s=40, zorder=3)
            ax.annotate("none", (row["percent"], 0), textcoords="offset points", xytext=(0, 6), ha="center",
                        fontsize=7, color=color)
        elif math.isfinite(row["precision"]):
            ax.annotate(f"n={count:g}", (row["percent"], row["precision"]), textcoords="offset points",
                        xytext=(4, -10), fontsize=7, color=color)


@_literal
def fig_recovery(recovery: pd.DataFrame, method_order: Sequence[str] | None = None) -> tuple[Figure, pd.DataFrame]:
    """Precision and recall (%) of recovered labels against the known-label proportion (from
    :func:`reports.stats.recovery_table`), one line per method and dataset."""
    if recovery.empty:
        raise ValueError("no label-recovery records to draw")
    drawn = recovery.assign(percent=recovery["ratio"].astype(float) * 100)
    colors = _colors(drawn["method"], method_order)
    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, y in zip(axes, ("precision", "recall")):
        style = "dataset" if drawn["dataset"].nunique() > 1 else None
        sns.lineplot(data=_shown(drawn, ["method", "dataset"]), x="percent", y=y, hue="method", style=style,
                     palette=_shown_colors(colors), marker="o",
                     hue_order=[mathtext(m) for m in colors if m in set(drawn["method"])],
                     errorbar=None, ax=ax)
        ticks = sorted(set(drawn["percent"]))
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_xlabel("known labels (%)")
        ax.set_ylabel(f"{y} of recovered labels (%)")
        ax.set_ylim(-3, 103)                 # a method that recovered nothing stays visible at 0
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    _mark_small_counts(axes[0], drawn, colors)
    fig.suptitle("label recovery: unknown labels a method turned into positives (mean over seeds)", fontsize=10)
    return fig, drawn.reset_index(drop=True)
