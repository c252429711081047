"""Classification losses shared by several methods, in the project's label encoding
(``targets`` float in [0, 1], ``mask`` bool: which entries count)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.contract import collectives


def masked_bce(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """The HCP partial BCE (spec 2.1): BCE-with-logits averaged over the known entries of the
    *whole batch* (a global mean, not per image); 0 when no entry is known.

    HCP's {+1, -1} targets map to our 1 / 0 (``softplus(-x)`` / ``softplus(x)``); its soft positive
    targets t in (0, 1] (pseudo-labels, blended labels) are passed as ``targets`` unchanged.
    """
    mask = mask.to(logits.dtype)
    per_entry = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    return (per_entry * mask).sum() / collectives.batch_normaliser(mask.sum())   # DDP: the global batch's count


def durand_weight(known_fraction: Tensor, g_at_01: float = 5.0, gamma: float = 1.0) -> Tensor:
    """Durand et al.'s normalisation g(p) = alpha * p**gamma + beta with g(1) = 1 and g(0.1) = g_at_01."""
    alpha = (g_at_01 - 1.0) / (0.1 ** gamma - 1.0)
    beta = 1.0 - alpha
    return alpha * known_fraction.pow(gamma) + beta


def durand_partial_bce(logits: Tensor, targets: Tensor, observed: Tensor, g_at_01: float = 5.0,
                       gamma: float = 1.0) -> Tensor:
    """Normalised partial BCE (Durand et al., CVPR 2019, eq. 2): per image
    ``g(p_y) / C * sum_{c known} BCE(x_c, y_c)``, averaged over the batch; p_y is the image's
    fraction of known labels."""
    mask = observed.to(logits.dtype)
    per_entry = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    num_classes = logits.shape[1]
    weight = durand_weight(mask.mean(dim=1), g_at_01, gamma)
    return (weight * (per_entry * mask).sum(dim=1) / num_classes).mean()


def cooccurrence_asl(pair_logits: Tensor, pair_targets: Tensor, gamma_pos: float = 1.0, gamma_neg: float = 2.0,
                     clip: float = 0.05, eps: float = 1e-8) -> Tensor:
    """The IST co-occurrence loss (spec 5.3): asymmetric focal BCE over every pair entry, mean over
    B x P. With p = sigma(q) and p_neg = min(1 - p + clip, 1):
    ``-t log(max(p, eps)) (1-p)^gamma_pos - (1-t) log(max(p_neg, eps)) (1-p_neg)^gamma_neg``.
    The focal weights are not detached (as in the official code). ``pair_targets`` in {0, 1}."""
    t = pair_targets.to(pair_logits.dtype)
    p = torch.sigmoid(pair_logits)
    p_neg = (1 - p + clip).clamp(max=1.0) if clip > 0 else 1 - p
    pos = t * torch.log(p.clamp(min=eps)) * (1 - p).pow(gamma_pos)
    neg = (1 - t) * torch.log(p_neg.clamp(min=eps)) * (1 - p_neg).pow(gamma_neg)
    return -(pos + neg).mean()
