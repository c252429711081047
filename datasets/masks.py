"""Partial-label protocols, checksummed mask files and the official label encodings.

A mask is ``observed`` bool ``[N, C]`` (True = the label is known) over a :class:`LabelSet` in
dataset order. Protocols live in :data:`PROTOCOLS`; each is one pure function of the full labels,
the known-label proportion ``p`` and a seed. ``random`` reproduces the HCP code exactly for seed 0
(spec 1.1, F1), ``random_clsl`` the CLSL code's torch generator (spec 8.2, F2), and
``single_positive`` keeps one positive per image (Cole et al., CVPR 2021; ``p`` is ignored and
stored as ``null``). ``p`` is rounded to 6 decimals first, so 0.30000000000000004 names the 0.3 file.

:func:`get_mask` saves one ``.npy`` (``np.packbits(observed, axis=1)``) plus a JSON manifest per
(dataset fingerprint, protocol, p, seed) and verifies both on every load: a mask file whose bytes do
not match the sha256 of its manifest is refused (never used); one without a manifest (a write cut short
between the two files) is drawn again, which gives the same bytes.

A mask given from outside (a mask pack, :mod:`datasets.mask_pack`, that differs from the suite's own
draw) is stored in the same format by :func:`install_mask` under ``<masks cache>/packs/<pack digest>/``
and loaded with ``get_mask(..., pack=digest)``; it is never drawn. :func:`mask_sha256` is the digest a
run records as ``mask_sha256`` (sha256 of the mask file's bytes).

The checksum helpers are :mod:`benchmark.core.digests`.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from benchmark.core.cache import cache_dir
from benchmark.core.digests import (
    npy_from_buffer,
    read_manifest,
    verified_content,
)
from benchmark.core.errors import UserError
from benchmark.core.files import atomic_write_bytes, atomic_write_text
from datasets.base import LabelSet

logger = logging.getLogger(__name__)
FORMAT = "mlrpl-mask/1"
ENCODING = "np.packbits(observed, axis=1); unpack with np.unpackbits(a, axis=1, count=C).astype(bool)"


# ----------------------------------------------------------------------------- protocols
@dataclass(frozen=True)
class Protocol:
    """A partial-label protocol: ``draw(labels uint8 [N, C], p, seed) -> observed bool [N, C]``."""

    draw: Callable[[np.ndarray, float | None, int], np.ndarray]
    uses_p: bool
    generator: str


def draw_random(labels: np.ndarray, p: float | None, seed: int) -> np.ndarray:
    """HCP: every entry known i.i.d. with probability p; nested across p for a fixed seed."""
    return np.random.RandomState(seed).random_sample(labels.shape) < p


def draw_random_clsl(labels: np.ndarray, p: float | None, seed: int) -> np.ndarray:
    """CLSL: same distribution as ``random``, drawn with the torch CPU generator."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(labels.shape, generator=gen) < p).numpy()


def draw_single_positive(labels: np.ndarray, p: float | None, seed: int) -> np.ndarray:
    """One known positive per image, uniform among its positives; images without one: none."""
    labels = np.asarray(labels, dtype=bool)
    n_pos = labels.sum(axis=1)
    u = np.random.RandomState(seed).random_sample(labels.shape[0])
    rank = np.minimum((u * n_pos).astype(np.int64), np.maximum(n_pos - 1, 0))
    col = np.argmax(np.cumsum(labels, axis=1) > rank[:, None], axis=1)
    observed = np.zeros(labels.shape, dtype=bool)
    rows = np.nonzero(n_pos > 0)[0]
    observed[rows, col[rows]] = True
    return observed


PROTOCOLS: dict[str, Protocol] = {
    "random": Protocol(draw_random, True, "numpy.random.RandomState(seed).random_sample((N, C)) < p "
                       "(seed 0 = HCP official: np.random.seed(0); np.random.random((N, C)) < p)"),
    "random_clsl": Protocol(draw_random_clsl, True, "g = torch.Generator().manual_seed(seed); "
                            "torch.rand((N, C), generator=g) < p (seed 0 = CLSL official, torch CPU)"),
    "single_positive": Protocol(draw_single_positive, False, "u = numpy.random.RandomState(seed)"
                                ".random_sample(N); image i keeps its floor(u_i * k_i)-th positive "
                                "(column order, k_i = its positive count) as the only known label"),
}


