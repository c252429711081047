"""CLIP pseudo-labels and their losses as pure functions: AEVLP's DAMP pseudo-labels and GPR loss
(spec wave3_clip 4.1-4.3; fixtures Y8, Y9), VLPL's thresholded pseudo-labels and EM_PL loss (4.6; Y10),
and the label relation and frozen random GCN of AEVLP's pseudo-label generator (4.1; Y3).

Views of one image are rows of ``[B, V, D]`` unit-norm CLIP image features: view 0 is the whole image,
views 1..G^2 its G x G tiles in row-major order. ``view_scores`` turns them into per-view class
scores s = softmax(cos / temp) ``[B, V, C]``. Pseudo-labels are bool ``[B, C]``; the project encoding
(``targets``, ``observed``) holds the observed labels, the official 1 / 0 / -1 codes never appear.
Pitfall (P…) and fixture (X…/Y…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from methods.modules import em, robust

GPR_NEGATIVES = ("bce", "official")


def view_scores(features: Tensor, text: Tensor, temp: float) -> Tensor:
    """softmax over classes of cos(view, class) / temp, float32 ``[B, V, C]`` (features and text unit-norm)."""
    cos = torch.einsum("bvd,cd->bvc", features.float(), text.float())
    return torch.softmax(cos / temp, dim=-1)


def damp_pseudo_labels(scores: Tensor, positives: Tensor, eta: float, threshold: float, top_k: int,
                       negative_ratio: float) -> Tensor:
    """DAMP (AEVLP ``utils.get_pseudo_labels``, Y9): per class alpha / beta / mean over the tiles; eta_b =
    min(max_c s_global * y, eta); s_final = (s_global + (alpha if alpha > eta_b else beta)) / 2, the top_k
    entries of s_final that are >= threshold become positive; then the floor(negative_ratio C) entries with
    the lowest (s_global + mean) / 2 are set back to none (0, never a negative label: P88). ``positives``
    are the observed positives (they may be pseudo-labelled too, as in the official code)."""
    glob, tiles = scores[:, 0], scores[:, 1:]
    if tiles.shape[1] == 0:
        tiles = scores[:, :1]
    alpha, beta, mean = tiles.max(dim=1).values, tiles.min(dim=1).values, tiles.mean(dim=1)
    eta_b = torch.clamp((glob * positives.float()).max(dim=1, keepdim=True).values, max=eta)
    final = 0.5 * (glob + torch.where(alpha > eta_b, alpha, beta))
    values, idx = torch.topk(final, k=min(top_k, final.shape[1]), dim=1)
    pseudo = torch.zeros_like(final, dtype=torch.bool).scatter(1, idx, values >= threshold)
    count = int(negative_ratio * final.shape[1])
    if count > 0:
        low = torch.topk(0.5 * (glob + mean), k=count, dim=1, largest=False).indices
        pseudo = pseudo.scatter(1, low, False)
    return pseudo


def accumulated(pseudo: Tensor, stored: Tensor) -> Tensor:
    """The official ``acc_pseudo_labels``: the stored matrix where it is set, else the new labels. The
    official training discards it (P89); kept for the fixture Y9."""
    return torch.where(stored != 0, stored.to(pseudo.dtype), pseudo)


def gpr_matrix(probs: Tensor, targets: Tensor, observed: Tensor, pseudo: Tensor, k: Tensor, v: Tensor, q2: float,
               q3: float, lam: tuple[float, float], rho: float, eps: float = robust.LOG_EPS,
               observed_negatives: str = "bce", nan_safe: bool = True) -> Tensor:
    """Per-entry GPR loss [B, C] (AEVLP ``losses.GPR_loss`` before its mean, Y8): nl(p) at observed
    positives; V [K l1(p; q2) + (1 - K) l2(p; q3)] at unknown entries without a pseudo-label;
    (1 - V') [rho nl(p) + (1 - rho) nl(1 - p)] at pseudo-labelled unknown entries, V' = V clamped to
    [1 - lam1, 1 - lam2] (max, then min: P92); observed negatives nl(1 - p) ("bce", suite, spec 1.2) or
    V nl(1 - p) ("official": what GPR_loss gives a -1 entry). Each branch on its own entries only."""
    if observed_negatives not in GPR_NEGATIVES:
        raise ValueError(f"observed_negatives must be one of {GPR_NEGATIVES}; got {observed_negatives!r}")
    positive = observed & (targets > 0.5)
    negative = observed & ~positive
    labelled = ~observed & pseudo
    plain = ~observed & ~pseudo
    nl = robust.neg_log
    p, kk, vv = probs[plain], k[plain], v[plain]
    out = torch.zeros_like(probs).masked_scatter(positive, nl(probs[positive], eps))
    out = out.masked_scatter(plain, vv * (kk * robust.gce_pos(p, q2, nan_safe) + (1 - kk) * robust.gce_neg(p, q3, nan_safe)))
    weight = torch.clamp(v[labelled], min=1 - lam[0]).clamp(max=1 - lam[1])
    pp = probs[labelled]
    out = out.masked_scatter(labelled, (1 - weight) * (rho * nl(pp, eps) + (1 - rho) * nl(1 - pp, eps)))
    scale = v[negative] if observed_negatives == "official" else 1.0
    return out.masked_scatter(negative, scale * nl(1 - probs[negative], eps))


def vlpl_pseudo_labels(scores: Tensor, threshold: float) -> Tensor:
    """VLPL: [softmax(cos / temp) > threshold] on the global view (absolute threshold, P98), bool [B, C]."""
    return scores[:, 0] > threshold


def em_pl_terms(probs: Tensor, targets: Tensor, observed: Tensor, pseudo: Tensor | None, alpha: float,
                beta_pos: float, positive_weight: float = 0.9, eps: float = em.LOG_EPS) -> dict[str, Tensor]:
    """VLPL ``loss_EM_PL`` matrices (Y10): ``pos`` nl(p) at observed positives; ``em`` -alpha H(p) at
    unknown entries without a pseudo-label; ``apl`` beta_pos [0.9 nl(p) + 0.1 nl(1 - p)] at pseudo-labelled
    unknown entries (:func:`methods.modules.em.em_terms` with soft target 0.9); ``neg`` nl(1 - p) at
    observed negatives (suite extension; the official loss gives them 0)."""
    soft = None if pseudo is None else torch.full_like(probs, positive_weight)
    return em.em_terms(probs, targets, observed, alpha, pseudo, soft, beta_pos, "negative", eps)


# ----------------------------------------------------------------------------- the pseudo-label generator


def gcn_relation(similarity: Tensor, sparse_topk: int, reweight_p: float) -> Tensor:
    """The GCN adjacency of SCPNet / AEVLP (``get_relation``'s ``gcn_relation``, Y3): per row keep the
    ``sparse_topk`` largest entries, zero the rest and the diagonal, scale the row to sum ``reweight_p``
    and set the diagonal to 1 - reweight_p. Suite guard: negative similarities count as 0 and a row whose
    kept entries sum to 0 keeps only its diagonal (official: NaN, P75). Note: SCPNet's relation
    processing (methods/modules/scp.py) starts with the same computation; to be merged."""
    if sparse_topk < 2:
        raise ValueError(f"sparse_topk must be >= 2 (1 keeps only the diagonal: NaN rows, P75); got {sparse_topk}")
    c = similarity.shape[0]
    s = similarity.double().clamp(min=0)
    keep = torch.zeros_like(s, dtype=torch.bool).scatter(1, torch.topk(s, min(sparse_topk, c), dim=1).indices, True)
    eye = torch.eye(c, dtype=torch.bool)
    s = torch.where(keep & ~eye, s, torch.zeros_like(s))
    total = s.sum(dim=1, keepdim=True)
    a = torch.where(total > 0, s / total.clamp(min=1e-300) * reweight_p, s)
    diag = torch.where(total[:, 0] > 0, 1.0 - reweight_p, 1.0)
    return torch.where(eye, diag[:, None].expand_as(a), a).float()


def random_gcn(text: Tensor, adjacency: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """GCN(t) of AEVLP's generator with fresh random weights, frozen (never trained, P85): three layers
    D -> 2D -> 2D -> D (official 512-1024-1024-512), no bias, each weight U(-1/sqrt(out), 1/sqrt(out))
    (``GraphConvolution.reset_parameters``), h = A (h W), LeakyReLU(0.2) between layers; float32 (P86)."""
    d = text.shape[1]
    h = text.float()
    for i, (fan_in, fan_out) in enumerate(((d, 2 * d), (2 * d, 2 * d), (2 * d, d))):
        bound = 1.0 / math.sqrt(fan_out)
        weight = torch.rand(fan_in, fan_out, generator=generator) * (2 * bound) - bound
        h = adjacency.float() @ (h @ weight)
        if i < 2:
            h = torch.nn.functional.leaky_relu(h, 0.2)
    return h
