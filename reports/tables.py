"""Leaderboard tables from the tidy run frame of :func:`reports.collect.collect_runs`.

One table per group (dataset, training protocol, mask protocol, profile): rows are methods,
columns are known-label proportions, cells are "mean ± std" over seeds (sample std; a cell with
one seed shows the mean alone), plus the papers' "Avg." column: the mean over proportions of
the per-proportion means. Avg. is shown only for a method run at every proportion of its group,
so that every Avg. in a column averages the same proportions. Higher is better for every metric
here; the best method per column is bold in Markdown and LaTeX.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
from tabulate import tabulate

from benchmark.core.files import atomic_write_text
from reports.collect import SELECTION_RULES

GROUP_KEYS = ("dataset", "protocol", "mask_protocol", "profile")
AVG = "avg"
CSV_METRICS = ("mAP", "CF1", "OF1")
SUMMARY_COLUMNS = (*GROUP_KEYS, "selection", "metric", "method", "ratio", "mean", "std", "n_seeds")
MISSING = "–"


def ordered_methods(names: Iterable[str], method_order: Sequence[str] | None = None) -> list[str]:
    """``names`` in ``method_order`` order (a ``method:preset`` variant follows its method),
    the rest alphabetically after them, with ``partial_bce`` (the baseline) first."""
    rank = {name: i for i, name in enumerate(method_order or ["partial_bce"])}

    def key(name: str) -> tuple[int, str]:
        return rank.get(name, rank.get(name.split(":")[0], len(rank))), name

    return sorted(set(names), key=key)


def ratio_label(ratio: float | str) -> str:
    """A known-label proportion as the papers print it: 0.1 -> "10%"; "avg" -> "Avg."."""
    if ratio == AVG:
        return "Avg."
    return f"{round(float(ratio) * 100, 4):g}%"


def _rows(df: pd.DataFrame, selection: str, metric: str) -> pd.DataFrame:
    """The rows of one selection rule, checked."""
    if selection not in SELECTION_RULES:
        raise ValueError(f"unknown selection {selection!r}; choose one of {list(SELECTION_RULES)}")
    if metric not in df.columns:
        raise ValueError(f"unknown metric {metric!r}; the runs have {list(df.columns)}")
    return df[(df["selection"] == selection) & df[metric].notna()]


def _group_summary(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per (method, ratio) mean/std/n over seeds, plus the Avg. rows, for one group."""
    cells = (rows.groupby(["variant", "ratio"])[metric].agg(["mean", "std", "count"])
             .reset_index().rename(columns={"variant": "method", "count": "n_seeds"}))
    ratios = set(cells["ratio"])
    avgs = []
    for method, sub in rows.groupby("variant"):
        if set(sub["ratio"]) != ratios:
            continue  # not run at every proportion: no comparable Avg.
        per_seed = sub.groupby("seed").filter(lambda s: set(s["ratio"]) == ratios)
        seed_avgs = per_seed.groupby("seed")[metric].mean()
        mean = cells.loc[cells["method"] == method, "mean"].mean()
        avgs.append({"method": method, "ratio": AVG, "mean": mean,
                     "std": seed_avgs.std() if len(seed_avgs) > 1 else math.nan,
                     "n_seeds": len(seed_avgs)})
    cells = cells.astype({"ratio": object})
    return pd.concat([cells, pd.DataFrame(avgs)], ignore_index=True) if avgs else cells


def summarise(df: pd.DataFrame, selection: str = "val", metric: str = "mAP") -> pd.DataFrame:
    """Tidy numeric leaderboard: one row per (group, method, ratio or "avg")."""
    rows = _rows(df, selection, metric)
    parts = []
    for keys, group in rows.groupby(list(GROUP_KEYS), sort=True):
        part = _group_summary(group, metric)
        part = part.assign(**dict(zip(GROUP_KEYS, keys)), selection=selection, metric=metric)
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    return pd.concat(parts, ignore_index=True)[list(SUMMARY_COLUMNS)]


def _grid(summary: pd.DataFrame, method_order: Sequence[str] | None, marks: dict | None = None) -> tuple[list, list]:
    """Row (methods) and column (sorted ratios, then "avg") labels of one group's table; cells that
    only carry a mark (a failed run) add their method and ratio."""
    cells = [(m, r) for m, r in zip(summary["method"], summary["ratio"])] + list(marks or {})
    methods = ordered_methods([m for m, _ in cells], method_order)
    ratios = sorted({r for _, r in cells if r != AVG})
    return methods, ([*ratios, AVG] if len(ratios) > 1 else ratios)


FAILED_MARK, PRIVILEGED_MARK, MASK_MARK = "†", "‡", "§"