def _protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise UserError(f"unknown mask protocol {name!r}; valid protocols: {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[name]


def _check_args(protocol: str, p: float | None, seed: int) -> tuple[Protocol, float | None, int]:
    """Validate and canonicalise (protocol, p, seed); p becomes None when the protocol ignores it."""
    proto = _protocol(protocol)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise UserError(f"mask seed {seed!r} is invalid; use an integer in [0, 2**32)")
    if not proto.uses_p:
        return proto, None, int(seed)
    if p is None or not isinstance(p, (int, float, np.number)) or not 0.0 < float(p) <= 1.0:
        raise UserError(f"known-label proportion p={p!r} for protocol {protocol!r} is invalid; use a number in (0, 1]")
    return proto, round(float(p), 6), int(seed)


def check_fraction(observed: np.ndarray, p: float, where: str) -> None:
    """Guard: the observed fraction of an i.i.d. Bernoulli(p) mask lies within 5 sd + 1e-3 of p."""
    frac = float(observed.mean())
    tol = 5.0 * np.sqrt(p * (1.0 - p) / observed.size) + 1e-3
    if abs(frac - p) > tol:
        raise UserError(f"{where}: observed fraction {frac:.4f} differs from p={p} by more than {tol:.4f}; "
                        "delete the mask file and its manifest to regenerate")


# ----------------------------------------------------------------------------- manifest
def mask_report(observed: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    """Counts of known positives/negatives (overall, per class) and coverage gaps of a mask."""
    pos = observed & (labels == 1)
    neg = observed & (labels == 0)
    pos_c = pos.sum(axis=0)
    return {
        "known_positives": int(pos.sum()),
        "known_negatives": int(neg.sum()),
        "known_positives_per_class": [int(v) for v in pos_c],
        "known_negatives_per_class": [int(v) for v in neg.sum(axis=0)],
        "observed_fraction": float(observed.mean()),
        "images_without_known_label": int((~observed.any(axis=1)).sum()),
        "images_without_known_positive": int((~pos.any(axis=1)).sum()),
        "classes_without_known_positive": [class_names[c] for c in np.nonzero(pos_c == 0)[0]],
    }


def _manifest(ls: LabelSet, protocol: str, p: float | None, seed: int, observed: np.ndarray,
              sha: str) -> dict:
    man = {"format": FORMAT, "dataset": ls.name, "fingerprint": ls.fingerprint(), "protocol": protocol,
           "p": p, "seed": seed, "generator": PROTOCOLS[protocol].generator, "shape": list(observed.shape),
           "encoding": ENCODING, "sha256": sha, "counts": mask_report(observed, ls.labels, ls.class_names),
           "class_names": list(ls.class_names), "image_ids": list(ls.image_ids)}
    return json.loads(json.dumps(man, default=str))


def _warnings(manifest: dict) -> list[str]:
    missing = manifest["counts"]["classes_without_known_positive"]
    if not missing:
        return []
    shown = ", ".join(missing[:20]) + (", ..." if len(missing) > 20 else "")
    return [f"{len(missing)} of {manifest['shape'][1]} classes have no known positive "
            f"({manifest['protocol']}, p={manifest['p']}, seed {manifest['seed']}): {shown}"]


# ----------------------------------------------------------------------------- files
@dataclass
class Mask:
    """A loaded, verified mask: ``observed`` bool [N, C] plus its file, checksum and manifest."""

    observed: np.ndarray
    sha256: str
    manifest: dict
    path: Path
    warnings: list[str] = field(default_factory=list)

    def known_targets(self, labelset: LabelSet) -> np.ndarray:
        """float32 [N, C]: the full labels where observed, 0 where unknown (never the hidden value)."""
        _check_dataset(self.manifest, labelset, self.path)
        return (labelset.labels * self.observed).astype(np.float32)


def mask_path(mask_dir: Path, fingerprint: str, protocol: str, p: float | None, seed: int) -> Path:
    """``<mask_dir>/<protocol>[_p<p>]_seed<seed>_<fingerprint[:12]>.npy``."""
    p_part = "" if p is None else f"_p{p:g}"
    return Path(mask_dir) / f"{protocol}{p_part}_seed{seed}_{fingerprint[:12]}.npy"


def mask_bytes(observed: np.ndarray) -> bytes:
    """The bytes of a mask file: ``np.save`` of ``np.packbits(observed, axis=1)`` (no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.packbits(np.asarray(observed, dtype=bool), axis=1), allow_pickle=False)
    return buf.getvalue()


def mask_sha256(observed: np.ndarray) -> str:
    """The digest a run records as ``mask_sha256``: sha256 of :func:`mask_bytes`."""
    return hashlib.sha256(mask_bytes(observed)).hexdigest()


def _create(ls: LabelSet, protocol: str, p: float | None, seed: int, path: Path) -> None:
    observed = np.asarray(PROTOCOLS[protocol].draw(ls.labels, p, seed), dtype=bool)
    if observed.shape != ls.labels.shape:
        raise ValueError(f"protocol {protocol} returned shape {observed.shape} for labels {ls.labels.shape}")
    if p is not None:
        check_fraction(observed, p, f"protocol {protocol}")
    _write(ls, protocol, p, seed, path, observed, {})


def _write(ls: LabelSet, protocol: str, p: float | None, seed: int, path: Path, observed: np.ndarray,
           extra: dict) -> None:
    data = mask_bytes(observed)
    atomic_write_bytes(path, data)        # the data first, its manifest after it
    manifest = {**_manifest(ls, protocol, p, seed, observed, hashlib.sha256(data).hexdigest()), **extra}
    atomic_write_text(path.with_suffix(".json"), json.dumps(manifest, indent=1) + "\n")


def _check_dataset(manifest: dict, ls: LabelSet, path: Path) -> None:
    """The mask was drawn for this labelset: same classes, image order and labels."""
    fix = f"use the dataset the mask was drawn for, or delete {path} and its manifest to regenerate"
    if manifest["class_names"] != [str(c) for c in ls.class_names]:
        raise UserError(f"mask file {path} has a different class order than dataset {ls.name}; {fix}")
    ids = [str(i) for i in manifest["image_ids"]]
    if ids != [str(i) for i in ls.image_ids]:
        pairs = zip(ids, map(str, ls.image_ids))
        first = next((k for k, (a, b) in enumerate(pairs) if a != b), min(len(ids), len(ls)))
        raise UserError(f"mask file {path} has a different image-id order than dataset {ls.name} "
                        f"({len(ids)} vs {len(ls)} images, first difference at position {first}); {fix}")
    if manifest["fingerprint"] != ls.fingerprint():
        raise UserError(f"mask file {path} was drawn for other labels of dataset {ls.name} (fingerprint "
                        f"{manifest['fingerprint'][:12]} vs {ls.fingerprint()[:12]}); {fix}")


def _read_manifest(path: Path) -> dict:
    man_path = path.with_suffix(".json")
    if not path.is_file():
        raise UserError(f"mask file {path} is missing; delete {man_path} (if present) to regenerate it")
    try:
        manifest = json.loads(man_path.read_text())
        keys = {"sha256", "fingerprint", "class_names", "image_ids", "shape", "protocol", "p", "seed"}
        if not isinstance(manifest, dict) or keys - set(manifest):
            raise ValueError("missing keys")
    except (OSError, ValueError):
        raise UserError(f"mask manifest {man_path} is missing or unreadable; "
                        f"delete it and {path} to regenerate") from None
    return manifest


def load_mask(path: Path | str, labelset: LabelSet) -> Mask:
    """Load a mask file and verify checksum, dataset, shape, manifest contents and the p guard."""
    path = Path(path)
    manifest = _read_manifest(path)
    content, why = verified_content(path, {"sha256": manifest["sha256"]})
    fix = "delete it and its manifest to regenerate"
    if why == "failed its checksum":
        raise UserError(f"mask file {path} was modified (sha256 mismatch); {fix}")
    if content is None:
        raise UserError(f"mask file {path} {why}; {fix}")
    sha = manifest["sha256"]
    _check_dataset(manifest, labelset, path)
    n, c = labelset.labels.shape
    try:                                # the bytes just verified, not a second read of the file
        packed = npy_from_buffer(content)
    except ValueError as exc:
        raise UserError(f"mask file {path} is not a readable .npy array ({exc}); {fix}") from None
    if manifest["shape"] != [n, c] or packed.shape != (n, (c + 7) // 8):
        raise UserError(f"mask file {path} has shape {manifest['shape']}, dataset {labelset.name} has {[n, c]}; "
                        "delete it and its manifest to regenerate")
    observed = np.unpackbits(packed, axis=1, count=c).astype(bool)
    proto, p, seed = _check_args(manifest["protocol"], manifest["p"], manifest["seed"])
    expected = _manifest(labelset, manifest["protocol"], p, seed, observed, sha)
    # "generator" is prose: rewording it must not invalidate the files already drawn
    bad = next((k for k in expected if k != "generator" and expected[k] != manifest.get(k)), None)
    if bad is not None:
        raise UserError(f"mask manifest {path.with_suffix('.json')} disagrees with its mask file on {bad!r}; "
                        "delete both to regenerate")
    if proto.uses_p:
        check_fraction(observed, p, f"mask file {path}")
    mask = Mask(observed=observed, sha256=sha, manifest=manifest, path=path, warnings=_warnings(manifest))
    for msg in mask.warnings:
        logger.warning(msg)
    return mask


def get_mask(labelset: LabelSet, protocol: str, p: float | None, seed: int,
             mask_dir: Path | str | None = None, pack: str | None = None) -> Mask:
    """The mask for (labelset, protocol, p, seed): drawn and saved on first use, then loaded.

    ``mask_dir`` defaults to ``cache_dir("masks", labelset.name)``. Raises :class:`UserError` for an
    unknown protocol, p outside (0, 1], a modified file or a mask drawn for other data. With ``pack``
    (a mask pack's digest, :mod:`datasets.mask_pack`), the mask that pack holds, installed by
    :func:`install_mask` before the runs started; it is never drawn.
    """
    _, p, seed = _check_args(protocol, p, seed)
    if pack is not None:
        return _pack_mask(labelset, protocol, p, seed, pack, mask_dir)
    mask_dir = cache_dir("masks", labelset.name) if mask_dir is None else Path(mask_dir)
    mask_dir.mkdir(parents=True, exist_ok=True)
    path = mask_path(mask_dir, labelset.fingerprint(), protocol, p, seed)
    if not path.with_suffix(".json").is_file():
        _create(labelset, protocol, p, seed, path)
    mask = load_mask(path, labelset)
    if (mask.manifest["protocol"], mask.manifest["p"], mask.manifest["seed"]) != (protocol, p, seed):
        raise UserError(f"mask file {path} holds {mask.manifest['protocol']}, p={mask.manifest['p']}, "
                        f"seed {mask.manifest['seed']}, not what its name says; delete it and its manifest")
    return mask


# ----------------------------------------------------------------------------- masks given from outside
def pack_mask_dir(labelset: LabelSet, pack: str) -> Path:
    """Where the masks of mask pack ``pack`` (its digest) are installed: ``<masks cache>/packs/<pack>``."""
    if not re.fullmatch(r"[0-9a-f]{8,64}", str(pack)):
        raise UserError(f"mask pack digest {pack!r} is not a hex digest; plan the runs with --mask-pack FILE")
    return cache_dir("masks", labelset.name) / "packs" / pack


def install_mask(labelset: LabelSet, protocol: str, p: float | None, seed: int, observed: np.ndarray,
                 pack: str, generator: str, mask_dir: Path | str | None = None) -> Mask:
    """Store a mask given from outside (one of pack ``pack``) in the mask file format, where
    ``get_mask(..., pack=pack)`` finds it; verified like every mask file. The caller has checked it
    (:func:`datasets.mask_pack.read_pack`); a file already there with the same bytes is kept."""
    _, p, seed = _check_args(protocol, p, seed)
    observed = np.asarray(observed, dtype=bool)
    if observed.shape != labelset.labels.shape:
        raise ValueError(f"mask of shape {observed.shape} for labels {labelset.labels.shape}")
    folder = pack_mask_dir(labelset, pack) if mask_dir is None else Path(mask_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = mask_path(folder, labelset.fingerprint(), protocol, p, seed)
    sha = mask_sha256(observed)
    manifest = read_manifest(path)
    if manifest is None or manifest.get("sha256") != sha or verified_content(path, manifest)[1]:
        _write(labelset, protocol, p, seed, path, observed, {"pack": pack, "generator": generator})
    return _pack_mask(labelset, protocol, p, seed, pack, folder)


def _pack_mask(labelset: LabelSet, protocol: str, p: float | None, seed: int, pack: str,
               mask_dir: Path | str | None) -> Mask:
    folder = pack_mask_dir(labelset, pack) if mask_dir is None else Path(mask_dir)
    path = mask_path(folder, labelset.fingerprint(), protocol, p, seed)
    if not path.with_suffix(".json").is_file():
        raise UserError(f"the mask of pack {pack} for {protocol}, p={p}, seed {seed} is not in the cache ({path}); "
                        "run the grid with --mask-pack FILE again: it installs the pack's masks before any run starts")
    mask = load_mask(path, labelset)
    held = (mask.manifest.get("pack"), mask.manifest["protocol"], mask.manifest["p"], mask.manifest["seed"])
    if held != (pack, protocol, p, seed):
        raise UserError(f"mask file {path} holds pack {held[0]}, {held[1]}, p={held[2]}, seed {held[3]}, not what "
                        "its name says; delete it and its manifest, then run the grid with --mask-pack FILE again")
    return mask


# ----------------------------------------------------------------------------- official encodings
def _encode(labels: np.ndarray, observed: np.ndarray, pos: int, neg: int, unknown: int) -> np.ndarray:
    labels, observed = np.asarray(labels), np.asarray(observed, dtype=bool)
    if labels.shape != observed.shape or not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be {{0, 1}} with the shape of observed {observed.shape}, got {labels.shape}")
    return np.where(observed, np.where(labels == 1, pos, neg), unknown).astype(np.int8)


def _decode(y: np.ndarray, pos: int, neg: int, unknown: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    if not np.isin(y, (pos, neg, unknown)).all():
        raise UserError(f"{name} labels must be {pos} (positive), {neg} (negative) or {unknown} (unknown); "
                        f"found {sorted(set(np.unique(y).tolist()) - {pos, neg, unknown})[:5]}")
    return (y == pos).astype(np.float32), y != unknown


def to_hcp(labels: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """HCP encoding, int8: +1 known positive, -1 known negative, 0 unknown."""
    return _encode(labels, observed, 1, -1, 0)


def from_hcp(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HCP {+1, -1, 0} -> (targets float32 {0, 1} with unknown = 0, observed bool)."""
    return _decode(y, 1, -1, 0, "HCP")


def to_clsl(labels: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """CLSL encoding, int8: 1 known positive, 0 known negative, -1 unknown."""
    return _encode(labels, observed, 1, 0, -1)


def from_clsl(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CLSL {1, 0, -1} -> (targets float32 {0, 1} with unknown = 0, observed bool)."""
    return _decode(y, 1, 0, -1, "CLSL")


def read_hcp_partial_file(path: Path | str, labelset: LabelSet) -> np.ndarray:
    """Observed mask from an official HCP partial-label file (rows of {1, 0, -1}, comma or space separated)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"partial-label file {path} not found; check the path")
    rows = [re.split(r"[,\s]+", line.strip()) for line in path.read_text().splitlines() if line.strip()]
    n, c = labelset.labels.shape
    if len(rows) != n:
        raise UserError(f"partial-label file {path} has {len(rows)} rows, dataset {labelset.name} has {n} images")
    bad_row = next((i for i, r in enumerate(rows) if len(r) != c), None)
    if bad_row is not None:
        raise UserError(f"partial-label file {path} row {bad_row + 1} has {len(rows[bad_row])} values, expected {c}")
    try:
        y = np.array(rows, dtype=np.float64)
    except ValueError as exc:
        raise UserError(f"partial-label file {path} holds a non-numeric value ({exc}); "
                        "values must be 1, 0 or -1") from None
    targets, observed = from_hcp(y)
    wrong = np.argwhere(observed & (targets != labelset.labels))
    if len(wrong):
        i, j = wrong[0]
        raise UserError(f"partial-label file {path} row {i + 1} (image {labelset.image_ids[i]}), class "
                        f"{labelset.class_names[j]}: says {int(y[i, j]):+d} but the full label is "
                        f"{int(labelset.labels[i, j])}; the file belongs to another dataset or image order")
    return observed
