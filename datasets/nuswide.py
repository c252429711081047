"""NUS-WIDE (81 concepts, official train/test split) in either of its two common layouts.

``official`` (the NUS-WIDE release): ``Concepts81.txt`` (or ``ConceptsList/Concepts81.txt``),
``ImageList/TrainImagelist.txt`` and ``TestImagelist.txt`` (paths such as ``actor\\0001_2124494179.jpg``,
backslashes allowed), ``Groundtruth/TrainTestLabels/Labels_<concept>_{Train,Test}.txt`` (or
``TrainTestLabels/...``; one 0/1 per line, one line per image of the split list) and the images
under ``Flickr/``. Class order = ``Concepts81.txt``; image order = the split list.

``lists`` (what the CLSL code reads, spec 8.2): ``train.txt`` / ``test.txt`` with lines
``image_path<TAB>name1,name2,...`` and ``label.txt`` (class names, one per line, in class order).
Relative image paths are resolved against the root; an absolute path from another machine is
re-rooted at ``<root>/Flickr/`` after its last ``Flickr`` component. Image order = file order,
the order CLSL's mask draws in. The layout is detected: ``lists`` when ``label.txt`` and
``train.txt`` exist in the root, ``official`` otherwise.

Images without any label are dropped by default (``drop_unlabeled``, both presets), as CLSL's
``scripts/nuswide.py`` does: a counted skip, stored in ``info['dropped_unlabeled']``. CLSL writes
its lists by walking ``ImageList/Imagelist.txt`` filtered by split; that equals the split list
order when the split lists are subsequences of it, which we did not verify on the release.

Malformed input is a one-line :class:`UserError` naming the file: a label file whose line count
differs from its image list or holding a value other than 0/1, a list line without a TAB or with
an unknown class name, a listed image that is missing (and, with ``check_images``, unreadable).
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from benchmark.core.errors import UserError
from datasets.base import DatasetSplits, LabelSet
from datasets.prepare import layout_error, read_list, require_images
from datasets.presets import preset_options

SPLITS = {"train": "Train", "test": "Test"}
LAYOUT = ("official: <root>/Concepts81.txt, <root>/ImageList/{Train,Test}Imagelist.txt, "
          "<root>/Groundtruth/TrainTestLabels/Labels_<concept>_{Train,Test}.txt, images under <root>/Flickr/; "
          "or CLSL lists: <root>/train.txt, <root>/test.txt (image_path<TAB>name1,name2) and <root>/label.txt")


def detect_layout(root: Path) -> str:
    """``lists`` (CLSL's train.txt/test.txt/label.txt) or ``official``."""
    return "lists" if (root / "label.txt").is_file() and (root / "train.txt").is_file() else "official"


def _first_existing(candidates: list[Path]) -> Path:
    return next((p for p in candidates if p.exists()), candidates[0])


def _official_paths(root: Path) -> dict[str, Path]:
    return {"concepts": _first_existing([root / "Concepts81.txt", root / "ConceptsList" / "Concepts81.txt"]),
            "labels": _first_existing([root / "Groundtruth" / "TrainTestLabels", root / "TrainTestLabels"]),
            "train": root / "ImageList" / "TrainImagelist.txt", "test": root / "ImageList" / "TestImagelist.txt",
            "images": root / "Flickr"}


def layout_problems(root: Path | str) -> list[str]:
    """One line per missing folder or file of the detected layout (empty when complete)."""
    root = Path(root).expanduser()
    if detect_layout(root) == "lists":
        return [f"missing file {root / name}" for name in ("train.txt", "test.txt", "label.txt")
                if not (root / name).is_file()]
    paths = _official_paths(root)
    folders = ("labels", "images")
    return [f"missing {'folder' if key in folders else 'file'} {path}" for key, path in paths.items()
            if not (path.is_dir() if key in folders else path.is_file())]


def _label_column(path: Path, n: int) -> np.ndarray:
    """One ``Labels_<concept>_<Split>.txt``: n values in {0, 1}."""
    values = [line.strip() for line in read_list(path, "NUS-WIDE label file").lines]
    if len(values) != n:
        raise UserError(f"label file {path} has {len(values)} lines but its image list has {n}; "
                        "the label files do not match the image lists")
    bad = sorted(set(values) - {"0", "1"})
    if bad:
        raise UserError(f"label file {path} holds value '{bad[0]}'; expected one 0 or 1 per line")
    return np.asarray(values) == "1"


def _read_official(root: Path, split: str, classes: list[str]) -> tuple[list, list, np.ndarray, str]:
    paths = _official_paths(root)
    listing = read_list(paths[split], "NUS-WIDE image list")
    ids = [line.strip().replace("\\", "/") for line in listing.lines]
    labels = np.stack([_label_column(paths["labels"] / f"Labels_{c}_{SPLITS[split]}.txt", len(ids))
                       for c in classes], axis=1) if classes else np.zeros((len(ids), 0), dtype=bool)
    return ids, [paths["images"] / i for i in ids], labels, str(listing.path)


def _resolve(root: Path, text: str) -> Path:
    """An image path of a CLSL list: relative to root, absolute, or absolute re-rooted at Flickr/."""
    path = Path(text)
    if not path.is_absolute():
        return root / path
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if not path.exists() and "Flickr" in parts:
        last = max(i for i, part in enumerate(parts) if part == "Flickr")
        return root.joinpath("Flickr", *parts[last + 1:])
    return path


def _read_lists(root: Path, split: str, classes: list[str]) -> tuple[list, list, np.ndarray, str]:
    listing = read_list(root / f"{split}.txt", "NUS-WIDE list")
    column = {name: j for j, name in enumerate(classes)}
    labels = np.zeros((len(listing.lines), len(classes)), dtype=bool)
    ids = []
    for i, line in enumerate(listing.lines):
        if "\t" not in line:
            raise UserError(f"{listing.path} line {i + 1} has no TAB; expected image_path<TAB>name1,name2,...")
        path, names = line.split("\t", 1)
        for name in filter(None, (n.strip() for n in names.split(","))):
            if name not in column:
                raise UserError(f"{listing.path} line {i + 1} names class '{name}', which is not in label.txt")
            labels[i, column[name]] = True
        ids.append(path)
    return ids, [_resolve(root, p) for p in ids], labels, str(listing.path)


def read_split(root: Path, split: str, layout: str, classes: list[str], drop_unlabeled: bool) -> LabelSet:
    """One split in list order, unlabelled images dropped when ``drop_unlabeled``."""
    reader = _read_lists if layout == "lists" else _read_official
    ids, paths, labels, source = reader(root, split, classes)
    keep = labels.any(axis=1) if drop_unlabeled else np.ones(len(ids), dtype=bool)
    rows = np.flatnonzero(keep)
    return LabelSet(name=f"nuswide-{split}", class_names=list(classes), image_ids=[ids[i] for i in rows],
                    image_paths=[paths[i] for i in rows], labels=labels[rows],
                    info={"list_file": source, "dropped_unlabeled": int((~keep).sum())})


def load_nuswide(root: Path | str, preset: str | None = None, *, drop_unlabeled: bool | None = None,
                 check_files: bool = True, check_images: bool = False) -> DatasetSplits:
    """NUS-WIDE train/test from either layout; ``drop_unlabeled`` overrides the preset's choice."""
    options = preset_options("nuswide", preset)
    drop_unlabeled = options["drop_unlabeled"] if drop_unlabeled is None else bool(drop_unlabeled)
    root = Path(root).expanduser()
    problems = layout_problems(root)
    if problems:
        raise layout_error(problems, LAYOUT)
    layout = detect_layout(root)
    names_file = root / "label.txt" if layout == "lists" else _official_paths(root)["concepts"]
    classes = [line.strip() for line in read_list(names_file, "NUS-WIDE class list").lines]
    if len(set(classes)) != len(classes):
        raise UserError(f"class list {names_file} repeats a class name; each concept must appear once")
    train, test = (read_split(root, split, layout, classes, drop_unlabeled) for split in SPLITS)
    if check_files:
        for labelset in (train, test):
            require_images(labelset, labelset.info["list_file"], check_images)
    dropped = f"train {train.info['dropped_unlabeled']}, test {test.info['dropped_unlabeled']}"
    notes = [f"images without labels: {'dropped: ' + dropped if drop_unlabeled else 'kept'}"]
    if len(classes) != 81:
        notes.append(f"{len(classes)} classes in {names_file.name} (NUS-WIDE has 81)")
    info = {"root": str(root), "preset": options["preset"], "layout": layout, "options": options, "notes": notes}
    return DatasetSplits(name="nuswide", train=train, test=test, info=info)
