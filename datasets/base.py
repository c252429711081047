"""The in-memory form every dataset loader returns.

One label encoding everywhere (design guide, section 3): full labels are ``uint8 {0, 1}``
``[N, C]``; ``ignore`` marks (image, class) entries excluded from evaluation (for example VOC
classes present only as *difficult* objects under the ``ignore`` convention). Partial-label
masks live elsewhere (``datasets/masks.py``) and refer to a LabelSet by its fingerprint.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class LabelSet:
    """Images and full labels of one split, in dataset order (the order masks are drawn in)."""

    name: str
    class_names: list[str]
    image_ids: list
    image_paths: list[Path]
    labels: np.ndarray
    ignore: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.uint8)
        n, c = self.labels.shape
        if len(self.image_ids) != n or len(self.image_paths) != n:
            raise ValueError(f"{self.name}: {n} label rows but {len(self.image_ids)} ids and {len(self.image_paths)} paths")
        if c != len(self.class_names):
            raise ValueError(f"{self.name}: {c} label columns but {len(self.class_names)} class names")
        if self.ignore is not None:
            self.ignore = np.asarray(self.ignore, dtype=bool)
            if self.ignore.shape != self.labels.shape:
                raise ValueError(f"{self.name}: ignore mask shape {self.ignore.shape} != labels {self.labels.shape}")

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def fingerprint(self) -> str:
        """sha256 over class names, image ids and labels: the identity a mask file is bound to."""
        digest = hashlib.sha256()
        digest.update("\x1f".join(self.class_names).encode())
        digest.update("\x1e".join(str(i) for i in self.image_ids).encode())
        digest.update(np.ascontiguousarray(self.labels).tobytes())
        return digest.hexdigest()

    def subset(self, rows: np.ndarray, name: str) -> "LabelSet":
        rows = np.asarray(rows)
        return LabelSet(
            name=name,
            class_names=list(self.class_names),
            image_ids=[self.image_ids[i] for i in rows],
            image_paths=[self.image_paths[i] for i in rows],
            labels=self.labels[rows],
            ignore=None if self.ignore is None else self.ignore[rows],
            info=dict(self.info),
        )


@dataclass
class DatasetSplits:
    """What a dataset loader returns: the training and test LabelSets plus a short description."""

    name: str
    train: LabelSet
    test: LabelSet
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split in (self.train, self.test):
            if len(split) == 0:
                from benchmark.core.errors import UserError

                source = split.info.get("annotation_file") or split.info.get("list_file")
                where = f" ({source})" if source else ""
                raise UserError(f"dataset {self.name}: the {split.name} split lists no image{where}; check its image "
                                "list / annotation files (run_benchmark.py prepare checks a folder)")

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names
