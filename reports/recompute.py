"""``report --recompute``: re-derive every test metric of every finished run from its stored per-image
scores (``scores.npz``, :mod:`benchmark.core.scores`) and its dataset's labels, and check them against
metrics.jsonl.

For each stored epoch the run's test scores are scored again (mAP, mAP_noninterp, CP, CR, CF1, OP, OR,
OF1, their top-3 forms, num_classes_scored and the per-class AP) and compared with the evaluation line
of that epoch; the epochs the selection rules pick in metrics.jsonl must be the ones scores.npz says it
holds. val/mAP is not recomputable (the held-out training rows' scores are not kept).

Tolerances (percent points): :data:`TOLERANCE` for the metrics (the scores are the float32 values the
evaluation scored and metrics.jsonl holds float64 values, so a recompute on the same code agrees to the
last bit; the tolerance leaves room for another numpy's summation order), :data:`CLASS_AP_TOLERANCE` for
the per-class AP (stored as float32: half a float32 unit at 100 is 3.8e-6).

The check reads run folders only (nothing is written anywhere); folders are untrusted input: a run
whose files do not match its done marker, or whose scores file is malformed, is listed as broken. The
reporting layer does not load datasets or metrics itself: the caller passes ``load_test_split(spec)``
(the dataset loader the run used) and ``evaluate(scores, labels, ignore) -> (metrics, class AP %)``
(the engine's metric), see ``benchmark.cli.subcommands``.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from benchmark.core.escape import one_line, short_repr
from benchmark.core.run_folder import RunFolder, looks_like_run
from benchmark.core.scores import SCORES_FILE, RunScores, ScoresError, read_scores
from benchmark.core.selection import selected_epochs
from reports.run_rows import (
    CORE_METRICS,
    BrokenRun,
    ReportWarning,
    entry_problem,
    read_metrics,
    read_spec,
)

TOLERANCE = 1e-6
CLASS_AP_TOLERANCE = 1e-5
CLASSES_SHOWN = 5                 # per-class AP mismatches listed per epoch (the rest counted)
COUNT_KEYS = ("num_classes_scored",)

Evaluate = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], "tuple[dict, np.ndarray]"]


@dataclass
class RunCheck:
    """The outcome of one run folder: ``status`` is agree | mismatch | broken | unchecked | no_scores |
    unfinished; ``lines`` the findings (one line each)."""

    name: str
    status: str
    lines: list[str] = field(default_factory=list)
    largest: float = 0.0                  # largest metric difference seen
    largest_ap: float = 0.0               # largest per-class AP difference seen
    mismatches: int = 0


@dataclass
class Recomputed:
    runs: list[RunCheck]
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.runs)

    @property
    def exit_code(self) -> int:
        """1 when any run disagrees, is broken or could not be checked; 0 otherwise."""
        return int(any(r.status in ("mismatch", "broken", "unchecked") for r in self.runs))


def recompute(dirs: Sequence[Path], load_test_split: Callable[[dict], object], evaluate: Evaluate) -> Recomputed:
    """Check every run folder under ``dirs`` (several folders: each copy of a run is checked and named
    ``<folder>/<run>``)."""
    start = time.perf_counter()
    runs = []
    for out_dir in map(Path, dirs):
        for folder in sorted(p for p in out_dir.iterdir() if looks_like_run(p)):
            name = f"{out_dir}/{folder.name}" if len(dirs) > 1 else folder.name
            runs.append(check_run(folder, name, load_test_split, evaluate))
    return Recomputed(runs, time.perf_counter() - start)


def _trusted(folder: Path, name: str) -> tuple[RunCheck | None, dict, RunScores | None]:
    """(an outcome that ends the check, the evaluation lines, the validated scores)."""
    problem = entry_problem(folder)
    if problem is not None:
        return RunCheck(name, "broken", [f"broken: {problem}"]), {}, None
    run = RunFolder(folder.parent, folder.name)
    if not run.done:
        return RunCheck(name, "unfinished"), {}, None
    try:
        why = run.verify()
        if why is not None:
            raise BrokenRun(why)
        read_spec(folder)                                     # the fields the loader uses, validated
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ReportWarning)    # a line cut by a kill: the report says so
            evals = read_metrics(folder)[0]
        if not (folder / SCORES_FILE).exists():
            return RunCheck(name, "no_scores", ["no scores (older run)"]), evals, None
        scores = read_scores(folder / SCORES_FILE)
    except BrokenRun as exc:
        return RunCheck(name, "broken", [f"broken: {exc}"]), {}, None
    except ScoresError as exc:
        return RunCheck(name, "broken", [f"broken: {SCORES_FILE} {exc}"]), {}, None
    return None, evals, scores


def check_run(folder: Path, name: str, load_test_split: Callable[[dict], object], evaluate: Evaluate) -> RunCheck:
    """Recompute one run folder's stored epochs and compare them with its metrics.jsonl."""
    ended, evals, scores = _trusted(folder, name)
    if ended is not None:
        return ended
    spec = RunFolder(folder.parent, folder.name).spec_record()
    try:
        test = load_test_split(spec)
    except Exception as exc:  # noqa: BLE001 - any loader failure: this run is not checked, the others are
        return RunCheck(name, "unchecked", [f"not checked: cannot load the test split of dataset "
                                            f"{short_repr(spec.get('dataset'))} ({one_line(exc)[:200]})"])
    check = RunCheck(name, "agree")
    ids, classes = [str(i) for i in test.image_ids], [str(c) for c in test.class_names]
    if scores.image_ids != ids or scores.class_names != classes:
        check.lines.append(f"{SCORES_FILE} holds {len(scores.image_ids)} images x {len(scores.class_names)} classes "
                           f"that are not the test split of {short_repr(spec.get('dataset'))} here "
                           f"({len(ids)} x {len(classes)}, other ids or class names): the dataset changed")
        check.status, check.mismatches = "mismatch", 1
        return check
    _check_selection(check, evals, scores)
    for epoch in scores.epochs:
        rules = ", ".join(r for r, e in scores.selection.items() if e == epoch)
        where = f"epoch {epoch} ({rules})"
        if epoch not in evals:
            _mismatch(check, f"{where}: metrics.jsonl has no evaluation line of this epoch")
            continue
        metrics, class_ap = evaluate(scores.matrix(epoch), test.labels, test.ignore)
        _compare_metrics(check, where, evals[epoch], metrics)
        _compare_class_ap(check, where, scores.class_ap(epoch), np.asarray(class_ap, dtype=np.float64), classes)
    return check


