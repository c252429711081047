"""SCPNet's building blocks: the structured prior, the semantic GCN, SPLC, the prior-enhanced
consistency loss and the class-wise learning status (FlexMatch-style), as pure functions.

Spec: ``specs/methods_wave3_clip.md`` 3.1-3.4; fixtures Y3 (relation), Y4 (SPLC), Y5 (consistency),
Y6 (class-wise status); pitfalls P75, P76, P77, P80, P81. Losses are sums over the batch (P80);
the caller scales them for DDP. Everything here is float32 and label-free beyond the observed labels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.modules.prompts import class_prompts, tokenize

LOG_CLAMP = 1e-8          # the consistency loss's log clamp (official literal)


def clip_text_similarity(clip: nn.Module, class_names: list[str]) -> Tensor:
    """The suite's raw prior [C, C] (spec 3.3): cosine similarities of the frozen CLIP text features of
    "a photo of a <name>." (float32, on the CPU)."""
    ids = tokenize(class_prompts("a photo of a", class_names))
    with torch.no_grad():
        feats = clip.encode_text(ids.to(clip.token_embedding.weight.device)).float().cpu()
    feats = feats / feats.norm(dim=-1, keepdim=True)
    return feats @ feats.t()


def check_raw_relation(matrix: Tensor, num_classes: int, symmetric_tol: float = 1e-4) -> Tensor:
    """A raw C x C prior as float32, or a ValueError: square of the task's size, finite, symmetric."""
    matrix = torch.as_tensor(matrix).float()
    if tuple(matrix.shape) != (num_classes, num_classes):
        raise ValueError(f"the relation matrix must be {num_classes} x {num_classes} (one row per class); got "
                         f"shape {tuple(matrix.shape)}")
    if not torch.isfinite(matrix).all():
        raise ValueError("the relation matrix holds NaN or infinite values")
    if (matrix - matrix.t()).abs().max() > symmetric_tol:
        raise ValueError(f"the relation matrix is not symmetric (within {symmetric_tol})")
    return matrix


def process_relation(raw: Tensor, sparse_topk: int, reweight_p: float, temperature: float) -> tuple[Tensor, Tensor]:
    """(gcn_relation A, relation R) from the raw prior S (Y3). Per row keep the ``sparse_topk`` largest
    entries of S (the diagonal competes like the others), zero the rest and the diagonal, scale the row
    to sum ``reweight_p`` and put 1 - reweight_p on the diagonal: A. R = row softmax of A / T over all C
    entries (the zeros included, P76), entries outside the top-k set to 0 (also a diagonal that was not
    among them, P75), rows renormalised."""
    raw = raw.float()
    count = raw.shape[0]
    if not 2 <= sparse_topk <= count:
        raise ValueError(f"sparse_topk must be in [2, {count}] (1 leaves no off-diagonal entry: NaN, P75); "
                         f"got {sparse_topk}")
    keep = torch.zeros_like(raw, dtype=torch.bool)
    keep.scatter_(1, raw.topk(sparse_topk, dim=1).indices, True)
    eye = torch.eye(count, dtype=torch.bool, device=raw.device)
    off = torch.where(keep & ~eye, raw, torch.zeros_like(raw))
    mass = off.sum(dim=1, keepdim=True)
    if not bool((mass > 0).all()):
        rows = (mass.squeeze(1) <= 0).nonzero().squeeze(1).tolist()
        raise ValueError(f"relation rows {rows[:8]} keep no positive off-diagonal mass among their top "
                         f"{sparse_topk} entries; the prior must be a similarity (positive off-diagonal values)")
    gcn = torch.where(eye, torch.full_like(raw, 1.0 - reweight_p), off / mass * reweight_p)
    soft = torch.softmax(gcn / temperature, dim=1) * keep
    return gcn, soft / soft.sum(dim=1, keepdim=True)


