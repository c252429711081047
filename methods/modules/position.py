"""The fixed 2-D sine position encoding of DETR-style transformers over a feature map.

Each token at row ``i`` and column ``j`` of an ``h x w`` map gets ``dim`` channels: the first
half encodes the row, the second half the column. With ``n = dim / 2`` channels per axis,
normalised positions ``y = (i + 1) / (h + 1e-6) * scale`` (likewise ``x``) and frequencies
``f_k = temperature ** (2 * (k // 2) / n)``, channel ``k`` of an axis is ``sin(pos / f_k)`` for even
``k`` and ``cos(pos / f_k)`` for odd ``k``. Tokens are in row-major order, matching
``feature_map.flatten(2).transpose(1, 2)``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from benchmark.core.errors import UserError


def _axis_encoding(positions: Tensor, channels: int, temperature: float) -> Tensor:
    """[L] normalised positions -> [L, channels] interleaved sin / cos features."""
    k = torch.arange(channels, dtype=torch.float32, device=positions.device)
    freq = temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / channels)
    angles = positions[:, None] / freq
    out = torch.empty_like(angles)
    out[:, 0::2] = angles[:, 0::2].sin()
    out[:, 1::2] = angles[:, 1::2].cos()
    return out


def sine_position_encoding(height: int, width: int, dim: int, temperature: float = 10000.0,
                           scale: float = 2 * math.pi, device: torch.device | None = None) -> Tensor:
    """Position encoding ``[height * width, dim]`` (row channels, then column channels).

    ``dim`` must be divisible by 4 (two axes, sin / cos pairs).
    """
    if dim % 4 != 0:
        raise UserError(f"the sine position encoding needs a width divisible by 4, got {dim}; change the width")
    channels = dim // 2
    eps = 1e-6
    rows = torch.arange(1, height + 1, dtype=torch.float32, device=device) / (height + eps) * scale
    cols = torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + eps) * scale
    row_enc = _axis_encoding(rows, channels, temperature)            # [h, n]
    col_enc = _axis_encoding(cols, channels, temperature)            # [w, n]
    grid = torch.cat([row_enc[:, None, :].expand(height, width, channels),
                      col_enc[None, :, :].expand(height, width, channels)], dim=-1)
    return grid.reshape(height * width, dim)
