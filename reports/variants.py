"""Configuration variants: runs of one method that differ in anything that can change their numbers
(their identity, :meth:`benchmark.config.run_spec.RunSpec.numbers_identity`, read from spec.json) get
distinct variant labels, so they are never averaged together as seeds.

Runs that differ only in where they were executed (device, torch threads: the last digits can move)
stay one row when they do not contradict each other, with the executions named in the row's
``execution`` column: seeds from two machines merge. The same cell and seed executed twice must agree
within :data:`EXECUTION_TOLERANCE` mAP points; then one copy is kept (the first execution in sorted
order). When they disagree, each execution becomes its own variant (``hst [cpu, 1 thread]``), so no
number on the leaderboard mixes them.
"""
from __future__ import annotations

import json
from typing import Any

import pandas as pd

from benchmark.core.escape import one_line

EXECUTION_TOLERANCE = 0.05      # mAP points: the same run executed twice agrees within this


def label_configurations(frame: pd.DataFrame) -> pd.DataFrame:
    """Runs of one method (and preset) in one group that differ in configuration become separate
    variants, named by the fields that differ (``partial_bce [epochs=1]``): a leaderboard cell only
    ever aggregates runs that differ by seed."""
    if frame.empty or "_config" not in frame:
        return frame
    frame = _merge_executions(frame)
    keys = ["dataset", "protocol", "mask_protocol", "profile", "variant"]
    for _, group in frame.groupby(keys, dropna=False, sort=False):
        configs = {c: json.loads(c) for c in group["_config"].unique()}
        if len(configs) < 2:
            continue
        differing = sorted({k for c in configs.values() for k in c
                            if len({json.dumps(o.get(k), sort_keys=True) for o in configs.values()}) > 1})
        shown = [k for k in differing if k != "resolved_config"] or differing
        for text, config in configs.items():
            label = ", ".join(f"{_short(k)}={_short(config.get(k))}" for k in shown)
            rows = group.index[group["_config"] == text]
            frame.loc[rows, "variant"] = frame.loc[rows, "variant"] + f" [{label}]"
    return frame


def _merge_executions(frame: pd.DataFrame) -> pd.DataFrame:
    """One configuration's runs under several executions: one row set when every doubly executed
    (ratio, seed) agrees, else one variant per execution (see the module doc)."""
    if "execution" not in frame:
        return frame
    frame = frame.copy()
    keep = pd.Series(True, index=frame.index)
    keys = ["dataset", "protocol", "mask_protocol", "profile", "variant", "_config"]
    for _, group in frame.groupby(keys, dropna=False, sort=False):
        executions = sorted(group["execution"].dropna().unique())
        if len(executions) < 2:
            continue
        headline = group[group["selection"] == "val"] if "selection" in group else group
        agree = True
        for _, cell in headline.groupby(["ratio", "seed"], sort=False):
            values = cell["mAP"].astype(float)
            if cell["execution"].nunique() > 1 and values.max() - values.min() > EXECUTION_TOLERANCE:
                agree = False
        if not agree:
            frame.loc[group.index, "variant"] = group["variant"] + " [" + group["execution"] + "]"
            continue
        frame.loc[group.index, "execution"] = "; ".join(executions)
        order = group.assign(_rank=group["execution"].map({e: i for i, e in enumerate(executions)}))
        for _, cell in order.groupby(["ratio", "seed"], sort=False):
            first = cell["_rank"].min()
            keep[cell.index[cell["_rank"] != first]] = False
    return frame[keep]


def _short(value: Any) -> str:
    """A configuration key or value in a variant label: one printable line of at most 40 characters
    (values come from spec.json, untrusted)."""
    text = json.dumps(value, sort_keys=True, default=str) if isinstance(value, (dict, list)) else str(value)
    text = one_line(text)
    return text if len(text) <= 40 else text[:37] + "..."
