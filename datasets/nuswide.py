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

Malformed input is a one-line :class:`UserError` naming the file (and the line) and the fix: a
missing file or a folder in its place, a file that is empty, not UTF-8, or has an overlong line or
a control character; a label file whose line count differs from its image list or holding a value
other than 0/1; a class list repeating a name or holding one that cannot name a label file; an
image path that climbs out of the root; a list line without a TAB or with an unknown class name; a
listed image that is missing (and, with ``check_images``, unreadable).
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from benchmark.core.errors import UserError
from datasets.base import DatasetSplits, LabelSet
from datasets.presets import preset_options
from datasets.readers import (
    bad_class_name,
    bad_name,
    layout_error,
    layout_problem,
    path_kind,
    read_list,
    read_unique_names,
    reading,
    require_images,
    shown,
)

SPLITS = {"train": "Train", "test": "Test"}
LAYOUT = ("official: <root>/Concepts81.txt, <root>/ImageList/{Train,Test}Imagelist.txt, "
          "<root>/Groundtruth/TrainTestLabels/Labels_<concept>_{Train,Test}.txt, images under <root>/Flickr/; "
          "or CLSL lists: <root>/train.txt, <root>/test.txt (image_path<TAB>name1,name2) and <root>/label.txt")
OFFICIAL_FIX = "re-download the NUS-WIDE release files (Groundtruth, ImageList, Concepts81.txt)"
LISTS_FIX = "regenerate the lists with CLSL's scripts/nuswide.py"


def detect_layout(root: Path) -> str:
    """``lists`` (CLSL's train.txt/test.txt/label.txt) or ``official``."""
    found = all(path_kind(root / name) is not None for name in ("label.txt", "train.txt"))
    return "lists" if found else "official"


def _first_existing(candidates: list[Path]) -> Path:
    return next((p for p in candidates if path_kind(p) is not None), candidates[0])


def _official_paths(root: Path) -> dict[str, Path]:
    return {"concepts": _first_existing([root / "Concepts81.txt", root / "ConceptsList" / "Concepts81.txt"]),
            "labels": _first_existing([root / "Groundtruth" / "TrainTestLabels", root / "TrainTestLabels"]),
            "train": root / "ImageList" / "TrainImagelist.txt", "test": root / "ImageList" / "TestImagelist.txt",
            "images": root / "Flickr"}


def layout_problems(root: Path | str) -> list[str]:
    """One line per missing folder or file of the detected layout (empty when complete)."""
    root = Path(root).expanduser()
    if detect_layout(root) == "lists":
        found = (layout_problem("file", root / name) for name in ("train.txt", "test.txt", "label.txt"))
    else:
        folders = ("labels", "images")
        found = (layout_problem("folder" if key in folders else "file", path)
                 for key, path in _official_paths(root).items())
    return [problem for problem in found if problem]


def _label_column(path: Path, n: int) -> np.ndarray:
    """One ``Labels_<concept>_<Split>.txt``: n values in {0, 1}."""
    listing = read_list(path, "label file", "one 0 or 1 per line, one line per image of its split list",
                        OFFICIAL_FIX, item="label")
    values = [line.strip() for line in listing.lines]
    if len(values) != n:
        raise UserError(f"label file {path} has {len(values)} lines but its image list has {n}; "
                        f"the label files do not match the image lists ({OFFICIAL_FIX})")
    bad = sorted(set(values) - {"0", "1"})
    if bad:
        line = listing.number(values.index(bad[0]))
        raise UserError(f"label file {path} holds value {shown(bad[0])} on line {line}; expected one 0 or 1 per "
                        f"line ({OFFICIAL_FIX})")
    return np.asarray(values) == "1"


def _image_entry(listing, i: int, text: str, fix: str, absolute_ok: bool = False) -> str:
    """An image path of a list, checked to name a file under the root (or, in CLSL lists, anywhere)."""
    problem = bad_name(text, absolute_ok=absolute_ok)
    if problem:
        raise UserError(f"{listing.path} line {listing.number(i)}: image path {shown(text)} {problem}; the file must "
                        f"hold one image path per line ({fix})")
    return text


def _read_official(root: Path, split: str, classes: list[str]) -> tuple[list, list, np.ndarray, str]:
    paths = _official_paths(root)
    listing = read_list(paths[split], "NUS-WIDE image list", "one image path (e.g. actor\\0001_2124494179.jpg) "
                        "per line", OFFICIAL_FIX, item="image")
    with reading(listing.path, "NUS-WIDE image list", OFFICIAL_FIX):
        ids = [_image_entry(listing, i, line.strip(), OFFICIAL_FIX).replace("\\", "/")
               for i, line in enumerate(listing.lines)]
    columns = []
    for c in classes:
        label_file = paths["labels"] / f"Labels_{c}_{SPLITS[split]}.txt"
        with reading(label_file, "label file", OFFICIAL_FIX):
            columns.append(_label_column(label_file, len(ids)))
    labels = np.stack(columns, axis=1)
    return ids, [paths["images"] / i for i in ids], labels, str(listing.path)


def _resolve(root: Path, text: str) -> Path:
    """An image path of a CLSL list: relative to root, absolute, or absolute re-rooted at Flickr/."""
    path = Path(text)
    if not path.is_absolute():
        return root / path
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if path_kind(path) is None and "Flickr" in parts:
        last = max(i for i, part in enumerate(parts) if part == "Flickr")
        return root.joinpath("Flickr", *parts[last + 1:])
    return path


def _read_lists(root: Path, split: str, classes: list[str]) -> tuple[list, list, np.ndarray, str]:
    listing = read_list(root / f"{split}.txt", "NUS-WIDE list", "image_path<TAB>name1,name2,... per line",
                        LISTS_FIX, item="image")
    column = {name: j for j, name in enumerate(classes)}
    labels = np.zeros((len(listing.lines), len(classes)), dtype=bool)
    ids = []
    with reading(listing.path, "NUS-WIDE list", LISTS_FIX):
        for i, line in enumerate(listing.lines):
            if "\t" not in line:
                raise UserError(f"{listing.path} line {listing.number(i)} has no TAB; expected "
                                f"image_path<TAB>name1,name2,... ({LISTS_FIX})")
            path, names = line.split("\t", 1)
            for name in filter(None, (n.strip() for n in names.split(","))):
                if name not in column:
                    raise UserError(f"{listing.path} line {listing.number(i)} names class {shown(name)}, which is "
                                    f"not in label.txt ({LISTS_FIX})")
                labels[i, column[name]] = True
            ids.append(_image_entry(listing, i, path, LISTS_FIX, absolute_ok=True))
        resolved = [_resolve(root, p) for p in ids]
    return ids, resolved, labels, str(listing.path)


def read_classes(names_file: Path, layout: str) -> list[str]:
    """The class names, one per line; each usable in a label file's name (official layout), none twice."""
    fix = LISTS_FIX if layout == "lists" else OFFICIAL_FIX

    def check(name: str) -> str | None:
        return bad_class_name(name) or ("holds a path separator" if layout == "official" and
                                        ("/" in name or "\\" in name or name in (".", "..")) else None)

    return read_unique_names(names_file, "NUS-WIDE class list", "one concept name per line", fix, check)


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
    classes = read_classes(names_file, layout)
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
