"""Datasets the engine trains and evaluates on, for both protocols.

Training batches hold only what is observed: ``targets`` (0 where unknown), ``observed`` and the
row ``index`` within the method's training set. Evaluation batches concatenate the held-out
validation rows (scored on their *observed* labels only) and the test split (full labels, minus
entries marked ignore), tagged by ``split`` (0 = val, 1 = test).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from benchmark.core.errors import UserError

VAL, TEST = 0, 1


def split_train_val(num: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic held-out split of the training rows (its own RNG stream, not the mask's)."""
    if val_fraction <= 0:
        return np.arange(num), np.arange(0)
    rng = np.random.default_rng([seed, 0x5EED])
    perm = rng.permutation(num)
    n_val = max(1, int(round(num * val_fraction)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


FP32_ONCE_LIMIT = 2 << 30     # bytes: feature maps up to this size in fp32 are converted once, not per batch


def training_maps(feats: torch.Tensor) -> torch.Tensor:
    """Cached fp16 maps as fp32 when that fits in :data:`FP32_ONCE_LIMIT` (exact, so batches are
    bit-identical either way), else as they are (gathered in fp16, converted per batch)."""
    return feats.float() if feats.numel() * 4 <= FP32_ONCE_LIMIT else feats


class FeatureSource:
    """Cached backbone feature maps (fp16 on disk), fp32 per batch (see :func:`training_maps`)."""

    def __init__(self, feats: torch.Tensor):
        self.feats = training_maps(feats)

    def __len__(self) -> int:
        return self.feats.shape[0]

    def load(self, rows: list[int]) -> torch.Tensor:
        return self.feats[torch.as_tensor(rows)].float()


class ImageSource:
    """Image files read and transformed on the fly (finetune protocol)."""

    def __init__(self, paths: list[Path], transform):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, path: Path) -> Image.Image:
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except FileNotFoundError:
            raise UserError(f"image {path} is missing; check the dataset folder (run `prepare`)") from None
        except OSError as exc:
            raise UserError(f"image {path} cannot be read ({exc}); replace or remove it") from None

    def load(self, rows: list[int]) -> torch.Tensor:
        return torch.stack([self.transform(self._read(self.paths[r])) for r in rows])


@dataclass
class TrainSet(Dataset):
    """The method's training rows with observed labels only; batches come whole via __getitems__."""

    metainfo: ClassVar[dict] = {}   # mmengine asks datasets for it (checkpoint meta)
    source: FeatureSource | ImageSource
    rows: np.ndarray            # rows of the source (the original training set order)
    targets: np.ndarray         # float32 {0,1}, 0 where unknown
    observed: np.ndarray        # bool

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])

    def __getitems__(self, idx: list[int]) -> dict:
        idx = list(idx)
        return {
            "inputs": self.source.load([int(self.rows[i]) for i in idx]),
            "targets": torch.from_numpy(self.targets[idx]),
            "observed": torch.from_numpy(self.observed[idx]),
            "index": torch.as_tensor(idx, dtype=torch.long),
        }


@dataclass
class EvalSet(Dataset):
    """Validation rows (observed labels) followed by test rows (full labels); batches carry no label."""

    metainfo: ClassVar[dict] = {}
    source: FeatureSource | ImageSource
    labels: np.ndarray          # uint8 {0,1}
    eval_mask: np.ndarray       # bool: entries that count
    split: np.ndarray           # int64: VAL or TEST

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])

    def __getitems__(self, idx: list[int]) -> dict:
        """Inputs and row numbers only: labels never travel with a batch into method code; the
        metric looks them up by ``eval_index`` (:meth:`reference`)."""
        idx = list(idx)
        return {"inputs": self.source.load(idx), "eval_index": torch.as_tensor(idx, dtype=torch.long)}

    def reference(self) -> dict:
        return {"labels": self.labels, "eval_mask": self.eval_mask, "split": self.split}


def batch_collate(batch: dict) -> dict:
    """Batches are assembled whole by ``__getitems__``; nothing left to collate."""
    return batch
