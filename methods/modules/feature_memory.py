"""SST's positive-feature memory (wave-2 spec 7.2, 7.3; fixtures W14, W15), as registered buffers so
checkpoints carry it (pitfall P34; the official code keeps it in a plain attribute).

``memory`` [C, K, D] starts as zeros; ``count`` [C] says how many leading slots of each class are
filled. :meth:`update` puts the batch's known-positive features of each class, in batch order, in
front of that class's slots and cuts to K (newest first; with more than K positives in one batch the
first K are kept). :meth:`similarity` is the mean cosine between class features and the stored
features of the same class: over all K slots (``mean="official"``: empty zero slots count as cos 0,
pitfall P33) or over the filled slots only (``mean="filled"``; 0 for a class with none).
Pitfall (P…, C…) and fixture (F…, W…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MEMORY_MEANS = ("filled", "official")


class PositiveFeatureMemory(nn.Module):
    def __init__(self, num_classes: int, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("memory", torch.zeros(num_classes, size, dim))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def update(self, feats: Tensor, positive: Tensor) -> None:
        """``feats`` [B, C, D] (stored detached, float32), ``positive`` bool [B, C] (known positives)."""
        num_classes, size, dim = self.memory.shape
        pos = positive.t()                                             # [C, B]
        added = pos.sum(dim=1)                                         # [C]
        rank = pos.long().cumsum(dim=1) - 1                            # rank among the class's positives
        keep = pos & (rank < size)
        fresh = torch.zeros_like(self.memory)
        cls, row = keep.nonzero(as_tuple=True)
        fresh[cls, rank[cls, row]] = feats.detach()[row, cls].to(self.memory.dtype)
        shifted = torch.arange(size, device=added.device).unsqueeze(0) - added.unsqueeze(1)   # old slot index
        old = self.memory.gather(1, shifted.clamp_min(0).unsqueeze(-1).expand(-1, -1, dim))
        self.memory.copy_(torch.where((shifted >= 0).unsqueeze(-1), old, fresh))
        self.count.copy_((self.count + added).clamp(max=size))

    def similarity(self, feats: Tensor, mean: str = "filled") -> Tensor:
        """Mean cosine d [B, C] of ``feats`` [B, C, D] with the stored features of each class (eps 1e-9)."""
        unit = F.normalize(feats.float(), dim=-1, eps=1e-9)
        stored = F.normalize(self.memory, dim=-1, eps=1e-9)
        total = torch.einsum("bcd,ckd->bc", unit, stored)              # empty (zero) slots add 0
        if mean == "official":
            return total / self.memory.shape[1]
        return total / self.count.clamp_min(1).to(total.dtype)
