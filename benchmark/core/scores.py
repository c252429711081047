"""Per-image test scores of a run: ``<run>/scores.npz``, kept at the epochs the selection rules pick.

During training every evaluation writes the test split's scores of that epoch (float32 logits
``[N_test, C]``, rows in the test split's order) and its per-class AP to ``work/`` atomically
(:func:`write_epoch_scores`). At the end of the run, before ``done``, :func:`keep_selected` picks the
epochs of :data:`benchmark.core.selection.SELECTION_RULES` from metrics.jsonl's evaluation lines (the
report's own rule), stores them once each in ``scores.npz`` and the done marker records its sha256
(:meth:`benchmark.core.run_folder.RunFolder.finish`); the temporaries go after ``done``. A run killed
anywhere before ``done`` resumes with its temporaries in place and ends with the same file.

``scores.npz`` (numpy's zip of ``.npy`` members, no pickled object):

- ``format``: int64 scalar, :data:`FORMAT`;
- ``image_ids`` ``[N]`` and ``class_names`` ``[C]``: unicode, the test split's image ids (as text) in
  row order and its class names;
- ``epochs`` ``[K]``: int64, the stored epochs, increasing, each picked by at least one rule;
- ``scores`` ``[K, N, C]``: float32 logits as the metric scored them (float32 keeps the metrics
  recomputable to the last digit; float16 changes mAP in the second decimal, see BENCHMARKS.md);
- ``per_class_ap`` ``[K, C]``: float32, AP in percent of each class at each stored epoch (NaN for a
  class without a positive in the test split);
- ``selection_rules`` ``[R]`` (unicode) and ``selection_epochs`` ``[R]`` (int64): the epoch of each rule.

A scores file from another person's folder is untrusted input: :func:`read_scores` checks every member's
name, type, shape and range and raises :class:`ScoresError` naming the member, never unpickles.
"""
from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.core.digests import npy_header
from benchmark.core.files import atomic_writer, open_nofollow, plain_file
from benchmark.core.selection import SELECTION_RULES, selected_epochs

SCORES_FILE = "scores.npz"
FORMAT = 1
SCORES_LIMIT = 1 << 30              # bytes of scores.npz (COCO's 40,504 x 80 test split: 13 MB per epoch)
MAX_TEXT = 1000                     # characters of an image id or class name
MAX_EPOCH = 10 ** 6
EPOCH_PREFIX = "test_scores_epoch_"
MEMBERS = ("format", "image_ids", "class_names", "epochs", "scores", "per_class_ap", "selection_rules",
           "selection_epochs")


class ScoresError(ValueError):
    """A scores file that is not one this suite writes; the message names the member and the problem."""


@dataclass(frozen=True)
class RunScores:
    """A validated ``scores.npz``; ``scores`` is None when read without its matrices."""

    image_ids: list[str]
    class_names: list[str]
    epochs: list[int]
    per_class_ap: np.ndarray                 # [K, C] float32, percent
    selection: dict[str, int]
    scores: np.ndarray | None = None         # [K, N, C]
    shape: tuple[int, int] = (0, 0)          # (N, C)

    def matrix(self, epoch: int) -> np.ndarray:
        return self.scores[self.epochs.index(epoch)]

    def class_ap(self, epoch: int) -> np.ndarray:
        return self.per_class_ap[self.epochs.index(epoch)]


# --------------------------------------------------------------------------- per-epoch temporaries
def epoch_scores_path(work_dir: Path, epoch: int) -> Path:
    return Path(work_dir) / f"{EPOCH_PREFIX}{int(epoch)}.npz"


