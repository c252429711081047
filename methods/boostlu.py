"""BoostLU: boosting the positive class activation map, on top of a large-loss scheme.

Paper: Y. Kim, J. M. Kim, J. Jeong, C. Schmid, Z. Akata, J. Lee, "Bridging the Gap between Model
Explanations in Partially Annotated Multi-label Classification", CVPR 2023,
https://arxiv.org/abs/2304.01804.
Official code: https://github.com/youngwk/BridgeGapExplanationPAMC (``models.py`` ``ImageClassifier``,
``losses.py``, ``train.py``, ``config.py``). Spec: ``specs/methods_wave2.md`` section 4 (fixture W9).

Model: a class activation map (1 x 1 convolution D -> C with bias) on the backbone maps, BoostLU
(x -> alpha x where x > 0, x elsewhere; alpha = 5) and spatial averaging. The same forward is used in
training and at test time. With alpha = 1 it is GAP + linear, the LL head. Loss: one of the
large-loss schemes of ``methods/large_loss.py`` (``scheme``, default LL-R, the best BoostLU row on
VOC, COCO and NUS-WIDE in the repository's result image; ``--set boostlu.scheme=LL-Ct|LL-Cp``), with
the BoostLU code's per-scheme delta (LL-R 0.5 %, LL-Ct 0.2 %, LL-Cp 0.1 % per epoch) and its LL-Cp
(``==`` comparison, so LL-Cp works; the k modified entries are written back, ``cp_correct="topk"``).

Protocols: designed for ``single_positive`` (the OpenImages path was never released, P21); under
``random`` it runs unchanged, as LL does (observed negatives are never modified).

Deviations from the official code: those of ``methods/large_loss.py`` that apply to the BoostLU
code: the k clamp (P20, ``k_clamp=False`` restores it), the delta rescaling for schedules other than
10 epochs (``schedule_epochs=0`` restores it), the common recipe and the suite's selection rule. The
ResNet-101 OpenImages branch (dead code, P21) is not reproduced.
Pitfall (P…, C…) and fixture (F…, W…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from benchmark.core.registry import METHODS
from methods.large_loss import LargeLossMethod, LLCpConfig
from methods.modules.large_loss import SCHEMES


@dataclass(frozen=True)
class BoostLUConfig(LLCpConfig):
    scheme: str = "LL-R"             # large-loss scheme: "LL-R" | "LL-Ct" | "LL-Cp" (BoostLU: required flag)
    alpha: float = 5.0               # BoostLU factor on positive CAM values (config.py --alpha, README 5)

    def __post_init__(self):
        super().__post_init__()
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}; got {self.scheme!r}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0; got {self.alpha}")


class CamHead(nn.Module):
    """1 x 1 conv CAM -> BoostLU -> spatial mean; [B, D, h, w] -> logits [B, C]."""

    def __init__(self, in_dim: int, num_classes: int, alpha: float):
        super().__init__()
        self.cam = nn.Conv2d(in_dim, num_classes, kernel_size=1, bias=True)
        self.alpha = alpha

    def forward(self, maps: Tensor) -> Tensor:
        cam = self.cam(maps)
        return torch.where(cam > 0, cam * self.alpha, cam).mean(dim=(2, 3))


@METHODS.register_module()
class BoostLU(LargeLossMethod):
    """BoostLU on a large-loss scheme (Kim et al., CVPR 2023)."""

    name = "boostlu"
    Config = BoostLUConfig
    card = LargeLossMethod.card.replace(display_name="BoostLU")

    def build_head(self, task) -> nn.Module:
        return CamHead(task.feature_dim, task.num_classes, self.cfg.alpha)

    @property
    def scheme(self) -> str:
        return self.cfg.scheme
