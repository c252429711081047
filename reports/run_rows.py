"""One finished run folder read into rows: spec.json, metrics.jsonl (malformed lines skipped with a
ReportWarning; a later evaluation of an epoch wins) and one row per selection rule (SELECTION_RULES)."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from benchmark.config.run_spec import EXECUTION_FIELDS, SPEC_VERSION

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
           "train_seconds", "peak_memory_mb", "privileged", *INFO_COLUMNS, "execution", "inherited_recipe",
           "recovery_precision", "recovery_recall", "folder")


# Identity fields that are group keys of a report (or the cell and seed) rather than configuration.
GROUP_IDENTITY_KEYS = ("method", "dataset", "protocol", "mask_protocol", "profile", "preset", "ratio", "seed",
                       "spec_version")

# What the suite's semantics were at each older spec version, for the message that refuses them.
OLD_VERSIONS = {1: "the single-positive 'val' rule and the recipes changed in version 2"}


def execution_label(identity: dict) -> str:
    """Where a run was executed, as the report names it: ``cpu, 2 threads``."""
    threads = identity.get("threads")
    return f"{identity.get('device', 'cpu')}, {threads} thread{'s' if threads != 1 else ''}" if threads else \
        str(identity.get("device", "cpu"))


class ReportWarning(UserWarning):
    """Something in a result folder was skipped while building a report."""


class BrokenRun(Exception):
    """A finished run folder that cannot be read; the message says why."""


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
    version = spec.get("spec_version", 1)
    if version != SPEC_VERSION:
        why = OLD_VERSIONS.get(version, "an unknown version")
        raise BrokenRun(f"written under spec version {version!r}, this code reads {SPEC_VERSION} ({why}); its numbers "
                        "are not comparable: retrain it with this code (run the grid again) or report it with the "
                        "version that wrote it")
    identity = spec.get("identity")
    if not isinstance(identity, dict):
        raise BrokenRun("spec.json has no identity record; retrain it with this code")
    out = {key: spec.get(key) for key in SPEC_COLUMNS}
    out["run_id"] = out["run_id"] or folder.name
    out["ratio"] = float(spec["ratio"])
    for key in ("protocol", "mask_protocol", "profile"):
        out[key] = out[key] if out[key] is not None else DEFAULT_LABEL
    out["variant"] = f"{out['method']}:{out['preset']}" if out["preset"] else str(out["method"])
    out["privileged"] = ",".join(sorted(spec.get("privileged") or {}))
    for key in INFO_COLUMNS:
        out[key] = spec.get(key)
    # Configuration = the identity (content fingerprints, never raw paths) without the group keys and
    # the execution fields; the method's resolved config is added (code defaults it depends on).
    config = {k: v for k, v in identity.items() if k not in GROUP_IDENTITY_KEYS and k not in EXECUTION_FIELDS}
    train = config.pop("train", None)
    config.update(train if isinstance(train, dict) else {})          # recipe values by name (epochs=2)
    config["resolved_config"] = spec.get("resolved_config")
    out["_config"] = json.dumps(config, sort_keys=True, default=str)
    out["execution"] = execution_label(identity)
    recipe = spec.get("recipe") if isinstance(spec.get("recipe"), dict) else {}
    out["inherited_recipe"] = bool(recipe.get("inherited"))
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
