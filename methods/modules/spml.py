"""Loss matrices of Cole et al.'s single-positive losses (AN, AN-LS, WAN, EPR, ROLE; spec wave 2,
section 2), in the project's label encoding (``targets`` float {0, 1}, ``observed`` bool).

All of them work on probabilities with ``nl(x) = -log(x + eps)`` (eps 1e-5, SPML's ``LOG_EPSILON``),
not on logits: they differ from BCE-with-logits for saturated logits, by design. Each function
returns the per-entry loss matrix [B, C]; the methods reduce it by ``sum / (B * C)`` over every
entry (the official reduction). The official losses reject observed negatives (pitfall P26); here
an observed negative (``observed & targets == 0``) gets the negative term nl(1 - p) with weight 1
(the random-protocol extension of spec 2.7), and ``observed_negatives=False`` treats it as an
unknown instead (what the official code would do after mapping -1 to 0).
Pitfall (P…, C…) and fixture (F…, W…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from benchmark.contract import collectives

LOG_EPS = 1e-5
LOGIT_POS = math.log(0.995 / 0.005)      # ROLE: initial estimator logit of an observed positive


def neg_log(x: Tensor, eps: float = LOG_EPS) -> Tensor:
    return -torch.log(x + eps)


def role_init_range(w: float = 0.1) -> float:
    """q0 = logit(0.5 + w): unobserved estimator logits start uniform in (-q0, q0)."""
    return math.log((0.5 + w) / (0.5 - w))


def role_logits_from_estimates(estimates: Tensor, eps: float = LOG_EPS) -> Tensor:
    """Estimator logits from estimated labels, logit(clamp(q, eps, 1 - eps)) in the dtype of ``estimates``
    (SPML ``models.py`` ``inverse_sigmoid``): how ROLE's ``linear_init`` hands theta to its second stage (W16)."""
    q = estimates.clamp(eps, 1.0 - eps)
    return torch.log(q / (1.0 - q))


def _kinds(targets: Tensor, observed: Tensor, observed_negatives: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Float masks (positive, observed negative, unknown); unknown includes observed negatives when
    ``observed_negatives`` is False."""
    pos = (observed & (targets > 0.5)).float()
    neg = (observed & (targets <= 0.5)).float()
    if not observed_negatives:
        neg = torch.zeros_like(neg)
    return pos, neg, 1.0 - pos - neg


def assume_negative_matrix(probs: Tensor, targets: Tensor, observed: Tensor, ls_coef: float = 0.0,
                           eps: float = LOG_EPS) -> Tensor:
    """AN (``ls_coef = 0``) and AN-LS: every non-positive entry is a negative; label smoothing
    ``ls_coef`` applies to positives and negatives alike (spec 2.2, 2.3)."""
    pos, _, _ = _kinds(targets, observed, True)
    y = pos * (1.0 - ls_coef) + (1.0 - pos) * ls_coef
    return y * neg_log(probs, eps) + (1.0 - y) * neg_log(1.0 - probs, eps)


def weighted_an_matrix(probs: Tensor, targets: Tensor, observed: Tensor, unknown_weight: float,
                       observed_negatives: bool = True, eps: float = LOG_EPS) -> Tensor:
    """WAN (spec 2.4): nl(p) on positives, nl(1 - p) on observed negatives (weight 1) and
    ``unknown_weight`` * nl(1 - p) on unknown entries (official gamma = 1 / (C - 1))."""
    pos, neg, unk = _kinds(targets, observed, observed_negatives)
    return pos * neg_log(probs, eps) + (neg + unknown_weight * unk) * neg_log(1.0 - probs, eps)


def epr_matrix(probs: Tensor, targets: Tensor, observed: Tensor, observed_negatives: bool = True,
               eps: float = LOG_EPS) -> Tensor:
    """EPR's data term (spec 2.5): nl(p) on positives, nl(1 - p) on observed negatives, 0 on unknowns."""
    pos, neg, _ = _kinds(targets, observed, observed_negatives)
    return pos * neg_log(probs, eps) + neg * neg_log(1.0 - probs, eps)


def expected_positive_reg(probs: Tensor, k: float) -> Tensor:
    """(mean over images of sum_c p - k)^2 / C^2 (SPML's squared expected-positive regulariser). The
    mean is over the global batch under DDP (``benchmark.contract.collectives.batch_mean``; a plain mean otherwise)."""
    return (collectives.batch_mean(probs.sum(dim=1)) - k) ** 2 / probs.shape[1] ** 2


def role_matrix(probs: Tensor, estimates: Tensor, targets: Tensor, observed: Tensor,
                observed_negatives: bool = True, eps: float = LOG_EPS) -> Tensor:
    """ROLE's loss matrix (spec 2.6) for classifier probabilities p and estimator probabilities q:
    1/2 [obs(p) + obs(q)] + 1/2 [q' nl(p) + (1 - q') nl(1 - p) + p' nl(q) + (1 - p') nl(1 - q)],
    where ' is a detached copy and obs(.) is the observed-label term of :func:`epr_matrix`."""
    p_bar, q_bar = probs.detach(), estimates.detach()
    observed_term = (epr_matrix(probs, targets, observed, observed_negatives, eps)
                     + epr_matrix(estimates, targets, observed, observed_negatives, eps))
    cross = (q_bar * neg_log(probs, eps) + (1.0 - q_bar) * neg_log(1.0 - probs, eps)
             + p_bar * neg_log(estimates, eps) + (1.0 - p_bar) * neg_log(1.0 - estimates, eps))
    return 0.5 * observed_term + 0.5 * cross


def role_reg(probs: Tensor, estimates: Tensor, k: float) -> Tensor:
    """1/2 [EPR(p) + EPR(q)]."""
    return 0.5 * (expected_positive_reg(probs, k) + expected_positive_reg(estimates, k))


def batch_expected_positives(targets: Tensor, observed: Tensor) -> float:
    """Fallback k when the harness gave none (direct use of a method): sum_c n_pos_obs(c) / n_obs(c)
    over the batch when it has observed negatives, else its mean number of observed positives."""
    pos = (observed & (targets > 0.5)).float()
    obs = observed.float()
    if bool((obs - pos).sum() > 0):
        return float((pos.sum(0) / obs.sum(0).clamp_min(1.0)).sum())
    return float(pos.sum(1).mean())


def mean_matrix(matrix: Tensor) -> Tensor:
    """SPML's reduction: every entry divided by B * C, then summed (the official order of float ops)."""
    return (matrix / matrix.numel()).sum()
