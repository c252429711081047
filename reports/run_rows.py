"""One finished run folder read into rows: spec.json and metrics.jsonl, validated (a result folder
is untrusted input: it may come from another machine or person), malformed lines of metrics.jsonl
(cut by a kill) skipped with a ReportWarning, a later evaluation of an epoch winning, and one row per
selection rule (SELECTION_RULES). A value of the wrong type or range raises :class:`BrokenRun` with a
one-line reason naming the field and the value; files are read without following symbolic links. A
run's ``scores.npz`` (per-image test scores, :mod:`benchmark.core.scores`) is checked the same way: a
malformed one, or one holding other epochs than the rules pick, makes the run broken."""
from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

from benchmark.config.run_spec import EXECUTION_FIELDS, SPEC_VERSION
from benchmark.core.errors import UserError
from benchmark.core.escape import one_line, short_repr
from benchmark.core.files import read_bytes_nofollow
from benchmark.core.scores import SCORES_FILE, ScoresError, read_scores
from benchmark.core.selection import SELECTION_RULES, select_epoch
from benchmark.core.selection import finite_number as _number

CORE_METRICS = ("mAP", "CF1", "OF1", "CP", "CR", "OP", "OR")


SPEC_COLUMNS = ("run_id", "dataset", "protocol", "method", "preset", "ratio", "seed",
                "mask_protocol", "profile", "mask_sha256")


REQUIRED_SPEC_KEYS = ("dataset", "method", "ratio", "seed")


DEFAULT_LABEL = "n/a"  # value of protocol / mask_protocol / profile when the spec lacks it


# Provenance read from spec.json for the report's cell details (not part of a run's identity).
INFO_COLUMNS = ("git_sha", "git_dirty", "trunk_baseline", "method_display")


COLUMNS = (*SPEC_COLUMNS, "variant", "selection", "epoch", *CORE_METRICS, "val_mAP",
           "train_seconds", "peak_memory_mb", "privileged", *INFO_COLUMNS, "execution", "inherited_recipe",
           "recovery_precision", "recovery_recall", "recovery_count", "folder")


# Identity fields that are group keys of a report (or the cell and seed) rather than configuration.
GROUP_IDENTITY_KEYS = ("method", "dataset", "protocol", "mask_protocol", "profile", "preset", "ratio", "seed",
                       "spec_version")

# What the suite's semantics were at each older spec version, for the message that refuses them.
OLD_VERSIONS = {1: "the single-positive 'val' rule and the recipes changed in version 2"}

# Validation of what a run folder holds (see read_spec / read_metrics).
MAX_TEXT = 100                              # characters of a name field of spec.json
TEXT_FIELDS = ("method", "dataset", "protocol", "mask_protocol", "profile", "preset", "run_id", "mask_sha256",
               "git_sha", "trunk_baseline", "method_display")
SEED_END = 2 ** 32
MAX_EPOCH = 10 ** 6
SPEC_LIMIT = 4 << 20                        # bytes: spec.json is a few KB
METRICS_LIMIT = 64 << 20                    # bytes: metrics.jsonl is a line or two per epoch
_HEX = re.compile(r"[0-9a-fA-F]+")
# The part after "test/" / "val/" of a metric key: it becomes a column of runs.csv.
_METRIC_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,99}")
COUNT_METRICS = ("num_classes_scored",)     # metrics that are counts (may exceed 100), not percentages
PERCENT_RANGE = (0.0, 100.0)


def execution_label(identity: dict) -> str:
    """Where a run was executed, as the report names it: ``cpu, 2 threads``."""
    threads = identity.get("threads")
    device = one_line(identity.get("device", "cpu"))[:40]
    return f"{device}, {one_line(threads)[:20]} thread{'s' if threads != 1 else ''}" if threads else device


class ReportWarning(UserWarning):
    """Something in a result folder was skipped while building a report."""


