"""The static HTML leaderboard: ``index.html`` beside the tables and plots of a report.

A view of the same tidy frame as the Markdown (same summaries, same marks): one leaderboard per
(dataset, protocol, mask protocol, profile) and selection rule, the cells' provenance in their
``title`` (seeds, mask sha256 and whether the column shares it, preset, git sha and dirty tree,
train time, peak memory, run folders), the differences to the baselines, the statistics, the plots
and the downloads. Rendered from ``reports/templates/index.html.j2`` with Jinja2 (autoescaped);
CSS and JavaScript are inlined from the same folder, so the page needs no server and no network.
Without JavaScript every table is plain HTML and all three selection rules are shown; the script
adds the selection switch, sorting by any column (also ``?sort=<column>&dir=asc|desc``) and a
details popover on click.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape

from benchmark.core.files import atomic_write_text
from reports.run_rows import SELECTION_RULES
from reports.stats import BASELINE, CELLS_CAVEAT, cliques, p_text, seeds_too_few
from reports.summary import (
    AVG,
    FAILED_MARK,
    GROUP_KEYS,
    INHERITED_MARK,
    MASK_MARK,
    MISSING,
    PRIVILEGED_MARK,
    grid_labels,
    group_title,
    in_group,
    marks_for,
    ordered_methods,
    ratio_label,
    summarise,
)
from reports.tables import format_table, mask_check, seeds_text

TEMPLATES = Path(__file__).with_name("templates")
OPTIMISTIC = {"oracle"}
MARK_TEXT = {FAILED_MARK: "failed: no finished run in the cell", PRIVILEGED_MARK: "privileged information",
             MASK_MARK: "masks differ from another run at the same proportion and seed",
             INHERITED_MARK: "inherited recipe: the official code has none for this method or dataset"}


def _env() -> Environment:
    return Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html", "j2"]),
                       trim_blocks=True, lstrip_blocks=True)


def _fmt(value: Any, digits: int = 1, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}{unit}"


def _column_masks(runs: pd.DataFrame, ratio) -> dict:
    """seed -> set of mask sha256 among every method's runs of one proportion of a group."""
    col = runs[runs["ratio"] == ratio].drop_duplicates("run_id")
    return {seed: set(c["mask_sha256"].dropna()) for seed, c in col.groupby("seed")}


def _cell_details(runs: pd.DataFrame, col_masks: dict, n_seeds: int) -> str:
    """What a reader needs to trust one cell, as the lines of its tooltip."""
    if runs.empty:
        return ""
    runs = runs.drop_duplicates("run_id").sort_values("seed")
    seeds = ", ".join(str(int(s)) for s in runs["seed"])
    shas = sorted(set(runs["mask_sha256"].dropna()))
    shared = all(len(col_masks.get(seed, set())) <= 1 for seed in runs["seed"]) if col_masks else None
    git = sorted({f"{str(sha)[:10]}{' (dirty tree)' if dirty is True else ''}"
                  for sha, dirty in zip(runs["git_sha"], runs["git_dirty"]) if isinstance(sha, str)})
    presets = sorted({str(p) for p in runs["preset"] if isinstance(p, str)}) or ["none"]
    folders = [f for text in runs["folder"].dropna() for f in str(text).split("; ")]
    lines = [f"seeds: {n_seeds} ({seeds})",
             "mask sha256: " + (", ".join(s[:16] for s in shas) if shas else "not recorded")]
    if shared is not None:
        lines.append("every method of this column used the same mask per seed: " + ("yes" if shared else "NO"))
    lines += [f"preset: {', '.join(presets)}",
              f"git: {', '.join(git) if git else 'not recorded'}",
              f"train time: {_fmt(runs['train_seconds'].mean(), 1, ' s')} per run (mean); "
              f"peak memory: {_fmt(runs['peak_memory_mb'].max(), 0, ' MB')} (max)",
              f"selected epoch(s): {', '.join(str(int(e)) for e in runs['epoch'])}",
              "run folder(s): " + "; ".join(folders)]
    return "\n".join(lines)


