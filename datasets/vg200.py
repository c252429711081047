"""VG-200 (Visual Genome, the 200 most frequent categories) in the HCP / SSGRL layout.

Files: images under ``<root>/VG_100K/`` (an image found only in ``VG_100K_2/`` is used too; the
HCP code reads ``VG_100K`` only), ``train_list_500.txt`` and ``test_list_500.txt`` (one file name
per line) and ``vg_category_200_labels_index.json`` (file name -> list of positive class indices
0..199), in the root or in ``<root>/data/vg/`` (HCP's ``./data/vg``). Class names come from an
optional ``vg_category_200_names.txt`` (or ``label.txt``), one per line in index order; without
it the classes are named ``class_000`` .. ``class_199``. Image order = list order, the order the
HCP mask generator draws in. Images with an empty index list are kept as all-negative rows (HCP).

Pitfall P13: the HCP code cuts the last character of every line (``line[:-1]``), which silently
truncates the last name of a list without a final newline (and keeps the ``\\r`` of CRLF lines).
We strip only the newline characters, so every name is read whole; a list without a final
newline is recorded in ``info['notes']`` with the name the official code would have read.

Malformed input is a one-line :class:`UserError` naming the file: a JSON that is not a
``{name: [indices]}`` object, an index outside 0..C-1, a listed image absent from the JSON, a
listed image missing on disk (and, with ``check_images``, unreadable).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from benchmark.core.errors import UserError
from datasets.base import DatasetSplits, LabelSet
from datasets.prepare import (
    ListFile,
    count_note,
    layout_error,
    read_list,
    require_images,
)
from datasets.presets import preset_options

log = logging.getLogger(__name__)
NUM_CLASSES = 200
SPLITS = {"train": "train_list_500.txt", "test": "test_list_500.txt"}
LABELS_FILE = "vg_category_200_labels_index.json"
NAME_FILES = ("vg_category_200_names.txt", "label.txt")
IMAGE_DIRS = ("VG_100K", "VG_100K_2")
LAYOUT = (f"<root>/VG_100K/ (images), and in <root> or <root>/data/vg/: {SPLITS['train']}, {SPLITS['test']}, "
          f"{LABELS_FILE}; optional class names {NAME_FILES[0]}")


def meta_dir(root: Path) -> Path:
    """Where the list and label files are: the root, or ``root/data/vg``."""
    for base in (root, root / "data" / "vg"):
        if (base / LABELS_FILE).is_file() or (base / SPLITS["train"]).is_file():
            return base
    return root


def layout_problems(root: Path | str) -> list[str]:
    """One line per missing folder or file of the layout (empty when complete)."""
    root = Path(root).expanduser()
    meta = meta_dir(root)
    problems = [] if (root / IMAGE_DIRS[0]).is_dir() else [f"missing folder {root / IMAGE_DIRS[0]}"]
    return problems + [f"missing file {meta / name}" for name in (*SPLITS.values(), LABELS_FILE)
                       if not (meta / name).is_file()]


def class_names(meta: Path) -> list[str]:
    """Names from the optional names file, else ``class_000`` .. ``class_199``."""
    for name in NAME_FILES:
        if (meta / name).is_file():
            names = [line.strip() for line in read_list(meta / name, "VG-200 class-name file").lines]
            if not names or len(set(names)) != len(names):
                raise UserError(f"class-name file {meta / name} is empty or repeats a name; one name per line")
            return names
    return [f"class_{j:03d}" for j in range(NUM_CLASSES)]


def read_index(path: Path) -> dict:
    """The ``{file name: [class indices]}`` JSON."""
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"label file {path} is not valid JSON ({exc}); re-download it") from None
    if not isinstance(index, dict):
        raise UserError(f"label file {path} is not a JSON object mapping file names to class-index lists")
    return index


def _row(index: dict, name: str, num_classes: int, where: str) -> list[int]:
    if name not in index:
        raise UserError(f"{where} lists image '{name}', which has no entry in {LABELS_FILE}; the lists and "
                        "the label file do not match")
    row = index[name]
    if not isinstance(row, list) or any(not isinstance(j, int) or isinstance(j, bool) or not 0 <= j < num_classes
                                        for j in row):
        raise UserError(f"{LABELS_FILE}: entry '{name}' is {str(row)[:60]}; "
                        f"expected class indices 0..{num_classes - 1}")
    return row


def _image_path(root: Path, name: str) -> Path:
    first = root / IMAGE_DIRS[0] / name
    second = root / IMAGE_DIRS[1] / name
    return second if not first.is_file() and second.is_file() else first


def read_split(root: Path, listing: ListFile, index: dict, names: list[str], split: str) -> LabelSet:
    """One split in list order."""
    labels = np.zeros((len(listing.lines), len(names)), dtype=np.uint8)
    for i, name in enumerate(listing.lines):
        labels[i, _row(index, name, len(names), str(listing.path))] = 1
    return LabelSet(name=f"vg200-{split}", class_names=list(names), image_ids=list(listing.lines),
                    image_paths=[_image_path(root, n) for n in listing.lines], labels=labels,
                    info={"list_file": str(listing.path), "unterminated": listing.unterminated})


def _p13_note(listing: ListFile) -> str:
    last = listing.lines[-1]
    return (f"{listing.path.name} has no final newline: the HCP code would read its last name as '{last[:-1]}' "
            f"instead of '{last}' (P13); read correctly here")


def load_vg200(root: Path | str, preset: str | None = None, *, check_files: bool = True,
               check_images: bool = False) -> DatasetSplits:
    """VG-200 train/test (the preset only records the image size; both code bases read VG alike)."""
    options = preset_options("vg200", preset)
    root = Path(root).expanduser()
    problems = layout_problems(root)
    if problems:
        raise layout_error(problems, LAYOUT)
    meta = meta_dir(root)
    names, index = class_names(meta), read_index(meta / LABELS_FILE)
    listings = {split: read_list(meta / file, "VG-200 image list") for split, file in SPLITS.items()}
    train, test = (read_split(root, listings[split], index, names, split) for split in SPLITS)
    if check_files:
        for labelset in (train, test):
            require_images(labelset, labelset.info["list_file"], check_images)
    notes = [_p13_note(listing) for listing in listings.values() if listing.unterminated and listing.lines]
    for note in notes:
        log.warning(note)
    notes += count_note("images", (len(train), len(test)), (82904, 10000), "the SSGRL VG-200 lists")
    if len(names) != NUM_CLASSES:
        notes.append(f"{len(names)} class names (VG-200 has {NUM_CLASSES})")
    info = {"root": str(root), "preset": options["preset"], "layout": "HCP", "options": options, "notes": notes}
    return DatasetSplits(name="vg200", train=train, test=test, info=info)
