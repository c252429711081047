"""Gated graph neural network over the label co-occurrence graph, the output layer and the
element-wise classifier of the SARL / SSGRL head (spec section 2).

Graph: ``A[i, j] = P(j known positive | i known positive)`` from the observed training labels
(``datasets.side_info.cooccurrence_graph``, which also guards classes with no known positive,
pitfall P5). The in-matrix is A and the out-matrix A^T; node c aggregates
``a_c = [sum_j A_cj h_j ; sum_j A_jc h_j]``. Both matrices are fixed buffers (not learned).
Pitfall (P…, C…) and fixture (F…, W…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class GatedGNN(nn.Module):
    """GRU-style message passing for ``steps`` steps with weights shared over steps (spec section 2).

    z = sigma(W_z a + U_z h); r = sigma(W_r a + U_r h); h~ = tanh(W_h a + U_h (r * h));
    h <- (1 - z) * h + z * h~. W: 2D -> D, U: D -> D, all with bias.
    """

    def __init__(self, dim: int, adjacency: Tensor, steps: int = 3) -> None:
        super().__init__()
        adjacency = torch.as_tensor(adjacency, dtype=torch.float32)
        if adjacency.ndim != 2 or adjacency.shape[0] != adjacency.shape[1]:
            raise ValueError(f"adjacency must be a square [C, C] matrix, got {tuple(adjacency.shape)}")
        if not torch.isfinite(adjacency).all():
            raise ValueError("adjacency has NaN/inf entries; build it with datasets.side_info.cooccurrence_graph")
        self.steps = steps
        self.register_buffer("in_matrix", adjacency.clone())
        self.register_buffer("out_matrix", adjacency.t().contiguous())
        self.w_z, self.u_z = nn.Linear(2 * dim, dim), nn.Linear(dim, dim)
        self.w_r, self.u_r = nn.Linear(2 * dim, dim), nn.Linear(dim, dim)
        self.w_h, self.u_h = nn.Linear(2 * dim, dim), nn.Linear(dim, dim)

    def aggregate(self, nodes: Tensor) -> Tensor:
        """Messages a [B, C, 2D] = [A h ; A^T h] for node states ``nodes`` [B, C, D]."""
        return torch.cat([self.in_matrix @ nodes, self.out_matrix @ nodes], dim=-1)

    def forward(self, nodes: Tensor) -> Tensor:
        """Node states after ``steps`` updates, [B, C, D] -> [B, C, D]."""
        h = nodes
        for _ in range(self.steps):
            a = self.aggregate(h)
            z = torch.sigmoid(self.w_z(a) + self.u_z(h))
            r = torch.sigmoid(self.w_r(a) + self.u_r(h))
            candidate = torch.tanh(self.w_h(a) + self.u_h(r * h))
            h = (1 - z) * h + z * candidate
        return h


class ElementWiseLinear(nn.Module):
    """One weight vector and bias per row: ``out[b, c] = <v_c, x[b, c]> + b_c``.

    Initialised U(-1/sqrt(dim), 1/sqrt(dim)) like the official element-wise layer, i.e.
    U(-1/32, 1/32) at dim 1024.
    """

    def __init__(self, rows: int, dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(dim)
        self.weight = nn.Parameter(torch.empty(rows, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(rows).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        """[B, rows, dim] -> [B, rows]."""
        return (x * self.weight).sum(dim=-1) + self.bias


class GraphClassifier(nn.Module):
    """``head(f)`` of spec section 2: GGNN, output layer tanh(W_o [h; f] + b_o), element-wise classifier.

    The same head scores blended features (SARB / DSRB), so it takes class features [B, C, D]
    and returns logits [B, C].
    """

    def __init__(self, dim: int, output_dim: int, adjacency: Tensor, steps: int = 3) -> None:
        super().__init__()
        self.ggnn = GatedGNN(dim, adjacency, steps)
        self.output = nn.Linear(2 * dim, output_dim)
        self.classifier = ElementWiseLinear(adjacency.shape[0], output_dim)

    def forward(self, feats: Tensor) -> Tensor:
        h = self.ggnn(feats)
        out = torch.tanh(self.output(torch.cat([h, feats], dim=-1)))
        return self.classifier(out)