def _reported_rows(dataset: str, methods: list[str], columns: list[str]) -> dict[str, dict]:
    """variant -> {"cells": texts per column label, "source": url} for methods the papers report on."""
    from reports.reported import reported_table

    try:
        table = reported_table(dataset)
    except Exception:                      # noqa: BLE001 - a broken reference file must not stop a report
        return {}
    if table.empty:
        return {}
    out, single = {}, "single positive" in columns
    same = [c for c in table.columns if c not in ("method_key", "evidence", "source_url")
            and (c == "single positive") == single]
    for name, row in table.iterrows():
        key = row.get("method_key")
        for variant in methods:
            if key and variant.split(":")[0].split(" [")[0] == key and variant not in out:
                if not row[same].notna().any():
                    continue               # only numbers of the other protocol (single positive vs 10%..90%)
                cells = [_fmt(row[c]) if c in row.index and pd.notna(row[c]) else MISSING for c in columns]
                out[variant] = {"name": f"{name} (reported)", "cells": cells, "source": row.get("source_url", "")}
    return out


def _leaderboard(df: pd.DataFrame, failed, keys: tuple, rule: str, method_order) -> dict | None:
    summary = in_group(summarise(df, rule, "mAP"), keys)
    runs_all = in_group(df, keys) if not df.empty else df
    runs = runs_all[runs_all["selection"] == rule] if not runs_all.empty else runs_all
    marks, notes = marks_for(df, failed, keys)
    if summary.empty and not marks:
        return None
    texts = format_table(summary, method_order, style="plain", marks=marks, mask_protocol=keys[2])
    methods, col_keys = grid_labels(summary, method_order, marks)
    labels = list(texts.columns)
    index = summary.set_index(["method", "ratio"]) if not summary.empty else None
    best = {}
    for col in col_keys:
        means = [round(index.loc[(m, col), "mean"], 1) for m in methods
                 if index is not None and (m, col) in index.index and math.isfinite(index.loc[(m, col), "mean"])]
        best[col] = max(means) if len(means) > 1 else None
    col_masks = {col: _column_masks(runs, col) for col in col_keys if col != AVG} if not runs.empty else {}
    reported = _reported_rows(keys[0], methods, labels)
    rows = []
    for method in methods:
        cells = []
        for col, label in zip(col_keys, labels):
            stat = index.loc[(method, col)] if index is not None and (method, col) in index.index else None
            mark = marks.get((method, col), "")
            if col == AVG:
                cell_runs = runs[runs["variant"] == method] if not runs.empty else runs
            else:
                cell_runs = runs[(runs["variant"] == method) & (runs["ratio"] == col)] if not runs.empty else runs
            details = _cell_details(cell_runs, col_masks.get(col, {}), int(stat["n_seeds"]) if stat is not None else 0)
            if col == AVG and details:
                details = "mean over proportions of the per-proportion means\n" + details
            mean = float(stat["mean"]) if stat is not None else math.nan
            if FAILED_MARK in mark and stat is None:
                details = "failed: see the footnote below the table"
            cells.append({"text": texts.loc[method, label], "value": "" if not math.isfinite(mean) else f"{mean:.4f}",
                          "best": stat is not None and best[col] is not None and round(mean, 1) == best[col],
                          "title": "\n".join([*(MARK_TEXT[m] for m in mark if m in MARK_TEXT), details]).strip(),
                          "failed": FAILED_MARK in mark and stat is None, "mask": MASK_MARK in mark})
        rows.append({"method": method, "cells": cells, "reported": reported.get(method)})
    return {"rule": rule, "description": SELECTION_RULES[rule], "optimistic": rule in OPTIMISTIC,
            "columns": labels, "rows": rows, "notes": notes,
            "seeds": seeds_text(summary) if not summary.empty else "0",
            "mask": mask_check(runs_all) if not runs_all.empty else "no finished run"}


