"""Check a real dataset folder before a long run.

``python run_benchmark.py prepare --dataset voc2007 --data-root /data/VOCdevkit`` (or
:func:`main`) prints, in a few lines and without a traceback, what is missing or malformed:
missing folders and files, malformed annotations, missing and unreadable images (each image is
opened with PIL and verified), and per split the image, positive and ignore counts, images
without labels and what the preset dropped. Exit status 0 = ready, 1 = problems, 2 = bad usage.

The loaders (``datasets/voc2007.py``, ``coco2014.py``, ``nuswide.py``, ``vg200.py``, ``voc2012.py``,
``cub.py``) read every file through the safe readers of :mod:`datasets.readers`. Whatever is wrong with
a file (missing, a folder, not UTF-8, empty, truncated, nested past the recursion limit, a
missing or mistyped key, an overlong line...) is one :class:`UserError` line naming the file and
the fix, the same line here (a problem, exit 1) and in a grid's preflight (``error:``, exit 2).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmark.core.errors import UserError
from datasets.base import DatasetSplits, LabelSet
from datasets.presets import resolve_preset
from datasets.readers import missing_files, unreadable_images

DATASET_MODULES = {"voc2007": "datasets.voc2007", "coco2014": "datasets.coco2014",
                   "nuswide": "datasets.nuswide", "vg200": "datasets.vg200", "voc2012": "datasets.voc2012",
                   "cub": "datasets.cub"}
SHOW = 3  # example paths shown per problem


# ----------------------------------------------------------------------------- the checker
@dataclass
class PrepareReport:
    """What :func:`check_dataset` found: problems make ``ok`` False; lines are printed in order."""

    dataset: str
    root: Path
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str) -> None:
        self.problems.append(text)
        self.lines.append(f"  problem: {text}")

    def text(self) -> str:
        head = f"{self.dataset} at {self.root}"
        tail = f"OK: {self.dataset} is ready" if self.ok else f"NOT READY: {len(self.problems)} problem(s) found"
        return "\n".join([head, *self.lines, tail])


def _module(dataset: str):
    if dataset not in DATASET_MODULES:
        raise UserError(f"prepare knows no dataset '{dataset}'; choose one of: {', '.join(DATASET_MODULES)}")
    return importlib.import_module(DATASET_MODULES[dataset])


def split_summary(labelset: LabelSet, split: str) -> str:
    """``train: N images, C classes, P positives (per class a..b), E without labels, I ignored``."""
    per_class = labelset.labels.sum(axis=0, dtype=np.int64)
    low, high = (int(per_class.min()), int(per_class.max())) if per_class.size else (0, 0)
    empty = int((labelset.labels.sum(axis=1) == 0).sum())
    ignored = 0 if labelset.ignore is None else int(labelset.ignore.sum())
    return (f"  {split}: {len(labelset)} images, {labelset.num_classes} classes, {int(per_class.sum())} positives "
            f"(per class {low}..{high}), "
            f"{empty} without labels, {ignored} ignored entries")


def _check_images(report: PrepareReport, splits: DatasetSplits, verify: bool) -> None:
    paths = list(splits.train.image_paths) + list(splits.test.image_paths)
    missing = missing_files(paths)
    if missing:
        report.problem(f"{len(missing)} of {len(paths)} images missing, e.g. "
                       + ", ".join(str(p) for p in missing[:SHOW]))
    gone = set(missing)
    bad = unreadable_images([p for p in paths if p not in gone]) if verify else []
    if bad:
        report.problem(f"{len(bad)} of {len(paths)} images unreadable, e.g. "
                       + ", ".join(f"{p} ({why})" for p, why in bad[:SHOW]))
    checked = "opened and verified" if verify else "checked for existence"
    report.lines.append(f"  images: {len(paths)} {checked}, {len(missing)} missing, {len(bad)} unreadable")


def _notes(report: PrepareReport, splits: DatasetSplits) -> None:
    for split, labelset in (("train", splits.train), ("test", splits.test)):
        report.lines.append(split_summary(labelset, split))
        zero = [n for n, c in zip(labelset.class_names, labelset.labels.sum(axis=0)) if c == 0]
        if zero:
            report.lines.append(f"  warning: {len(zero)} class(es) without a positive in {split}: "
                                + ", ".join(zero[:5]) + (" ..." if len(zero) > 5 else ""))
    for note in splits.info.get("notes", []):
        report.lines.append(f"  note: {note}")


def check_dataset(name: str, root: str | Path, preset: str | None = None, verify: bool = True) -> PrepareReport:
    """Check the folder ``root`` of dataset ``name``; never raises for a bad folder (see the report)."""
    module = _module(name)
    resolve_preset(name, preset)  # an unknown preset is a usage error, not a folder problem
    report = PrepareReport(name, Path(root).expanduser())
    if not report.root.is_dir():
        report.problem(f"data root {report.root} is not a folder")
        report.lines.append(f"  expected layout: {module.LAYOUT}")
        return report
    problems = module.layout_problems(report.root)
    if problems:
        for text in problems:
            report.problem(text)
        report.lines.append(f"  expected layout: {module.LAYOUT}")
        return report
    try:
        splits = getattr(module, f"load_{name}")(report.root, preset=preset, check_files=False)
    except UserError as exc:
        report.problem(str(exc))
        return report
    report.lines.insert(0, f"  preset {splits.info.get('preset')}, layout {splits.info.get('layout', 'standard')}")
    _notes(report, splits)
    _check_images(report, splits, verify)
    return report


def main(argv: list[str] | None = None) -> int:
    """``prepare --dataset NAME --data-root PATH [--preset hcp|clsl] [--no-verify]``."""
    parser = argparse.ArgumentParser(prog="run_benchmark.py prepare",
                                     description="Check a real dataset folder before a long run.")
    parser.add_argument("--dataset", required=True, help=f"one of: {', '.join(DATASET_MODULES)}")
    parser.add_argument("--data-root", required=True, help="the dataset's folder")
    parser.add_argument("--preset", default=None, help="hcp | clsl (default: the dataset's default preset)")
    parser.add_argument("--no-verify", action="store_true", help="only check that images exist (faster)")
    args = parser.parse_args(argv)
    quiet = logging.getLogger("datasets")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the report prints the loaders' notes itself
    try:
        report = check_dataset(args.dataset, args.data_root, args.preset, verify=not args.no_verify)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        quiet.setLevel(level)
    print(report.text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

