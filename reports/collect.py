"""Read result folders into one tidy DataFrame: one row per (finished run, selection rule).

A run folder ``<out>/<run_id>/`` holds ``spec.json``, ``metrics.jsonl`` and, once the run has
finished, a ``done`` marker. Only finished runs are read; unfinished ones are counted and skipped,
and a folder that cannot be read (bad spec, no evaluation) is reported as broken without stopping
the others. Malformed lines of ``metrics.jsonl`` are skipped with a :class:`ReportWarning`.

Every number carries the name of the rule that chose its epoch (:data:`SELECTION_RULES`):
``val`` is the headline, ``last`` and ``oracle`` (selection on the test set, as the official
code bases do) are reported beside it. When an epoch was evaluated twice (a resumed run
re-evaluates), the later line wins.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from benchmark.core.errors import UserError
from benchmark.core.files import atomic_write_text
from benchmark.core.run_folder import RunFolder

SELECTION_RULES: dict[str, str] = {
    "val": "epoch with the best val/mAP on the held-out split of the training set; "
    "earliest epoch on ties",
    "last": "last evaluated epoch",
    "oracle": "epoch with the best test/mAP, i.e. selection on the test set as in the "
    "official code (optimistic)",
}
CORE_METRICS = ("mAP", "CF1", "OF1", "CP", "CR", "OP", "OR")
SPEC_COLUMNS = ("run_id", "dataset", "protocol", "method", "preset", "ratio", "seed",
                "mask_protocol", "profile", "mask_sha256")
REQUIRED_SPEC_KEYS = ("dataset", "method", "ratio", "seed")
DEFAULT_LABEL = "n/a"  # value of protocol / mask_protocol / profile when the spec lacks it
# Provenance read from spec.json for the report's cell details (not part of a run's identity).
INFO_COLUMNS = ("git_sha", "git_dirty", "trunk_baseline")
COLUMNS = (*SPEC_COLUMNS, "variant", "selection", "epoch", *CORE_METRICS, "val_mAP",
           "train_seconds", "peak_memory_mb", "privileged", *INFO_COLUMNS,
           "recovery_precision", "recovery_recall", "folder")
# What two copies of one run (same run id, found in two result folders) must agree on.
IDENTITY_COLUMNS = ("selection", "epoch", *CORE_METRICS, "val_mAP")


# What makes two runs of one method one configuration (besides the group keys, the ratio and the
# seed): runs that differ in any of these are never averaged together.
CONFIG_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "optimizer", "lr_step", "image_size", "backbone",
               "backbone_weights", "dataset_size", "val_fraction", "embeddings", "method_config",
               "resolved_config", "data_root", "inputs")


class ReportWarning(UserWarning):
    """Something in a result folder was skipped while building a report."""


class BrokenRun(Exception):
    """A finished run folder that cannot be read; the message says why."""


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


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None (bools, strings, NaN and inf are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def read_spec(folder: Path) -> dict[str, Any]:
    """The spec of a run: known keys only, defaults filled; raises :class:`BrokenRun`."""
    try:
        spec = json.loads((folder / "spec.json").read_text())
    except (OSError, ValueError) as exc:
        raise BrokenRun(f"cannot read spec.json ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(spec, dict):
        raise BrokenRun("spec.json is not a JSON object")
    missing = [key for key in REQUIRED_SPEC_KEYS if spec.get(key) is None]
    if missing:
        raise BrokenRun(f"spec.json lacks {', '.join(missing)}")
    if _number(spec["ratio"]) is None:
        raise BrokenRun(f"spec.json ratio {spec['ratio']!r} is not a number")
    out = {key: spec.get(key) for key in SPEC_COLUMNS}
    out["run_id"] = out["run_id"] or folder.name
    out["ratio"] = float(spec["ratio"])
    for key in ("protocol", "mask_protocol", "profile"):
        out[key] = out[key] if out[key] is not None else DEFAULT_LABEL
    out["variant"] = f"{out['method']}:{out['preset']}" if out["preset"] else str(out["method"])
    out["privileged"] = ",".join(sorted(spec.get("privileged") or {}))
    for key in INFO_COLUMNS:
        out[key] = spec.get(key)
    out["_config"] = json.dumps({k: spec.get(k) for k in CONFIG_KEYS}, sort_keys=True, default=str)
    return out


def read_metrics(folder: Path) -> tuple[dict[int, dict], dict, int]:
    """Evaluation lines by epoch (last wins), the last summary line, and the bad-line count.
    Label-recovery lines (``kind: recovery``) are returned under ``summary["_recovery"]`` by epoch."""
    evals: dict[int, dict] = {}
    recovery: dict[int, dict] = {}
    summary: dict = {}
    bad = 0
    try:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
    except OSError as exc:
        raise BrokenRun(f"cannot read metrics.jsonl ({exc})") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        epoch = record.get("epoch") if isinstance(record, dict) else None
        if not isinstance(record, dict) or (record.get("kind") == "eval" and _number(epoch) is None):
            bad += 1
            warnings.warn(f"{folder.name}/metrics.jsonl line {number}: malformed, skipped",
                          ReportWarning, stacklevel=2)
        elif record.get("kind") == "eval":
            evals[int(epoch)] = record
        elif record.get("kind") == "summary":
            summary = record
        elif record.get("kind") == "recovery" and _number(epoch) is not None:
            recovery[int(epoch)] = record
    return evals, {**summary, "_recovery": recovery}, bad


def _recovery_at(recovery: dict[int, dict], epoch: int) -> dict[str, float]:
    """Label-recovery precision/recall (%) at ``epoch`` (the selected one), else at the last
    recovery epoch; NaN for a method that recovers no labels."""
    line = recovery.get(epoch) or (recovery[max(recovery)] if recovery else {})
    out = {}
    for key in ("precision", "recall"):
        value = _number(line.get(key))
        out[f"recovery_{key}"] = math.nan if value is None else value
    return out


def select_epoch(evals: dict[int, dict], rule: str) -> int | None:
    """The epoch that ``rule`` picks, or None when no line carries the metric it needs."""
    if rule == "last":
        return max(evals) if evals else None
    key = {"val": "val/mAP", "oracle": "test/mAP"}.get(rule)
    if key is None:
        raise ValueError(f"unknown selection rule {rule!r}; choose one of {list(SELECTION_RULES)}")
    scored = [(ep, _number(line.get(key))) for ep, line in sorted(evals.items())]
    scored = [(ep, value) for ep, value in scored if value is not None]
    if not scored:
        return None
    best = max(value for _, value in scored)
    return next(ep for ep, value in scored if value == best)  # earliest among ties


def _test_metrics(line: dict) -> dict[str, float]:
    """The ``test/*`` scalars of an evaluation line, prefix removed (core metrics always present)."""
    out: dict[str, float] = {name: math.nan for name in CORE_METRICS}
    for key, value in line.items():
        if key.startswith("test/") and (_number(value) is not None or value is None):
            name = key[len("test/"):]
            name = key if name in COLUMNS and name not in CORE_METRICS else name
            out[name] = math.nan if value is None else float(value)
    return out


def read_run(folder: Path) -> tuple[list[dict], int]:
    """One row per selection rule for a finished run, and its bad-line count."""
    spec = read_spec(folder)
    evals, summary, bad = read_metrics(folder)
    if not evals:
        raise BrokenRun("metrics.jsonl has no evaluation line")
    rows = []
    for rule in SELECTION_RULES:
        epoch = select_epoch(evals, rule)
        if epoch is None:
            warnings.warn(f"{folder.name}: no usable metric for selection {rule!r}, skipped",
                          ReportWarning, stacklevel=2)
            continue
        line = evals[epoch]
        val_map = _number(line.get("val/mAP"))
        rows.append({**spec, "selection": rule, "epoch": epoch, **_test_metrics(line),
                     "val_mAP": math.nan if val_map is None else val_map,
                     "train_seconds": _number(summary.get("train_seconds")),
                     "peak_memory_mb": _number(summary.get("peak_memory_mb")),
                     **_recovery_at(summary["_recovery"], epoch), "folder": str(folder)})
    return rows, bad


def _run_folders(out_dir: Path) -> list[Path]:
    """Sub-folders of ``out_dir`` that may be runs (hidden folders are skipped), sorted."""
    return sorted(p for p in out_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def label_configurations(frame: pd.DataFrame) -> pd.DataFrame:
    """Runs of one method (and preset) in one group that differ in configuration become separate
    variants, named by the fields that differ (``partial_bce [epochs=1]``): a leaderboard cell only
    ever aggregates runs that differ by seed."""
    if frame.empty or "_config" not in frame:
        return frame
    frame = frame.copy()
    keys = ["dataset", "protocol", "mask_protocol", "profile", "variant"]
    for _, group in frame.groupby(keys, dropna=False, sort=False):
        configs = {c: json.loads(c) for c in group["_config"].unique()}
        if len(configs) < 2:
            continue
        differing = sorted({k for c in configs.values() for k in c
                            if len({json.dumps(o.get(k), sort_keys=True) for o in configs.values()}) > 1})
        shown = [k for k in differing if k != "resolved_config"] or differing
        for text, config in configs.items():
            label = ", ".join(f"{k}={_short(config.get(k))}" for k in shown)
            rows = group.index[group["_config"] == text]
            frame.loc[rows, "variant"] = frame.loc[rows, "variant"] + f" [{label}]"
    return frame


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


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


def _failure(folder: Path) -> dict | None:
    """A failed run (error.txt, no done): its spec columns and the first line of the error."""
    try:
        spec = read_spec(folder)
    except BrokenRun:
        return None
    lines = (folder / "error.txt").read_text(errors="replace").strip().splitlines()
    return {**spec, "reason": lines[0] if lines else "failed", "folder": str(folder)}


def collect_runs(out_dir: str | Path | Sequence[str | Path]) -> pd.DataFrame:
    """One tidy row per (finished run, selection rule) under ``out_dir``; see the module doc."""
    return scan_runs(out_dir).frame


def write_runs_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write the tidy frame of :func:`collect_runs` to ``path`` as CSV (atomically)."""
    path = Path(path)
    atomic_write_text(path, df.to_csv(index=False))
    return path
