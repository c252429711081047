"""Leaderboard tables from the tidy run frame of :func:`reports.collect.collect_runs`.

One table per group (dataset, training protocol, mask protocol, profile): rows are methods,
columns are known-label proportions, cells are "mean ± std" over seeds (sample std; a cell with
one seed shows the mean alone), plus the papers' "Avg." column: the mean over proportions of
the per-proportion means. Avg. is shown only for a method run at every proportion of its group,
so that every Avg. in a column averages the same proportions. Higher is better for every metric
here; the best method per column is bold in Markdown and LaTeX.

Every string taken from a results folder (names, configuration labels, error lines) is escaped for
the format it is written in: Markdown (:func:`benchmark.core.escape.markdown_text`), LaTeX
(:func:`benchmark.core.escape.latex`) and CSV (:func:`benchmark.core.escape.csv_frame`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pandas as pd
from tabulate import tabulate

from benchmark.core.escape import csv_frame, latex, markdown_heading, markdown_text
from benchmark.core.files import atomic_write_text
from reports.run_rows import SELECTION_RULES
from reports.stats import paired_tests
from reports.summary import (
    AVG,
    FAILED_MARK,
    GROUP_KEYS,
    MISSING,
    SUMMARY_COLUMNS,
    grid_labels,
    group_title,
    in_group,
    marks_for,
    ordered_methods,
    ratio_label,
    summarise,
)

CSV_METRICS = ("mAP", "CF1", "OF1")
def _cell_text(mean: float, std: float, n: int, style: str, digits: int) -> str:
    """"71.2 ± 0.4" (several seeds) or "71.2" (one seed) in the given style."""
    if not math.isfinite(mean):
        return MISSING if style != "latex" else "--"
    pm = " $\\pm$ " if style == "latex" else " ± "
    text = f"{mean:.{digits}f}"
    return text + f"{pm}{std:.{digits}f}" if n > 1 and math.isfinite(std) else text


def _bold(text: str, style: str) -> str:
    return {"md": f"**{text}**", "latex": f"\\textbf{{{text}}}"}.get(style, text)


def format_table(summary: pd.DataFrame, method_order: Sequence[str] | None = None,
                 style: str = "plain", digits: int = 1, with_std: bool = True, marks: dict | None = None,
                 mask_protocol: str = "random") -> pd.DataFrame:
    """One group's summary as strings: rows = methods, columns = "10%", ..., "Avg." (one column,
    "single positive", for that mask protocol). ``marks`` (from :func:`cell_marks`) flag cells."""
    marks = marks or {}
    methods, columns = grid_labels(summary, method_order, marks)
    label = (lambda c: "single positive") if mask_protocol == "single_positive" else ratio_label
    index = summary.set_index(["method", "ratio"])
    table = pd.DataFrame(index=methods, columns=[label(c) for c in columns], dtype=object)
    for col in columns:
        stats = [index.loc[(m, col)] if (m, col) in index.index else None for m in methods]
        means = [round(s["mean"], digits) if s is not None else math.nan for s in stats]
        finite = [m for m in means if math.isfinite(m)]
        best = max(finite) if len(finite) > 1 else None
        for method, s, mean in zip(methods, stats, means):
            text = MISSING if style != "latex" else "--"
            if s is not None:
                std = s["std"] if with_std else math.nan
                text = _cell_text(s["mean"], std, int(s["n_seeds"]), style, digits)
                text = _bold(text, style) if mean == best else text
            mark = marks.get((method, col), "")
            if FAILED_MARK in mark and s is None:
                text = "failed" + FAILED_MARK
            elif s is not None:
                text += mark.replace(FAILED_MARK, "")
            table.loc[method, label(col)] = text
    table.index.name = "method"
    return table


def leaderboard(df: pd.DataFrame, selection: str = "val", metric: str = "mAP",
                method_order: Sequence[str] | None = None) -> pd.DataFrame:
    """All groups' tables stacked: index (dataset, protocol, mask_protocol, profile, method),
    columns the known-label proportions of all groups (empty where a group has none) and "Avg."."""
    summary = summarise(df, selection, metric)
    tables = {keys: format_table(g, method_order)
              for keys, g in summary.groupby(list(GROUP_KEYS), sort=True)}
    if not tables:
        return pd.DataFrame()
    _, columns = grid_labels(summary, None)
    out = pd.concat(tables, names=[*GROUP_KEYS, "method"])
    return out.reindex(columns=[ratio_label(c) for c in columns]).fillna("")


def mask_check(group: pd.DataFrame) -> str:
    """Whether every method saw the same mask (sha256) at each (proportion, seed) of a group."""
    runs = group.drop_duplicates("run_id")
    unknown = int(runs["mask_sha256"].isna().sum())
    differing = []
    for (ratio, seed), cell in runs.dropna(subset=["mask_sha256"]).groupby(["ratio", "seed"]):
        if cell["mask_sha256"].nunique() > 1:
            shas = ", ".join(f"{m}: {str(s)[:8]}" for m, s in
                             zip(cell["variant"], cell["mask_sha256"]))
            differing.append(f"{ratio_label(ratio)} seed {seed} ({shas})")
    note = f" (sha256 not recorded for {unknown} run(s))" if unknown else ""
    if differing:
        return "WARNING: masks differ across methods at " + "; ".join(differing) + note
    return "masks: identical across methods" + note


def _seeds_phrase(count: str) -> str:
    """"mean over 1 seed" / "mean $\\pm$ std over 3 seeds" (LaTeX), from :func:`seeds_text`."""
    return "one seed (the mean)" if count == "1" else f"mean $\\pm$ std over {count} seeds"


def seeds_text(summary: pd.DataFrame) -> str:
    """The number of seeds per cell of a group's summary: "2" or "1-3 (varies by cell)"."""
    counts = summary.loc[summary["ratio"] != AVG, "n_seeds"].astype(int)
    low, high = int(counts.min()), int(counts.max())
    return str(low) if low == high else f"{low}-{high} (varies by cell)"


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text (method names, captions); one line. See
    :func:`benchmark.core.escape.latex`."""
    return latex(text)


def _md_table(table: pd.DataFrame) -> str:
    """One group's formatted table as Markdown: the method names (data) escaped, the cells (numbers
    and marks this module wrote) as they are."""
    frame = table.reset_index()
    rows = [[markdown_text(row[0]), *row[1:]] for row in frame.values.tolist()]
    return tabulate(rows, headers=[markdown_text(c) for c in frame.columns], tablefmt="github",
                    disable_numparse=True)


def _selection_table(df: pd.DataFrame, keys: tuple, method_order: Sequence[str] | None) -> str:
    """mAP means under every selection rule side by side, for one group (Markdown)."""
    parts = [in_group(summarise(df, rule, "mAP"), keys).assign(selection=rule)
             for rule in SELECTION_RULES]
    both = pd.concat(parts, ignore_index=True)
    methods, columns = grid_labels(both, method_order)
    means = both.set_index(["method", "selection", "ratio"])["mean"]
    rows = []
    for method in methods:
        for rule in SELECTION_RULES:
            values = [means.get((method, rule, col)) for col in columns]
            if all(v is None for v in values):
                continue
            rows.append([markdown_text(method), rule,
                         *(f"{v:.1f}" if v is not None and math.isfinite(v) else MISSING for v in values)])
    return tabulate(rows, headers=["method", "selection", *map(ratio_label, columns)],
                    tablefmt="github", disable_numparse=True)


def _groups(df: pd.DataFrame, summary: pd.DataFrame, failed: pd.DataFrame | None):
    """(keys, summary of the group) for every group with a finished or a failed run."""
    keys = set(summary.groupby(list(GROUP_KEYS)).groups) if not summary.empty else set()
    if failed is not None and not failed.empty:
        keys |= set(failed.groupby(list(GROUP_KEYS)).groups)
    for key in sorted(keys, key=lambda k: tuple(map(str, k))):
        yield key, in_group(summary, key)


def difference_markdown(df: pd.DataFrame, keys: tuple, method_order: Sequence[str] | None = None,
                        selection: str = "val", metric: str = "mAP") -> str:
    """One group's "difference to baseline" table: per method and baseline (partial_bce, and the
    trunk baseline a method names in spec.json, e.g. ssgrl for the SARL methods), the mean ± std
    over seeds of the paired difference per proportion; '' when no baseline row exists."""
    tests = paired_tests(df, selection, metric)
    tests = in_group(tests, keys) if not tests.empty else tests
    if tests.empty:
        return ""
    ratios = sorted({r for r in tests["ratio"] if r != AVG})
    columns = [*ratios, AVG] if (tests["ratio"] == AVG).any() else ratios
    rank = {m: i for i, m in enumerate(ordered_methods(tests["method"], method_order))}
    tests = tests.assign(_o=tests["method"].map(rank), _k=(tests["kind"] != "baseline").astype(int))
    rows = []
    for (method, against), part in tests.sort_values(["_o", "_k"]).groupby(["method", "against"], sort=False):
        by = part.set_index("ratio")
        cells = []
        for col in columns:
            if col not in by.index:
                cells.append(MISSING)
                continue
            r = by.loc[col]
            std = f" ± {r['std_diff']:.1f}" if math.isfinite(r["std_diff"]) else ""
            cells.append(f"{r['mean_diff']:+.1f}{std}")
        kind = " (trunk)" if part["kind"].iloc[0] == "trunk" else ""
        rows.append([markdown_text(method), markdown_text(against) + kind, *cells])
    table = tabulate(rows, headers=["method", "difference to", *map(ratio_label, columns)], tablefmt="github",
                     disable_numparse=True)
    return ("Difference to the baselines: mean ± std over seeds of the paired difference (same mask and split) in "
            f"test {metric} points; paired tests in statistics.md.\n\n" + table)


def markdown_leaderboard(df: pd.DataFrame, method_order: Sequence[str] | None = None,
                         selection: str = "val", metric: str = "mAP", failed: pd.DataFrame | None = None) -> str:
    """The whole ``leaderboard.md``: one section per group."""
    summary = summarise(df, selection, metric)
    lines = ["# Leaderboard", "",
             f"Test-set {metric} (%), mean ± sample std over seeds (one seed: mean only). "
             "Avg. = mean over known-label proportions of the per-proportion means (only for "
             "methods run at every proportion). Bold: best per column.", ""]
    for keys, group in _groups(df, summary, failed):
        runs = in_group(df, keys) if not df.empty else df
        marks, notes = marks_for(df, failed, keys)
        seeds = seeds_text(group) if not group.empty else "0"
        lines += [f"## {markdown_heading(group_title(keys))}", "",
                  f"selection: `{selection}` ({SELECTION_RULES[selection]}) · metric: test "
                  f"{metric} (%) · seeds: {seeds} · "
                  f"{markdown_text(mask_check(runs)) if not runs.empty else 'no finished run'}", "",
                  _md_table(format_table(group, method_order, style="md", marks=marks, mask_protocol=keys[2])), "",
                  *[line for note in notes for line in (markdown_text(note), "")],
                  *([difference_markdown(df, keys, method_order, selection, metric), ""] if not runs.empty else []),
                  "mAP (mean over seeds) under each selection rule: `val` is the headline, "
                  "`last` the final epoch, `oracle` the best epoch on the test set (what the "
                  "official code reports; optimistic).", "",
                  _selection_table(df, keys, method_order) if not runs.empty else "", ""]
    return "\n".join(lines)


def display_names(df: pd.DataFrame) -> dict[str, str]:
    """variant -> the name papers print (spec.json ``method_display``, e.g. ``Partial-BCE`` for
    ``partial_bce``), the variant's suffix kept (``HST:clsl``); the key itself for runs that record none."""
    out: dict[str, str] = {}
    if df.empty or "method_display" not in df:
        return out
    for variant, method, shown in zip(df["variant"], df["method"], df["method_display"]):
        if isinstance(shown, str) and shown and isinstance(variant, str) and variant.startswith(str(method)):
            out.setdefault(variant, shown + variant[len(str(method)):])
    return out


