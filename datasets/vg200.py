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

Malformed input is a one-line :class:`UserError` naming the file (and the entry or line) and the
fix: a missing file or a folder in its place; a label JSON that is not valid JSON (empty,
truncated, not UTF-8, nested too deeply), repeats a key, or is not a ``{name: [indices]}`` object;
an index outside 0..C-1 or not an integer; a list that is empty, not UTF-8, has an overlong line,
a control character or a name that climbs out of the image folder; a listed image absent from the
JSON; a class-name file that is empty or repeats a name; a listed image missing on disk (and, with
``check_images``, unreadable).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from benchmark.core.errors import UserError
from datasets.base import DatasetSplits, LabelSet
from datasets.presets import preset_options
from datasets.readers import (
    ListFile,
    bad_name,
    count_note,
    is_file,
    json_type,
    layout_error,
    layout_problem,
    load_json,
    path_kind,
    read_list,
    read_unique_names,
    reading,
    require_images,
    shown,
)

log = logging.getLogger(__name__)
NUM_CLASSES = 200
SPLITS = {"train": "train_list_500.txt", "test": "test_list_500.txt"}
LABELS_FILE = "vg_category_200_labels_index.json"
NAME_FILES = ("vg_category_200_names.txt", "label.txt")
IMAGE_DIRS = ("VG_100K", "VG_100K_2")
LAYOUT = (f"<root>/VG_100K/ (images), and in <root> or <root>/data/vg/: {SPLITS['train']}, {SPLITS['test']}, "
          f"{LABELS_FILE}; optional class names {NAME_FILES[0]}")
FIX = "re-download the HCP / SSGRL VG-200 files (data/vg)"


def meta_dir(root: Path) -> Path:
    """Where the list and label files are: the root, or ``root/data/vg``."""
    for base in (root, root / "data" / "vg"):
        if path_kind(base / LABELS_FILE) is not None or path_kind(base / SPLITS["train"]) is not None:
            return base
    return root


def layout_problems(root: Path | str) -> list[str]:
    """One line per missing folder or file of the layout (empty when complete)."""
    root = Path(root).expanduser()
    meta = meta_dir(root)
    found = [layout_problem("folder", root / IMAGE_DIRS[0]),
             *(layout_problem("file", meta / name) for name in (*SPLITS.values(), LABELS_FILE))]
    return [problem for problem in found if problem]


def class_names(meta: Path) -> list[str]:
    """Names from the optional names file, else ``class_000`` .. ``class_199``."""
    for file in NAME_FILES:
        path = meta / file
        if path_kind(path) is None:
            continue
        return read_unique_names(path, "VG-200 class-name file", "one class name per line", FIX)
    return [f"class_{j:03d}" for j in range(NUM_CLASSES)]


def read_index(path: Path) -> dict:
    """The ``{file name: [class indices]}`` JSON (entries are checked when a list names them)."""
    index = load_json(path, "label file", FIX, unique_keys=True)
    if not isinstance(index, dict):
        raise UserError(f"label file {path} holds a JSON {json_type(index)}; it must be a JSON object mapping "
                        f"file names to class-index lists ({FIX})")
    return index


def _row(index: dict, name: str, num_classes: int, where: str, line: int,
         index_file: Path | str = LABELS_FILE) -> list[int]:
    if name not in index:
        raise UserError(f"{where} lists image {shown(name)}, which has no entry in {index_file}; the lists and the "
                        f"label file do not match (list line {line}; {FIX})")
    row = index[name]
    if not isinstance(row, list) or any(not isinstance(j, int) or isinstance(j, bool) or not 0 <= j < num_classes
                                        for j in row):
        raise UserError(f"label file {index_file}: entry {shown(name)} is {shown(row)}; "
                        f"expected class indices 0..{num_classes - 1} ({FIX})")
    return row


def _image_path(root: Path, name: str) -> Path:
    first = root / IMAGE_DIRS[0] / name
    second = root / IMAGE_DIRS[1] / name
    return second if not is_file(first) and is_file(second) else first


def read_split(root: Path, listing: ListFile, index: dict, names: list[str], split: str,
               index_file: Path | str = LABELS_FILE) -> LabelSet:
    """One split in list order (``index_file``: where ``index`` was read, for messages)."""
    labels = np.zeros((len(listing.lines), len(names)), dtype=np.uint8)
    with reading(listing.path, "VG-200 image list", FIX):
        for i, name in enumerate(listing.lines):
            problem = bad_name(name)
            if problem:
                raise UserError(f"VG-200 image list {listing.path} line {listing.number(i)}: {shown(name)} {problem}; "
                                f"the file must hold one image file name per line ({FIX})")
            labels[i, _row(index, name, len(names), str(listing.path), listing.number(i), index_file)] = 1
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
    listings = {split: read_list(meta / file, "VG-200 image list", "one image file name (e.g. 2345.jpg) per line",
                                 FIX, item="image") for split, file in SPLITS.items()}
    train, test = (read_split(root, listings[split], index, names, split, meta / LABELS_FILE) for split in SPLITS)
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
