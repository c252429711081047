"""Instance-level contrastive loss over class features of image pairs (spec 5.4; SST, SARB, HST, DSRB).

For every image pair a < b of the batch and every class c, d = cos(f_ac, f_bc):

* both known positive (pos-pos): 1 - d
* one known positive, the other known negative (pos-neg): 1 + d
* both known negative (neg-neg): 1 + d  (negatives of a class are pushed apart, as implemented)
* any unknown: ignored.

With n pos-pos pairs (n > 0), the pos-neg and the neg-neg lists are each replaced by a random
subset of min(2n, len) of them followed by their n largest values (the two parts may overlap).
The loss is the mean of the concatenated list, 0 if it is empty.

Deviation: the official code returns NaN (mean of an empty tensor) for a batch without any
known pair; here that batch contributes 0. Pairs are taken from a fixed triangular index, so the
loss works for any batch size (the official code precomputes the pairs for one batch size,
pitfall P15), and the random subset draws from ``generator`` (default: torch's global RNG,
reseeded per epoch by the engine).
Pitfall (P…, C…) and fixture (F…, W…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def signed_labels(targets: Tensor, observed: Tensor) -> Tensor:
    """The HCP encoding y in {1, 0, -1} (1 known positive, -1 known negative, 0 unknown)."""
    return observed.to(targets.dtype) * (2 * targets - 1)


def pair_cosines(features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Cosines of all image pairs a < b per class: (cos [P, C], first index [P], second index [P])."""
    unit = F.normalize(features, dim=-1, eps=1e-9)
    first, second = torch.triu_indices(features.shape[0], features.shape[0], 1, device=features.device)
    gram = torch.einsum("acd,bcd->abc", unit, unit)                  # [B, B, C]
    return gram[first, second], first, second


def _hard_subsample(values: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
    """A random min(2n, len) subset of ``values`` followed by its n largest values."""
    if values.numel() == 0:
        return values
    perm = torch.randperm(values.numel(), generator=generator, device="cpu").to(values.device)
    hardest = torch.sort(values, descending=True).values[:n]
    return torch.cat([values[perm[: 2 * n]], hardest])


def instance_contrastive_loss(features: Tensor, targets: Tensor, observed: Tensor,
                              generator: torch.Generator | None = None) -> Tensor:
    """L_inst of spec 5.4 for class features [B, C, D] and labels (``targets`` {0,1}, ``observed`` bool)."""
    cos, first, second = pair_cosines(features)
    y = signed_labels(targets, observed)
    ya, yb = y[first], y[second]
    pos_pos = (1 - cos)[(ya == 1) & (yb == 1)]
    pos_neg = (1 + cos)[((ya == 1) & (yb == -1)) | ((ya == -1) & (yb == 1))]
    neg_neg = (1 + cos)[(ya == -1) & (yb == -1)]
    n = pos_pos.numel()
    if n > 0:
        neg_neg = _hard_subsample(neg_neg, n, generator)
        pos_neg = _hard_subsample(pos_neg, n, generator)
    values = torch.cat([pos_pos, pos_neg, neg_neg])
    return values.mean() if values.numel() else features.new_zeros(())
