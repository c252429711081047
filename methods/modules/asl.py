"""The asymmetric loss (ASL; Ridnik et al., ICCV 2021) with soft targets, as CLSL uses it
(spec 8.4), in the project's label encoding.

Per entry, with ``p = sigmoid(z)``, ``p_neg = min(1 - p + clip, 1)`` and target ``t`` in [0, 1]::

    loss = -[t * log(max(p, eps)) + (1 - t) * log(max(p_neg, eps))] * w
    w    = (1 - p * t - p_neg * (1 - t)) ** (gamma_pos * t + gamma_neg * (1 - t))

The focal weight ``w`` is computed without gradient by default (CLSL's ``disable_torch_grad_focal_loss
= True``). Reductions: :func:`asl_known` over the observed entries (sum or batch-global mean) and
:func:`asl_mean` over every entry.
"""
from __future__ import annotations

import torch
from torch import Tensor

from benchmark.contract import collectives
from benchmark.core.errors import UserError

REDUCTIONS = ("mean", "sum")


def asl_per_entry(logits: Tensor, targets: Tensor, gamma_pos: float = 0.0, gamma_neg: float = 2.0,
                  clip: float = 0.0, eps: float = 1e-5, detach_focal: bool = True) -> Tensor:
    """Non-negative ASL of every entry, same shape as ``logits``; ``targets`` may be soft."""
    t = targets.to(logits.dtype)
    p = torch.sigmoid(logits)
    p_neg = (1.0 - p + clip).clamp(max=1.0) if clip > 0 else 1.0 - p
    loss = -(t * torch.log(p.clamp(min=eps)) + (1.0 - t) * torch.log(p_neg.clamp(min=eps)))
    if gamma_pos == 0 and gamma_neg == 0:
        return loss
    with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_focal):
        base = 1.0 - p * t - p_neg * (1.0 - t)
        weight = torch.pow(base, gamma_pos * t + gamma_neg * (1.0 - t))
    return loss * weight


def asl_known(logits: Tensor, targets: Tensor, observed: Tensor, reduction: str = "mean", **asl) -> Tensor:
    """ASL over the observed entries only: their ``sum`` (the official ``MASK=True`` variant,
    before its x1000) or their batch-global ``mean`` (0 when nothing is observed)."""
    if reduction not in REDUCTIONS:
        raise UserError(f"ASL reduction '{reduction}' is unknown; use one of {REDUCTIONS}")
    mask = observed.to(logits.dtype)
    total = (asl_per_entry(logits, targets, **asl) * mask).sum()
    # DDP: the global batch's sum and count (benchmark.contract.collectives), identities in one process
    return total * collectives.sum_scale() if reduction == "sum" else total / collectives.batch_normaliser(mask.sum())


def asl_mean(logits: Tensor, targets: Tensor, **asl) -> Tensor:
    """ASL averaged over all B x C entries (the official plain variant, before its x1000)."""
    return asl_per_entry(logits, targets, **asl).mean()


def partial_asl_per_entry(logits: Tensor, targets: Tensor, observed: Tensor, gamma_pos: float = 0.0,
                          gamma_neg: float = 1.0, gamma_unann: float = 4.0, alpha_pos: float = 1.0,
                          alpha_neg: float = 1.0, alpha_unann: float = 1.0, clip: float = 0.0, eps: float = 1e-8,
                          detach_focal: bool = True) -> Tensor:
    """Non-negative partial ASL of every entry (no selection weights), same shape as ``logits``.

    Entry types: positive = observed & target 1, negative = observed & target 0, un-annotated =
    not observed (its target is ignored: it is scored as a negative). Per entry::

        loss = -alpha_type * log(max(p or p_neg, eps)) * (1 - p or 1 - p_neg) ** gamma_type
    """
    t = targets.to(logits.dtype)
    pos = observed.to(logits.dtype) * (t > 0.5).to(logits.dtype)
    unann = (~observed).to(logits.dtype)
    neg = 1.0 - pos - unann
    p = torch.sigmoid(logits)
    p_neg = (1.0 - p + clip).clamp(max=1.0) if clip > 0 else 1.0 - p
    log_pos, log_neg = torch.log(p.clamp(min=eps)), torch.log(p_neg.clamp(min=eps))
    loss = -(alpha_pos * pos * log_pos + (alpha_neg * neg + alpha_unann * unann) * log_neg)
    with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_focal):
        base = 1.0 - p * pos - p_neg * (neg + unann)
        weight = torch.pow(base, gamma_pos * pos + gamma_neg * neg + gamma_unann * unann)
    return loss * weight
