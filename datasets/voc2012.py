"""PASCAL VOC 2012 as the single-positive papers use it: 20 classes, ``train`` (5,717) for training,
the official ``val`` (5,823) as the test split (the VOC 2012 test labels are not public).

Labels come from the per-class lists ``ImageSets/Main/<class>_<split>.txt`` (one ``<image id>
<label>`` line per image of the split, label 1 = present, -1 = absent, 0 = present only as
*difficult* objects), read as the SPML code (Cole et al., CVPR 2021, ``preproc/format_pascal.py``)
reads them: only 1 is a positive, so a difficult-only class (0) is a negative; images without any
positive are left out; images are in the order of their file names (``<id>.jpg``, sorted). The
code bases built on SPML (ACK, GR Loss, IGNORE, AEVLP, VLPL) use its files.

* ``difficult="negative"`` (SPML; presets ``hcp`` and, by default, this dataset's): 0 is a negative
  in training and test;
* ``difficult="ignore"`` (the VOC convention, preset ``clsl``): 0 is label 0 and marked in
  ``LabelSet.ignore`` (excluded from that class's test AP), a negative in training.

The suite's held-out validation rows come from ``train`` (``benchmark/engine/data.py``), as SPML
splits its validation set off the official train list. The folder helpers and the image-id checks
are those of :mod:`datasets.voc2007`. Malformed input is one :class:`UserError` line naming the file
and the line: a missing class list, an empty one, a line that is not ``<image id> <label>``, a label
other than -1/0/1, an image listed twice, a class list whose images are not those of the split's
list ``<split>.txt`` (of the first class list where that is absent), an image in both splits, a
listed image that is missing (and, with ``check_images``, unreadable).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmark.core.errors import UserError
from datasets.base import DatasetSplits, LabelSet
from datasets.readers import (
    count_note,
    is_file,
    layout_error,
    layout_problem,
    require_images,
    shown,
)
from datasets.voc2007 import (
    VOC_CLASSES,
    no_overlap,
    read_id_lines,
    voc_dir,
    voc_options,
)

SPLITS = {"train": "train", "test": "val"}
LAYOUT = ("<root>/VOC2012/ (or <root>/VOCdevkit/VOC2012/, or root = the VOC2012 folder) holding "
          "ImageSets/Main/<class>_train.txt and <class>_val.txt for the 20 classes, JPEGImages/<id>.jpg")
FIX = "re-download the VOC 2012 devkit (VOCtrainval_11-May-2012.tar)"
WHAT = "VOC class list"
HOLDS = "one '<image id> <label>' line per image (label 1, -1 or 0 = difficult only), e.g. '2008_000008 -1'"
SPLIT_HOLDS = "one image id (e.g. 2008_000008) per line"
LABELS = {"1": 1, "-1": -1, "0": 0}
STANDARD = (5717, 5823)   # images of the official train / val lists


def layout_problems(root: Path | str) -> list[str]:
    """One line per missing folder or class list of the layout (empty when complete)."""
    base = voc_dir(root, "VOC2012")
    main = base / "ImageSets" / "Main"
    problems = [layout_problem("folder", base / "JPEGImages"), layout_problem("folder", main)]
    if problems[1] is None:
        problems += [layout_problem("file", main / f"{name}_{split}.txt")
                     for split in SPLITS.values() for name in VOC_CLASSES]
    return [problem for problem in problems if problem]


def read_class_list(path: Path) -> dict[str, int]:
    """image id -> label (1, -1, 0) of one ``<class>_<split>.txt``, in file order."""
    ids, rests, listing = read_id_lines(path, WHAT, HOLDS, FIX)
    values = {}
    for i, (image_id, rest) in enumerate(zip(ids, rests)):
        if len(rest) != 1 or rest[0] not in LABELS:
            found = " ".join(rest) if rest else "nothing"
            raise UserError(f"{WHAT} {listing.path} line {listing.number(i)}: image {shown(image_id)} has label "
                            f"{shown(found)}; the file must hold {HOLDS} ({FIX})")
        values[image_id] = LABELS[rest[0]]
    return values


def _same_images(first: dict, first_path: Path, values: dict, path: Path) -> None:
    """Every class list of a split lists the same images (each VOC class list covers the whole split)."""
    if values.keys() == first.keys():
        return
    extra = next((i for i in values if i not in first), None)
    if extra is not None:
        raise UserError(f"{WHAT} {path} lists image {shown(extra)}, which {first_path} does not; the class lists "
                        f"of a split must list the same images ({FIX})")
    absent = next(i for i in first if i not in values)
    raise UserError(f"{WHAT} {path} does not list image {shown(absent)}, which {first_path} lists; the class lists "
                    f"of a split must list the same images ({FIX})")


def read_split(base: Path, split: str, difficult: str) -> LabelSet:
    """One split: images with a positive, sorted by file name; ``difficult`` in :data:`DIFFICULT_CHOICES`.
    Every class list must list the images of ``<split>.txt`` (of the first class list when that is absent)."""
    main = base / "ImageSets" / "Main"
    first_path = main / f"{SPLITS[split]}.txt"
    first = dict.fromkeys(read_id_lines(first_path, "VOC image list", SPLIT_HOLDS, FIX)[0]) \
        if is_file(first_path) else None
    table = {}
    for name in VOC_CLASSES:
        path = main / f"{name}_{SPLITS[split]}.txt"
        values = read_class_list(path)
        if first is None:
            first, first_path = values, path
        _same_images(first, first_path, values, path)
        table[name] = values
    ids = sorted(first, key=lambda i: f"{i}.jpg")        # SPML sorts the file names
    raw = np.array([[table[name][i] for name in VOC_CLASSES] for i in ids], dtype=np.int8).reshape(len(ids), 20)
    keep = (raw == 1).any(axis=1)
    raw, dropped = raw[keep], int((~keep).sum())
    ids = [i for i, k in zip(ids, keep) if k]
    difficult_only = raw == 0
    return LabelSet(name=f"voc2012-{split}", class_names=list(VOC_CLASSES), image_ids=ids,
                    image_paths=[base / "JPEGImages" / f"{i}.jpg" for i in ids], labels=raw == 1,
                    ignore=difficult_only if difficult == "ignore" else None,
                    info={"list_file": str(first_path), "difficult_only_entries": int(difficult_only.sum()),
                          "dropped_without_positive": dropped, "listed": len(keep), "difficult": difficult})


def load_voc2012(root: Path | str, preset: str | None = None, *, difficult: str | None = None,
                 check_files: bool = True, check_images: bool = False) -> DatasetSplits:
    """VOC 2012 train / val (the test split). ``difficult`` overrides the preset's choice; ``check_files``
    checks that every image exists, ``check_images`` also opens and verifies each one (slow)."""
    options, difficult = voc_options("voc2012", preset, difficult)
    problems = layout_problems(root)
    if problems:
        raise layout_error(problems, LAYOUT)
    base = voc_dir(root, "VOC2012")
    train, test = (read_split(base, split, difficult) for split in SPLITS)
    no_overlap(train, test, WHAT, FIX)
    if check_files:
        for labelset in (train, test):
            require_images(labelset, labelset.info["list_file"], check_images)
    counts = f"train {train.info['difficult_only_entries']}, test {test.info['difficult_only_entries']}"
    treated = "negative" if difficult == "negative" else "negative in training, ignored in evaluation"
    notes = [f"difficult-only (image, class) entries (label 0): {counts} ({treated})"]
    dropped = (train.info["dropped_without_positive"], test.info["dropped_without_positive"])
    if any(dropped):
        notes.append(f"images without a positive left out (as SPML): train {dropped[0]}, test {dropped[1]}")
    notes += count_note("listed images", (train.info["listed"], test.info["listed"]), STANDARD,
                        "VOC 2012 train/val")
    info = {"root": str(base), "preset": options["preset"], "layout": "VOCdevkit", "options": options,
            "test_split": "val", "notes": notes}
    return DatasetSplits(name="voc2012", train=train, test=test, info=info)
