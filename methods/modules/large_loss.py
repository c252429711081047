"""Large-loss rejection and correction (Kim et al., CVPR 2022; spec wave 2, section 3), in the
project's label encoding.

Per batch, with y+ = observed positives, l = BCE-with-logits(x, y+) and u = l on unknown entries
(0 on observed ones): the k largest entries of u (tau = the k-th largest value over all B x C
entries; every entry with u >= tau, ties included) are *modified*: rejected (loss 0, LL-R) or
corrected (target flipped to 1 for this step, LL-Ct / LL-Cp). The loss is the mean over all B x C
entries. k = ceil(B C (1 - clean_rate)) (LL-R, LL-Ct) or ceil(B C delta) (LL-Cp), where
clean_rate is 1 in the first epoch and decreases by delta after every epoch (Python floats, as
the official loop; fixture W7).

``k_clamp`` (default True, pitfall P20): k <= the number of unknown entries with u > 0, so tau > 0
and an observed label is never modified. False reproduces the official degenerate case (tau = 0:
every entry modified, observed labels included; fixture W10).
Pitfall (P…, C…) and fixture (F…, W…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.contract import collectives

SCHEMES = ("LL-R", "LL-Ct", "LL-Cp")


def clean_rate(epoch: int, delta: float) -> float:
    """The official clean rate of 0-based ``epoch``: 1, then ``-= delta`` once per finished epoch."""
    rate = 1.0
    for _ in range(epoch):
        rate -= delta
    return rate


def num_modified(num_entries: int, rate: float, delta: float, permanent: bool) -> int:
    """k: 0 while the clean rate is 1 (first epoch); ceil(B C delta) for permanent correction,
    ceil(B C (1 - clean_rate)) otherwise; never more than B C."""
    if rate == 1:
        return 0
    k = math.ceil(num_entries * delta) if permanent else math.ceil(num_entries * (1 - rate))
    return min(k, num_entries)


@dataclass
class Selection:
    loss: Tensor          # scalar: mean of the final loss matrix over all B x C entries
    k: int                # k actually used (after the clamp)
    modified: Tensor      # bool [B, C]: rejected (LL-R) or temporarily corrected entries
    corrected: Tensor     # bool [B, C]: candidates for permanent correction (u >= tau "topk", u > tau "strict")


def large_loss(logits: Tensor, targets: Tensor, observed: Tensor, k: int, scheme: str, k_clamp: bool = True,
               correct: str = "topk") -> Selection:
    """The LL loss of one batch (spec 3.1). ``targets``/``observed`` already include any permanent
    corrections. ``correct`` picks the permanent-correction set: "topk" = the modified entries
    (BoostLU's code), "strict" = u > tau (the LL code; none when k = 1, pitfall P18)."""
    logits = logits.float()
    positive = (observed & (targets > 0.5)).float()
    per_entry = F.binary_cross_entropy_with_logits(logits, positive, reduction="none")
    none = torch.zeros_like(per_entry, dtype=torch.bool)
    with torch.no_grad():
        unknown_loss = per_entry.detach() * (~observed).float()
        # Under DDP k counts the global batch's entries and tau is taken over every rank's entries
        # (benchmark.contract.collectives), so each rank modifies what one process with the whole batch would.
        pool = collectives.gather_rows(unknown_loss)
        if k_clamp:
            k = min(k, int((pool > 0).sum()))
    if k <= 0:
        return Selection(per_entry.mean(), 0, none, none)
    with torch.no_grad():
        tau = pool.flatten().topk(k).values[-1]
        modified = unknown_loss >= tau
        corrected = modified if correct == "topk" else unknown_loss > tau
    if scheme == "LL-R":
        final = torch.where(modified, torch.zeros_like(per_entry), per_entry)
    else:
        flipped = F.binary_cross_entropy_with_logits(logits, 1.0 - positive, reduction="none")
        final = torch.where(modified, flipped, per_entry)
    return Selection(final.mean(), k, modified, corrected)
