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
from typing import Any

import pandas as pd

from benchmark.paths import atomic_write_text
from benchmark.store import RunFolder

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
COLUMNS = (*SPEC_COLUMNS, "variant", "selection", "epoch", *CORE_METRICS, "val_mAP",
           "train_seconds", "peak_memory_mb", "privileged")


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
    out["_config"] = json.dumps({k: spec.get(k) for k in CONFIG_KEYS}, sort_keys=True, default=str)
    return out


def read_metrics(folder: Path) -> tuple[dict[int, dict], dict, int]:
    """Evaluation lines by epoch (last wins), the last summary line, and the bad-line count."""
    evals: dict[int, dict] = {}
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
    return evals, summary, bad


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
                     "peak_memory_mb": _number(summary.get("peak_memory_mb"))})
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


def scan_runs(out_dir: str | Path) -> Collection:
    """Read every run folder under ``out_dir``; see :class:`Collection`."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"results folder {out_dir} does not exist")
    found = Collection(frame=pd.DataFrame())
    rows: list[dict] = []
    failed: list[dict] = []
    for folder in _run_folders(out_dir):
        run = RunFolder(out_dir, folder.name)
        if not run.done:
            found.unfinished.append(folder.name)
            if run.owner() is not None:
                found.running.append(folder.name)
            elif (folder / "error.txt").is_file():
                failed.append(_failure(folder))
            continue
        try:
            why = run.verify()
            if why is not None:
                raise BrokenRun(why)
            run_rows, bad = read_run(folder)
        except BrokenRun as exc:
            found.broken[folder.name] = str(exc)
            warnings.warn(f"{folder.name}: skipped, {exc}", ReportWarning, stacklevel=2)
            continue
        found.finished.append(folder.name)
        found.bad_lines += bad
        rows.extend(run_rows)
    found.frame = _frame(rows)
    found.failed = pd.DataFrame([f for f in failed if f is not None])
    return found


def _failure(folder: Path) -> dict | None:
    """A failed run (error.txt, no done): its spec columns and the first line of the error."""
    try:
        spec = read_spec(folder)
    except BrokenRun:
        return None
    lines = (folder / "error.txt").read_text(errors="replace").strip().splitlines()
    return {**spec, "reason": lines[0] if lines else "failed"}


def collect_runs(out_dir: str | Path) -> pd.DataFrame:
    """One tidy row per (finished run, selection rule) under ``out_dir``; see the module doc."""
    return scan_runs(out_dir).frame


def write_runs_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write the tidy frame of :func:`collect_runs` to ``path`` as CSV (atomically)."""
    path = Path(path)
    atomic_write_text(path, df.to_csv(index=False))
    return path