class BrokenRun(Exception):
    """A finished run folder that cannot be read or holds a malformed value; the message (one line)
    says which file, field and value."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def entry_problem(folder: Path) -> str | None:
    """Why an entry of a results folder cannot be read as a run without following a symbolic link,
    or None: the folder itself or one of its run files is a link, or a run file is not a regular file
    (a folder, a FIFO that would block a read)."""
    from benchmark.core.run_folder import RUN_FILES

    return next((why for why in (_file_problem(folder, name) for name in RUN_FILES) if why), None)


def _file_problem(folder: Path, name: str) -> str | None:
    """Why run file ``name`` cannot be read without following a link (checked before any open: a
    FIFO would block it), or None."""
    path = folder / name
    if folder.is_symlink():
        return "the run folder is a symbolic link (not followed)"
    if path.is_symlink():
        return f"{name} is a symbolic link (not followed)"
    if path.exists() and not path.is_file():
        return f"{name} is not a regular file"
    return None


def read_file(folder: Path, name: str, limit: int) -> bytes:
    """The bytes of a run file, read without following a symbolic link; raises :class:`BrokenRun`
    when it is missing, a link, not a regular file or larger than ``limit`` bytes."""
    path = folder / name
    problem = _file_problem(folder, name)
    if problem:
        raise BrokenRun(problem)
    try:
        data = read_bytes_nofollow(path, limit + 1)
    except UserError:                                        # UnsafePath: replaced by a link meanwhile
        raise BrokenRun(f"{name} is a symbolic link or not a regular file (not followed)") from None
    except OSError as exc:
        raise BrokenRun(f"cannot read {name} ({exc.__class__.__name__}: {one_line(exc.strerror or exc)})") from exc
    if len(data) > limit:
        raise BrokenRun(f"{name} is larger than {limit >> 20} MiB; it is not a file this suite wrote")
    return data


def _check_text(spec: dict, key: str) -> None:
    """A name field of spec.json: absent/null, or a printable single line of 1-MAX_TEXT characters."""
    value = spec.get(key)
    if value is None:
        return
    bad = None
    if not isinstance(value, str):
        bad = f"is a {type(value).__name__}, not a string"
    elif not value:
        bad = "is empty"
    elif len(value) > MAX_TEXT:
        bad = f"is longer than {MAX_TEXT} characters"
    elif not value.isprintable():
        bad = "is not a single printable line (it holds a newline or a control character)"
    elif key == "mask_sha256" and not _HEX.fullmatch(value):
        bad = "is not a hex digest"
    if bad:
        raise BrokenRun(f"spec.json {key} {short_repr(value)} {bad}")


def _check_spec(spec: dict, folder: Path) -> None:
    """Types and ranges of the fields a report uses; raises :class:`BrokenRun` naming the first bad one."""
    for key in TEXT_FIELDS:
        _check_text(spec, key)
    seed = spec["seed"]
    if not _is_int(seed) or not 0 <= seed < SEED_END:
        raise BrokenRun(f"spec.json seed {short_repr(seed)} is not an integer in [0, 2**32)")
    ratio = _number(spec["ratio"])
    if ratio is None or not 0.0 < ratio <= 1.0:
        raise BrokenRun(f"spec.json ratio {short_repr(spec['ratio'])} is not a number in (0, 1]")
    privileged = spec.get("privileged")
    if privileged is not None:
        keys = list(privileged) if isinstance(privileged, (dict, list)) else None
        if keys is None or not all(isinstance(k, str) and k.isprintable() and 0 < len(k) <= MAX_TEXT for k in keys):
            raise BrokenRun(f"spec.json privileged {short_repr(privileged)} is not a record of names")
    run_id = spec.get("run_id")
    if run_id is not None and run_id != folder.name:
        raise BrokenRun(f"spec.json run_id {short_repr(run_id)} differs from the folder name "
                        f"{short_repr(folder.name, 80)}: a copied run folder was renamed; give it its run id back "
                        "as its name")


def read_spec(folder: Path) -> dict[str, Any]:
    """The spec of a run: known keys only, defaults filled, every field checked (see the module
    doc); raises :class:`BrokenRun`."""
    data = read_file(folder, "spec.json", SPEC_LIMIT)
    try:
        spec = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:        # UnicodeDecodeError is a ValueError
        raise BrokenRun(f"cannot read spec.json ({exc.__class__.__name__}: {one_line(exc)[:120]})") from None
    if not isinstance(spec, dict):
        raise BrokenRun("spec.json is not a JSON object")
    try:
        return _spec_row(spec, folder)
    except RecursionError:
        raise BrokenRun("spec.json is nested too deeply to be a spec this suite wrote") from None


def _spec_row(spec: dict, folder: Path) -> dict[str, Any]:
    missing = [key for key in REQUIRED_SPEC_KEYS if spec.get(key) is None]
    if missing:
        raise BrokenRun(f"spec.json lacks {', '.join(missing)}")
    _check_spec(spec, folder)
    version = spec.get("spec_version", 1)
    if version != SPEC_VERSION or isinstance(version, bool):
        why = OLD_VERSIONS.get(version, "an unknown version") if _is_int(version) else "an unknown version"
        raise BrokenRun(f"written under spec version {short_repr(version)}, this code reads {SPEC_VERSION} ({why}); "
                        "its numbers are not comparable: retrain it with this code (run the grid again) or report it "
                        "with the version that wrote it")
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
    out["git_dirty"] = out["git_dirty"] if isinstance(out["git_dirty"], bool) else None
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


def _check_value(number: int, key: str, value: Any, low: float, high: float | None, integer: bool = False) -> None:
    """A metric value: null (NaN is JSON's other way of writing it), or a number in [low, high]."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return
    ok = (_is_int(value) if integer else _number(value) is not None) and low <= value <= (high or math.inf)
    if not ok:
        what = f"an integer >= {low:g}" if integer else (f"a number in [{low:g}, {high:g}]" if high is not None
                                                          else f"a finite number >= {low:g}")
        raise BrokenRun(f"metrics.jsonl line {number}: {short_repr(key, 60)} {short_repr(value)} is not {what} "
                        "or null")


def _check_epoch(number: int, record: dict) -> int:
    epoch = record.get("epoch")
    if not _is_int(epoch) or not 1 <= epoch <= MAX_EPOCH:
        raise BrokenRun(f"metrics.jsonl line {number}: {record.get('kind')} epoch {short_repr(epoch)} is not a "
                        "positive integer")
    return epoch


def _check_eval(number: int, record: dict) -> int:
    """An evaluation line: its epoch; every ``test/*`` and ``val/*`` value a percentage (counts such
    as ``num_classes_scored``: a non-negative integer) or null."""
    epoch = _check_epoch(number, record)
    for key, value in record.items():
        split, _, name = key.partition("/")
        if split not in ("test", "val"):
            continue
        if not _METRIC_NAME.fullmatch(name):
            raise BrokenRun(f"metrics.jsonl line {number}: metric name {short_repr(key)} is not a plain name "
                            "(letters, digits, _ . -)")
        if name in COUNT_METRICS:
            _check_value(number, key, value, 0, None, integer=True)
        else:
            _check_value(number, key, value, *PERCENT_RANGE)
    return epoch


def read_metrics(folder: Path) -> tuple[dict[int, dict], dict, int]:
    """Evaluation lines by epoch (last wins), the last summary line, and the bad-line count.
    Label-recovery lines (``kind: recovery``) are returned under ``summary["_recovery"]`` by epoch.
    A line that is not a JSON object (cut by a kill) is skipped with a warning; a line of a known kind
    with a value of the wrong type or range raises :class:`BrokenRun`."""
    evals: dict[int, dict] = {}
    recovery: dict[int, dict] = {}
    summary: dict = {}
    bad = 0
    lines = read_file(folder, "metrics.jsonl", METRICS_LIMIT).decode("utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if not isinstance(record, dict):
            bad += 1
            warnings.warn(f"{folder.name}/metrics.jsonl line {number}: malformed, skipped",
                          ReportWarning, stacklevel=2)
        elif record.get("kind") == "eval":
            evals[_check_eval(number, record)] = record
        elif record.get("kind") == "summary":
            for key in ("train_seconds", "peak_memory_mb"):
                _check_value(number, key, record.get(key), 0.0, None)
            summary = record
        elif record.get("kind") == "recovery":
            epoch = _check_epoch(number, record)
            for key in ("precision", "recall"):
                _check_value(number, key, record.get(key), *PERCENT_RANGE)
            recovery[epoch] = record
    return evals, {**summary, "_recovery": recovery}, bad


def _recovery_at(recovery: dict[int, dict], epoch: int) -> dict[str, float]:
    """Label-recovery precision/recall (%) and the number of labels recovered at ``epoch`` (the
    selected one), else at the last recovery epoch; NaN for a method that recovers no labels. The
    precision of nothing recovered is undefined (NaN), not 0."""
    line = recovery.get(epoch) or (recovery[max(recovery)] if recovery else {})
    out = {}
    for key in ("precision", "recall"):
        value = _number(line.get(key))
        out[f"recovery_{key}"] = math.nan if value is None else value
    count = _number(line.get("pseudo_positives"))
    out["recovery_count"] = math.nan if count is None else count
    if count == 0:
        out["recovery_precision"] = math.nan
    return out


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
    _check_scores(folder, {row["selection"]: row["epoch"] for row in rows})
    return rows, bad


def _check_scores(folder: Path, picked: dict[str, int]) -> None:
    """A run's scores.npz, when it has one (older runs have none), is one this suite writes (every
    member's type and shape; the score matrix by its header) and holds the epochs the rules pick in
    metrics.jsonl; raises :class:`BrokenRun` naming the member or the rule."""
    if not (folder / SCORES_FILE).exists():
        return
    try:
        stored = read_scores(folder / SCORES_FILE, matrices=False)
    except ScoresError as exc:
        raise BrokenRun(f"{SCORES_FILE} {exc}") from None
    for rule, epoch in stored.selection.items():
        if picked.get(rule) != epoch:
            raise BrokenRun(f"{SCORES_FILE} holds epoch {epoch} for selection {rule!r}, metrics.jsonl picks "
                            f"{picked.get(rule, 'none')}")
