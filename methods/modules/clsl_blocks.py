"""Building blocks of CLSL (spec 8.1 and 8.3): the position-aware encoder layer, the
semantic-related feature learning (SRFL) fusion, the low-rank bilinear attention of the
semantic-guided feature enhancement (SGFE), the refined head with spatial-softmax pooling, the
global spatial-max head and the label recovery.

Shapes: tokens ``x`` [B, P, D] (a feature map flattened row-major), class features ``v`` [B, C, Dv],
label embeddings [C, E]. Module names in the official code (``models/sarlp.py``): SRFL = ``ttd``,
SGFE attention = ``attention2``, refined head = ``fc2``, global head = ``fc0``.
Pitfall (P…, C…) and fixture (F…, W…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmark.core.errors import UserError

RECOVERY_MODES = ("abs_max", "signed_max", "plain")


class EncoderLayer(nn.Module):
    """One transformer encoder layer; the position encoding is added to queries and keys only."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float = 0.1, pre_norm: bool = False) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def _attend(self, x: Tensor, pos: Tensor | None) -> Tensor:
        qk = x if pos is None else x + pos
        return self.attn(qk, qk, x, need_weights=False)[0]

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        if self.pre_norm:
            x = x + self.drop1(self._attend(self.norm1(x), pos))
            return x + self.drop2(self.ffn(self.norm2(x)))
        x = self.norm1(x + self.drop1(self._attend(x, pos)))
        return self.norm2(x + self.drop2(self.ffn(x)))


class SemanticFusion(nn.Module):
    """SRFL: each label embedding concatenated with the mean token, then 1x1 conv -> BN -> GELU
    -> 1x1 conv to the model width (the convolutions are per-class linear maps)."""

    def __init__(self, embed_dim: int, dim: int) -> None:
        super().__init__()
        joint = embed_dim + dim
        self.fc1, self.bn = nn.Linear(joint, joint), nn.BatchNorm1d(joint)
        self.act, self.fc2 = nn.GELU(), nn.Linear(joint, dim)

    def forward(self, x: Tensor, embeddings: Tensor) -> Tensor:
        batch, classes = x.shape[0], embeddings.shape[0]
        context = x.mean(dim=1, keepdim=True).expand(batch, classes, x.shape[2])
        z = self.fc1(torch.cat([embeddings.unsqueeze(0).expand(batch, -1, -1), context], dim=-1))
        z = self.act(self.bn(z.transpose(1, 2)).transpose(1, 2))   # BN statistics over B x C
        return self.fc2(z)


class BilinearAttention(nn.Module):
    """Low-rank bilinear attention: a[b, c, p] = w_o . (W_h tanh(W1 x_p * W2 v_c) + b_h) + b_o (no softmax)."""

    def __init__(self, token_dim: int, class_dim: int, att_dim: int) -> None:
        super().__init__()
        self.proj_x = nn.Linear(token_dim, att_dim, bias=False)
        self.proj_v = nn.Linear(class_dim, att_dim, bias=False)
        self.hidden = nn.Linear(att_dim, att_dim)
        self.out = nn.Linear(att_dim, 1)

    def forward(self, x: Tensor, v: Tensor) -> Tensor:
        joint = torch.tanh(self.proj_x(x).unsqueeze(1) * self.proj_v(v).unsqueeze(2))   # [B, C, P, A]
        return self.out(self.hidden(joint)).squeeze(-1)                                   # [B, C, P]


def spatial_softmax_pool(scores: Tensor) -> Tensor:
    """[B, P, C] position scores -> [B, C]: sum over positions of softmax_p(s) * s."""
    return (torch.softmax(scores, dim=1) * scores).sum(dim=1)


class RefinedHead(nn.Module):
    """SGFE + refined classifier: class-softmax mixing of ``v`` per token, concatenated with the
    token, MLP (GELU, dropout) to C position scores, spatial-softmax pooling to logits."""

    def __init__(self, dim: int, class_dim: int, att_dim: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.attention = BilinearAttention(dim, class_dim, att_dim)
        joint = dim + class_dim
        self.mlp = nn.Sequential(nn.Linear(joint, joint), nn.GELU(), nn.Dropout(dropout), nn.Linear(joint, num_classes))

    def forward(self, x: Tensor, v: Tensor) -> Tensor:
        weights = torch.softmax(self.attention(x, v).transpose(1, 2), dim=-1)   # [B, P, C], softmax over classes
        mixed = torch.cat([weights @ v, x], dim=-1)                               # [B, P, Dv + D]
        return spatial_softmax_pool(self.mlp(mixed))


class GlobalMaxHead(nn.Module):
    """1x1 convolution of the tokens to C class maps, maximum over positions."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x).amax(dim=1)


def recovery_probabilities(logits: Tensor, mode: str = "abs_max") -> Tensor:
    """Recovered probabilities of every entry (detached), from the refined logits [B, C].

    ``signed_max`` (official): sigmoid(l * max_c l), the image's maximum logit as temperature;
    when every logit of an image is negative the product flips sign (pitfall C2).
    ``abs_max`` (default): sigmoid(l * |max_c l|), the same sharpening with the sign kept.
    ``plain``: sigmoid(l).
    """
    if mode not in RECOVERY_MODES:
        raise UserError(f"CLSL recovery '{mode}' is unknown; use one of {RECOVERY_MODES}")
    logits = logits.detach()
    if mode == "plain":
        return torch.sigmoid(logits)
    temperature = logits.amax(dim=1, keepdim=True)
    return torch.sigmoid(logits * (temperature.abs() if mode == "abs_max" else temperature))


def recovered_targets(logits: Tensor, targets: Tensor, observed: Tensor, mode: str = "abs_max") -> Tensor:
    """Soft targets: the known label where observed, the recovered probability elsewhere (detached)."""
    probs = recovery_probabilities(logits, mode)
    return torch.where(observed, targets.to(probs.dtype), probs)
