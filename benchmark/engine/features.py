"""The frozen protocol's feature cache: backbone feature maps computed once per
(dataset split, backbone, weights, image size) and stored on disk as fp16.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from benchmark.core.cache import cache_dir
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
        for images in tqdm(loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True):
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
    return cache_dir("features") / f"{labelset.name.replace('/', '_')}-{backbone}-{image_size}-{key}.npy"


def cached_features(labelset: LabelSet, backbone: str, weights: str | None, image_size: int,
                    device: torch.device | str = "cpu", batch_size: int = 64,
                    path: Path | None = None) -> torch.Tensor:
    """fp16 feature maps [N, D, h, w] of every image of ``labelset``, from the cache when present
    (``path``: the :func:`feature_cache_path` when the caller has it already)."""
    path = path or feature_cache_path(labelset, backbone, weights, image_size)
    if path.is_file():
        return torch.from_numpy(np.load(path, mmap_mode=None))
    model = build_backbone(backbone, weights).eval().to(device)
    mean, std = imagenet_normalization(model)
    feats = _extract(labelset, model, eval_transform(image_size, mean, std), device, batch_size,
                     f"features {labelset.name} ({backbone}, {image_size}px)")
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npy")
    np.save(tmp, feats)
    os.replace(tmp, path)
    log.info("cached %s features %s at %s", labelset.name, feats.shape, path)
    return torch.from_numpy(feats)