def _add_mark(marks: dict, key: tuple, mark: str) -> None:
    """Add ``mark`` to a cell's marks (a string of mark characters), once."""
    if mark not in marks.get(key, ""):
        marks[key] = marks.get(key, "") + mark


def mask_mismatches(runs: pd.DataFrame) -> set[tuple]:
    """(variant, ratio) cells of one group that hold a run whose mask sha256 differs from another
    run's at the same (proportion, seed): such runs saw different partial labels and their cells
    must not be compared (or averaged) silently. Merged result folders are checked the same way."""
    if runs.empty or "mask_sha256" not in runs:
        return set()
    out = set()
    known = runs.drop_duplicates("run_id").dropna(subset=["mask_sha256"])
    for _, cell in known.groupby(["ratio", "seed"]):
        if cell["mask_sha256"].nunique() > 1:
            out |= set(zip(cell["variant"], cell["ratio"]))
    return out


def cell_marks(runs: pd.DataFrame, failed: pd.DataFrame | None) -> tuple[dict, list[str]]:
    """Marks for one group's cells and their footnotes: ``failed†`` where a run failed and none
    finished, ``‡`` where a run used privileged information (values from hidden labels), ``§``
    where runs of one (proportion, seed) used masks with different sha256."""
    marks: dict = {}
    notes = []
    if failed is not None and not failed.empty:
        done = set(zip(runs["variant"], runs["ratio"])) if not runs.empty else set()
        reasons = []
        for _, row in failed.iterrows():
            if (row["variant"], row["ratio"]) not in done:
                _add_mark(marks, (row["variant"], row["ratio"]), FAILED_MARK)
                reasons.append(f"{row['variant']} {ratio_label(row['ratio'])} seed {row['seed']}: {row['reason']}")
        if reasons:
            notes.append(f"{FAILED_MARK} failed, no finished run in the cell: " + "; ".join(sorted(reasons)))
    if "privileged" in runs and runs["privileged"].fillna("").astype(bool).any():
        used = runs[runs["privileged"].fillna("").astype(bool)]
        for variant, ratio in zip(used["variant"], used["ratio"]):
            _add_mark(marks, (variant, ratio), PRIVILEGED_MARK)
            _add_mark(marks, (variant, AVG), PRIVILEGED_MARK)
        keys = ", ".join(sorted(set(",".join(used["privileged"]).split(","))))
        notes.append(f"{PRIVILEGED_MARK} used privileged information taken from the hidden training labels ({keys}); "
                     "not comparable with runs that did not")
    mismatched = mask_mismatches(runs)
    for variant, ratio in mismatched:
        _add_mark(marks, (variant, ratio), MASK_MARK)
        _add_mark(marks, (variant, AVG), MASK_MARK)
    if mismatched:
        notes.append(f"{MASK_MARK} the runs of this cell and of other cells at the same proportion and seed used "
                     "different masks (sha256); see the mask line above")
    return marks, notes


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
    methods, columns = _grid(summary, method_order, marks)
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
    _, columns = _grid(summary, None)
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