def write_epoch_scores(work_dir: Path, epoch: int, scores: np.ndarray, class_ap: np.ndarray) -> Path:
    """The test scores (float32 ``[N, C]``) and per-class AP (percent ``[C]``) of one evaluation, atomically."""
    path = epoch_scores_path(work_dir, epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    scores, class_ap = np.asarray(scores, dtype=np.float32), np.asarray(class_ap, dtype=np.float32)
    with atomic_writer(path, expected_size=scores.nbytes + class_ap.nbytes) as fh:
        np.savez(fh, scores=scores, class_ap=class_ap)
    return path


def read_epoch_scores(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """``(scores, class_ap)`` of a temporary of this run, or None when it is missing or not of ``shape``."""
    if not plain_file(path):
        return None
    try:
        with os.fdopen(open_nofollow(path), "rb") as fh, np.load(fh, allow_pickle=False) as data:
            scores, class_ap = np.asarray(data["scores"], np.float32), np.asarray(data["class_ap"], np.float32)
    except Exception:  # noqa: BLE001 - a damaged temporary is as good as none (numpy raises many kinds)
        return None
    if scores.shape != tuple(shape) or class_ap.shape != (shape[1],):
        return None
    return scores, class_ap


def epoch_score_files(work_dir: Path) -> list[Path]:
    work = Path(work_dir)
    return sorted(work.glob(f"{EPOCH_PREFIX}*.npz")) if work.is_dir() and not work.is_symlink() else []


# --------------------------------------------------------------------------- the run's file
def keep_selected(run_dir: Path, evals: dict[int, dict], image_ids, class_names) -> dict:
    """Write ``run_dir/scores.npz`` from the temporaries of the epochs the rules pick in ``evals``
    (metrics.jsonl's evaluation lines). Returns ``{"epochs": kept, "missing": epochs without a
    temporary}``; with none kept no file is left (a stale one of a killed attempt is removed)."""
    run_dir = Path(run_dir)
    shape = (len(image_ids), len(class_names))
    selection = selected_epochs(evals)
    wanted = sorted(set(selection.values()))
    loaded = {e: read_epoch_scores(epoch_scores_path(run_dir / "work", e), shape) for e in wanted}
    kept = [e for e in wanted if loaded[e] is not None]
    target = run_dir / SCORES_FILE
    if not kept:
        if os.path.lexists(target):
            target.unlink()
        return {"epochs": [], "missing": wanted}
    selection = {rule: e for rule, e in selection.items() if e in kept}
    arrays = {
        "format": np.int64(FORMAT),
        "image_ids": np.array([str(i) for i in image_ids], dtype=str),
        "class_names": np.array([str(c) for c in class_names], dtype=str),
        "epochs": np.array(kept, dtype=np.int64),
        "scores": np.stack([loaded[e][0] for e in kept]),
        "per_class_ap": np.stack([loaded[e][1] for e in kept]),
        "selection_rules": np.array(list(selection), dtype=str),
        "selection_epochs": np.array(list(selection.values()), dtype=np.int64),
    }
    with atomic_writer(target, expected_size=sum(a.nbytes for a in arrays.values())) as fh:
        np.savez(fh, **arrays)
    return {"epochs": kept, "missing": [e for e in wanted if e not in kept]}


def _member(archive: zipfile.ZipFile, name: str, load: bool = True):
    """``(shape, dtype, array or None)`` of member ``name``; ScoresError naming it when it is malformed."""
    try:
        info = archive.getinfo(f"{name}.npy")
        if info.file_size > SCORES_LIMIT:
            raise ValueError(f"declares {info.file_size} bytes")
        with archive.open(info) as fh:
            shape, dtype, fortran = npy_header(fh)
            if not load:
                return shape, dtype, None
            count = math.prod(shape)
            data = fh.read(count * dtype.itemsize)
            if len(data) != count * dtype.itemsize:
                raise ValueError(f"holds {len(data)} of the {count * dtype.itemsize} data bytes of its header")
            fh.read()                                    # to the end: the zip CRC of the member is checked
    except Exception as exc:  # noqa: BLE001 - numpy's header parser raises what its tokenizer raises (TokenError...)
        raise ScoresError(f"member {name}: {str(exc)[:160] or type(exc).__name__}") from None
    array = np.frombuffer(data, dtype=dtype, count=count)
    return shape, dtype, (array.reshape(shape[::-1]).T if fortran else array.reshape(shape))


def _expect(name: str, shape: tuple, dtype: np.dtype, kinds: str, ndim: int) -> None:
    if dtype.kind not in kinds or len(shape) != ndim:
        raise ScoresError(f"member {name} is {dtype} of shape {list(shape)}, not a {ndim}-d array of kind "
                          f"{'/'.join(kinds)}")
    if dtype.kind == "U" and dtype.itemsize > 4 * MAX_TEXT:
        raise ScoresError(f"member {name} holds strings longer than {MAX_TEXT} characters")


def _texts(archive, name: str) -> list[str]:
    shape, dtype, array = _member(archive, name)
    _expect(name, shape, dtype, "U", 1)
    if not shape[0]:
        raise ScoresError(f"member {name} is empty")
    return [str(v) for v in array]


def _epochs(archive) -> list[int]:
    shape, dtype, array = _member(archive, "epochs")
    _expect("epochs", shape, dtype, "iu", 1)
    epochs = [int(e) for e in array]
    if not epochs or epochs != sorted(set(epochs)) or not all(1 <= e <= MAX_EPOCH for e in epochs):
        raise ScoresError(f"member epochs {epochs[:8]} is not an increasing list of epochs in [1, {MAX_EPOCH}]")
    return epochs


def _selection(archive, epochs: list[int]) -> dict[str, int]:
    rules = _texts(archive, "selection_rules")
    shape, dtype, picked = _member(archive, "selection_epochs")
    _expect("selection_epochs", shape, dtype, "iu", 1)
    if len(picked) != len(rules) or len(set(rules)) != len(rules):
        raise ScoresError(f"members selection_rules {rules[:5]} and selection_epochs do not pair up")
    unknown = [r for r in rules if r not in SELECTION_RULES]
    if unknown:
        raise ScoresError(f"member selection_rules names unknown rules {unknown[:3]}")
    selection = {rule: int(e) for rule, e in zip(rules, picked)}
    if set(selection.values()) != set(epochs):
        raise ScoresError(f"members epochs {epochs} and selection_epochs {sorted(set(selection.values()))} differ")
    return selection


def _class_ap(archive, k: int, c: int) -> np.ndarray:
    shape, dtype, ap = _member(archive, "per_class_ap")
    _expect("per_class_ap", shape, dtype, "f", 2)
    if shape != (k, c):
        raise ScoresError(f"member per_class_ap has shape {list(shape)}, not [{k}, {c}] (epochs, classes)")
    known = ap[~np.isnan(ap)]
    if known.size and not (known.min() >= 0.0 and known.max() <= 100.0):
        raise ScoresError("member per_class_ap holds a value outside [0, 100] (percent)")
    return np.asarray(ap, dtype=np.float32)


def _format(archive) -> None:
    shape, dtype, value = _member(archive, "format")
    if dtype.kind not in "iu" or shape != () or int(value) != FORMAT:
        raise ScoresError(f"member format is not {FORMAT} (written by another version)")


def _check_members(archive: zipfile.ZipFile) -> None:
    names = [n[:-4] if n.endswith(".npy") else n for n in archive.namelist()]
    missing = [m for m in MEMBERS if m not in names]
    extra = sorted(set(names) - set(MEMBERS)) + sorted({n for n in names if names.count(n) > 1})
    if missing or extra:
        raise ScoresError(f"{'lacks member ' + ', '.join(missing) if missing else ''}"
                          f"{'; ' if missing and extra else ''}"
                          f"{'holds unknown or repeated members ' + ', '.join(extra[:5])[:120] if extra else ''}")


def read_scores(path: Path, matrices: bool = True) -> RunScores:
    """The validated content of a ``scores.npz`` (see the module doc), read without following a link;
    ``matrices=False`` checks the score matrix's header only. Raises :class:`ScoresError`."""
    try:
        fh = os.fdopen(open_nofollow(path), "rb")
    except OSError as exc:                   # UnsafePath is an OSError
        raise ScoresError(f"cannot be read ({str(exc)[:160]})") from None
    with fh:
        if os.fstat(fh.fileno()).st_size > SCORES_LIMIT:
            raise ScoresError(f"is larger than {SCORES_LIMIT >> 20} MiB; it is not a file this suite wrote")
        try:
            archive = zipfile.ZipFile(fh)
        except Exception as exc:  # noqa: BLE001 - any malformed archive (BadZipFile, OSError, ...)
            raise ScoresError(f"is not a numpy .npz archive ({str(exc)[:120] or type(exc).__name__})") from None
        with archive:
            _check_members(archive)
            return _contents(archive, matrices)


def _contents(archive: zipfile.ZipFile, matrices: bool) -> RunScores:
    _format(archive)
    image_ids, class_names = _texts(archive, "image_ids"), _texts(archive, "class_names")
    epochs = _epochs(archive)
    k, n, c = len(epochs), len(image_ids), len(class_names)
    shape, dtype, scores = _member(archive, "scores", load=matrices)
    _expect("scores", shape, dtype, "f", 3)
    if shape != (k, n, c):
        raise ScoresError(f"member scores has shape {list(shape)}, not [{k}, {n}, {c}] (epochs, images, classes)")
    if scores is not None and np.isnan(scores).any():
        raise ScoresError("member scores holds NaN")
    return RunScores(image_ids=image_ids, class_names=class_names, epochs=epochs,
                     per_class_ap=_class_ap(archive, k, c), selection=_selection(archive, epochs),
                     scores=scores, shape=(n, c))
