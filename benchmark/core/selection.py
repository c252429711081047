"""The epoch-selection rules of the suite, in one place: the report picks the epoch of each rule from a
run's evaluation lines (``reports.run_rows``), and the engine keeps the test scores of exactly those
epochs at the end of a run (``benchmark.core.scores``). Pure functions of the evaluation lines as
metrics.jsonl holds them (``{epoch: line}``, a later line of one epoch winning)."""
from __future__ import annotations

import math
from typing import Any

SELECTION_RULES: dict[str, str] = {
    "val": "epoch with the best val/mAP on the held-out split of the training set; "
    "earliest epoch on ties",
    "last": "last evaluated epoch",
    "oracle": "epoch with the best test/mAP, i.e. selection on the test set as in the "
    "official code (optimistic)",
}

RULE_METRIC = {"val": "val/mAP", "oracle": "test/mAP"}      # what the best-epoch rules maximise


def finite_number(value: Any) -> float | None:
    """``value`` as a finite float, or None (bools, strings, NaN and inf are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def select_epoch(evals: dict[int, dict], rule: str) -> int | None:
    """The epoch that ``rule`` picks, or None when no line carries the metric it needs."""
    if rule == "last":
        return max(evals) if evals else None
    key = RULE_METRIC.get(rule)
    if key is None:
        raise ValueError(f"unknown selection rule {rule!r}; choose one of {list(SELECTION_RULES)}")
    scored = [(ep, finite_number(line.get(key))) for ep, line in sorted(evals.items())]
    scored = [(ep, value) for ep, value in scored if value is not None]
    if not scored:
        return None
    best = max(value for _, value in scored)
    return next(ep for ep, value in scored if value == best)  # earliest among ties


def selected_epochs(evals: dict[int, dict]) -> dict[str, int]:
    """``{rule: epoch}`` for every rule that picks an epoch (in SELECTION_RULES order)."""
    picked = {rule: select_epoch(evals, rule) for rule in SELECTION_RULES}
    return {rule: epoch for rule, epoch in picked.items() if epoch is not None}
