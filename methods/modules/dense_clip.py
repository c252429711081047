"""Dense visual tokens of a ResNet CLIP (DualCoOp's ``AttentionConv``) and its attention pooling at any
map size (SCPNet's image feature, :func:`attention_pool`).

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


def attention_pool(pool: nn.Module, maps: Tensor) -> Tensor:
    """CLIP's attention pooling (open_clip ``AttentionPool2d``, SCPNet's image feature) of trunk maps
    [B, D, h, w] -> [B, E]: the spatial-mean token queries the h*w + 1 tokens (+ the positional
    embedding, interpolated to h x w as for the dense tokens). At the checkpoint's grid it is the
    pool's own forward (the mean token's row of its all-token attention)."""
    x = maps.flatten(2).permute(2, 0, 1)                               # [h*w, B, D]
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)             # [h*w + 1, B, D]
    x = x + interpolated_positions(pool.positional_embedding, *maps.shape[2:])[:, None, :].to(x.dtype)
    out, _ = F.multi_head_attention_forward(
        query=x[:1], key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias, use_separate_proj_weight=True, training=pool.training, need_weights=False)
    return out[0]
