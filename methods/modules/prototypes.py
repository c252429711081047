"""Class prototypes (HST's CST, SARB's PLRB): seeded k-means over the class features of known
positives, kept in registered buffers so checkpoints and resumed runs carry them (pitfall P9),
plus the feature-prototype similarity and the prototype loss of spec 5.5.

Collection runs over ``ctx.iterate_train()`` with the model in eval mode; every rank collects its
own contiguous share and :func:`benchmark.contract.collectives.gather_rows` all-gathers them in rank order (the
single-process order), so that every rank fits identical prototypes (same rows, same seed).
Pitfall (P…, C…) and fixture (F…, W…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.contract.collectives import gather_rows
from methods.modules.contrastive import signed_labels

PROTOTYPE_SIGNS = ("paper", "official")


@torch.no_grad()
def collect_positive_features(feature_fn: Callable[[Tensor], Tensor | tuple[Tensor, ...]],
                              batches: Iterable) -> tuple[Tensor, ...]:
    """(class index [M], feature [M, D]) of every known-positive entry, on the CPU, all ranks gathered.

    ``feature_fn`` maps a batch's inputs to class features [B, C, D], or to a tuple of per-entry
    tensors [B, C, ...] (then the result is (class index, *their rows)); ``batches`` yields
    :class:`benchmark.contract.method.Batch` objects. Rows keep the batches' order.
    """
    classes, parts = [], []
    for batch in batches:
        out = feature_fn(batch.inputs)
        out = out if isinstance(out, tuple) else (out,)
        rows, cols = (batch.observed & (batch.targets > 0.5)).nonzero(as_tuple=True)
        classes.append(cols.cpu())
        parts.append([t[rows, cols].cpu() for t in out])
    gathered = [gather_rows(torch.cat(column)) for column in zip(*parts)]
    return (gather_rows(torch.cat(classes)), *[t.float() if t.is_floating_point() else t for t in gathered])


def kmeans_centers(points: np.ndarray, k: int, seed: int, n_init: int = 10) -> np.ndarray:
    """k centres of ``points`` [n, D]: seeded sklearn KMeans; with n <= k the points themselves,
    repeated cyclically to k rows (what k-means returns when every point is its own cluster)."""
    if len(points) <= k:
        return points[np.arange(k) % len(points)]
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():   # duplicate points give fewer distinct centres; that is fine here
        warnings.simplefilter("ignore", ConvergenceWarning)
        return KMeans(n_clusters=k, random_state=seed, n_init=n_init).fit(points).cluster_centers_


def scaled_epoch(value: int, schedule_epochs: int, max_epochs: int) -> int:
    """``value`` epochs of a ``schedule_epochs`` recipe in a run of ``max_epochs`` (>= 1; unscaled
    if ``schedule_epochs`` is 0): the HCP 20-epoch schedules (E_g = 5, refresh every 5) in shorter runs."""
    if schedule_epochs <= 0:
        return value
    return max(1, math.floor(value * max_epochs / schedule_epochs + 0.5))


def is_refresh_epoch(epoch: int, start: int, interval: int, recompute: bool) -> bool:
    """Prototypes are (re)computed at the start of epoch ``start`` and, if ``recompute``, every
    ``interval`` epochs after it (HCP: start 5, interval 5 -> epochs 5, 10, 15)."""
    if epoch < start:
        return False
    return epoch == start or (recompute and (epoch - start) % max(1, interval) == 0)


class PrototypeBank(nn.Module):
    """K prototypes per class in ``prototypes`` [C, K, D] with ``valid`` [C] (class had a known
    positive at the last fit) and ``fitted`` (a fit happened) -- all buffers."""

    def __init__(self, num_classes: int, num_prototypes: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("prototypes", torch.zeros(num_classes, num_prototypes, dim))
        self.register_buffer("valid", torch.zeros(num_classes, dtype=torch.bool))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def ready(self) -> bool:
        return bool(self.fitted)

    def fit(self, classes: Tensor, feats: Tensor, seed: int, n_init: int = 10) -> None:
        """k-means per class over the rows of ``feats`` whose class index is c; classes without a
        row keep zero prototypes and ``valid = False``."""
        num_classes, k, _ = self.prototypes.shape
        protos = torch.zeros_like(self.prototypes, device="cpu")
        valid = torch.zeros(num_classes, dtype=torch.bool)
        points_all = feats.double().numpy()
        for c in range(num_classes):
            points = points_all[(classes == c).numpy()]
            if len(points):
                protos[c] = torch.from_numpy(kmeans_centers(points, k, seed + c, n_init)).float()
                valid[c] = True
        self.prototypes.copy_(protos)
        self.valid.copy_(valid)
        self.fitted.fill_(True)

    def similarity(self, feats: Tensor) -> Tensor:
        """Mean cosine of f_bc to the K prototypes of class c, [B, C, D] -> [B, C]; 0 for invalid classes."""
        unit_f = F.normalize(feats, dim=-1, eps=1e-9)
        unit_p = F.normalize(self.prototypes.to(feats.dtype), dim=-1, eps=1e-9)
        cos = torch.einsum("bcd,ckd->bck", unit_f, unit_p).mean(dim=-1)
        return cos * self.valid.to(cos.dtype)


def prototype_loss(similarity: Tensor, targets: Tensor, observed: Tensor, sign: str = "paper") -> Tensor:
    """Mean over all B x C entries of 1 - y*d ("paper": positives pulled towards their prototypes,
    negatives pushed away) or 1 + y*d ("official": the code's sign, pitfall P6); unknowns give 1."""
    if sign not in PROTOTYPE_SIGNS:
        raise ValueError(f"prototype sign {sign!r} is unknown; use one of {PROTOTYPE_SIGNS}")
    y = signed_labels(targets, observed).to(similarity.dtype)
    direction = 1.0 if sign == "official" else -1.0
    return (1 + direction * y * similarity).mean()
