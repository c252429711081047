"""MS-COCO 2014 in its standard layout: 80 classes, train2014 for training, val2014 as the test set.

Labels come from ``annotations/instances_{train,val}2014.json`` through
:func:`datasets.coco.load_coco_instances` (pycocotools; every annotation counts, crowd ones
included). Class order = COCO category order (sorted by category id; the HCP ``category.json``
and the CLSL ``label.txt`` both follow it). The two code bases differ (pitfall P14):

* preset ``hcp``: images without any annotation are kept as all-negative rows (82,783 / 40,504
  images); image order = the order of ``images`` in the JSON (``coco.imgs``), which the HCP
  mask generator draws in.
* preset ``clsl``: images without annotation are dropped (82,081 / 40,137; the official CLSL
  protocol skips them, so this is a counted skip, logged and stored in ``info['dropped_empty']``
  of each split); image order = sorted by image id, as CLSL's ``scripts/mscoco.py`` writes it.

Malformed input is a one-line :class:`UserError` naming the file, the entry and the fix (see
:mod:`datasets.coco`): a missing file or a folder in its place, one that is not JSON (empty,
truncated, not UTF-8, nested too deeply), a missing or mistyped key, a repeated id, an annotation
with an unknown category id or image id, train and val files with different categories, a listed
image that is missing (and, with ``check_images``, one PIL cannot read).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from benchmark.core.errors import UserError
from datasets.base import DatasetSplits, LabelSet
from datasets.coco import load_coco_instances
from datasets.presets import preset_options
from datasets.readers import count_note, layout_error, layout_problem, require_images

log = logging.getLogger(__name__)
SPLITS = {"train": "train2014", "test": "val2014"}
ORDERS = ("file", "id")
LAYOUT = "<root>/train2014/, <root>/val2014/ (images) and <root>/annotations/instances_{train,val}2014.json"


def layout_problems(root: Path | str) -> list[str]:
    """One line per missing folder or file of the layout (empty when complete)."""
    root = Path(root).expanduser()
    needed = [*(("folder", root / folder) for folder in SPLITS.values()),
              *(("file", root / "annotations" / f"instances_{folder}.json") for folder in SPLITS.values())]
    return [problem for problem in (layout_problem(kind, path) for kind, path in needed) if problem]


def read_split(root: Path, split: str, keep_empty: bool, order: str) -> LabelSet:
    """One split; ``order`` = ``file`` (JSON order) or ``id`` (sorted by image id)."""
    folder = SPLITS[split]
    ann_file = root / "annotations" / f"instances_{folder}.json"
    fix = f"re-download {ann_file.name} (annotations_trainval2014.zip from cocodataset.org)"
    labelset = load_coco_instances(ann_file, root / folder, f"coco2014-{split}", keep_empty=keep_empty,
                                   check_images=False, fix=fix)
    if order == "id":
        ids = labelset.image_ids
        rows = np.array(sorted(range(len(ids)), key=ids.__getitem__), dtype=np.int64)
        info = labelset.info
        labelset = labelset.subset(rows, labelset.name)
        labelset.info = dict(info)
    labelset.info.update(order=order, keep_empty=keep_empty)
    if labelset.info["dropped_empty"]:
        log.info("coco2014 %s: dropped %d images without annotations", split, labelset.info["dropped_empty"])
    return labelset


def load_coco2014(root: Path | str, preset: str | None = None, *, keep_empty: bool | None = None,
                  order: str | None = None, check_files: bool = True, check_images: bool = False) -> DatasetSplits:
    """MS-COCO 2014 train/val. ``keep_empty`` and ``order`` override the preset's choices;
    ``check_files`` checks that every image exists, ``check_images`` also verifies each one (slow)."""
    options = preset_options("coco2014", preset)
    keep_empty = options["keep_empty"] if keep_empty is None else bool(keep_empty)
    order = options["order"] if order is None else order
    if order not in ORDERS:
        raise UserError(f"COCO image order '{order}' is unknown; choose one of: {', '.join(ORDERS)}")
    problems = layout_problems(root)
    if problems:
        raise layout_error(problems, LAYOUT)
    root = Path(root).expanduser()
    train, test = (read_split(root, split, keep_empty, order) for split in SPLITS)
    if test.class_names != train.class_names:
        raise UserError(f"{test.info['annotation_file']} has other categories than {train.info['annotation_file']} "
                        f"({len(test.class_names)} vs {len(train.class_names)}); both must list the same ones")
    if check_files:
        for labelset in (train, test):
            require_images(labelset, labelset.info["annotation_file"], check_images)
    dropped = f"train {train.info['dropped_empty']}, test {test.info['dropped_empty']}"
    notes = [f"images without annotations: {'kept as all-negative rows' if keep_empty else 'dropped: ' + dropped}",
             f"image order: {'JSON file order' if order == 'file' else 'sorted by image id'}"]
    standard = (82783, 40504) if keep_empty else (82081, 40137)
    notes += count_note("images", (len(train), len(test)), standard, "MS-COCO 2014, spec P14")
    if len(train.class_names) != 80:
        notes.append(f"{len(train.class_names)} categories (MS-COCO 2014 has 80)")
    info = {"root": str(root), "preset": options["preset"], "layout": "COCO", "options": options, "notes": notes}
    return DatasetSplits(name="coco2014", train=train, test=test, info=info)
