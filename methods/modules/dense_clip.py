"""Dense visual tokens of a ResNet CLIP (DualCoOp's ``AttentionConv``; reusable by SCPNet).

Spec: ``specs/methods_wave3_clip.md`` 2.2, pitfalls P60-P62, P69.

From the trunk's map F [B, D, h, w] (stem + layer1-4): the tokens are the spatial mean followed by
the h*w positions (h*w + 1 tokens, the mean kept as a region, P60), plus the attention pool's
positional embedding; each token goes through the pool's value projection and then its output
projection, z_l = W_c (W_v (f_l + e_l) + b_v) + b_c in R^E. No attention is computed (the official
computes a 32-head attention under no_grad and discards it, P61). The embedding's spatial rows are
interpolated from the checkpoint's G x G grid (7 x 7 for 224-px CLIPs) to h x w, bicubic,
align_corners False, the class row unchanged, once per map size and always from the checkpoint's
grid (the official interpolates at build time to INPUT.SIZE / 32 and again from that grid when the
input differs, P62). A ViT CLIP has no attention pool and no map: refused (P69).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.core.errors import UserError


def interpolated_positions(embedding: Tensor, height: int, width: int) -> Tensor:
    """The attention pool's positional embedding [G*G + 1, D] resized to [h*w + 1, D] (bicubic, align
    corners False; row 0, the mean token's, unchanged)."""
    grid = round(math.sqrt(embedding.shape[0] - 1))
    if grid * grid + 1 != embedding.shape[0]:
        raise ValueError(f"positional embedding of {embedding.shape[0]} rows is not a square grid plus one")
    if (height, width) == (grid, grid):
        return embedding
    spatial = embedding[1:].t().reshape(1, -1, grid, grid).float()
    spatial = F.interpolate(spatial, size=(height, width), mode="bicubic", align_corners=False)
    spatial = spatial.reshape(-1, height * width).t().to(embedding.dtype)
    return torch.cat([embedding[:1], spatial], dim=0)


class DenseCLIPTokens(nn.Module):
    """Trunk maps [B, D, h, w] -> dense tokens [B, h*w + 1, E] (token 0: the spatial mean)."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        pool = getattr(visual, "attnpool", None)
        if pool is None or not hasattr(pool, "v_proj"):
            raise UserError("dense CLIP tokens need a ResNet CLIP (its attention pool's value and output "
                            "projections); a ViT CLIP has none: use --clip-arch RN50 or RN101 (pitfall P69)")
        self.v_proj = pool.v_proj
        self.c_proj = pool.c_proj
        self.positional_embedding = pool.positional_embedding
        self.in_channels = int(pool.v_proj.in_features)

    def forward(self, maps: Tensor) -> Tensor:
        if maps.dim() != 4 or maps.shape[1] != self.in_channels:
            raise ValueError(f"dense CLIP tokens take trunk maps [B, {self.in_channels}, h, w], not "
                             f"{list(maps.shape)}")
        x = maps.flatten(2).transpose(1, 2)                            # [B, h*w, D]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)         # [B, h*w + 1, D]
        x = x + interpolated_positions(self.positional_embedding, *maps.shape[2:]).to(x.dtype)
        return self.c_proj(self.v_proj(x))
