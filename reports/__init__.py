"""The reporting layer: result folders -> tidy DataFrame -> leaderboard tables and plots.

It reads only result folders (``<out>/<run_id>/spec.json``, ``metrics.jsonl``, ``done``), so it
works on results copied from another machine and never imports a method.

>>> summary = build_report("results/my_grid")        # doctest: +SKIP
>>> summary["paths"]["md"]                            # doctest: +SKIP
PosixPath('results/my_grid/leaderboard.md')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from benchmark.errors import UserError
from benchmark.store import report_lock
from reports.collect import SELECTION_RULES, collect_runs, scan_runs, write_runs_csv
from reports.plots import plot_map_vs_ratio
from reports.tables import leaderboard, summarise, write_leaderboards

__all__ = ["SELECTION_RULES", "build_report", "collect_runs", "leaderboard",
           "plot_map_vs_ratio", "scan_runs", "summarise", "write_leaderboards", "write_runs_csv"]


def build_report(out_dir: str | Path, method_order: Sequence[str] | None = None) -> dict[str, Any]:
    """Collect the runs under ``out_dir`` and write into it ``runs.csv``, ``leaderboard.md``,
    ``leaderboard.tex``, ``leaderboard.csv`` and ``map_vs_ratio.png``.

    Returns ``{"finished", "unfinished", "broken", "bad_lines"}`` counts, ``broken_runs``
    (folder -> reason) and ``paths`` (name -> Path). Raises :class:`UserError` when the folder
    is missing or holds no finished run; nothing is written then.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise UserError(f"results folder {out_dir} does not exist; pass the folder that "
                        "run_benchmark.py wrote (results/<name>)")
    with report_lock(out_dir):          # concurrent grids: scans and writes never interleave
        found = scan_runs(out_dir)
        if found.frame.empty:
            raise UserError(f"no finished runs in {out_dir}; run the benchmark first (run_benchmark.py)"
                            f" ({len(found.unfinished)} unfinished, {len(found.broken)} broken)")
        paths = {"runs": write_runs_csv(found.frame, out_dir / "runs.csv")}
        paths.update(write_leaderboards(found.frame, out_dir, method_order, failed=found.failed))
        paths["plot"] = plot_map_vs_ratio(found.frame, out_dir / "map_vs_ratio.png",
                                          method_order=method_order)
    return {"finished": len(found.finished), "unfinished": len(found.unfinished),
            "running": len(found.running), "failed": len(found.failed),
            "broken": len(found.broken), "bad_lines": found.bad_lines,
            "broken_runs": dict(found.broken), "paths": paths}
