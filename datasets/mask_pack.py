"""Mask packs: the exact partial-label masks a grid trains with, in one documented numpy file, so
that another code base can train on the same labels (``run_benchmark.py masks export``) and the
suite can train on masks made elsewhere (``run_benchmark.py --mask-pack FILE``).

A pack is one ``.npz`` written by ``np.savez_compressed``; ``np.load(path, allow_pickle=False)``
reads it (nothing in it is a pickle). Its keys (every string is a numpy unicode array):

==================  =====================  ======================================================
key                 dtype, shape           meaning
==================  =====================  ======================================================
``format``          str, ()                ``mlrpl-mask-pack/1`` (:data:`PACK_FORMAT`)
``dataset``         str, ()                the suite's dataset key (``voc2007``, ``synthetic``, ...)
``dataset_size``    str, ()                the synthetic size (``tiny``, ``default``); ``default``
                                           for the real datasets, which have one size
``preset``          str, ()                the dataset preset (``hcp``, ``clsl``); ``""`` for none
``fingerprint``     str, ()                sha256 of the training split's class names, image ids
                                           and full labels (``LabelSet.fingerprint``)
``image_ids``       str, (N,)              the training split's image ids, in the masks' row order
``class_names``     str, (C,)              the classes, in the masks' column order
``protocol``        str, ()                ``random`` | ``random_clsl`` | ``single_positive``
``generator``       str, ()                the rule that drew the masks, in words (for ``random``
                                           seed 0 the HCP code's ``np.random`` draw, for
                                           ``random_clsl`` the CLSL code's torch draw)
``ratios``          float64, (R,)          known-label proportions; ``[1.0]`` for
                                           ``single_positive``, which has none
``seeds``           int64, (S,)            mask seeds (seed 0 = the official generator)
``observed``        bool, (R, S, N, C)     ``observed[r, s, i, j]``: the label of image i, class j
                                           is known at ``ratios[r]``, seed ``seeds[s]``
``mask_sha256``     str, (R, S)            sha256 of ``np.save(np.packbits(observed[r, s],
                                           axis=1))`` bytes: the ``mask_sha256`` a run records
==================  =====================  ======================================================

Extra keys are ignored. :func:`read_pack` checks all of the above (one :class:`UserError` line per
problem: format, dtypes, shapes, checksums, the protocol's own rule for each mask) and
:meth:`Pack.check_labelset` that ids, class order and labels are the dataset's. A pack is
identified by :attr:`Pack.digest`, a digest of its dataset fingerprint, protocol and every mask's
sha256: runs that train on a pack mask the suite would not draw itself carry it in their identity.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.core.errors import UserError
from benchmark.core.files import atomic_writer
from datasets.base import LabelSet
from datasets.masks import PROTOCOLS, Mask, check_fraction, mask_sha256
from datasets.readers import is_file, path_kind, read_data_bytes, shown

PACK_FORMAT = "mlrpl-mask-pack/1"
FIX = "export it again with `run_benchmark.py masks export` (see docs/mask_packs.md)"
_HEX64 = re.compile(r"[0-9a-f]{64}")
# key -> (dtype kind, number of dimensions); observed and mask_sha256 are checked against R, S, N, C
KEYS = {"format": ("U", 0), "dataset": ("U", 0), "dataset_size": ("U", 0), "preset": ("U", 0),
        "fingerprint": ("U", 0), "image_ids": ("U", 1), "class_names": ("U", 1), "protocol": ("U", 0),
        "generator": ("U", 0), "ratios": ("f", 1), "seeds": ("iu", 1), "observed": ("b", 4),
        "mask_sha256": ("U", 2)}
KINDS = {"U": "a numpy unicode string array", "f": "floating point", "iu": "integer", "b": "bool"}


def pack_arrays(labelset: LabelSet, dataset: str, dataset_size: str, preset: str | None, protocol: str,
                masks: dict[tuple[float, int], Mask]) -> dict[str, np.ndarray]:
    """The arrays of a pack holding ``masks`` ((ratio, seed) -> the suite's Mask, every pair of the
    ratios x seeds grid present) for the training split ``labelset``."""
    ratios = sorted({r for r, _ in masks})
    seeds = sorted({s for _, s in masks}, key=int)
    n, c = labelset.labels.shape
    observed = np.zeros((len(ratios), len(seeds), n, c), dtype=bool)
    shas = np.empty((len(ratios), len(seeds)), dtype="<U64")
    for i, ratio in enumerate(ratios):
        for j, seed in enumerate(seeds):
            observed[i, j], shas[i, j] = masks[(ratio, seed)].observed, masks[(ratio, seed)].sha256
    return {"format": np.array(PACK_FORMAT), "dataset": np.array(dataset), "dataset_size": np.array(dataset_size),
            "preset": np.array(preset or ""), "fingerprint": np.array(labelset.fingerprint()),
            "image_ids": np.array([str(i) for i in labelset.image_ids]),
            "class_names": np.array([str(c) for c in labelset.class_names]), "protocol": np.array(protocol),
            "generator": np.array(PROTOCOLS[protocol].generator), "ratios": np.array(ratios, dtype=np.float64),
            "seeds": np.array(seeds, dtype=np.int64), "observed": observed, "mask_sha256": shas}


def write_pack(path: Path, arrays: dict[str, np.ndarray]) -> int:
    """Write a pack atomically (a reader never sees half a file); returns its size in bytes."""
    with atomic_writer(Path(path), "wb", expected_size=arrays["observed"].size / 8) as fh:
        np.savez_compressed(fh, **arrays)
    return Path(path).stat().st_size


@dataclass
class Pack:
    """A verified mask pack (see the module doc for the fields)."""

    path: Path
    dataset: str
    dataset_size: str
    preset: str
    fingerprint: str
    image_ids: list[str]
    class_names: list[str]
    protocol: str
    generator: str
    ratios: list[float]
    seeds: list[int]
    observed: np.ndarray
    mask_sha256: np.ndarray

    @property
    def digest(self) -> str:
        """16 hex digits over the dataset fingerprint, the protocol and every (ratio, seed, sha256)."""
        cells = [[r, s, str(self.mask_sha256[i, j])]
                 for i, r in enumerate(self.ratios) for j, s in enumerate(self.seeds)]
        blob = json.dumps([self.fingerprint, self.protocol, cells], separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def cells(self) -> list[tuple[float, int]]:
        return [(r, s) for r in self.ratios for s in self.seeds]

    def _index(self, ratio: float, seed: int) -> tuple[int, int]:
        rows = [i for i, r in enumerate(self.ratios) if abs(r - ratio) < 1e-9]
        if not rows or seed not in self.seeds:
            held = ", ".join(f"{r:g}" for r in self.ratios)
            raise UserError(f"mask pack {self.path} has no mask for p={ratio:g} seed {seed} (it holds proportions "
                            f"{held}, seeds {' '.join(map(str, self.seeds))}); give --ratios / --seeds it holds, "
                            "or export a pack with these")
        return rows[0], self.seeds.index(seed)

    def mask(self, ratio: float, seed: int) -> np.ndarray:
        """observed bool [N, C] at (ratio, seed)."""
        return self.observed[self._index(ratio, seed)]

    def sha256(self, ratio: float, seed: int) -> str:
        return str(self.mask_sha256[self._index(ratio, seed)])

    def check_labelset(self, labelset: LabelSet, dataset: str) -> None:
        """The pack was made for this training split: same dataset, class order, image order, labels."""
        fix = "export the pack from the dataset the grid trains on (same --dataset, --data-root, --preset, --profile)"
        if self.dataset != dataset:
            raise UserError(f"mask pack {self.path} holds masks of dataset {self.dataset}, the grid trains {dataset}; "
                            f"{fix}")
        _same_list(self.path, "class", self.class_names, [str(c) for c in labelset.class_names], dataset, fix)
        _same_list(self.path, "image id", self.image_ids, [str(i) for i in labelset.image_ids], dataset, fix)
        if self.fingerprint != labelset.fingerprint():
            raise UserError(f"mask pack {self.path} was made for other labels of {dataset} (fingerprint "
                            f"{self.fingerprint[:12]}, the dataset's {labelset.fingerprint()[:12]}): same images "
                            f"and classes, different annotations; {fix}")
        if self.protocol == "single_positive":
            bad = np.argwhere(self.observed & (labelset.labels == 0)[None, None])
            if len(bad):
                _, s, i, j = bad[0]
                raise UserError(f"mask pack {self.path}: single_positive mask seed {self.seeds[s]} observes image "
                                f"{shown(self.image_ids[i])}, class {shown(self.class_names[j])}, a negative; "
                                "single-positive masks observe one positive per image; fix the pack")


def _same_list(path: Path, what: str, pack: list[str], data: list[str], dataset: str, fix: str) -> None:
    if pack == data:
        return
    first = next((k for k, (a, b) in enumerate(zip(pack, data)) if a != b), min(len(pack), len(data)))

    def at(values: list[str]) -> str:
        return shown(values[first]) if first < len(values) else "nothing"

    raise UserError(f"mask pack {path} has a different {what} order than {dataset}'s training split ({len(pack)} vs "
                    f"{len(data)} {what}s; at position {first}: {at(pack)} in the pack, {at(data)} in the "
                    f"dataset); {fix}")


def read_pack(path: Path | str) -> Pack:
    """Load and verify a mask pack (format, dtypes, shapes, checksums, each mask's protocol rule)."""
    path = Path(path).expanduser()
    if not is_file(path):
        kind = path_kind(path)
        raise UserError(f"mask pack {path} " + ("not found" if kind is None else f"is a {kind}, not a file") +
                        "; give the .npz file written by `run_benchmark.py masks export`")
    data = read_data_bytes(path, "mask pack", FIX)
    arrays = _load_arrays(path, data)
    v = {k: (a.item() if a.ndim == 0 else a) for k, a in arrays.items()}
    if v["format"] != PACK_FORMAT:
        raise UserError(f"mask pack {path} has format {shown(v['format'])}; this code reads {PACK_FORMAT}; {FIX}")
    if v["protocol"] not in PROTOCOLS:
        raise UserError(f"mask pack {path} has protocol {shown(v['protocol'])}; valid: {', '.join(PROTOCOLS)}; {FIX}")
    ratios, seeds = _ratios(path, v["ratios"], v["protocol"]), _seeds(path, v["seeds"])
    shape = (len(ratios), len(seeds), len(v["image_ids"]), len(v["class_names"]))
    for key, want in (("observed", shape), ("mask_sha256", shape[:2])):
        if v[key].shape != want:
            raise UserError(f"mask pack {path}: {key} has shape {list(v[key].shape)}, expected {list(want)} (ratios x "
                            f"seeds{' x images x classes' if key == 'observed' else ''}); {FIX}")
    for key in ("dataset", "dataset_size", "preset"):
        if not re.fullmatch(r"[a-z0-9_]{0,40}", v[key]) or (key == "dataset" and not v[key]):
            raise UserError(f"mask pack {path}: {key} {shown(v[key])} is not a dataset name of this suite; {FIX}")
    if not _HEX64.fullmatch(v["fingerprint"]):
        raise UserError(f"mask pack {path}: fingerprint {shown(v['fingerprint'])} is not a sha256 hex digest; {FIX}")
    pack = Pack(path=path, dataset=v["dataset"], dataset_size=v["dataset_size"], preset=v["preset"],
                fingerprint=v["fingerprint"], image_ids=[str(i) for i in v["image_ids"]],
                class_names=[str(c) for c in v["class_names"]], protocol=v["protocol"], generator=v["generator"],
                ratios=ratios, seeds=seeds, observed=v["observed"], mask_sha256=v["mask_sha256"])
    for ratio, seed in pack.cells():
        _check_mask(pack, ratio, seed)
    return pack


def _load_arrays(path: Path, data: bytes) -> dict[str, np.ndarray]:
    """Every key of the pack as an array, dtypes and dimensions checked; one line for any problem."""
    if data.startswith(b"\x93NUMPY"):
        raise UserError(f"mask pack {path} is a single .npy array, not a mask pack (.npz); {FIX}")
    if data[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):            # a zip archive (an empty one: the second)
        raise UserError(f"mask pack {path} is not a .npz file (it does not start as a zip archive); {FIX}")
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
        missing = [k for k in KEYS if k not in archive.files]
        if missing:
            raise UserError(f"mask pack {path} lacks the key(s) {', '.join(missing)}: not a mask pack, or written "
                            f"by something else; {FIX}")
        arrays = {k: archive[k] for k in KEYS}
    except UserError:
        raise
    except ValueError as exc:
        why = "holds Python objects (a pickle), which the suite never loads" if "pickle" in str(exc) else \
            f"is not a readable .npz ({str(exc)[:100]})"
        raise UserError(f"mask pack {path} {why}; {FIX}") from None
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, KeyError, TypeError) as exc:
        raise UserError(f"mask pack {path} is not a readable .npz file ({type(exc).__name__}: "
                        f"{str(exc)[:100]}); {FIX}") from None
    except MemoryError:
        raise UserError(f"mask pack {path} is too large to read into memory; export fewer ratios or seeds") from None
    for key, (kinds, ndim) in KEYS.items():
        if arrays[key].dtype.kind not in kinds or arrays[key].ndim != ndim:
            raise UserError(f"mask pack {path}: {key} is {arrays[key].dtype} with {arrays[key].ndim} dimension(s), "
                            f"expected {KINDS[kinds]} with {ndim}; {FIX}")
    return arrays


