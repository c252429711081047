"""Plots of a test metric against the known-label proportion, from the tidy run frame.

Drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas: no pyplot, no global
backend switch, nothing opened on a display, so it runs on headless machines and in tests.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import matplotlib
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reports.collect import SELECTION_RULES
from reports.tables import GROUP_KEYS, ordered_methods

PANEL_COLUMNS = 3


def _colors(methods: Sequence[str]) -> dict[str, tuple]:
    """One stable colour per method, the same in every panel."""
    cmap = matplotlib.colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def _draw_method(ax: Axes, rows: pd.DataFrame, metric: str, label: str, color: tuple) -> None:
    """Mean over seeds as a line with markers; min-max over seeds as a band (or error bar)."""
    stats = rows.groupby("ratio")[metric].agg(["mean", "min", "max"]).sort_index()
    x = stats.index.to_numpy() * 100
    ax.plot(x, stats["mean"], marker="o", color=color, label=label)
    if len(stats) > 1:
        ax.fill_between(x, stats["min"], stats["max"], color=color, alpha=0.2, linewidth=0)
    else:
        err = [stats["mean"] - stats["min"], stats["max"] - stats["mean"]]
        ax.errorbar(x, stats["mean"], yerr=err, color=color, capsize=4, linestyle="none")


def _draw_panel(ax: Axes, group: pd.DataFrame, keys: tuple, metric: str,
                colors: dict[str, tuple]) -> None:
    """One (dataset, protocol, mask protocol, profile) group: one line per method."""
    dataset, protocol, mask_protocol, profile = keys
    for method in colors:
        rows = group[group["variant"] == method]
        if not rows.empty:
            _draw_method(ax, rows, metric, method, colors[method])
    ticks = sorted(set(group["ratio"] * 100))
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    if len(ticks) == 1:
        ax.set_xlim(ticks[0] - 10, ticks[0] + 10)
    ax.set_title(f"{dataset} · {protocol}\nmask {mask_protocol} · profile {profile}", fontsize=10)
    ax.set_xlabel("known labels (%)")
    ax.set_ylabel(f"test {metric} (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def _save_png(fig: Figure, out_png: Path) -> None:
    """Render with the Agg canvas and move the file into place atomically."""
    FigureCanvasAgg(fig)
    tmp = out_png.with_name(f".{out_png.name}.tmp{os.getpid()}")
    fig.savefig(tmp, format="png", dpi=120)
    os.replace(tmp, out_png)


def plot_map_vs_ratio(df: pd.DataFrame, out_png: str | Path, selection: str = "val",
                      metric: str = "mAP", method_order: Sequence[str] | None = None) -> Path:
    """Plot ``metric`` against the known-label proportion, one panel per group, one line per
    method (mean over seeds) with a min-max band over seeds; write it to ``out_png``."""
    if selection not in SELECTION_RULES:
        raise ValueError(f"unknown selection {selection!r}; choose one of {list(SELECTION_RULES)}")
    rows = df[(df["selection"] == selection) & df[metric].notna()]
    if rows.empty:
        raise ValueError(f"no run has a {metric} value under selection {selection!r}")
    groups = list(rows.groupby(list(GROUP_KEYS), sort=True))
    ncols = min(len(groups), PANEL_COLUMNS)
    nrows = math.ceil(len(groups) / ncols)
    fig = Figure(figsize=(5.0 * ncols, 4.0 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colors = _colors(ordered_methods(rows["variant"], method_order))
    for ax, (keys, group) in zip(axes, groups):
        _draw_panel(ax, group, keys, metric, colors)
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    fig.suptitle(f"test {metric} vs known-label proportion (selection: {selection})\n"
                 "line: mean over seeds; band: min-max over seeds", fontsize=10)
    out_png = Path(out_png)
    _save_png(fig, out_png)
    return out_png