def seeds_text(summary: pd.DataFrame) -> str:
    """The number of seeds per cell of a group's summary: "2" or "1-3 (varies by cell)"."""
    counts = summary.loc[summary["ratio"] != AVG, "n_seeds"].astype(int)
    low, high = int(counts.min()), int(counts.max())
    return str(low) if low == high else f"{low}-{high} (varies by cell)"


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text (method names, captions)."""
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
            "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
            "^": r"\textasciicircum{}"}
    return "".join(repl.get(ch, ch) for ch in str(text))


def _group_title(keys: tuple) -> str:
    dataset, protocol, mask_protocol, profile = keys
    return f"{dataset} · {protocol} · mask {mask_protocol} · profile {profile}"


def _in_group(frame: pd.DataFrame, keys: tuple) -> pd.DataFrame:
    """The rows of ``frame`` that belong to the group ``keys`` (values of :data:`GROUP_KEYS`)."""
    return frame[(frame[list(GROUP_KEYS)] == pd.Series(keys, index=GROUP_KEYS)).all(axis=1)]


def _md_table(table: pd.DataFrame) -> str:
    frame = table.reset_index()
    return tabulate(frame.values.tolist(), headers=list(frame.columns), tablefmt="github",
                    disable_numparse=True)


def _selection_table(df: pd.DataFrame, keys: tuple, method_order: Sequence[str] | None) -> str:
    """mAP means under every selection rule side by side, for one group (Markdown)."""
    parts = [_in_group(summarise(df, rule, "mAP"), keys).assign(selection=rule)
             for rule in SELECTION_RULES]
    both = pd.concat(parts, ignore_index=True)
    methods, columns = _grid(both, method_order)
    means = both.set_index(["method", "selection", "ratio"])["mean"]
    rows = []
    for method in methods:
        for rule in SELECTION_RULES:
            values = [means.get((method, rule, col)) for col in columns]
            if all(v is None for v in values):
                continue
            rows.append([method, rule, *(f"{v:.1f}" if v is not None and math.isfinite(v)
                                         else MISSING for v in values)])
    return tabulate(rows, headers=["method", "selection", *map(ratio_label, columns)],
                    tablefmt="github", disable_numparse=True)


def _marks_for(df: pd.DataFrame, failed: pd.DataFrame | None, keys: tuple) -> tuple[dict, list[str]]:
    in_group = _in_group(failed, keys) if failed is not None and not failed.empty else None
    return cell_marks(_in_group(df, keys) if not df.empty else df, in_group)


def _groups(df: pd.DataFrame, summary: pd.DataFrame, failed: pd.DataFrame | None):
    """(keys, summary of the group) for every group with a finished or a failed run."""
    keys = set(summary.groupby(list(GROUP_KEYS)).groups) if not summary.empty else set()
    if failed is not None and not failed.empty:
        keys |= set(failed.groupby(list(GROUP_KEYS)).groups)
    for key in sorted(keys, key=lambda k: tuple(map(str, k))):
        yield key, _in_group(summary, key)


def difference_markdown(df: pd.DataFrame, keys: tuple, method_order: Sequence[str] | None = None,
                        selection: str = "val", metric: str = "mAP") -> str:
    """One group's "difference to baseline" table: per method and baseline (partial_bce, and the
    trunk baseline a method names in spec.json, e.g. ssgrl for the SARL methods), the mean ± std
    over seeds of the paired difference per proportion; '' when no baseline row exists."""
    from reports.stats import paired_tests

    tests = paired_tests(df, selection, metric)
    tests = _in_group(tests, keys) if not tests.empty else tests
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
        rows.append([method, against + kind, *cells])
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
        runs = _in_group(df, keys) if not df.empty else df
        marks, notes = _marks_for(df, failed, keys)
        seeds = seeds_text(group) if not group.empty else "0"
        lines += [f"## {_group_title(keys)}", "",
                  f"selection: `{selection}` ({SELECTION_RULES[selection]}) · metric: test "
                  f"{metric} (%) · seeds: {seeds} · {mask_check(runs) if not runs.empty else 'no finished run'}", "",
                  _md_table(format_table(group, method_order, style="md", marks=marks, mask_protocol=keys[2])), "",
                  *[line for note in notes for line in (note, "")],
                  *([difference_markdown(df, keys, method_order, selection, metric), ""] if not runs.empty else []),
                  "mAP (mean over seeds) under each selection rule: `val` is the headline, "
                  "`last` the final epoch, `oracle` the best epoch on the test set (what the "
                  "official code reports; optimistic).", "",
                  _selection_table(df, keys, method_order) if not runs.empty else "", ""]
    return "\n".join(lines)


def latex_leaderboard(df: pd.DataFrame, method_order: Sequence[str] | None = None,
                      selection: str = "val", metric: str = "mAP", failed: pd.DataFrame | None = None) -> str:
    """The whole ``leaderboard.tex``: one booktabs table per group (needs \\usepackage{booktabs})."""
    summary = summarise(df, selection, metric)
    out = ["% Generated by reports.tables; needs \\usepackage{booktabs}.",
           f"% selection: {selection} ({SELECTION_RULES[selection]}); metric: test {metric} (%)"]
    for keys, group in _groups(df, summary, failed):
        marks, notes = _marks_for(df, failed, keys)
        table = format_table(group, method_order, style="latex", marks=marks, mask_protocol=keys[2])
        dataset, protocol, mask_protocol, profile = (latex_escape(k) for k in keys)
        caption = (f"Test {latex_escape(metric)} (\\%) on {dataset}, {protocol} protocol, "
                   f"{mask_protocol} masks, profile {profile}; selection: "
                   f"{latex_escape(selection)}; mean $\\pm$ std over {seeds_text(group) if not group.empty else 0} seeds."
                   + (" " + latex_escape(check) if (check := mask_check(_in_group(df, keys))).startswith("WARNING") else "")
                   + "".join(" " + latex_escape(n) for n in notes))
        header = " & ".join(["Method", *(latex_escape(c) for c in table.columns)])
        body = [" & ".join([latex_escape(m), *row]) + r" \\" for m, row in
                zip(table.index, table.values.tolist())]
        out += ["", r"\begin{table}[t]", r"\centering", f"\\caption{{{caption}}}",
                f"\\begin{{tabular}}{{l{'c' * len(table.columns)}}}", r"\toprule",
                header + r" \\", r"\midrule", *body, r"\bottomrule", r"\end{tabular}",
                r"\end{table}"]
    return "\n".join(out) + "\n"


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
    atomic_write_text(paths["csv"], tidy_leaderboard(df).to_csv(index=False))
    return paths