def latex_leaderboard(df: pd.DataFrame, method_order: Sequence[str] | None = None,
                      selection: str = "val", metric: str = "mAP", failed: pd.DataFrame | None = None) -> str:
    """The whole ``leaderboard.tex``: one booktabs table per group (needs \\usepackage{booktabs})."""
    summary = summarise(df, selection, metric)
    shown = display_names(df)
    out = ["% Generated by reports.tables; needs \\usepackage{booktabs}.",
           f"% selection: {selection} ({SELECTION_RULES[selection]}); metric: test {metric} (%)"]
    for keys, group in _groups(df, summary, failed):
        marks, notes = marks_for(df, failed, keys)
        table = format_table(group, method_order, style="latex", marks=marks, mask_protocol=keys[2])
        dataset, protocol, mask_protocol, profile = (latex_escape(k) for k in keys)
        caption = (f"Test {latex_escape(metric)} (\\%) on {dataset}, {protocol} protocol, "
                   f"{mask_protocol} masks, profile {profile}; selection: "
                   f"{latex_escape(selection)}; " + _seeds_phrase(seeds_text(group) if not group.empty else "0") + "."
                   + (" " + latex_escape(check) if (check := mask_check(in_group(df, keys))).startswith("WARNING") else "")
                   + "".join(" " + latex_escape(n) for n in notes))
        header = " & ".join(["Method", *(latex_escape(c) for c in table.columns)])
        body = [" & ".join([latex_escape(shown.get(m, m)), *row]) + r" \\" for m, row in
                zip(table.index, table.values.tolist())]
        out += ["", r"\begin{table}[t]", r"\centering", f"\\caption{{{caption}}}",
                f"\\begin{{tabular}}{{l{'c' * len(table.columns)}}}", r"\toprule",
                header + r" \\", r"\midrule", *body, r"\bottomrule", r"\end{tabular}",
                r"\end{table}"]
        if not group.empty:
            out += _latex_selection_table(df, keys, method_order, metric, shown)
    return "\n".join(out) + "\n"


