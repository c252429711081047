"""Reader for MS-COCO-format instance annotations (used by MS-COCO 2014 and the synthetic set).

Class order is the COCO category order (categories sorted by id); image order is the order of
``images`` in the JSON file, which is the order the HCP mask generator draws in (spec 1.1).
Every annotation counts, crowd ones included, as in the HCP code.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np

from benchmark.core.errors import UserError
from datasets.base import LabelSet


def _read_coco(ann_file: Path):
    from pycocotools.coco import COCO

    if not ann_file.is_file():
        raise UserError(f"annotation file {ann_file} not found; check --data-root or regenerate the dataset")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(ann_file))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"annotation file {ann_file} is not valid JSON ({exc}); re-download or regenerate it") from None
    except (KeyError, TypeError, AssertionError) as exc:
        raise UserError(f"annotation file {ann_file} is not in COCO instances format (missing {exc}); "
                        "it needs 'images', 'annotations' and 'categories'") from None


def load_coco_instances(ann_file: Path | str, image_dir: Path | str, name: str, *,
                        keep_empty: bool = True, check_images: bool = True) -> LabelSet:
    """Image-level labels from a COCO instances file.

    keep_empty: keep images without any annotation as all-negative rows (HCP code) or drop them
    (CLSL code); the number dropped is stored in ``info['dropped_empty']``.
    """
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    coco = _read_coco(ann_file)
    for key in ("images", "annotations", "categories"):
        if key not in coco.dataset:
            raise UserError(f"annotation file {ann_file} has no '{key}' list; it is not a COCO instances file")
    cat_ids = sorted(coco.cats)
    column = {cid: j for j, cid in enumerate(cat_ids)}
    class_names = [coco.cats[cid]["name"] for cid in cat_ids]
    image_ids = [img["id"] for img in coco.dataset["images"]]
    row = {iid: i for i, iid in enumerate(image_ids)}
    labels = np.zeros((len(image_ids), len(cat_ids)), dtype=np.uint8)
    for ann in coco.dataset["annotations"]:
        if ann["category_id"] not in column:
            raise UserError(f"annotation file {ann_file}: annotation {ann.get('id')} has unknown category id "
                            f"{ann['category_id']}; the file is corrupt or mixes datasets")
        if ann["image_id"] not in row:
            raise UserError(f"annotation file {ann_file}: annotation {ann.get('id')} names unknown image id "
                            f"{ann['image_id']}")
        labels[row[ann["image_id"]], column[ann["category_id"]]] = 1
    keep = np.ones(len(image_ids), dtype=bool) if keep_empty else labels.any(axis=1)
    paths = [image_dir / coco.imgs[iid]["file_name"] for iid in image_ids]
    if check_images:
        missing = [p for p, k in zip(paths, keep) if k and not p.is_file()]
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
