"""Per-sample state of a method: one row per training image, written by ``batch.index``.

A method that keeps something per training image (pseudo-labels it recovered, labels it corrected,
which rows it saw this epoch) keeps it in a :class:`SampleTable`. Under torchrun each rank trains on
its share of every batch; a write takes this rank's rows and applies every rank's rows of the
iteration, so the table is the same on every rank by construction and a method author never deals
with the process group. The table is a buffer, so checkpoints carry it and a resumed run continues
from it.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from benchmark.contract import collectives


class SampleTable(nn.Module):
    """A ``[num_rows, *shape]`` table (bool by default, zero-filled), read like a tensor: ``table[index]``,
    ``table.rows`` for the whole table."""

    def __init__(self, num_rows: int, *shape: int, dtype: torch.dtype = torch.bool):
        super().__init__()
        self.register_buffer("rows", torch.zeros((num_rows, *shape), dtype=dtype))

    def write(self, index: Tensor, values: Tensor | bool | float,
              combine: Callable[[Tensor, Tensor], Tensor] | None = None) -> None:
        """``table[index] = values``, or ``combine(table[index], values)`` (e.g. ``torch.logical_or``),
        for this iteration's rows of every rank. ``values`` may be one value for all rows (``True``:
        mark them). Every rank must call it at the same point of an iteration (it is a collective)."""
        collectives.set_rows(self.rows, index, values, combine)

    def clear(self) -> None:
        """Every row back to zero (e.g. at the start of an epoch)."""
        self.rows.zero_()

    def __getitem__(self, key) -> Tensor:
        return self.rows[key]


def read_legacy_tables(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """A load_state_dict pre-hook of every Method: a checkpoint written before tables were modules
    holds each table as a buffer named after its path with "_" for "." (``corrected`` for
    ``corrected.rows``, ``recovered_intra`` for ``recovered.intra.rows``); move it to the table's key,
    so a run interrupted under the earlier layout still resumes with its tables."""
    for path, table in module.named_modules():
        if not isinstance(table, SampleTable) or prefix + path + ".rows" in state_dict:
            continue
        old = prefix + path.replace(".", "_")
        if torch.is_tensor(state_dict.get(old)) and state_dict[old].shape == table.rows.shape:
            state_dict[prefix + path + ".rows"] = state_dict.pop(old)