def _differences(tests: pd.DataFrame, keys: tuple, method_order) -> dict | None:
    """A group's table of mean paired differences to partial_bce and to the trunk baselines."""
    sub = in_group(tests, keys) if not tests.empty else tests
    if sub.empty:
        return None
    ratios = sorted({r for r in sub["ratio"] if r != AVG})
    cols = [*ratios, AVG] if (sub["ratio"] == AVG).any() else ratios
    rows = []
    order = {m: i for i, m in enumerate(ordered_methods(sub["method"], method_order))}
    sub = sub.assign(_o=sub["method"].map(order), _k=(sub["kind"] != "baseline").astype(int))
    for (method, against), part in sub.sort_values(["_o", "_k"]).groupby(["method", "against"], sort=False):
        by = part.set_index("ratio")
        cells = []
        for col in cols:
            if col not in by.index:
                cells.append({"text": MISSING, "value": "", "title": ""})
                continue
            r = by.loc[col]
            text = f"{r['mean_diff']:+.1f}" + (f" ± {r['std_diff']:.1f}" if math.isfinite(r["std_diff"]) else "")
            shown = round(r["mean_diff"], 1)
            cells.append({"text": text, "value": f"{r['mean_diff']:.4f}", "title": p_text(r),
                          "sign": "up" if shown > 0 else ("down" if shown < 0 else "")})
        rows.append({"method": method, "against": against, "kind": part["kind"].iloc[0], "cells": cells})
    return {"columns": [ratio_label(c) for c in cols], "rows": rows}


def _table(frame: pd.DataFrame, columns: Sequence[tuple[str, str, Any]]) -> dict:
    """A generic table for the statistics: columns = (header, frame column, formatter)."""
    rows = [[fmt(row[col]) if fmt else row[col] for _, col, fmt in columns] for _, row in frame.iterrows()]
    numeric = [pd.api.types.is_numeric_dtype(frame[col]) and frame[col].dtype != bool for _, col, _ in columns]
    return {"headers": [h for h, _, _ in columns], "rows": rows, "numeric": numeric}


def _recovery_cells(frame: pd.DataFrame | None) -> pd.DataFrame | None:
    """The recovery table with its precision shown as "none (0 recovered)" where nothing was recovered."""
    from reports.stats import precision_text, recovered_text

    if frame is None or frame.empty:
        return frame
    return frame.assign(precision_text=[precision_text(p, r) for p, r in zip(frame["precision"], frame["recovered"])],
                        recovered_text=[recovered_text(r) for r in frame["recovered"]])


