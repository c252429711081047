"""Intra-image co-occurrence (SST / HST's IST, spec 5.1 and 5.2): one classifier per unordered
class pair, the pair targets of the co-occurrence loss, and the intra-image pseudo-label scores.

Pairs are ordered (0,1), (0,2), ..., (0,C-1), (1,2), ... as in the official code.
Pitfall (P…, C…) and fixture (F…, W…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from methods.modules.graph import ElementWiseLinear


def pair_index(num_classes: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """(first [P], second [P]) class indices of the P = C(C-1)/2 unordered pairs c < d."""
    first, second = torch.triu_indices(num_classes, num_classes, 1, device=device)
    return first, second


class CooccurrenceHead(nn.Module):
    """Pair logits q [B, P] from class features f [B, C, D] (spec 5.1):
    g_c = U1 f_c + c1;  u_cd = U3 ReLU(U2 [g_c; g_d] + c2) + c3;  q_cd = <w_cd, u_cd> + beta_cd.

    Computed in an equivalent, cheaper order (same parameters, same function and gradients):
    U2 [g_c; g_d] = U2_left g_c + U2_right g_d is formed per class and added per pair, and since
    nothing follows U3 but the per-pair dot product, <w_cd, U3 r + c3> = <U3^T w_cd, r> + <w_cd, c3>.
    The [B, P, output_dim] tensor then meets no output_dim x output_dim product (the official
    order multiplies every one of the B x P rows by U3).
    """

    def __init__(self, num_classes: int, dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__()
        first, second = pair_index(num_classes)
        self.register_buffer("first", first, persistent=False)
        self.register_buffer("second", second, persistent=False)
        self.reduce = nn.Linear(dim, hidden_dim)               # U1, c1
        self.mix = nn.Linear(2 * hidden_dim, output_dim)       # U2, c2
        self.out = nn.Linear(output_dim, output_dim)           # U3, c3
        self.classifier = ElementWiseLinear(first.numel(), output_dim)

    def forward(self, feats: Tensor) -> Tensor:
        g = self.reduce(feats)                                           # [B, C, H]
        left, right = self.mix.weight.chunk(2, dim=1)                    # U2 = [U2_left, U2_right]
        hidden = torch.relu((g @ left.t())[:, self.first] + (g @ right.t() + self.mix.bias)[:, self.second])
        weight = self.classifier.weight @ self.out.weight                # [P, output_dim] rows U3^T w_cd
        bias = self.classifier.weight @ self.out.bias + self.classifier.bias
        return torch.einsum("bpd,pd->bp", hidden, weight) + bias


def pair_targets(targets: Tensor, observed: Tensor) -> Tensor:
    """t_cd = 1 iff c and d are both known positive, else 0 (unknown pairs count as negative, P7)."""
    known_pos = (observed & (targets > 0.5)).to(targets.dtype)
    first, second = pair_index(targets.shape[1], targets.device)
    return known_pos[:, first] * known_pos[:, second]


def pair_matrix(pair_logits: Tensor, num_classes: int) -> Tensor:
    """Symmetric co-occurrence probabilities P [B, C, C] = sigma(q) off the diagonal, 1 on it."""
    b = pair_logits.shape[0]
    first, second = pair_index(num_classes, pair_logits.device)
    probs = torch.sigmoid(pair_logits)
    matrix = torch.eye(num_classes, dtype=probs.dtype, device=probs.device).repeat(b, 1, 1)
    matrix = matrix.index_put((torch.arange(b, device=probs.device)[:, None], first, second), probs)
    return matrix.index_put((torch.arange(b, device=probs.device)[:, None], second, first), probs)


def intra_scores(pair_logits: Tensor, targets: Tensor, observed: Tensor) -> Tensor:
    """s_bc = mean over the image's known positives j of P_b,cj (spec 5.2), [B, C]; 0 without any.

    The known-positive mask is detached data; gradients flow through the pair logits.
    """
    known_pos = (observed & (targets > 0.5)).to(pair_logits.dtype)
    matrix = pair_matrix(pair_logits, targets.shape[1])
    summed = (matrix @ known_pos.unsqueeze(-1)).squeeze(-1)
    return summed / known_pos.sum(dim=1, keepdim=True).clamp_min(1.0)
