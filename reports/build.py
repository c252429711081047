"""The reporting layer: result folders -> tidy DataFrame -> leaderboard tables and plots.

It reads only result folders (``<out>/<run_id>/spec.json``, ``metrics.jsonl``, ``done``), so it
works on results copied from another machine and never imports a method.

>>> summary = build_report("results/my_grid")        # doctest: +SKIP
>>> summary["paths"]["md"]                            # doctest: +SKIP
PosixPath('results/my_grid/leaderboard.md')
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

from benchmark.core import published
from benchmark.core.errors import UserError
from benchmark.core.escape import markdown_text
from benchmark.core.files import atomic_write_text
from benchmark.core.run_folder import report_lock
from reports.collect import collect_runs, scan_runs, write_runs_csv
from reports.plots import plot_map_vs_ratio
from reports.run_rows import SELECTION_RULES
from reports.summary import ordered_methods, summarise
from reports.tables import leaderboard, write_leaderboards

__all__ = ["SELECTION_RULES", "build_report", "collect_runs", "leaderboard",
           "plot_map_vs_ratio", "scan_runs", "summarise", "write_leaderboards", "write_runs_csv"]

PLOT_TITLES = {"map_vs_ratio.png": "test mAP against the known-label proportion (seed bands: min-max)",
               "difference_heatmap.png": "difference to the baselines, methods x proportions",
               "cd_diagram.png": "critical-difference diagram (average ranks, Nemenyi)",
               "cost.png": "cost: test mAP against train time and peak memory",
               "recovery.png": "label recovery: precision and recall of recovered labels"}


def _write_statistics(df, out_dir: Path, method_order) -> tuple[dict, dict[str, Path]]:
    """``statistics.md`` and the figures of :mod:`reports.stats` that the data supports."""
    from reports import plots, stats

    computed = {"tests": stats.paired_tests(df), "ranks": stats.rank_summary(df, method_order=method_order),
                "wtl": stats.win_tie_loss(df), "recovery": stats.recovery_table(df), "cost": stats.cost_table(df)}
    paths = {"stats": out_dir / "statistics.md"}
    atomic_write_text(paths["stats"], stats.statistics_markdown(df, method_order=method_order))
    ranks = computed["ranks"]
    figures = {
        "difference_heatmap.png": (lambda: plots.fig_difference_heatmap(computed["tests"], method_order))
        if not computed["tests"].empty else None,
        "cd_diagram.png": (lambda: plots.fig_cd_diagram(ranks["average"], ranks["cd"],
                                                        stats.cliques(ranks["average"], ranks["cd"]), ranks["n_cells"]))
        if ranks["k"] >= 2 else None,
        "cost.png": (lambda: plots.fig_cost(computed["cost"], method_order=method_order))
        if not computed["cost"].empty else None,
        "recovery.png": (lambda: plots.fig_recovery(computed["recovery"], method_order))
        if not computed["recovery"].empty else None,
    }
    for name, make in figures.items():
        if make is not None:
            fig, _ = make()
            paths[name] = plots.save_png(fig, out_dir / name)
    return computed, paths


def build_report(out_dir: str | Path, method_order: Sequence[str] | None = None,
                 sources: Sequence[str | Path] | None = None, html: bool = True,
                 reported: bool = False) -> dict[str, Any]:
    """Collect the runs under ``sources`` (default: ``out_dir`` itself; several folders are merged,
    see :func:`reports.collect.merge_rows`) and write into ``out_dir`` ``runs.csv``,
    ``leaderboard.md``, ``leaderboard.tex``, ``leaderboard.csv``, ``statistics.md``,
    ``map_vs_ratio.png`` and the statistics figures, and ``index.html`` (the static page).

    With ``reported``, leaderboard.md also lists the papers' published numbers (real datasets).

    The files are built in a staging folder and published together (:mod:`benchmark.core.published`):
    a kill leaves the previous report or this one, and only files the suite wrote are replaced.

    Returns ``{"finished", "unfinished", "broken", "bad_lines"}`` counts, ``broken_runs``
    (folder -> reason) and ``paths`` (name -> Path). Raises :class:`UserError` when a folder
    is missing, holds no finished run, two folders hold one run with different numbers, or
    ``out_dir`` holds files of someone else at the report's names; nothing is written then.
    """
    out_dir = Path(out_dir)
    dirs = [Path(s) for s in sources] if sources else [out_dir]
    for folder in dirs:
        if not folder.is_dir():
            raise UserError(f"results folder {folder} does not exist; pass the folder that "
                            "run_benchmark.py wrote (results/<name>)")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"report --out {out_dir} is a file, not a folder; give a folder for the report")
    published.check_targets(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _build(out_dir, dirs, method_order, bool(sources), html, reported)
    except UserError:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()                  # nothing written: leave no empty folder behind
        raise


def _build(out_dir: Path, dirs: list[Path], method_order, merged: bool, html: bool, reported: bool) -> dict[str, Any]:
    with report_lock(out_dir), published.staging(out_dir) as stage:     # concurrent grids never interleave
        found = scan_runs(dirs if len(dirs) > 1 else dirs[0])
        if found.frame.empty:
            raise UserError(f"no finished runs in {', '.join(map(str, dirs))}; run the benchmark first "
                            f"(run_benchmark.py) ({len(found.unfinished)} unfinished, {len(found.broken)} broken)")
        # Every figure colours a method alike: the report's full method list fixes the palette.
        method_order = ordered_methods(found.frame["variant"], method_order)
        paths = {"runs": write_runs_csv(found.frame, stage / "runs.csv")}
        paths.update(write_leaderboards(found.frame, stage, method_order, failed=found.failed))
        if reported:
            _append_reported(found.frame, paths["md"])
        paths["plot"] = plot_map_vs_ratio(found.frame, stage / "map_vs_ratio.png",
                                          method_order=method_order)
        if html:
            from reports.html import write_html

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)     # scipy on constant differences
                computed, stat_paths = _write_statistics(found.frame, stage, method_order)
            paths.update(stat_paths)
            plots = {PLOT_TITLES[p.name]: p for p in paths.values() if p.name in PLOT_TITLES}
            downloads = [p.name for p in paths.values() if p.suffix in (".md", ".tex", ".csv")]
            paths["html"] = write_html(stage, df=found.frame, found=found, plots=plots, downloads=downloads,
                                       method_order=method_order, stats=computed,
                                       sources=dirs if merged else ())
        paths = {key: out_dir / p.name for key, p in paths.items()}
        published.publish(stage, out_dir)
    return {"finished": len(found.finished), "unfinished": len(found.unfinished),
            "running": len(found.running), "failed": len(found.failed),
            "broken": len(found.broken), "bad_lines": found.bad_lines,
            "broken_runs": dict(found.broken), "paths": paths}


def _append_reported(df, md: Path) -> None:
    """Published numbers of the papers beside ours, labelled "reported" (real datasets only)."""
    from reports.reported import reported_markdown

    datasets = sorted(set(df["dataset"]))
    blocks = [b for b in (reported_markdown(d) for d in datasets) if b]
    names = ", ".join(markdown_text(d) for d in datasets)
    text = "\n\n".join(blocks) if blocks else f"(no reported numbers for {names})"
    atomic_write_text(md, md.read_text() + "\n\n## Reported in the papers (not run here)\n\n" + text + "\n")