def render_html(df: pd.DataFrame, found, out_dir: Path, plots: dict[str, Path], downloads: Sequence[str],
                method_order: Sequence[str] | None = None, stats: dict | None = None,
                sources: Sequence[Path] = ()) -> str:
    """The page as a string (see the module doc)."""
    stats = stats or {}
    failed = found.failed if found is not None else None
    tests = stats.get("tests", pd.DataFrame())
    group_keys = set(df.groupby(list(GROUP_KEYS)).groups) if not df.empty else set()
    if failed is not None and not failed.empty:
        group_keys |= set(failed.groupby(list(GROUP_KEYS)).groups)
    groups = []
    for i, keys in enumerate(sorted(group_keys, key=lambda k: tuple(map(str, k)))):
        boards = [b for b in (_leaderboard(df, failed, keys, rule, method_order) for rule in SELECTION_RULES) if b]
        groups.append({"id": f"group-{i}", "title": group_title(keys), "boards": boards,
                       "differences": _differences(tests, keys, method_order)})
    num = lambda d=1: (lambda v: _fmt(v, d))  # noqa: E731
    signed = lambda v: MISSING if not math.isfinite(v) else f"{v:+.1f}"  # noqa: E731
    tables = {}
    tests_note = seeds_too_few(tests)
    if not tests.empty and not tests_note:
        tables["tests"] = _table(tests, [("dataset", "dataset", None), ("method", "method", None),
                                         ("against", "against", None), ("proportion", "ratio", ratio_label),
                                         ("mean diff", "mean_diff", signed), ("std", "std_diff", num()),
                                         ("n", "n", None), ("test", "test", None), ("p", "p", lambda v: _fmt(v, 3)),
                                         ("note", "note", None)])
    ranks = stats.get("ranks") or {}
    if ranks.get("k"):
        tables["ranks"] = _table(ranks["average"].sort_values("avg_rank", kind="stable"),
                                 [("method", "method", None), ("average rank", "avg_rank", num(2))])
        fried = ranks["friedman"]
        ranks_text = (f"{ranks['k']} methods over {ranks['n_cells']} (dataset, proportion) cells; "
                      + (f"Friedman χ² = {fried['statistic']:.2f}, p = {fried['p']:.3g}" if "p" in fried
                         else f"Friedman: {fried['note']}")
                      + f"; Nemenyi critical difference (α = 0.05) = {ranks['cd']:.2f}"
                      + ("; groups not significantly different: "
                         + "; ".join("{" + ", ".join(c) + "}" for c in cliques(ranks["average"], ranks["cd"]))
                         if math.isfinite(ranks["cd"]) else "")
                      + (f". Left out (missing cells): {', '.join(ranks['dropped'])}" if ranks["dropped"] else "")
                      + ". " + CELLS_CAVEAT)
    else:
        ranks_text = ""
    for name, frame, columns in (
            ("wtl", stats.get("wtl"), [("method", "method", None), ("against", "against", None), ("win", "win", None),
                                       ("tie", "tie", None), ("loss", "loss", None), ("cells", "cells", None)]),
            ("recovery", _recovery_cells(stats.get("recovery")),
             [("dataset", "dataset", None), ("method", "method", None), ("proportion", "ratio", ratio_label),
              ("precision %", "precision_text", None), ("recall %", "recall", num()),
              ("recovered", "recovered_text", None), ("seeds", "n_seeds", None)]),
            ("cost", stats.get("cost"), [("dataset", "dataset", None), ("method", "method", None), ("runs", "runs", None),
                                         ("train s (mean)", "train_seconds", num()),
                                         ("peak MB (mean)", "peak_memory_mb", num(0)), ("test mAP", "mAP", num())])):
        if frame is not None and not frame.empty:
            if "method" in frame:
                rank = {m: i for i, m in enumerate(ordered_methods(frame["method"], method_order))}
                frame = frame.assign(_o=frame["method"].map(rank)).sort_values(
                    [c for c in ("dataset", "_o", "ratio") if c in frame], kind="stable")
            tables[name] = _table(frame, columns)
            if name == "recovery":      # shown as text ("none (0 recovered)"), aligned and sorted as numbers
                tables[name]["numeric"] = [True if h in ("precision %", "recovered") else n
                                           for h, n in zip(tables[name]["headers"], tables[name]["numeric"])]
    skipped = {"unfinished (not counted)": [u for u in found.unfinished if u not in found.running],
               "running (being trained by another process; not counted)": list(found.running),
               "broken (not counted)": [f"{k}: {v}" for k, v in found.broken.items()]} if found is not None else {}
    if failed is not None and not failed.empty:
        skipped["failed (cells marked failed†)"] = [f"{Path(str(f)).name}: {r}" for f, r in
                                                   zip(failed.get("folder", failed["run_id"]), failed["reason"])]
    css = (TEMPLATES / "report.css").read_text()
    js = (TEMPLATES / "report.js").read_text()
    return _env().get_template("index.html.j2").render(
        groups=groups, plots=[{"file": p.name, "title": t} for t, p in plots.items()], downloads=downloads,
        tables=tables, tests_note=tests_note, ranks_text=ranks_text, skipped={k: v for k, v in skipped.items() if v},
        finished=len(found.finished) if found is not None else 0, sources=[str(s) for s in sources],
        baseline=BASELINE, css=css, js=js, rules=list(SELECTION_RULES))


def write_html(out_dir: str | Path, **kw) -> Path:
    """Write ``index.html`` into ``out_dir`` atomically; see :func:`render_html`."""
    out_dir = Path(out_dir)
    path = out_dir / "index.html"
    atomic_write_text(path, render_html(kw.pop("df"), kw.pop("found"), out_dir, **kw))
    return path
