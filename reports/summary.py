"""The summary every report view shares, computed from the tidy run frame of
:func:`reports.collect.collect_runs`: per (group, method, proportion) the mean and std over seeds
of the selected epoch, the order methods are listed in, how a proportion is printed, and the marks
a cell carries (a failed run, privileged information, masks that differ between cells)."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import pandas as pd

from reports.run_rows import SELECTION_RULES

GROUP_KEYS = ("dataset", "protocol", "mask_protocol", "profile")
AVG = "avg"
SUMMARY_COLUMNS = (*GROUP_KEYS, "selection", "metric", "method", "ratio", "mean", "std", "n_seeds")
MISSING = "–"


def ordered_methods(names: Iterable[str], method_order: Sequence[str] | None = None) -> list[str]:
    """``names`` in ``method_order`` order (a ``method:preset`` variant follows its method),
    the rest alphabetically after them, with ``partial_bce`` (the baseline) first."""
    rank = {name: i for i, name in enumerate(method_order or ["partial_bce"])}

    def key(name: str) -> tuple[int, str]:
        return rank.get(name, rank.get(name.split(":")[0], len(rank))), name

    return sorted(set(names), key=key)


def ratio_label(ratio: float | str) -> str:
    """A known-label proportion as the papers print it: 0.1 -> "10%"; "avg" -> "Avg."."""
    if ratio == AVG:
        return "Avg."
    return f"{round(float(ratio) * 100, 4):g}%"


def _rows(df: pd.DataFrame, selection: str, metric: str) -> pd.DataFrame:
    """The rows of one selection rule, checked."""
    if selection not in SELECTION_RULES:
        raise ValueError(f"unknown selection {selection!r}; choose one of {list(SELECTION_RULES)}")
    if metric not in df.columns:
        raise ValueError(f"unknown metric {metric!r}; the runs have {list(df.columns)}")
    return df[(df["selection"] == selection) & df[metric].notna()]


def _group_summary(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per (method, ratio) mean/std/n over seeds, plus the Avg. rows, for one group."""
    cells = (rows.groupby(["variant", "ratio"])[metric].agg(["mean", "std", "count"])
             .reset_index().rename(columns={"variant": "method", "count": "n_seeds"}))
    ratios = set(cells["ratio"])
    avgs = []
    for method, sub in rows.groupby("variant"):
        if set(sub["ratio"]) != ratios:
            continue  # not run at every proportion: no comparable Avg.
        per_seed = sub.groupby("seed").filter(lambda s: set(s["ratio"]) == ratios)
        seed_avgs = per_seed.groupby("seed")[metric].mean()
        mean = cells.loc[cells["method"] == method, "mean"].mean()
        avgs.append({"method": method, "ratio": AVG, "mean": mean,
                     "std": seed_avgs.std() if len(seed_avgs) > 1 else math.nan,
                     "n_seeds": len(seed_avgs)})
    cells = cells.astype({"ratio": object})
    return pd.concat([cells, pd.DataFrame(avgs)], ignore_index=True) if avgs else cells


def summarise(df: pd.DataFrame, selection: str = "val", metric: str = "mAP") -> pd.DataFrame:
    """Tidy numeric leaderboard: one row per (group, method, ratio or "avg")."""
    rows = _rows(df, selection, metric)
    parts = []
    for keys, group in rows.groupby(list(GROUP_KEYS), sort=True):
        part = _group_summary(group, metric)
        part = part.assign(**dict(zip(GROUP_KEYS, keys)), selection=selection, metric=metric)
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    return pd.concat(parts, ignore_index=True)[list(SUMMARY_COLUMNS)]


def grid_labels(summary: pd.DataFrame, method_order: Sequence[str] | None, marks: dict | None = None) -> tuple[list, list]:
    """Row (methods) and column (sorted ratios, then "avg") labels of one group's table; cells that
    only carry a mark (a failed run) add their method and ratio."""
    cells = [(m, r) for m, r in zip(summary["method"], summary["ratio"])] + list(marks or {})
    methods = ordered_methods([m for m, _ in cells], method_order)
    ratios = sorted({r for _, r in cells if r != AVG})
    return methods, ([*ratios, AVG] if len(ratios) > 1 else ratios)


FAILED_MARK, PRIVILEGED_MARK, MASK_MARK, INHERITED_MARK = "†", "‡", "§", "¶"


