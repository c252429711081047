"""Semantic decoupling (SSGRL / SARL, spec section 2): label-embedding-guided attention that turns
a feature map into one feature vector per class.

For class c and location l of the map x [B, D, h, w] (spec section 2, "Semantic decoupling"):

    e_{c,l} = w_a^T (W3 tanh((W1 x_l) * (W2 w_c)) + b3) + b_a,   a_{c,l} = softmax_l e_{c,l},
    f_c = sum_l a_{c,l} x_l,      M_{c,l} = a_{c,l} x_l  (the per-location weighted maps)

with W1: D -> H and W2: E -> H without bias, W3: H -> H and w_a: H -> 1 with bias, and no
nonlinearity between W3 and w_a. Because of that, ``w_a^T W3`` is folded into one H-vector before
it meets the [B, L, C, H] tensor: the same function of the same parameters with the same
gradients, but the H x H product runs once instead of once per (image, location, class), which is
what makes the block affordable on a CPU.
Pitfall (P…, C…) and fixture (F…, W…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class SemanticDecoupling(nn.Module):
    """Class-specific attention pooling guided by label embeddings.

    Args:
        feature_dim: D, channels of the feature map.
        embed_dim: E, size of one label embedding.
        hidden_dim: H, the intermediate size (512 in HCP, 1024 in SSGRL).
    """

    def __init__(self, feature_dim: int, embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.img_proj = nn.Linear(feature_dim, hidden_dim, bias=False)    # W1
        self.word_proj = nn.Linear(embed_dim, hidden_dim, bias=False)     # W2
        self.fuse = nn.Linear(hidden_dim, hidden_dim)                     # W3, b3
        self.score = nn.Linear(hidden_dim, 1)                             # w_a, b_a

    def attention(self, fmap: Tensor, embeddings: Tensor) -> Tensor:
        """Attention weights a [B, C, h, w] (softmax over the h*w locations of each class)."""
        b, _, h, w = fmap.shape
        pixels = fmap.flatten(2).transpose(1, 2)                          # [B, L, D]
        img = self.img_proj(pixels)                                        # [B, L, H]
        word = self.word_proj(embeddings.to(fmap.dtype))                  # [C, H]
        gated = torch.tanh(img.unsqueeze(2) * word.unsqueeze(0).unsqueeze(0))  # [B, L, C, H]
        direction = self.score.weight @ self.fuse.weight                  # [1, H] = w_a^T W3
        offset = self.score.weight @ self.fuse.bias + self.score.bias     # [1]   = w_a^T b3 + b_a
        logits = gated @ direction.squeeze(0) + offset                    # [B, L, C]
        weights = torch.softmax(logits, dim=1)
        return weights.permute(0, 2, 1).reshape(b, -1, h, w)

    @staticmethod
    def pool(fmap: Tensor, attention: Tensor) -> Tensor:
        """Class features f [B, C, D] = sum over locations of a_{c,l} x_l."""
        return torch.einsum("bchw,bdhw->bcd", attention, fmap)

    @staticmethod
    def weighted_maps(fmap: Tensor, attention: Tensor) -> Tensor:
        """Per-location weighted maps M [B, h, w, C, D] = a_{c,l} x_l (DSRB blends these)."""
        return torch.einsum("bchw,bdhw->bhwcd", attention, fmap)

    def forward(self, fmap: Tensor, embeddings: Tensor, with_maps: bool = False) -> tuple[Tensor, Tensor | None]:
        """Class features [B, C, D] and, if ``with_maps``, the weighted maps [B, h, w, C, D].

        ``fmap``: [B, D, h, w]; ``embeddings``: [C, E]. The maps sum over (h, w) to the features.
        """
        attn = self.attention(fmap, embeddings)
        feats = self.pool(fmap, attn)
        return feats, (self.weighted_maps(fmap, attn) if with_maps else None)
