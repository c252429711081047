"""Loss matrices of EM and EM+APL and the asymmetric pseudo-labelling (APL) round of Zhou et al.
(spec wave 3, section 2), in the project's label encoding, as pure functions (fixtures X1-X5).

The losses work on probabilities with SPML's nl(x) = -log(x + eps) (eps 1e-5,
:func:`methods.modules.spml.neg_log`). :func:`em_terms` returns one per-entry matrix per loss term
(zero outside its entries); the method reduces each by ``sum / (B * C)`` over every entry, so their
sum is the official ``compute_batch_loss``. Pseudo-labels are the suite's two per-entry tables
(``selected`` bool, ``soft`` value s), never values inside the observed encoding (pitfall P40).
:func:`ack_labels` converts the official encoding at the edge (tests and fixtures).
Pitfall (P…) and fixture (X…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from methods.modules.spml import LOG_EPS, neg_log

NEGATIVE_READINGS = ("negative", "soft_positive")
TIE_ORDERS = ("stable", "official")
SINGLE_BATCH = ("label", "official")


def ack_labels(matrix: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The official ``label_matrix_obs`` encoding -> (targets, observed, selected, soft): 1 a positive,
    -1 an observed negative, -1 < v < 0 an APL soft pseudo-label s = -v, 0 (also -0.0) unknown.
    (The official loss reads -1 as a soft label s = 1 too, P40; that reading is ``soft_positive``.)"""
    matrix = matrix.float()
    observed = (matrix == 1) | (matrix == -1)
    selected = (matrix < 0) & (matrix > -1)
    soft = torch.where(selected, -matrix, torch.zeros_like(matrix))
    return (matrix == 1).float(), observed, selected, soft


def entropy(probs: Tensor, eps: float = LOG_EPS) -> Tensor:
    """H_eps(p) = p nl(p) + (1 - p) nl(1 - p): the binary entropy with SPML's epsilon."""
    return probs * neg_log(probs, eps) + (1 - probs) * neg_log(1 - probs, eps)


def soft_bce(probs: Tensor, soft: Tensor, eps: float = LOG_EPS) -> Tensor:
    """s nl(p) + (1 - s) nl(1 - p): cross-entropy towards the soft target s."""
    return soft * neg_log(probs, eps) + (1 - soft) * neg_log(1 - probs, eps)


def em_terms(probs: Tensor, targets: Tensor, observed: Tensor, alpha: float, selected: Tensor | None = None,
             soft: Tensor | None = None, beta: float = 0.0, observed_negatives: str = "negative",
             eps: float = LOG_EPS) -> dict[str, Tensor]:
    """Per-entry matrices of the loss terms (spec 2.2, 2.3, 2.7), each zero outside its entries:
    ``pos`` nl(p) at observed positives; ``em`` -alpha H_eps(p) at unknown, not pseudo-labelled entries;
    ``apl`` beta [s nl(p) + (1 - s) nl(1 - p)] at pseudo-labelled entries (and, under
    ``soft_positive``, at observed negatives with s = 1: the official reading, P40); ``neg`` nl(1 - p) at
    observed negatives (``negative``). ``apl`` / ``neg`` are absent when the batch has no such entry."""
    if observed_negatives not in NEGATIVE_READINGS:
        raise ValueError(f"observed_negatives must be one of {NEGATIVE_READINGS}; got {observed_negatives!r}")
    zero = torch.zeros_like(probs)
    pos = observed & (targets > 0.5)
    neg = observed & ~pos
    pseudo = (selected & ~observed) if selected is not None else torch.zeros_like(observed)
    soft = soft if soft is not None else zero
    out = {"pos": torch.where(pos, neg_log(probs, eps), zero),
           "em": torch.where(~observed & ~pseudo, -alpha * entropy(probs, eps), zero)}
    if observed_negatives == "soft_positive":
        soft = torch.where(neg, torch.ones_like(soft), soft)
        pseudo = pseudo | neg
    elif bool(neg.any()):
        out["neg"] = torch.where(neg, neg_log(1 - probs, eps), zero)
    if bool(pseudo.any()):
        out["apl"] = torch.where(pseudo, beta * soft_bce(probs, soft, eps), zero)
    return out


def apl_quota(unknown_count: Tensor, proportion: float, rounds: int) -> Tensor:
    """q_c = floor(rho U_c / rounds) per class, in double precision as the official int(rho U_c / (T - T_w)).
    ``rounds`` = T - T_w must be positive: the official code raises OverflowError at T = T_w (P39, X5)."""
    if rounds <= 0:
        raise ValueError(f"APL needs its warm-up epoch before the last epoch (T - T_w = {rounds} rounds); "
                         "lower warmup_epoch or train more epochs")
    return torch.floor(proportion * unknown_count.double() / rounds).long()


def _candidate_order(n: int, blocks: Tensor | None, order: str) -> Tensor:
    """Row positions in the order the candidates are ranked: the given (training-row) order for
    ``stable``; for ``official`` the pass's batches stacked newest first (``blocks`` = batch number per row)."""
    if order == "stable" or blocks is None:
        return torch.arange(n)
    return torch.argsort(-blocks.long(), stable=True)


def select_negatives(probs: Tensor, candidates: Tensor, quota: Tensor, order: str = "stable",
                     blocks: Tensor | None = None) -> Tensor:
    """bool [M, C]: per class c, the min(quota[c], #candidates) candidate rows with the lowest p.
    ``stable``: ties by row (the given order, training rows ascending); ``official``: numpy's default
    (unstable) argsort over the reverse-stacked batches (P42). A selected p of exactly 0 is dropped
    after the selection: the official code stores it as -0.0, which stays unknown (P41)."""
    if order not in TIE_ORDERS:
        raise ValueError(f"order must be one of {TIE_ORDERS}; got {order!r}")
    probs, candidates = probs.detach().cpu().float(), candidates.cpu()
    chosen = torch.zeros_like(candidates)
    rows = _candidate_order(probs.shape[0], None if blocks is None else blocks.cpu(), order)
    for c in range(probs.shape[1]):
        k = int(quota[c])
        pool = rows[candidates[rows, c]]
        if k <= 0 or pool.numel() == 0:
            continue
        values = probs[pool, c]
        if order == "stable":
            ranked = torch.sort(values, stable=True).indices
        else:
            ranked = torch.from_numpy(np.argsort(values.numpy()))
        chosen[pool[ranked[:k]], c] = True
    return chosen & (probs > 0)


def apl_round(probs: Tensor, observed: Tensor, selected: Tensor, unknown_count: Tensor, proportion: float,
              rounds: int, num_batches: int, single_batch: str = "label", order: str = "stable",
              blocks: Tensor | None = None) -> Tensor:
    """The entries one APL round pseudo-labels (bool [M, C]; their soft value is ``probs`` there):
    candidates are unknown entries without a pseudo-label; the quota of :func:`apl_quota`.
    ``single_batch="official"`` assigns nothing when the training loader has one batch (P38, X4)."""
    if single_batch not in SINGLE_BATCH:
        raise ValueError(f"single_batch must be one of {SINGLE_BATCH}; got {single_batch!r}")
    quota = apl_quota(unknown_count, proportion, rounds)
    if single_batch == "official" and num_batches <= 1:
        return torch.zeros_like(observed.cpu())
    candidates = ~observed.cpu() & ~selected.cpu()
    return select_negatives(probs, candidates, quota, order, blocks)