def _add_mark(marks: dict, key: tuple, mark: str) -> None:
    """Add ``mark`` to a cell's marks (a string of mark characters), once."""
    if mark not in marks.get(key, ""):
        marks[key] = marks.get(key, "") + mark


def mask_mismatches(runs: pd.DataFrame) -> set[tuple]:
    """(variant, ratio) cells of one group that hold a run whose mask sha256 differs from another
    run's at the same (proportion, seed): such runs saw different partial labels and their cells
    must not be compared (or averaged) silently. Merged result folders are checked the same way."""
    if runs.empty or "mask_sha256" not in runs:
        return set()
    out = set()
    known = runs.drop_duplicates("run_id").dropna(subset=["mask_sha256"])
    for _, cell in known.groupby(["ratio", "seed"]):
        if cell["mask_sha256"].nunique() > 1:
            out |= set(zip(cell["variant"], cell["ratio"]))
    return out


def cell_marks(runs: pd.DataFrame, failed: pd.DataFrame | None) -> tuple[dict, list[str]]:
    """Marks for one group's cells and their footnotes: ``failed†`` where a run failed and none
    finished, ``‡`` where a run used privileged information (values from hidden labels), ``§``
    where runs of one (proportion, seed) used masks with different sha256, ``¶`` where a run trained on
    an inherited recipe (no official recipe for its method or dataset)."""
    marks: dict = {}
    notes = []
    if failed is not None and not failed.empty:
        done = set(zip(runs["variant"], runs["ratio"])) if not runs.empty else set()
        reasons = []
        for _, row in failed.iterrows():
            if (row["variant"], row["ratio"]) not in done:
                _add_mark(marks, (row["variant"], row["ratio"]), FAILED_MARK)
                reasons.append(f"{row['variant']} {ratio_label(row['ratio'])} seed {row['seed']}: {row['reason']}")
        if reasons:
            notes.append(f"{FAILED_MARK} failed, no finished run in the cell: " + "; ".join(sorted(reasons)))
    if "privileged" in runs and runs["privileged"].fillna("").astype(bool).any():
        used = runs[runs["privileged"].fillna("").astype(bool)]
        for variant, ratio in zip(used["variant"], used["ratio"]):
            _add_mark(marks, (variant, ratio), PRIVILEGED_MARK)
            _add_mark(marks, (variant, AVG), PRIVILEGED_MARK)
        keys = ", ".join(sorted(set(",".join(used["privileged"]).split(","))))
        notes.append(f"{PRIVILEGED_MARK} used privileged information taken from the hidden training labels ({keys}); "
                     "not comparable with runs that did not")
    if "inherited_recipe" in runs and runs["inherited_recipe"].fillna(False).astype(bool).any():
        used = runs[runs["inherited_recipe"].fillna(False).astype(bool)]
        for variant, ratio in zip(used["variant"], used["ratio"]):
            _add_mark(marks, (variant, ratio), INHERITED_MARK)
            _add_mark(marks, (variant, AVG), INHERITED_MARK)
        notes.append(f"{INHERITED_MARK} trained on an inherited recipe: the official code has none for this method "
                     "or dataset (spec.json recipe.inherited says which and why; python run_benchmark.py recipes)")
    mismatched = mask_mismatches(runs)
    for variant, ratio in mismatched:
        _add_mark(marks, (variant, ratio), MASK_MARK)
        _add_mark(marks, (variant, AVG), MASK_MARK)
    if mismatched:
        notes.append(f"{MASK_MARK} the runs of this cell and of other cells at the same proportion and seed used "
                     "different masks (sha256); see the mask line above")
    return marks, notes


def group_title(keys: tuple) -> str:
    dataset, protocol, mask_protocol, profile = keys
    return f"{dataset} · {protocol} · mask {mask_protocol} · profile {profile}"


def in_group(frame: pd.DataFrame, keys: tuple) -> pd.DataFrame:
    """The rows of ``frame`` that belong to the group ``keys`` (values of :data:`GROUP_KEYS`)."""
    return frame[(frame[list(GROUP_KEYS)] == pd.Series(keys, index=GROUP_KEYS)).all(axis=1)]


def marks_for(df: pd.DataFrame, failed: pd.DataFrame | None, keys: tuple) -> tuple[dict, list[str]]:
    failed_here = in_group(failed, keys) if failed is not None and not failed.empty else None
    return cell_marks(in_group(df, keys) if not df.empty else df, failed_here)
