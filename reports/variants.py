"""Configuration variants: runs of one method that differ in anything that can change their numbers
(``reports.run_rows.CONFIG_KEYS``) get distinct variant labels, so they are never averaged together as seeds."""
from __future__ import annotations

import json
from typing import Any

import pandas as pd


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
