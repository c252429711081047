"""CUB-200-2011 with its 312 binary attributes as the labels, as the single-positive papers use it.

Read as the SPML code does (Cole et al., CVPR 2021, ``preproc/format_cub.py``; ACK, GR Loss,
AEVLP and VLPL use its files): images in the order of ``images.txt``; ``train_test_split.txt``
``is_training_image`` 1 = training (5,994 images), 0 = the test split (5,794; SPML's "val" file,
its test set); classes = the attributes in the order of ``attributes.txt``; an attribute is a
positive iff ``is_present`` is 1 in ``attributes/image_attribute_labels.txt`` (``<image_id>
<attribute_id> <is_present> <certainty_id> <time>``), whatever the certainty (SPML reads only
``is_present``). Images without a present attribute are kept (as in SPML). The suite's held-out
validation rows come from the training images (``benchmark/engine/data.py``), as SPML's do.

A line with more than five fields (reported for the real labels file) is read by its first three
(SPML's pandas reader does the same), and the number of such lines is a note. The 3.7 million
lines are parsed by pandas' C reader when the file holds only plain characters; any problem sends
the file through the line-by-line reader (:func:`datasets.readers.read_list`), which names the line.

Malformed input is one :class:`UserError` line naming the file and the entry: a missing file, a
line that is not ``<id> <value>`` (or has fewer than four label fields), an id that is not a
positive integer or is repeated, an image path that climbs out of ``images/``, a split value other
than 0/1, an attribute name that is not a printable string or is repeated, an image or attribute
id in the labels file that the lists do not have, an (image, attribute) pair given twice or not at
all, an ``is_present`` other than 0/1, a listed image that is missing (with ``check_images``: unreadable).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from benchmark.core.errors import UserError
from datasets.base import DatasetSplits, LabelSet
from datasets.presets import preset_options
from datasets.readers import (
    MAX_LINE,
    bad_class_name,
    bad_name,
    count_note,
    layout_error,
    layout_problem,
    path_kind,
    read_data_bytes,
    read_list,
    reading,
    require_images,
    shown,
)

LAYOUT = ("<root>/CUB_200_2011/ (as CUB_200_2011.tgz unpacks, attributes.txt beside it; or root = that folder; "
          "or <root>/CUB_200_2011/CUB_200_2011/ as the SPML code expects) holding images.txt, train_test_split.txt, "
          "attributes/image_attribute_labels.txt and images/<class>/<name>.jpg, and the attribute names in "
          "attributes.txt beside that folder or in its attributes/attributes.txt")
FIX = "re-download and unpack CUB_200_2011.tgz (the Caltech-UCSD Birds-200-2011 archive)"
LABELS_FILE = Path("attributes") / "image_attribute_labels.txt"
LABELS_WHAT = "CUB attribute labels"
LABELS_HOLDS = "one '<image_id> <attribute_id> <is_present> <certainty_id> <time>' line per image and attribute"
STANDARD = (5994, 5794)


class _NeedLines(Exception):
    """The fast reader found a problem; the line-by-line reader names its line."""


def cub_dir(root: Path | str) -> Path:
    """The folder holding images.txt: root, root/CUB_200_2011 or root/CUB_200_2011/CUB_200_2011."""
    root = Path(root).expanduser()
    for base in (root, root / "CUB_200_2011", root / "CUB_200_2011" / "CUB_200_2011"):
        if path_kind(base / "images.txt") is not None or (base / "attributes").is_dir():
            return base
    return root / "CUB_200_2011" if (root / "CUB_200_2011").is_dir() else root


def names_file(base: Path) -> Path | None:
    """attributes.txt beside the CUB_200_2011 folder (as in the archive) or in its attributes/ folder."""
    for path in (base.parent / "attributes.txt", base / "attributes" / "attributes.txt"):
        if path_kind(path) is not None:
            return path
    return None


def layout_problems(root: Path | str) -> list[str]:
    """One line per missing folder or file of the layout (empty when complete)."""
    base = cub_dir(root)
    needed = [("folder", base / "images"), ("file", base / "images.txt"), ("file", base / "train_test_split.txt"),
              ("file", base / LABELS_FILE)]
    problems = [layout_problem(kind, path) for kind, path in needed]
    names = names_file(base)
    if names is None:
        problems.append(f"missing file {base / 'attributes' / 'attributes.txt'} (nor {base.parent / 'attributes.txt'})")
    else:
        problems.append(layout_problem("file", names))
    return [problem for problem in problems if problem]


def _is_id(text: str) -> bool:
    return text.isascii() and text.isdigit()


def read_id_table(path: Path, what: str, holds: str, check) -> tuple[list[int], list[str], list[int]]:
    """(ids, values, line numbers) of an ``<id> <value>`` file: each id a positive integer, none twice;
    ``check(value)`` returns why a value is refused (None when fine)."""
    listing = read_list(path, what, holds, FIX)
    ids, values, numbers, first = [], [], [], {}
    with reading(listing.path, what, FIX):
        for i, line in enumerate(listing.lines):
            fields, where = line.split(), f"{what} {listing.path} line {listing.number(i)}"
            if len(fields) != 2 or not _is_id(fields[0]) or int(fields[0]) == 0:
                raise UserError(f"{where} is {shown(line)}; the file must hold {holds} ({FIX})")
            key = int(fields[0])
            if key in first:
                raise UserError(f"{where} repeats id {key} (first on line {first[key]}); each id must appear once "
                                f"({FIX})")
            problem = check(fields[1])
            if problem:
                raise UserError(f"{where}: {shown(fields[1])} {problem}; the file must hold {holds} ({FIX})")
            first[key] = listing.number(i)
            ids.append(key), values.append(fields[1]), numbers.append(listing.number(i))
    return ids, values, numbers


def _name_problem(name: str) -> str | None:
    return bad_class_name(name) or (None if name.isprintable() else "holds a character that is not printable")


def read_attribute_names(path: Path) -> tuple[list[int], list[str]]:
    """(attribute ids, names) of attributes.txt, in file order; names printable and unique."""
    ids, names, numbers = read_id_table(path, "CUB attribute names", "one '<attribute_id> <name>' line per "
                                        "attribute, e.g. '1 has_bill_shape::curved_(up_or_down)'", _name_problem)
    seen = {}
    for name, number in zip(names, numbers):
        if name in seen:
            raise UserError(f"CUB attribute names {path} repeats the name {shown(name)} (lines {seen[name]} and "
                            f"{number}); each attribute must be named once ({FIX})")
        seen[name] = number
    return ids, names


def read_images(base: Path) -> tuple[list[int], list[str], np.ndarray]:
    """(image ids, relative paths, is-training bool [N]) from images.txt and train_test_split.txt."""
    ids, paths, _ = read_id_table(base / "images.txt", "CUB image list", "one '<image_id> <class>/<name>.jpg' "
                                  "line per image", lambda p: bad_name(p, subfolders=True))
    repeated = len(set(paths)) != len(paths)
    if repeated:
        seen = set()
        twice = next(p for p in paths if p in seen or seen.add(p))
        raise UserError(f"CUB image list {base / 'images.txt'} lists the image {shown(twice)} twice; each image must "
                        f"be listed once ({FIX})")
    split_path = base / "train_test_split.txt"
    split_ids, flags, numbers = read_id_table(split_path, "CUB split file", "one '<image_id> <is_training_image>' "
                                              "line per image (1 = train, 0 = test)",
                                              lambda v: None if v in ("0", "1") else "is not 0 or 1")
    flag_of = dict(zip(split_ids, flags))
    known = set(ids)
    for key, number in zip(split_ids, numbers):
        if key not in known:
            raise UserError(f"CUB split file {split_path} line {number} names image id {key}, which "
                            f"{base / 'images.txt'} does not list ({FIX})")
    absent = next((k for k in ids if k not in flag_of), None)
    if absent is not None:
        raise UserError(f"CUB split file {split_path} has no line for image id {absent} ({base / 'images.txt'} lists "
                        f"it); every image must be in the train or the test split ({FIX})")
    return ids, paths, np.array([flag_of[k] == "1" for k in ids], dtype=bool)


def _fast_rows(path: Path) -> tuple[np.ndarray, int] | None:
    """([M, 3] int64 image id, attribute id, is_present; lines without exactly 5 fields) by pandas' C
    reader, or None when the file is not plain (then :func:`_slow_rows` reads and names the line)."""
    data = read_data_bytes(path, LABELS_WHAT, FIX)
    raw = np.frombuffer(data, dtype=np.uint8)
    plain = (raw - np.uint8(48) <= 9) | (raw == 32) | (raw == 46) | (raw == 10) | (raw == 13)   # digits . space CR LF
    breaks = np.flatnonzero(raw == 10)
    if not raw.size or not plain.all() or np.diff(breaks, prepend=-1, append=raw.size).max() > MAX_LINE:
        return None
    import pandas as pd

    try:
        frame = pd.read_csv(io.BytesIO(data), sep=" ", header=None, names=[0, 1, 2, 3], usecols=[0, 1, 2, 3],
                            dtype={0: np.int64, 1: np.int64, 2: np.int64, 3: str}, engine="c")
    except (ValueError, OverflowError, pd.errors.ParserError):
        return None
    if frame.empty or frame[3].isna().any():
        return None
    spaces = np.diff(np.searchsorted(np.flatnonzero(raw == 32), np.r_[0, breaks + 1, raw.size]))   # per line
    odd = int(((spaces != 4) & (spaces > 0)).sum())
    return frame[[0, 1, 2]].to_numpy(dtype=np.int64), odd


def _slow_rows(path: Path) -> tuple[np.ndarray, list[int], int]:
    """(rows, line numbers, lines without exactly 5 fields), line by line; a bad line is a UserError."""
    listing = read_list(path, LABELS_WHAT, LABELS_HOLDS, FIX, item="label")
    rows = np.empty((len(listing.lines), 3), dtype=np.int64)
    odd = 0
    for i, line in enumerate(listing.lines):
        fields = line.split()
        if len(fields) < 4 or not all(_is_id(f) and len(f) < 19 for f in fields[:3]):
            raise UserError(f"{LABELS_WHAT} {path} line {listing.number(i)} is {shown(line)}; the file must hold "
                            f"{LABELS_HOLDS} ({FIX})")
        rows[i] = [int(f) for f in fields[:3]]
        odd += len(fields) != 5
    return rows, [listing.number(i) for i in range(len(rows))], odd


def _columns(values: np.ndarray, known: list[int]) -> tuple[np.ndarray, int | None]:
    """The position of each value in ``known`` and the first row whose value is not there (None: all are)."""
    order = np.argsort(known)
    ranked = np.asarray(known, dtype=np.int64)[order]
    at = np.clip(np.searchsorted(ranked, values), 0, len(ranked) - 1)
    bad = np.flatnonzero(ranked[at] != values)
    return order[at], (int(bad[0]) if bad.size else None)


def _entry_error(path: Path, numbers: list[int] | None, row: int, text: str) -> UserError:
    """The error naming the line of ``row``; without line numbers (the fast reader) :class:`_NeedLines`."""
    if numbers is None:
        raise _NeedLines
    return UserError(f"{LABELS_WHAT} {path} line {numbers[row]} {text} ({FIX})")


def label_matrix(path: Path, rows: np.ndarray, numbers: list[int] | None, image_ids: list[int],
                 attribute_ids: list[int], lists: tuple[Path, Path]) -> np.ndarray:
    """uint8 [N images, A attributes] of ``is_present``, every pair given once; ``lists`` = the image
    list and the attribute names file (named in the messages)."""
    img, bad_img = _columns(rows[:, 0], image_ids)
    if bad_img is not None:
        raise _entry_error(path, numbers, bad_img, f"names image id {rows[bad_img, 0]}, which {lists[0]} does not list")
    att, bad_att = _columns(rows[:, 1], attribute_ids)
    if bad_att is not None:
        raise _entry_error(path, numbers, bad_att, f"names attribute id {rows[bad_att, 1]}, which {lists[1]} does "
                           "not list")
    bad = np.flatnonzero(rows[:, 2] > 1)
    if bad.size:
        raise _entry_error(path, numbers, int(bad[0]), f"has is_present {rows[bad[0], 2]}; expected 0 or 1")
    keys = img * len(attribute_ids) + att
    order = np.argsort(keys, kind="stable")
    repeats = order[1:][keys[order][1:] == keys[order][:-1]]
    if repeats.size:
        second = int(repeats.min())
        first = int(np.flatnonzero(keys == keys[second])[0])
        raise _entry_error(path, numbers, second, f"repeats image {rows[second, 0]} attribute {rows[second, 1]} "
                           f"(first on line {numbers[first] if numbers else '?'}); each pair must be given once")
    labels = np.zeros((len(image_ids), len(attribute_ids)), dtype=np.uint8)
    seen = np.zeros(labels.shape, dtype=bool)
    labels[img, att], seen[img, att] = rows[:, 2], True
    if not seen.all():
        i, j = (int(k[0]) for k in np.nonzero(~seen))
        raise UserError(f"{LABELS_WHAT} {path} has no line for image id {image_ids[i]} and attribute id "
                        f"{attribute_ids[j]} (listed in {lists[0]} and {lists[1]}); the file must hold {LABELS_HOLDS} "
                        f"({FIX})")
    return labels


def read_labels(path: Path, image_ids: list[int], attribute_ids: list[int],
                lists: tuple[Path, Path]) -> tuple[np.ndarray, int]:
    """(labels uint8 [N, A], lines without exactly 5 fields): the fast reader, else line by line."""
    with reading(path, LABELS_WHAT, FIX):
        fast = _fast_rows(path)
        if fast is not None:
            try:
                return label_matrix(path, fast[0], None, image_ids, attribute_ids, lists), fast[1]
            except _NeedLines:
                pass
        rows, numbers, odd = _slow_rows(path)
        return label_matrix(path, rows, numbers, image_ids, attribute_ids, lists), odd


def _split(name: str, base: Path, paths: list[str], labels: np.ndarray, rows: np.ndarray,
           attributes: list[str], source: Path) -> LabelSet:
    return LabelSet(name=f"cub-{name}", class_names=list(attributes), image_ids=[paths[i] for i in rows],
                    image_paths=[base / "images" / paths[i] for i in rows], labels=labels[rows],
                    info={"list_file": str(base / "images.txt"), "annotation_file": str(source)})


def load_cub(root: Path | str, preset: str | None = None, *, check_files: bool = True,
             check_images: bool = False) -> DatasetSplits:
    """CUB-200-2011 attributes: train (is_training_image 1) / test (0). ``check_files`` checks that every
    image exists, ``check_images`` also opens and verifies each one (slow)."""
    options = preset_options("cub", preset)
    problems = layout_problems(root)
    if problems:
        raise layout_error(problems, LAYOUT)
    base = cub_dir(root)
    names = names_file(base)
    attribute_ids, attributes = read_attribute_names(names)
    image_ids, paths, is_train = read_images(base)
    labels, odd = read_labels(base / LABELS_FILE, image_ids, attribute_ids, (base / "images.txt", names))
    train, test = (_split(name, base, paths, labels, np.flatnonzero(rows), attributes, base / LABELS_FILE)
                   for name, rows in (("train", is_train), ("test", ~is_train)))
    if check_files:
        for labelset in (train, test):
            require_images(labelset, labelset.info["list_file"], check_images)
    empty = [int((s.labels.sum(axis=1) == 0).sum()) for s in (train, test)]
    notes = [(f"labels = is_present (certainty ignored, as SPML); images without a present attribute: "
              f"train {empty[0]}, test {empty[1]} (kept, as SPML)")]
    if odd:
        notes.append(f"{odd} line(s) of {base / LABELS_FILE} do not have exactly 5 fields; their first three "
                     "are read (as SPML)")
    if len(attributes) != 312:
        notes.append(f"{len(attributes)} attributes, not the standard 312 (CUB-200-2011); fine for a subset, check "
                     "the download otherwise")
    notes += count_note("images", (len(train), len(test)), STANDARD, "CUB-200-2011 train_test_split.txt")
    info = {"root": str(base), "preset": options["preset"], "layout": "CUB_200_2011", "options": options,
            "attribute_names": str(names), "test_split": "is_training_image = 0", "notes": notes}
    return DatasetSplits(name="cub", train=train, test=test, info=info)