def _mismatch(check: RunCheck, line: str) -> None:
    check.lines.append(line)
    check.status = "mismatch"
    check.mismatches += 1


def _check_selection(check: RunCheck, evals: dict, scores: RunScores) -> None:
    """The epochs the rules pick in metrics.jsonl are the ones scores.npz holds for them."""
    picked = selected_epochs(evals)
    for rule, epoch in picked.items():
        stored = scores.selection.get(rule)
        if stored is None:
            check.lines.append(f"selection {rule}: epoch {epoch} has no stored scores (evaluated before this "
                               "version kept them); not recomputed")
        elif stored != epoch:
            _mismatch(check, f"selection {rule}: metrics.jsonl picks epoch {epoch}, {SCORES_FILE} holds epoch {stored}")
    for rule in sorted(set(scores.selection) - set(picked)):
        _mismatch(check, f"selection {rule}: {SCORES_FILE} holds epoch {scores.selection[rule]}, metrics.jsonl "
                         "picks no epoch")


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _compare_metrics(check: RunCheck, where: str, line: dict, metrics: dict) -> None:
    for key, value in metrics.items():
        name = f"test/{key}"
        if name not in line:
            if key in CORE_METRICS:
                _mismatch(check, f"{where}: {name} is absent from metrics.jsonl, recomputed {value:.6f}")
            continue                                     # a metric added after the run: nothing to compare
        stored = line[name]
        if _is_missing(stored) or _is_missing(value):
            if not (_is_missing(stored) and _is_missing(value)):
                _mismatch(check, f"{where}: {name} stored {short_repr(stored)}, recomputed {value}")
            continue
        if isinstance(stored, bool) or not isinstance(stored, (int, float)):
            _mismatch(check, f"{where}: {name} stored {short_repr(stored)} is not a number, recomputed {value}")
            continue
        diff = abs(float(stored) - float(value))
        check.largest = max(check.largest, diff)
        if diff > (0.0 if key in COUNT_KEYS else TOLERANCE):
            _mismatch(check, f"{where}: {name} stored {float(stored):.6f}, recomputed {float(value):.6f} "
                             f"(differs by {diff:.3g})")


def _compare_class_ap(check: RunCheck, where: str, stored: np.ndarray, again: np.ndarray, classes: list[str]) -> None:
    stored = stored.astype(np.float64)
    both = ~np.isnan(stored) & ~np.isnan(again)
    diff = np.where(both, np.abs(stored - again), 0.0)
    diff[np.isnan(stored) != np.isnan(again)] = np.inf
    if both.any():
        check.largest_ap = max(check.largest_ap, float(diff[both].max()))
    bad = np.flatnonzero(diff > CLASS_AP_TOLERANCE)
    for c in bad[:CLASSES_SHOWN]:
        _mismatch(check, f"{where}: per-class AP of {short_repr(classes[c], 60)} stored {stored[c]:.6f}, "
                         f"recomputed {again[c]:.6f}")
    if len(bad) > CLASSES_SHOWN:
        _mismatch(check, f"{where}: per-class AP of {len(bad) - CLASSES_SHOWN} more classes differ")


def format_lines(result: Recomputed) -> list[str]:
    """One line per finding (naming the run), then the summary line."""
    out = [f"run {one_line(r.name)}: {line}" for r in result.runs for line in r.lines]
    checked = [r for r in result.runs if r.status in ("agree", "mismatch")]
    largest = max((r.largest for r in checked), default=0.0)
    largest_ap = max((r.largest_ap for r in checked), default=0.0)
    parts = [f"{len(checked)} run{'' if len(checked) == 1 else 's'} recomputed from stored scores: "
             f"{result.count('agree')} agree, "
             f"{result.count('mismatch')} disagree"]
    for status, what in (("no_scores", "with no scores (older runs)"), ("broken", "broken"),
                         ("unchecked", "not checked"), ("unfinished", "unfinished (skipped)")):
        if result.count(status):
            parts.append(f"{result.count(status)} {what}")
    out.append(f"recompute: {'; '.join(parts)}. Largest difference: {largest:.3g} in the metrics (tolerance "
               f"{TOLERANCE:g}), {largest_ap:.3g} in the per-class AP (tolerance {CLASS_AP_TOLERANCE:g}), in "
               f"percent points; {result.seconds:.1f} s")
    return out
