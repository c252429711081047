"""Reader for MS-COCO-format instance annotations (used by MS-COCO 2014 and the synthetic set).

Class order is the COCO category order (categories sorted by id); image order is the order of
``images`` in the JSON file, which is the order the HCP mask generator draws in (spec 1.1).
Every annotation counts, crowd ones included, as in the HCP code.

Labels are what pycocotools' index gives (``coco.cats`` sorted by id, ``coco.imgs[id]['file_name']``,
every annotation's ``image_id`` and ``category_id``), read without it: the file is parsed and
checked here in one pass, so that a malformed file is one
:class:`UserError` line naming the file, the entry (``image 3``, ``annotation 17``: the position
in its list, from 0) and the fix, never a traceback: not valid JSON (empty, truncated, not UTF-8,
nested past Python's recursion limit), a missing or mistyped key (``file_name``, a category
``name``, an id that is a string), a repeated image or category id, an annotation naming an image
or category that does not exist, a file name that climbs out of the image folder.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmark.core.errors import UserError
from datasets.base import LabelSet
from datasets.readers import (
    bad_class_name,
    bad_name,
    is_file,
    json_type,
    load_json,
    reading,
    shown,
)

KEYS = ("images", "annotations", "categories")
WHAT = "annotation file"
DEFAULT_FIX = "re-download or regenerate it"


class _Checker:
    """The explicit structure checks of one COCO instances file; every failure is one line."""

    def __init__(self, ann_file: Path, fix: str):
        self.ann_file, self.fix = ann_file, fix

    def fail(self, problem: str) -> UserError:
        return UserError(f"{WHAT} {self.ann_file}: {problem}; {self.fix}")

    def entry(self, value, where: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(f"{where} is a JSON {json_type(value)}, not an object")
        return value

    def integer(self, entry: dict, key: str, where: str) -> int:
        if key not in entry:
            raise self.fail(f"{where} has no '{key}'")
        value = entry[key]
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(f"{where} has '{key}' {shown(value)}, a JSON {json_type(value)}; it must be an integer")
        return value

    def text(self, entry: dict, key: str, where: str, why) -> str:
        if key not in entry:
            raise self.fail(f"{where} has no '{key}'")
        problem = why(entry[key])
        if problem:
            raise self.fail(f"{where} has '{key}' {shown(entry[key])}, which {problem}")
        return entry[key]

    def tables(self, data) -> tuple[list, list, list]:
        if not isinstance(data, dict):
            raise self.fail(f"the file holds a JSON {json_type(data)}; it must be a JSON object with "
                            "'images', 'annotations' and 'categories' lists (COCO instances format)")
        for key in KEYS:
            if key not in data:
                raise self.fail(f"there is no '{key}' list; it is not a COCO instances file")
            if not isinstance(data[key], list):
                raise self.fail(f"'{key}' is a JSON {json_type(data[key])}, not a list")
        for key in ("images", "categories"):
            if not data[key]:
                raise self.fail(f"the '{key}' list is empty")
        return data["images"], data["annotations"], data["categories"]

    def categories(self, categories: list) -> dict[int, str]:
        names: dict[int, str] = {}
        first: dict = {}
        for k, cat in enumerate(categories):
            where = f"category {k}"
            cat = self.entry(cat, where)
            cid = self.integer(cat, "id", where)
            name = self.text(cat, "name", where, bad_class_name)
            if cid in names:
                raise self.fail(f"{where} repeats category id {cid} (first used by category {first[cid]})")
            if name in first:
                raise self.fail(f"{where} repeats the category name {shown(name)} (first used by category "
                                f"{first[name]})")
            names[cid], first[cid], first[name] = name, k, k
        return names

    def images(self, images: list) -> tuple[list[int], list[str]]:
        ids, files, first = [], [], {}
        for k, img in enumerate(images):
            where = f"image {k}"
            img = self.entry(img, where)
            iid = self.integer(img, "id", where)
            name = self.text(img, "file_name", where, bad_name)
            if iid in first:
                raise self.fail(f"{where} repeats image id {iid} (first used by image {first[iid]})")
            first[iid] = k
            ids.append(iid)
            files.append(name)
        return ids, files

    def annotation(self, ann, k: int, row: dict, column: dict) -> None:
        """Raise the precise error of annotation ``k`` (the slow path of :meth:`labels`)."""
        where = f"annotation {k}"
        ann = self.entry(ann, where)
        self.integer(ann, "id", where)                       # every COCO annotation has one (pycocotools needs it)
        iid = self.integer(ann, "image_id", where)
        cid = self.integer(ann, "category_id", where)
        if cid not in column:
            raise UserError(f"{WHAT} {self.ann_file}: {where} has unknown category id {cid}; the file is "
                            f"corrupt or mixes datasets ({self.fix})")
        if iid not in row:
            raise self.fail(f"{where} names unknown image id {iid}")

    def labels(self, annotations: list, row: dict, column: dict) -> np.ndarray:
        rows, cols = [], []
        for k, ann in enumerate(annotations):             # fast path; any doubt goes to annotation()
            try:
                iid, cid, aid = ann["image_id"], ann["category_id"], ann["id"]
                if type(iid) is not int or type(cid) is not int or type(aid) is not int:
                    raise TypeError
                rows.append(row[iid])
                cols.append(column[cid])
            except (KeyError, TypeError, IndexError):
                self.annotation(ann, k, row, column)
                raise  # annotation() always raises for an entry the fast path refused
        labels = np.zeros((len(row), len(column)), dtype=np.uint8)
        labels[np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)] = 1
        return labels


def load_coco_instances(ann_file: Path | str, image_dir: Path | str, name: str, *,
                        keep_empty: bool = True, check_images: bool = True, fix: str = DEFAULT_FIX) -> LabelSet:
    """Image-level labels from a COCO instances file.

    keep_empty: keep images without any annotation as all-negative rows (HCP code) or drop them
    (CLSL code); the number dropped is stored in ``info['dropped_empty']``. ``fix`` ends every
    message about a malformed file (e.g. "re-download instances_train2014.json").
    """
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    check = _Checker(ann_file, fix)
    data = load_json(ann_file, WHAT, fix)
    with reading(ann_file, WHAT, fix):
        images, annotations, categories = check.tables(data)
        cat_names = check.categories(categories)
        image_ids, files = check.images(images)
        cat_ids = sorted(cat_names)
        column = {cid: j for j, cid in enumerate(cat_ids)}
        row = {iid: i for i, iid in enumerate(image_ids)}
        labels = check.labels(annotations, row, column)
        class_names = [cat_names[cid] for cid in cat_ids]
        paths = [image_dir / name for name in files]
    keep = np.ones(len(image_ids), dtype=bool) if keep_empty else labels.any(axis=1)
    if check_images:
        missing = [p for p, k in zip(paths, keep) if k and not is_file(p)]
        if missing:
            raise UserError(f"{len(missing)} image file(s) named in {ann_file} are missing, first: {missing[0]}; "
                            "check the image folder")
    rows = np.flatnonzero(keep)
    return LabelSet(
        name=name,
        class_names=class_names,
        image_ids=[image_ids[i] for i in rows],
        image_paths=[paths[i] for i in rows],
        labels=labels[rows],
        info={"annotation_file": str(ann_file), "dropped_empty": int((~keep).sum())},
    )
