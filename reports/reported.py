"""The papers' published numbers, machine-readable, for printing beside our leaderboard.

``reports/reported_results.csv`` holds one row per published number: ``dataset`` (our registry
name), ``method`` (as printed in the source), ``method_key`` (our method of the same name, if
any), ``metric`` (mAP / OF1 / CF1), ``proportion`` (known-label proportion, ``avg`` for the
mean over 10 %..90 %, or ``single_positive`` for one known positive per image, the column
"single positive"), ``value`` (percent), ``backbone`` (empty when the source does not say),
``evidence`` (``2nd`` = printed in another paper, ``readme`` = the authors' own number in their
official repository (README, poster), ``aggregator`` = a results aggregator, not checked against
the paper), ``source``, ``source_url`` and ``note``.

What is there (spec section 9): the averages over 10 %..90 % of Table 1 of the Saliency
Regularization paper (ICCV 2023) for nine methods on MS-COCO, VG-200 and VOC 2007, and the
CLSL numbers at 10 % known labels listed by an aggregator; the single-positive mAP on VOC 2012,
MS-COCO, NUS-WIDE and CUB of the ACK poster and the AEVLP, VLPL and SCPNet READMEs (wave-3 specs,
section 7 and section 6). The per-proportion tables of the original papers could not be retrieved.
Note that "CSL (Ben-Baruch et al.)" is a different method from CLSL (renamed CSL in its v2, He et al.).

These numbers come from the official code bases' protocols (ResNet-101 fine-tuned at 448 px, model
selection on the test set, HCP's VOC difficult handling; the single-positive ones: ResNet-50 or
CLIP RN50 as the ``backbone`` column says, on SPML's data files): they are context, not a target
that the ``frozen`` protocol or the synthetic dataset can be compared against.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from benchmark.core.errors import UserError
from reports.summary import AVG, MISSING, ratio_label

REPORTED_CSV = Path(__file__).with_name("reported_results.csv")
LABEL = "reported"
SINGLE = "single_positive"          # the proportion of a single-positive number (the mask protocol's name)
SINGLE_LABEL = "single positive"    # its column, as reports/tables.py labels single-positive runs


def _label(proportion) -> str:
    return SINGLE_LABEL if proportion == SINGLE else ratio_label(proportion)


def load_reported(path: Path | str | None = None) -> pd.DataFrame:
    """Every published number as a tidy frame (``proportion`` is a float, ``"avg"`` or ``"single_positive"``)."""
    frame = pd.read_csv(path or REPORTED_CSV, dtype={"proportion": str}, keep_default_na=False)
    frame["value"] = frame["value"].astype(float)
    frame["proportion"] = [p if p in (AVG, SINGLE) else float(p) for p in frame["proportion"]]
    return frame


def reported_table(dataset: str, metric: str = "mAP", path: Path | str | None = None) -> pd.DataFrame:
    """Published ``metric`` numbers on ``dataset``: one row per method (as printed), columns the
    proportions as the papers label them ("10%", ..., "Avg."), then ``method_key``, ``evidence``
    and ``source_url``. Empty when nothing was published for that dataset (e.g. synthetic)."""
    frame = load_reported(path)
    if metric not in set(frame["metric"]):
        raise UserError(f"no reported numbers for metric '{metric}'; the table has: "
                        + ", ".join(sorted(set(frame["metric"]))))
    rows = frame[(frame["dataset"] == dataset.lower()) & (frame["metric"] == metric)]
    if rows.empty:
        return pd.DataFrame()
    ratios = sorted({p for p in rows["proportion"] if p not in (AVG, SINGLE)})
    columns = [ratio_label(r) for r in ratios] + [_label(p) for p in (AVG, SINGLE) if (rows["proportion"] == p).any()]
    table = rows.assign(column=[_label(p) for p in rows["proportion"]]).pivot_table(
        index="method", columns="column", values="value", aggfunc="first", sort=False)
    table = table.reindex(columns=columns)
    meta = rows.groupby("method", sort=False)[["method_key", "evidence", "source_url"]].first()
    table = table.join(meta)
    table.columns.name = None
    return table


def _column_key(label: str) -> tuple:
    """Sort "10%" < "20%" < ... < "Avg."; other labels last, by name."""
    if label == ratio_label(AVG):
        return (1, 0.0, label)
    try:
        return (0, float(label.rstrip("%")), label)
    except ValueError:
        return (2, 0.0, label)


def beside_leaderboard(table: pd.DataFrame, dataset: str, metric: str = "mAP", digits: int = 1) -> pd.DataFrame:
    """One group's formatted leaderboard (rows = methods, columns "10%" .. "Avg.", see
    :func:`reports.tables.format_table`) with the published numbers appended as rows named
    ``"<method> [reported]"``; columns only one side has are kept, the other side shows "–". A
    single-positive table gets only the single-positive numbers, any other table none of them."""
    reported = reported_table(dataset, metric)
    single = SINGLE_LABEL in table.columns
    numeric = [c for c in reported.columns if c not in ("method_key", "evidence", "source_url")
               and (c == SINGLE_LABEL) == single]
    reported = reported.dropna(how="all", subset=numeric) if numeric else reported.iloc[:0]
    if reported.empty:
        return table
    columns = sorted(set(table.columns) | set(numeric), key=_column_key)
    extra = pd.DataFrame(index=[f"{m} [{LABEL}]" for m in reported.index], columns=columns, dtype=object)
    for method, row in reported.iterrows():
        for column in columns:
            value = row.get(column, math.nan)
            extra.loc[f"{method} [{LABEL}]", column] = (MISSING if pd.isna(value) else f"{float(value):.{digits}f}")
    merged = pd.concat([table.reindex(columns=columns).fillna(MISSING), extra])
    merged.index.name = table.index.name
    return merged


def reported_sources(dataset: str, metric: str = "mAP") -> list[str]:
    """One line per source of the published numbers on ``dataset`` (for a table's footnote)."""
    frame = load_reported()
    rows = frame[(frame["dataset"] == dataset.lower()) & (frame["metric"] == metric)]
    lines = []
    for (source, url, evidence), group in rows.groupby(["source", "source_url", "evidence"], sort=False):
        kinds = sorted({_label(p) for p in group["proportion"]})
        lines.append(f"{LABEL} ({evidence}, {', '.join(kinds)}): {source} <{url}>")
    return lines


def reported_markdown(dataset: str, metric: str = "mAP") -> str:
    """A Markdown block: the published numbers of ``dataset`` and their sources ('' if none)."""
    from tabulate import tabulate

    table = reported_table(dataset, metric)
    if table.empty:
        return ""
    numeric = table.drop(columns=["method_key", "evidence", "source_url"])
    body = [[m, *(MISSING if pd.isna(v) else f"{v:.1f}" for v in row)] for m, row in numeric.iterrows()]
    text = tabulate(body, headers=["method", *numeric.columns], tablefmt="github", disable_numparse=True)
    notes = "\n".join(f"- {line}" for line in reported_sources(dataset, metric))
    return f"Published {metric} on {dataset} ({LABEL}; other protocol, see reports/reported.py):\n\n{text}\n\n{notes}\n"