def _ratios(path: Path, values: np.ndarray, protocol: str) -> list[float]:
    ratios = [float(v) for v in values]
    if not PROTOCOLS[protocol].uses_p:
        if ratios != [1.0]:
            raise UserError(f"mask pack {path}: protocol {protocol} has no proportion, ratios must be [1.0], found "
                            f"{ratios[:5]}; {FIX}")
        return ratios
    bad = [r for r in ratios if not (0.0 < r <= 1.0) or abs(r - round(r, 4)) > 1e-12]
    if not ratios or bad or len(set(ratios)) != len(ratios):
        raise UserError(f"mask pack {path}: ratios {ratios[:8]} must be distinct proportions in (0, 1] with at most "
                        f"4 decimals; {FIX}")
    return [round(r, 4) for r in ratios]


def _seeds(path: Path, values: np.ndarray) -> list[int]:
    seeds = [int(s) for s in values]
    if not seeds or any(not 0 <= s < 2**32 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UserError(f"mask pack {path}: seeds {seeds[:8]} must be distinct integers in [0, 2**32); {FIX}")
    return seeds


def _check_mask(pack: Pack, ratio: float, seed: int) -> None:
    """One mask: its sha256 as recorded, and the protocol's rule (the fraction guard for the random
    protocols, at most one observed label per image for single positive)."""
    where = f"mask pack {pack.path}, p={ratio:g} seed {seed}"
    observed, sha = pack.mask(ratio, seed), pack.sha256(ratio, seed)
    actual = mask_sha256(observed)
    if actual != sha:
        raise UserError(f"{where}: the mask's sha256 is {actual[:12]}..., the pack records {sha[:12]}... (the file was "
                        "changed after it was written, or mask_sha256 was not recomputed); recompute mask_sha256 as "
                        f"docs/mask_packs.md shows, or {FIX}")
    if PROTOCOLS[pack.protocol].uses_p:
        try:
            check_fraction(observed, ratio, where)
        except UserError as exc:
            raise UserError(f"{str(exc).split(';')[0]}; the masks do not match the proportion they are filed "
                            "under: fix ratios in the pack") from None
    elif (observed.sum(axis=1) > 1).any():
        row = int(np.argmax(observed.sum(axis=1) > 1))
        raise UserError(f"{where}: image {shown(pack.image_ids[row])} has {int(observed[row].sum())} observed labels; "
                        "a single_positive mask observes at most one per image; fix the pack")
