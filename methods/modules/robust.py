"""Generalised robust loss of Chen et al. (GR Loss, IJCAI 2024; spec wave 3, section 3) as pure
functions: the soft pseudo-label K, the weight V, the generalised cross-entropies towards the positive
and the negative side, the per-entry loss matrix and the epoch schedule of (w, b, mu, sigma).

With p = sigmoid(z) and p' = p detached: K = sigmoid(w p' + b), V = exp(-(p' - mu)^2 / (2 sigma^2)),
l1(p; q2) = (1 - p^q2) / q2 (-> -log p as q2 -> 0), l2(p; q3) = (1 - (1 - p)^q3) / q3 (= p for q3 = 1).
Per entry: an observed positive -log(p + eps); an unknown V [K l1(p; q2) + (1 - K) l2(p; q3)]; an
observed negative by ``observed_negatives`` (below). Each branch is evaluated on its own entries only
(as the official code's boolean indexing), so a singular branch never reaches another entry's gradient.

AEVLP's GPR loss (spec wave3_clip 4.3) reuses :func:`k_function`, :func:`v_function`, :func:`gce_pos`,
:func:`gce_neg` and :func:`kv_schedule`. Its schedule is this one with ``linear_init=0`` and the
default step rules (w, b lag one epoch; mu, sigma do not); a rescaled schedule passes its own epoch
and ``max_epochs``. Pitfall (P…) and fixture (X…/Y…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

LOG_EPS = 1e-7                           # GRL losses.py LOG_EPSILON (SPML's is 1e-5: keep each, wave 3 1.3)
OBSERVED_NEGATIVES = ("bce", "ignore", "robust")


@dataclass(frozen=True)
class KVSchedule:
    """(w, b) of K and (mu, sigma) of V for one epoch, Python floats (double precision, P47)."""

    w: float
    b: float
    mu: float
    sigma: float


def _ramp(start: float, end: float, epoch: float, linear_init: int, max_epochs: int, lag: int) -> float:
    """start + (end - start) * max(e - n - lag, 0) / (T - n), in the official order of float operations."""
    return start + (end - start) * max(epoch - linear_init - lag, 0) / (max_epochs - linear_init)


def kv_schedule(beta, alpha, epoch: float, max_epochs: int, linear_init: int = 0, k_lag: int = 1,
                v_lag: int = 0) -> KVSchedule:
    """The schedule at the official 1-based ``epoch`` of ``max_epochs`` (spec 3.2, X8).

    ``beta`` = (w0, w_T, b0, b_T) and ``alpha`` = (mu0, sigma0, mu_T, sigma_T): the two orders differ
    (P47). The step rules are ``max(e - n - lag, 0) / (T - n)`` with ``k_lag`` for (w, b) and ``v_lag``
    for (mu, sigma); the official rules (GRL ``train.py`` and AEVLP alike) are k_lag 1, v_lag 0, so w, b
    stop one step short of w_T, b_T while mu, sigma reach mu_T, sigma_T at the last epoch (P47; the same for AEVLP).
    During the ``linear_init`` epochs every value is its start value."""
    if not max_epochs - linear_init > 0:
        raise ValueError(f"the GR schedule needs linear_init < max_epochs (it divides by their difference, P47); "
                         f"got linear_init={linear_init}, max_epochs={max_epochs}")
    w0, w_t, b0, b_t = (float(x) for x in beta)
    mu0, sigma0, mu_t, sigma_t = (float(x) for x in alpha)
    k = dict(epoch=epoch, linear_init=linear_init, max_epochs=max_epochs, lag=k_lag)
    v = dict(epoch=epoch, linear_init=linear_init, max_epochs=max_epochs, lag=v_lag)
    return KVSchedule(_ramp(w0, w_t, **k), _ramp(b0, b_t, **k), _ramp(mu0, mu_t, **v), _ramp(sigma0, sigma_t, **v))


def k_function(probs: Tensor, w: float, b: float) -> Tensor:
    """Soft pseudo-label K = 1 / (1 + exp(-(w p + b))) (GRL ``models.KFunction``); pass detached p."""
    return 1.0 / (1.0 + torch.exp(-(w * probs + b)))


def v_function(probs: Tensor, mu: float, sigma: float) -> Tensor:
    """Weight V = exp(-((p - mu) / sigma)^2 / 2) (GRL ``models.VFunction``); pass detached p."""
    return torch.exp(-0.5 * ((probs - mu) / sigma) ** 2)


def safe_pow(x: Tensor, q: float, nan_safe: bool = True) -> Tensor:
    """x^q for x in [0, 1]. For q < 1 the derivative q x^(q - 1) is infinite at x = 0, and times
    sigmoid'(z) = 0 gives a NaN gradient (P49); ``nan_safe`` keeps every value and takes the derivative
    at x = 0 as 0 instead (the base is replaced by 1 where x = 0, so no inf enters the backward)."""
    if not nan_safe or q >= 1:
        return torch.pow(x, q)
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).pow(q), x.detach().pow(q))


def gce_pos(probs: Tensor, q: float, nan_safe: bool = True) -> Tensor:
    """l1(p; q) = (1 - p^q) / q: generalised cross-entropy towards the positive label."""
    return (1 - safe_pow(probs, q, nan_safe)) / q


def gce_neg(probs: Tensor, q: float, nan_safe: bool = True) -> Tensor:
    """l2(p; q) = (1 - (1 - p)^q) / q: towards the negative label (an MAE, p, for q = 1)."""
    return (1 - safe_pow(1 - probs, q, nan_safe)) / q


def neg_log(x: Tensor, eps: float = LOG_EPS) -> Tensor:
    return -torch.log(x + eps)


def from_official(label_vec: Tensor) -> tuple[Tensor, Tensor]:
    """GRL's ``label_vec`` (1 positive, 0 unknown, -1 observed negative) as (targets, observed)."""
    return (label_vec == 1).float(), label_vec != 0


def gr_loss_matrix(probs: Tensor, targets: Tensor, observed: Tensor, k: Tensor, v: Tensor, q2: float, q3: float,
                   eps: float = LOG_EPS, observed_negatives: str = "bce", nan_safe: bool = True) -> Tensor:
    """Per-entry GR loss [B, C] (GRL ``losses.GR_loss`` before its mean; X6, X7).

    ``observed_negatives``: "bce" -log(1 - p + eps) with weight 1 (suite default); "ignore" loss 0
    (official: -1 entries match no term but count in the mean, P48); "robust" K = 0, V = 1, i.e.
    l2(p; q3)."""
    if observed_negatives not in OBSERVED_NEGATIVES:
        raise ValueError(f"observed_negatives must be one of {OBSERVED_NEGATIVES}; got {observed_negatives!r}")
    positive = observed & (targets > 0.5)
    negative = observed & ~positive
    unknown = ~observed
    p_unk, k_unk, v_unk = probs[unknown], k[unknown], v[unknown]
    out = torch.zeros_like(probs)
    out = out.masked_scatter(positive, neg_log(probs[positive], eps))
    out = out.masked_scatter(unknown, v_unk * (k_unk * gce_pos(p_unk, q2, nan_safe)
                                               + (1 - k_unk) * gce_neg(p_unk, q3, nan_safe)))
    if observed_negatives == "bce":
        out = out.masked_scatter(negative, neg_log(1 - probs[negative], eps))
    elif observed_negatives == "robust":
        out = out.masked_scatter(negative, gce_neg(probs[negative], q3, nan_safe))
    return out
