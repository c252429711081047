"""Parameter groups shared by methods whose official code trains the new layers faster than the backbone."""
from __future__ import annotations

from torch import nn


def head_lr_groups(method: nn.Module, lr: float, head_lr_mult: float) -> list[dict] | None:
    """The backbone at ``lr`` and every other trainable parameter (the method's own layers) at
    ``lr x head_lr_mult``, in the ``finetune`` protocol; None (one group) when there is no trainable
    backbone (the ``frozen`` protocol) or the multiplier is 1. The method needs ``backbone`` and ``task``."""
    backbone = [p for p in method.backbone.parameters() if p.requires_grad]
    if method.task.protocol != "finetune" or not backbone or head_lr_mult == 1:
        return None
    head = [p for n, p in method.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
    return [{"params": backbone}, {"params": head, "lr": lr * head_lr_mult}]
