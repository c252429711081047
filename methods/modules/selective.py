"""CSL's partial-label weighting (Ben-Baruch et al., wave-2 spec 6.2, 6.3): per-entry weights W of
the four ``partial_loss_mode``s, the class-prior rule and the top-K likelihood rule, plus the prior
helpers: :func:`running_prior` (the official ``ComputePrior``: the running mean of sigmoid(logits)),
observed-label rates and the official CSV format.

Encoding: ``observed`` bool [B, C]; un-annotated = not observed. Weights multiply
:func:`methods.modules.asl.partial_asl_per_entry`.
Pitfall (P…, C…) and fixture (F…, W…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
from torch import Tensor

from benchmark.contract import collectives

PARTIAL_MODES = ("negative", "ignore", "ignore_normalize_classes", "selective")
TOPK_SCOPES = ("image", "batch")


def mode_weights(mode: str, observed: Tensor) -> Tensor:
    """W of the three non-selective modes (float [B, C]): ``negative`` 1 everywhere; ``ignore``
    1 on annotated entries; ``ignore_normalize_classes`` (1 / (1 + n_b) + 1) on annotated entries,
    n_b = annotated labels of image b (pitfall P32: not Durand's normalisation)."""
    known = observed.float()
    if mode == "negative":
        return torch.ones_like(known)
    if mode == "ignore":
        return known
    if mode == "ignore_normalize_classes":
        return (1.0 / (1.0 + known.sum(dim=1, keepdim=True)) + 1.0) * known
    raise ValueError(f"mode must be one of {PARTIAL_MODES[:3]} here; got {mode!r}")


def likelihood_topk(p_neg: Tensor, observed: Tensor, k: int, scope: str = "image") -> Tensor:
    """Un-annotated entries with the smallest ``p_neg`` (the likeliest positives), bool [B, C].

    ``scope="image"``: the k smallest of each image (suite default); ``"batch"``: the k * B smallest
    of the whole batch, flattened row-major (the official rule, P32). Stable sort: ties go to the
    earlier entry. Entries already ignored by the prior still compete (as in the official code)."""
    unann = ~observed
    if k <= 0:
        return torch.zeros_like(unann)
    key = torch.where(unann, p_neg.detach().float(), torch.full_like(p_neg, math.inf, dtype=torch.float32))
    if scope == "image":
        order = torch.argsort(key, dim=1, stable=True)[:, :k]
        picked = torch.zeros_like(unann).scatter(1, order, True)
        return picked & unann
    # Under DDP the k * B smallest of the global batch (rows in the single-process order), then this
    # rank's rows; identities in one process.
    everyone = collectives.gather_batch(key)
    flat = torch.argsort(everyone.flatten(), stable=True)[: k * everyone.shape[0]]
    picked = torch.zeros(everyone.numel(), dtype=torch.bool, device=key.device)
    picked[flat] = True
    return collectives.own_rows(picked.view_as(everyone)) & unann


def selective_weights(p_neg: Tensor, observed: Tensor, prior_ignore: Tensor | None, k: int,
                      scope: str = "image") -> tuple[Tensor, Tensor, Tensor]:
    """Selective mode: (W float [B, C], ignored by prior [B, C], ignored by likelihood [B, C]).

    W = 1; un-annotated entries of the classes in ``prior_ignore`` ([C] bool, or None) get 0; then
    the likelihood rule sets its picks to 0. Annotated entries always keep weight 1."""
    unann = ~observed
    by_prior = unann & prior_ignore.unsqueeze(0) if prior_ignore is not None else torch.zeros_like(unann)
    by_likelihood = likelihood_topk(p_neg, observed, k, scope)
    weights = (~(by_prior | by_likelihood)).to(p_neg.dtype)
    return weights, by_prior, by_likelihood


def prior_ignore_mask(prior: Tensor, threshold: float, zero_disables: bool = False) -> Tensor | None:
    """Classes whose prior exceeds ``threshold`` (NaN never does); None when no prior applies.
    ``zero_disables`` restores the official truthiness test (threshold 0 switches the prior off, P32)."""
    if zero_disables and not threshold:
        return None
    return prior > threshold


def running_prior(logits: Tensor, state: tuple[Tensor, Tensor] | None = None
                  ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """The class prior the official way (``ComputePrior.update``): the mean of sigmoid(``logits``) over
    every row seen so far, per class. Returns (prior [C] float32, state).

    ``state`` = (sum of the predictions [C] float64, row count [] float64) of the earlier calls, None
    for the first. Feed the training logits of every iteration with one state (the official training
    stream: first iterations included, never reset between epochs, P32); the official validation
    stream (``update(logits, training=False)``) is the same mean over the validation logits, kept in
    a state of its own (one call with all of them gives the validation mean). Each batch is summed in
    the logits' dtype (float32) and the running sum kept in float64; the official running sum is
    float32 [deviation: no rounding drift over long runs]. No rows yet: a prior of 0. Gradients are not
    tracked; under DDP the caller gathers the rows (this is a per-process mean)."""
    c = logits.shape[-1]
    preds = torch.sigmoid(logits.detach().float().reshape(-1, c))
    total = preds.sum(0).double()
    count = torch.tensor(float(preds.shape[0]), dtype=torch.float64, device=total.device)
    if state is not None:
        total, count = state[0].to(total) + total, state[1].to(count) + count
    return (total / count.clamp_min(1.0)).float(), (total, count)


def observed_rates(batches) -> Tensor:
    """n+_obs(c) / n_obs(c) over an iterable of Batch (the paper's "naive" prior); 0 without observations."""
    pos = count = None
    for batch in batches:
        o = batch.observed.float().cpu()
        p = (batch.targets.float().cpu() * o).sum(0)
        pos, count = (p, o.sum(0)) if pos is None else (pos + p, count + o.sum(0))
    pos, count = collectives.all_reduce(pos), collectives.all_reduce(count)     # every rank's share of the rows (DDP)
    return pos / count.clamp_min(1.0)


def read_prior_csv(path: str | Path, class_names: list[str], validate: bool = True) -> Tensor:
    """The ``avg_pred`` column of an official prior file (``Classes,avg_pred``) as a [C] tensor.

    ``validate``: exactly C rows whose ``Classes`` follow ``class_names`` (P31), finite values, else
    ValueError naming the file. ``validate=False`` reads like the official code: values in file order,
    unreadable ones NaN, truncated or NaN-padded to C (a NaN prior never exceeds the threshold)."""
    path = Path(path)
    with path.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    header, rows = rows[0], rows[1:]
    if validate:
        names = [row[0].strip() for row in rows]
        if len(rows) != len(class_names):
            raise ValueError(f"prior file {path} has {len(rows)} rows; the dataset has {len(class_names)} classes")
        if names != list(class_names):
            bad = next(i for i, (a, b) in enumerate(zip(names, class_names)) if a != b)
            raise ValueError(f"prior file {path} row {bad + 1} is class {names[bad]!r}; expected {class_names[bad]!r}")
    values = []
    for row in rows:
        try:
            values.append(float(row[1]) if len(row) > 1 and row[1].strip() else math.nan)
        except ValueError:
            values.append(math.nan)
    if validate and not all(math.isfinite(v) for v in values):
        raise ValueError(f"prior file {path} has a missing or non-numeric avg_pred value (header {header})")
    values = (values + [math.nan] * len(class_names))[: len(class_names)]
    return torch.tensor(values, dtype=torch.float32)
