"""An exponential moving average (EMA) of a method's weights that lives inside the method, so
checkpoints and resumed runs carry it and the harness needs no EMA hook.

``shadow`` holds deep copies of the source modules (``requires_grad`` off, so the optimizer never
sees them). Every floating-point parameter and buffer (BatchNorm statistics included) follows
``ema = decay * ema + (1 - decay) * live``; integer buffers are copied, as the CLSL code's
``ModelEma`` does over the whole state dict.

Timing. A method's ``compute_losses`` runs *before* the optimizer step it feeds, so it cannot
average the stepped weights. It calls :meth:`mark_step` instead, and the average is brought up to
date lazily by :meth:`flush`: at the start of the next ``compute_losses`` (after the previous
step) and in ``on_train_epoch_end`` (after the last step of the epoch, before evaluation and the
checkpoint). The shadow therefore equals the official per-step EMA whenever it is read; the
``pending`` flag is a buffer, so the state is exact at any point.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class WeightEMA(nn.Module):
    """EMA copies of named modules; read them through ``shadow[name]``."""

    def __init__(self, sources: dict[str, nn.Module], decay: float) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = nn.ModuleDict({name: copy.deepcopy(module) for name, module in sources.items()})
        self.shadow.requires_grad_(False)
        self.register_buffer("pending", torch.zeros((), dtype=torch.bool))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def mark_step(self) -> None:
        """An optimizer step on the live weights is about to happen."""
        self.pending.fill_(True)

    @torch.no_grad()
    def flush(self, sources: dict[str, nn.Module]) -> bool:
        """Fold the live weights into the average if a step was marked; True when it did."""
        if not bool(self.pending):
            return False
        for name, module in sources.items():
            self._update(self.shadow[name], module)
        self.pending.fill_(False)
        self.updates += 1
        return True

    def _update(self, shadow: nn.Module, live: nn.Module) -> None:
        pairs = list(zip(shadow.parameters(), live.parameters())) + list(zip(shadow.buffers(), live.buffers()))
        for avg, cur in pairs:
            self._blend(avg, cur.detach())

    def _blend(self, avg: Tensor, cur: Tensor) -> None:
        if avg.is_floating_point():
            avg.lerp_(cur.to(avg.dtype), 1.0 - self.decay)
        else:
            avg.copy_(cur)
