"""PASCAL VOC 2007 in its VOCdevkit layout: 20 classes, trainval (5,011) for training, test (4,952).

Class order = the official order (spec 1.3; alphabetical, as in both code bases). Image order =
the order of ``ImageSets/Main/trainval.txt`` and ``test.txt``, the order both official mask
generators draw in. A class is positive in an image iff it has at least one object whose
``<difficult>`` is not 1. A class present only as difficult objects ("difficult-only") is:

* ``difficult="negative"`` (HCP code, spec 1.2, preset ``hcp``): a negative, in training and test;
* ``difficult="ignore"`` (CLSL code and the VOC convention, spec 8.6, preset ``clsl``): label 0
  and marked in ``LabelSet.ignore`` of both splits. The test mark excludes the entry from that
  class's AP, as CLSL's ``ignore.npy`` does. In training it stays a negative (the engine's
  targets are ``labels * observed``; ``ignore`` only acts on evaluation), exactly as the CLSL
  code trains: its ``train.txt`` lists only classes with a non-difficult instance.

Malformed input is a one-line :class:`UserError` naming the file (and the line or object) and the
fix, as the official code would crash on it: a missing annotation or a folder in its place, XML
that is not well-formed (empty, truncated, bad bytes), a DOCTYPE or ENTITY declaration (refused
before parsing: no entity expansion), a root other than ``<annotation>``, an object without
``<name>`` or with an unknown class, a ``<difficult>`` value other than 0/1; an image list that is
empty, not UTF-8, has a line that is not an image id (too long, a path, control characters) or
repeats one, or shares an image with the other split; a listed image that is missing (and, with
``check_images``, one that PIL cannot read). A missing ``<difficult>`` tag counts as 0.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from benchmark.core.errors import UserError
from datasets.base import DatasetSplits, LabelSet
from datasets.presets import preset_options
from datasets.readers import (
    ListFile,
    bad_name,
    count_note,
    layout_error,
    layout_problem,
    parse_xml,
    path_kind,
    read_list,
    reading,
    require_images,
    shown,
)

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
DIFFICULT_CHOICES = ("negative", "ignore")
SPLITS = {"train": "trainval", "test": "test"}
LAYOUT = ("<root>/VOC2007/ (or <root>/VOCdevkit/VOC2007/, or root = the VOC2007 folder) holding "
          "Annotations/<id>.xml, ImageSets/Main/trainval.txt and test.txt, JPEGImages/<id>.jpg")
FIX = "re-download the VOC 2007 devkit (VOCtrainval_06-Nov-2007.tar, VOCtest_06-Nov-2007.tar)"
LIST_HOLDS = "one image id (e.g. 000005) per line"


def voc_dir(root: Path | str, folder: str = "VOC2007") -> Path:
    """The ``folder`` (VOC2007, VOC2012) under ``root``: root itself, ``root/<folder>`` or
    ``root/VOCdevkit/<folder>``. Shared with :mod:`datasets.voc2012`."""
    root = Path(root).expanduser()
    for base in (root, root / folder, root / "VOCdevkit" / folder):
        if (base / "Annotations").is_dir() or (base / "ImageSets").is_dir():
            return base
    return root / folder if (root / folder).is_dir() else root


def layout_problems(root: Path | str) -> list[str]:
    """One line per missing folder or file of the layout (empty when complete)."""
    base = voc_dir(root)
    needed = [("folder", base / "Annotations"), ("folder", base / "JPEGImages"),
              *(("file", base / "ImageSets" / "Main" / f"{name}.txt") for name in SPLITS.values())]
    return [problem for problem in (layout_problem(kind, path) for kind, path in needed) if problem]


def _object_entry(obj: ET.Element, xml_path: Path, k: int) -> tuple[str, bool]:
    """(class name, is difficult) of the ``k``-th ``<object>`` (from 0)."""
    where = f"annotation {xml_path} <object> {k}"
    name = (obj.findtext("name") or "").strip().lower()
    if not name:
        raise UserError(f"{where} has no <name>; {FIX}")
    if name not in VOC_CLASSES:
        raise UserError(f"annotation {xml_path} names unknown class {shown(name)} (<object> {k}); expected one of "
                        f"the 20 VOC classes ({FIX})")
    flag = (obj.findtext("difficult") or "0").strip()
    if flag not in ("0", "1"):
        raise UserError(f"{where} has <difficult>{shown(flag)}</difficult>; expected 0 or 1 ({FIX})")
    return name, flag == "1"


def parse_annotation(xml_path: Path) -> dict[str, bool]:
    """Classes present in one image: name -> True if some instance is not difficult."""
    root = parse_xml(xml_path, "annotation", FIX)
    with reading(xml_path, "annotation", FIX):
        if root.tag != "annotation":
            raise UserError(f"annotation {xml_path} has the root element {shown(root.tag)}; the file must hold one "
                            f"<annotation> element ({FIX})")
        present: dict[str, bool] = {}
        for k, obj in enumerate(root.iter("object")):
            name, difficult = _object_entry(obj, xml_path, k)
            present[name] = present.get(name, False) or not difficult
        return present


def read_id_lines(list_file: Path, what: str = "VOC image list", holds: str = LIST_HOLDS,
                  fix: str = FIX) -> tuple[list[str], list[list[str]], ListFile]:
    """The image ids of a VOC list file (first word of each line), each a plain name, none twice,
    with the other words of each line. Shared with :mod:`datasets.voc2012` (its class lists)."""
    listing = read_list(list_file, what, holds, fix, item="image")
    ids, rests, first = [], [], {}
    with reading(listing.path, what, fix):
        for i, line in enumerate(listing.lines):
            image_id, *rest = line.split()
            where = f"{what} {listing.path} line {listing.number(i)}"
            problem = bad_name(image_id, subfolders=False)
            if problem:
                raise UserError(f"{where}: {shown(image_id)} {problem}, so it is not an image id; the file must hold "
                                f"{holds} ({fix})")
            if image_id in first:
                raise UserError(f"{where} repeats image id {shown(image_id)} (first on line {first[image_id]}); "
                                f"each image must be listed once ({fix})")
            first[image_id] = listing.number(i)
            ids.append(image_id)
            rests.append(rest)
    return ids, rests, listing


def read_ids(list_file: Path) -> tuple[list[str], ListFile]:
    """The image ids of a VOC image list (first word of each line), each a plain name, none twice."""
    ids, _, listing = read_id_lines(list_file)
    return ids, listing


def read_split(base: Path, split: str, difficult: str) -> LabelSet:
    """One split in list order; ``difficult`` in :data:`DIFFICULT_CHOICES`."""
    ids, listing = read_ids(base / "ImageSets" / "Main" / f"{SPLITS[split]}.txt")
    column = {name: j for j, name in enumerate(VOC_CLASSES)}
    labels = np.zeros((len(ids), len(VOC_CLASSES)), dtype=np.uint8)
    difficult_only = np.zeros_like(labels, dtype=bool)
    for i, image_id in enumerate(ids):
        xml_path = base / "Annotations" / f"{image_id}.xml"
        if path_kind(xml_path) is None:
            raise UserError(f"VOC image list {listing.path} line {listing.number(i)} names image {shown(image_id)}, "
                            f"but its annotation {xml_path} does not exist; the Annotations folder is incomplete "
                            f"({FIX})")
        for name, positive in parse_annotation(xml_path).items():
            labels[i, column[name]] = positive
            difficult_only[i, column[name]] = not positive
    return LabelSet(name=f"voc2007-{split}", class_names=list(VOC_CLASSES), image_ids=ids,
                    image_paths=[base / "JPEGImages" / f"{i}.jpg" for i in ids], labels=labels,
                    ignore=difficult_only if difficult == "ignore" else None,
                    info={"list_file": str(listing.path), "difficult_only_entries": int(difficult_only.sum()),
                          "difficult": difficult})


def no_overlap(train: LabelSet, test: LabelSet, what: str = "VOC image list", fix: str = FIX) -> None:
    """A UserError when a test image is also a training image (shared with :mod:`datasets.voc2012`)."""
    shared = set(train.image_ids) & set(test.image_ids)
    if shared:
        first = next(i for i in test.image_ids if i in shared)
        raise UserError(f"{what} {test.info['list_file']} lists image {shown(first)}, which "
                        f"{train.info['list_file']} lists too ({len(shared)} shared); the test images must not be "
                        f"training images ({fix})")


def voc_options(dataset: str, preset: str | None, difficult: str | None) -> tuple[dict, str]:
    """(the preset's options, the difficult-entry rule: ``difficult`` or the preset's), checked."""
    options = preset_options(dataset, preset)
    difficult = options["difficult"] if difficult is None else difficult
    if difficult not in DIFFICULT_CHOICES:
        raise UserError(f"VOC difficult handling '{difficult}' is unknown; "
                        f"choose one of: {', '.join(DIFFICULT_CHOICES)}")
    return options, difficult


def load_voc2007(root: Path | str, preset: str | None = None, *, difficult: str | None = None,
                 check_files: bool = True, check_images: bool = False) -> DatasetSplits:
    """VOC 2007 trainval/test. ``difficult`` overrides the preset's choice; ``check_files`` checks
    that every image exists, ``check_images`` also opens and verifies each one (slow)."""
    options, difficult = voc_options("voc2007", preset, difficult)
    problems = layout_problems(root)
    if problems:
        raise layout_error(problems, LAYOUT)
    base = voc_dir(root)
    train, test = (read_split(base, split, difficult) for split in SPLITS)
    no_overlap(train, test)
    if check_files:
        for labelset in (train, test):
            require_images(labelset, labelset.info["list_file"], check_images)
    counts = f"train {train.info['difficult_only_entries']}, test {test.info['difficult_only_entries']}"
    treated = "negative" if difficult == "negative" else "negative in training, ignored in evaluation"
    notes = [f"difficult-only (image, class) entries: {counts} ({treated})"]
    image_note = count_note("images", (len(train), len(test)), (5011, 4952), "VOC 2007")
    notes += image_note or count_note("positives", (int(train.labels.sum()), int(test.labels.sum())),
                                      (7306, 7013), "VOC 2007 without difficult-only labels, spec F1")
    info = {"root": str(base), "preset": options["preset"], "layout": "VOCdevkit", "options": options,
            "notes": notes}
    return DatasetSplits(name="voc2007", train=train, test=test, info=info)
