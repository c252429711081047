"""The frozen protocol's feature cache: backbone feature maps computed once per
(dataset split, backbone, weights, image size) and stored on disk as fp16. A CLIP trunk
(``clip:<arch>``) keys on its CLIP's fingerprint (``arch:sha256:<file>``, or ``tiny-RN:random:<seed>``).

Each cache file ``X.npy`` has a manifest ``X.json`` (sha256 and size of the file, shape, dtype),
written after it. Every load verifies the bytes it reads against the manifest (memoised per
process: a grid hashes the file once per process, about 0.05 s per 100 MB); a file that fails its
checksum, is truncated, unreadable or has no manifest (a write killed between the two, or a cache
written before manifests existed) is extracted again, with one warning naming the file. Training
never sees bytes that were not verified.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmark.core import progress
from benchmark.core.cache import cache_dir
from benchmark.core.digests import (
    npy_from_buffer,
    read_manifest,
    verified_content,
    verified_file,
    write_digested,
    write_manifest,
)
from benchmark.core.files import stable_hash
from benchmark.engine.backbones import (
    backbone_fingerprint,
    build_backbone,
    imagenet_normalization,
)
from benchmark.engine.data import ImageSource
from benchmark.engine.transforms import eval_transform
from datasets.base import LabelSet

log = logging.getLogger(__name__)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, source: ImageSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitems__(self, idx):
        return self.source.load(list(idx))


def _extract(labelset: LabelSet, model, transform, device, batch_size: int, desc: str) -> np.ndarray:
    loader = DataLoader(_Rows(ImageSource(labelset.image_paths, transform)), batch_size=batch_size,
                        shuffle=False, collate_fn=lambda b: b, num_workers=min(2, os.cpu_count() or 1))
    chunks = []
    with torch.inference_mode():
        for images in progress.bar(loader, desc=desc, unit="batch", leave=False):
            chunks.append(model(images.to(device)).to("cpu", torch.float16).numpy())
    return np.concatenate(chunks)


def images_fingerprint(paths) -> str:
    """sha256 over each image file's path, size and modification time: two copies of a dataset with
    the same ids and labels (another root, re-encoded or resized images) never share cached features."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            st = os.stat(path)
            digest.update(f"{path}\x1f{st.st_size}\x1f{st.st_mtime_ns}\x1e".encode())
        except OSError:
            digest.update(f"{path}\x1fmissing\x1e".encode())
    return digest.hexdigest()


def feature_cache_path(labelset: LabelSet, backbone: str, weights: str | None, image_size: int) -> Path:
    """Where the feature maps of ``labelset`` for this backbone and size are (or will be) cached."""
    key = stable_hash({"data": labelset.fingerprint(), "images": images_fingerprint(labelset.image_paths),
                       "backbone": backbone_fingerprint(backbone, weights), "size": image_size, "v": 1}, 16)
    # A CLIP trunk's name holds a colon (clip:RN101); the key is its CLIP's fingerprint (the file's sha256).
    return cache_dir("features") / f"{labelset.name.replace('/', '_')}-{backbone.replace(':', '_')}-{image_size}-{key}.npy"


FORMAT = "mlrpl-feature-cache/1"


def _problem(path: Path, manifest: dict | None) -> str:
    """Why the manifest does not describe a usable feature cache ("" when it does)."""
    if manifest is None or manifest.get("format") != FORMAT:
        return f"has no valid manifest {path.with_suffix('.json').name} (written by an older version, or cut short)"
    return ""


def _verified_maps(path: Path, rows: int) -> np.ndarray | None:
    """The maps of a verified cache file; None (after one warning naming the file, unless the cache
    simply does not exist yet) when it must be extracted again."""
    manifest = read_manifest(path)
    if manifest is None and not path.exists():
        return None
    why = _problem(path, manifest)
    content = None
    if not why:
        content, why = verified_content(path, manifest)
    if not why:
        try:
            maps = npy_from_buffer(content)
        except ValueError as exc:
            maps, why = None, f"is not a readable .npy array ({exc})"
        if maps is not None and (maps.dtype != np.float16 or maps.ndim != 4 or len(maps) != rows):
            why = f"holds {maps.dtype} {list(maps.shape)}, not fp16 maps of {rows} images"
    if why:
        log.warning("feature cache %s %s; rebuilding it", path, why)
        return None
    return maps


def feature_cache_ok(path: Path, rows: int | None = None) -> bool:
    """Whether ``path`` is a complete cache file whose bytes match its manifest (hashed in chunks,
    nothing kept in memory); a bad file gets one warning naming it."""
    manifest = read_manifest(path)
    if manifest is None and not path.exists():
        return False
    why = _problem(path, manifest) or verified_file(path, manifest["sha256"], manifest.get("size"))
    if not why and rows is not None and (manifest.get("shape") or [None])[0] != rows:
        why = f"holds maps of {(manifest.get('shape') or [None])[0]} images, not {rows}"
    if why:
        log.warning("feature cache %s %s; rebuilding it", path, why)
    return not why


def _build(labelset: LabelSet, backbone: str, weights: str | None, image_size: int, device, batch_size: int,
           path: Path) -> np.ndarray:
    """Extract the maps, write the cache file, then its manifest (a kill between the two leaves a
    file without a manifest: extracted again next time)."""
    model = build_backbone(backbone, weights).eval().to(device)
    mean, std = imagenet_normalization(model)
    feats = _extract(labelset, model, eval_transform(image_size, mean, std), device, batch_size,
                     f"features {labelset.name} ({backbone}, {image_size}px)")
    written = write_digested(path, lambda fh: np.save(fh, feats, allow_pickle=False), feats.nbytes + 128)
    write_manifest(path, {"format": FORMAT, "file": path.name, **written, "shape": list(feats.shape),
                          "dtype": str(feats.dtype), "dataset": labelset.name, "backbone": backbone,
                          "image_size": image_size})
    log.info("cached %s features %s at %s", labelset.name, feats.shape, path)
    return feats


def cached_features(labelset: LabelSet, backbone: str, weights: str | None, image_size: int,
                    device: torch.device | str = "cpu", batch_size: int = 64,
                    path: Path | None = None) -> torch.Tensor:
    """fp16 feature maps [N, D, h, w] of every image of ``labelset``, from the cache when its bytes
    match its manifest, else extracted (again) and cached (``path``: the :func:`feature_cache_path`
    when the caller has it already)."""
    path = path or feature_cache_path(labelset, backbone, weights, image_size)
    maps = _verified_maps(path, len(labelset))
    if maps is None:
        maps = _build(labelset, backbone, weights, image_size, device, batch_size, path)
    return torch.from_numpy(maps)


def ensure_feature_cache(labelset: LabelSet, backbone: str, weights: str | None, image_size: int,
                         device: torch.device | str = "cpu", path: Path | None = None) -> Path:
    """The verified cache file of ``labelset``, extracted first when missing or bad; the maps are not
    kept in memory (the parent of a parallel grid prepares them for its workers)."""
    path = path or feature_cache_path(labelset, backbone, weights, image_size)
    if not feature_cache_ok(path, len(labelset)):
        _build(labelset, backbone, weights, image_size, device, 64, path)
    return path