def _latex_selection_table(df: pd.DataFrame, keys: tuple, method_order: Sequence[str] | None,
                           metric: str, shown: dict[str, str]) -> list[str]:
    """One group's test ``metric`` means under every selection rule (val, last, oracle), as booktabs lines."""
    both = pd.concat([in_group(summarise(df, rule, metric), keys).assign(selection=rule) for rule in SELECTION_RULES],
                     ignore_index=True)
    methods, columns = grid_labels(both, method_order)
    means = both.set_index(["method", "selection", "ratio"])["mean"]
    body = []
    for method in methods:
        for rule in SELECTION_RULES:
            values = [means.get((method, rule, col)) for col in columns]
            if all(v is None for v in values):
                continue
            cells = [f"{v:.1f}" if v is not None and math.isfinite(v) else "--" for v in values]
            body.append(" & ".join([latex_escape(shown.get(method, method)), latex_escape(rule), *cells]) + r" \\")
    dataset, protocol, mask_protocol, profile = (latex_escape(k) for k in keys)
    caption = (f"Test {latex_escape(metric)} (\\%) on {dataset} ({protocol} protocol, {mask_protocol} masks, profile "
               f"{profile}), mean over seeds, under each selection rule: val (the headline: best epoch on the held-out "
               "split of the training set), last (final epoch), oracle (best epoch on the test set, optimistic).")
    header = " & ".join(["Method", "Selection", *(latex_escape(ratio_label(c)) for c in columns)])
    return ["", r"\begin{table}[t]", r"\centering", f"\\caption{{{caption}}}",
            f"\\begin{{tabular}}{{ll{'c' * len(columns)}}}", r"\toprule", header + r" \\", r"\midrule", *body,
            r"\bottomrule", r"\end{tabular}", r"\end{table}"]


def tidy_leaderboard(df: pd.DataFrame, metrics: Sequence[str] = CSV_METRICS) -> pd.DataFrame:
    """Numeric summary for every selection rule and metric (the ``leaderboard.csv`` rows)."""
    parts = [summarise(df, rule, m) for rule in SELECTION_RULES for m in metrics if m in df]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=SUMMARY_COLUMNS)


def write_leaderboards(df: pd.DataFrame, out_dir: str | Path,
                       method_order: Sequence[str] | None = None, failed: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write ``leaderboard.md``, ``leaderboard.tex`` and ``leaderboard.csv`` into ``out_dir``."""
    out_dir = Path(out_dir)
    paths = {name: out_dir / f"leaderboard.{name}" for name in ("md", "tex", "csv")}
    atomic_write_text(paths["md"], markdown_leaderboard(df, method_order, failed=failed))
    atomic_write_text(paths["tex"], latex_leaderboard(df, method_order, failed=failed))
    atomic_write_text(paths["csv"], csv_frame(tidy_leaderboard(df)).to_csv(index=False))
    return paths