class SemanticGCN(nn.Module):
    """T' = T + A H2 W3 with H1 = LeakyReLU_0.2(A T W1), H2 = LeakyReLU_0.2(A H1 W2); widths
    D - 2D - 2D - D (official 1024 - 2048 - 2048 - 1024 for RN50, P77), no biases, weights drawn
    U(-1/sqrt(out), 1/sqrt(out)) from the global generator."""

    def __init__(self, dim: int, slope: float = 0.2):
        super().__init__()
        widths = (dim, 2 * dim, 2 * dim, dim)
        self.weights = nn.ParameterList()
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            bound = 1.0 / math.sqrt(width_out)
            self.weights.append(nn.Parameter(torch.empty(width_in, width_out).uniform_(-bound, bound)))
        self.slope = slope

    def forward(self, text: Tensor, adjacency: Tensor) -> Tensor:
        hidden = text
        for layer, weight in enumerate(self.weights):
            hidden = adjacency.to(hidden.dtype) @ (hidden @ weight.to(hidden.dtype))
            if layer < len(self.weights) - 1:
                hidden = F.leaky_relu(hidden, self.slope)
        return text + hidden


def splc_loss(logits: Tensor, targets: Tensor, correctable: Tensor, correct: bool, tau: float = 0.6,
              margin: float = 1.0, gamma: float = 2.0) -> tuple[Tensor, Tensor]:
    """SPLC with the focal margin (Y4): (sum over entries, targets used). z' = z - margin at targets 1;
    when ``correct`` (epoch >= change_epoch), a ``correctable`` target 0 with sigmoid(z') > tau becomes 1.
    With p = sigmoid(z'), pt = (1 - p) y + p (1 - y): -[y log s(z') + (1 - y) log s(-z')] pt^gamma; the
    focal weight is not detached and corrected targets keep the unshifted logit (P81)."""
    logits, targets = logits.float(), targets.float()
    shifted = torch.where(targets == 1, logits - margin, logits)
    if correct:
        flip = (torch.sigmoid(shifted) > tau) & correctable
        targets = torch.where(flip, torch.ones_like(targets), targets)
    probs = torch.sigmoid(shifted)
    weight = ((1 - probs) * targets + probs * (1 - targets)) ** gamma
    loss = -(targets * F.logsigmoid(shifted) + (1 - targets) * F.logsigmoid(-shifted)) * weight
    return loss.sum(), targets


def classwise_status(selected: Tensor, hard_k: int) -> Tensor | None:
    """a_c = max(n_c / max(max_c n_c, k N - sum_c n_c), 1 / C) from the pseudo-label memory [N, C]
    (n_c = rows selecting class c; Y6); None while nothing is selected (a stays as it is)."""
    counts = selected.sum(dim=0).double()
    if float(counts.max()) < 1:
        return None
    rows, classes = selected.shape
    denominator = max(float(counts.max()), hard_k * rows - float(counts.sum()))
    return (counts / denominator).clamp(min=1.0 / classes).float()


def hard_pseudo_labels(probs_weak: Tensor, status: Tensor, positives: Tensor, negatives: Tensor, hard_k: int,
                       p_cutoff: float = 0.95) -> tuple[Tensor, Tensor]:
    """(labels l [B, C] bool, image mask m [B] bool): l = 1 on the top-``hard_k`` classes of p^w, then 0
    where p^w < tau_c = p_cutoff a_c / (2 - a_c), OR the observed positives, minus the observed negatives
    (suite extension, none under single positive); m = some top-k class reaches its threshold."""
    threshold = p_cutoff * status / (2.0 - status)
    top_probs, top_idx = probs_weak.topk(hard_k, dim=1)
    mask = (top_probs >= threshold[top_idx]).any(dim=1)
    labels = torch.zeros_like(probs_weak, dtype=torch.bool).scatter_(1, top_idx, True)
    labels = (labels & (probs_weak >= threshold)) | positives
    return labels & ~negatives, mask


def consistency_loss(logits_strong: Tensor, probs_weak: Tensor, labels: Tensor, mask: Tensor, relation: Tensor,
                     kl_lambda: float) -> Tensor:
    """The prior-enhanced consistency loss (Y5), a sum over the masked images: binary cross-entropy of
    p^s against the hard labels l plus ``kl_lambda`` x against the prior targets r = p^w R^T, logs
    clamped at 1e-8."""
    probs = torch.sigmoid(logits_strong.float())
    log_pos, log_neg = probs.clamp(min=LOG_CLAMP).log(), (1 - probs).clamp(min=LOG_CLAMP).log()
    prior = probs_weak.float() @ relation.float().t()
    hard = labels.float() * log_pos + (1 - labels.float()) * log_neg
    soft = prior * log_pos + (1 - prior) * log_neg
    rows = mask.float().unsqueeze(1)
    return -(hard * rows).sum() - kl_lambda * (soft * rows).sum()
