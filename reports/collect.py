"""Read result folders into one tidy DataFrame: one row per (finished run, selection rule).

A run folder ``<out>/<run_id>/`` holds ``spec.json``, ``metrics.jsonl`` and, once the run has
finished, a ``done`` marker. Only entries named and made like run folders are runs
(:func:`benchmark.core.run_folder.looks_like_run`): other sub-folders (notes, caches) are ignored.
Only finished runs are read; unfinished ones are counted and skipped, and a folder that cannot be
read (bad spec, a value of the wrong type, no evaluation, a symbolic link, which is never followed)
is reported as broken without stopping the others. Malformed lines of ``metrics.jsonl`` are skipped
with a :class:`ReportWarning`. Results folders are untrusted input: every string read from them is
data, escaped by each writer (:mod:`benchmark.core.escape`).

Every number carries the name of the rule that chose its epoch (:data:`SELECTION_RULES`):
``val`` is the headline, ``last`` and ``oracle`` (selection on the test set, as the official
code bases do) are reported beside it. When an epoch was evaluated twice (a resumed run
re-evaluates), the later line wins.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from benchmark.core.errors import UserError
from benchmark.core.escape import csv_frame, one_line
from benchmark.core.files import atomic_write_text, read_text_nofollow
from benchmark.core.run_folder import RunFolder, looks_like_run
from reports.run_rows import (
    COLUMNS,
    CORE_METRICS,
    SELECTION_RULES,
    BrokenRun,
    ReportWarning,
    entry_problem,
    read_run,
    read_spec,
)
from reports.variants import label_configurations

# What two copies of one run (same run id, found in two result folders) must agree on.
IDENTITY_COLUMNS = ("selection", "epoch", *CORE_METRICS, "val_mAP")


@dataclass
class Collection:
    """What :func:`scan_runs` found: the tidy frame and the folders it skipped."""

    frame: pd.DataFrame
    finished: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)            # unfinished, owned by a live process
    failed: pd.DataFrame = field(default_factory=pd.DataFrame)  # spec columns + "reason", one row per run
    broken: dict[str, str] = field(default_factory=dict)  # folder name -> reason
    bad_lines: int = 0


def _run_folders(out_dir: Path) -> list[Path]:
    """Entries of ``out_dir`` that are runs (named like a run id and holding a run file, or a
    symbolic link named like one, listed to be reported broken), sorted."""
    return sorted(p for p in out_dir.iterdir() if looks_like_run(p))


def _frame(rows: list[dict]) -> pd.DataFrame:
    """Rows as a DataFrame: fixed columns first, extra metrics after, sorted for reading."""
    frame = label_configurations(pd.DataFrame(rows))
    frame = frame.drop(columns=["_config"], errors="ignore")
    extras = sorted(c for c in frame.columns if c not in COLUMNS)
    frame = frame.reindex(columns=[*COLUMNS, *extras])
    if frame.empty:
        return frame
    order = {rule: i for i, rule in enumerate(SELECTION_RULES)}
    frame["_rule"] = frame["selection"].map(order)
    keys = ["dataset", "protocol", "mask_protocol", "profile", "variant", "ratio", "seed", "_rule"]
    frame = frame.sort_values(keys, kind="stable").drop(columns="_rule")
    return frame.reset_index(drop=True)


def _scan_one(out_dir: Path, found: Collection, key) -> tuple[list[dict], list[dict]]:
    """Rows of the finished runs and records of the failed runs under one results folder; the
    unfinished, running, broken and finished folder names go into ``found`` (named by ``key``)."""
    rows: list[dict] = []
    failed: list[dict] = []
    for folder in _run_folders(out_dir):
        run = RunFolder(out_dir, folder.name)
        problem = entry_problem(folder)           # a link is never followed, a FIFO never opened
        if problem is not None:
            found.broken[key(folder)] = problem
            warnings.warn(f"{key(folder)}: skipped, {problem}", ReportWarning, stacklevel=3)
            continue
        if not run.done:
            found.unfinished.append(key(folder))
            if run.owner() is not None:
                found.running.append(key(folder))
            elif (folder / "error.txt").is_file():
                failed.append(_failure(folder))
            continue
        try:
            why = run.verify()
            if why is not None:
                raise BrokenRun(why)
            run_rows, bad = read_run(folder)
        except BrokenRun as exc:
            found.broken[key(folder)] = str(exc)
            warnings.warn(f"{key(folder)}: skipped, {exc}", ReportWarning, stacklevel=3)
            continue
        found.finished.append(key(folder))
        found.bad_lines += bad
        rows.extend(run_rows)
    return rows, [f for f in failed if f is not None]


def _same_numbers(a: list[dict], b: list[dict]) -> bool:
    """Whether two copies of a run carry the same selected epochs and metrics (NaN equals NaN)."""
    def key(rows):
        return sorted(tuple("nan" if isinstance(r.get(c), float) and math.isnan(r[c]) else r.get(c)
                            for c in IDENTITY_COLUMNS) for r in rows)
    return key(a) == key(b)


def merge_rows(per_dir: list[tuple[Path, list[dict]]]) -> list[dict]:
    """The rows of several results folders as one list: a run (same run folder name, i.e. the same
    RunSpec hash) found in several folders counts once when its numbers agree; its ``folder``
    names every copy. Raises :class:`UserError` naming both folders when they disagree."""
    by_run: dict[str, list[dict]] = {}
    order: list[str] = []
    for _, rows in per_dir:
        runs: dict[str, list[dict]] = {}
        for row in rows:
            runs.setdefault(Path(row["folder"]).name, []).append(row)
        for name, run_rows in runs.items():
            if name not in by_run:
                by_run[name] = run_rows
                order.append(name)
                continue
            first = by_run[name]
            if not _same_numbers(first, run_rows):
                raise UserError(f"run {name} differs between {first[0]['folder']} and {run_rows[0]['folder']} "
                                "(same run id, different metrics); keep one copy and report again")
            folders = f"{first[0]['folder']}; {run_rows[0]['folder']}"
            by_run[name] = [{**row, "folder": folders} for row in first]
    return [row for name in order for row in by_run[name]]


def scan_runs(out_dirs: str | Path | Sequence[str | Path]) -> Collection:
    """Read every run folder under one results folder, or under several (merged: see
    :func:`merge_rows`); see :class:`Collection`. With several folders, skipped runs are named
    ``<results folder>/<run>``; a run unfinished in one folder but finished in another counts as
    finished only."""
    dirs = [Path(out_dirs)] if isinstance(out_dirs, (str, Path)) else [Path(d) for d in out_dirs]
    for out_dir in dirs:
        if not out_dir.is_dir():
            raise FileNotFoundError(f"results folder {out_dir} does not exist")
    found = Collection(frame=pd.DataFrame())
    many = len(dirs) > 1
    per_dir, failed = [], []
    for out_dir in dirs:
        key = (lambda f, d=out_dir: f"{d}/{f.name}") if many else (lambda f: f.name)
        rows, fails = _scan_one(out_dir, found, key)
        per_dir.append((out_dir, rows))
        failed += fails
    rows = merge_rows(per_dir) if many else per_dir[0][1]
    if many:                                  # one entry per run, whichever folders hold it
        done = {Path(r["folder"].split("; ")[0]).name for r in rows}
        found.finished = sorted(done)
        found.unfinished = [u for u in found.unfinished if Path(u).name not in done]
        found.running = [u for u in found.running if Path(u).name not in done]
        failed = [f for f in failed if Path(f["folder"]).name not in done]
        failed = list({Path(f["folder"]).name: f for f in failed}.values())
    found.frame = _frame(rows)
    found.failed = pd.DataFrame(failed)
    return found


ERROR_LIMIT = 64 << 10          # bytes of error.txt read
REASON_CHARS = 300              # characters of its first line shown in the tables


def _failure(folder: Path) -> dict | None:
    """A failed run (error.txt, no done): its spec columns and the first line of the error (one
    printable line of at most REASON_CHARS characters; data, escaped by each writer)."""
    try:
        spec = read_spec(folder)
        text = read_text_nofollow(folder / "error.txt", ERROR_LIMIT)
    except (BrokenRun, UserError, OSError):
        return None
    first = next((one_line(line) for line in text.splitlines() if line.strip()), "failed")
    reason = first if len(first) <= REASON_CHARS else first[:REASON_CHARS - 3] + "..."
    return {**spec, "reason": reason, "folder": str(folder)}


def collect_runs(out_dir: str | Path | Sequence[str | Path]) -> pd.DataFrame:
    """One tidy row per (finished run, selection rule) under ``out_dir``; see the module doc."""
    return scan_runs(out_dir).frame


def write_runs_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write the tidy frame of :func:`collect_runs` to ``path`` as CSV (atomically); a string cell
    that a spreadsheet would run as a formula is quoted (:func:`benchmark.core.escape.csv_cell`)."""
    path = Path(path)
    atomic_write_text(path, csv_frame(df).to_csv(index=False))
    return path
