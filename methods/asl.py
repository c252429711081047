"""ASL: the asymmetric loss on a pooled linear head, as a partial-label baseline.

Paper: T. Ridnik, E. Ben-Baruch, N. Zamir, A. Noy, I. Friedman, M. Protter, L. Zelnik-Manor,
"Asymmetric Loss For Multi-Label Classification", ICCV 2021, https://arxiv.org/abs/2009.14119.
Official code: https://github.com/Alibaba-MIIL/ASL (``src/loss_functions/losses.py``:
``AsymmetricLoss``, ``AsymmetricLossOptimized``; ``train.py``). Spec: ``specs/methods_wave2.md``
section 5, pitfalls P23-P25, fixture W11.

Loss (``methods.modules.asl.asl_per_entry``), p = sigmoid(x), p_neg = min(1 - p + clip, 1):
``-sum [y log max(p, eps) + (1 - y) log max(p_neg, eps)] * (1 - p y - p_neg (1 - y))^(g+ y + g- (1 - y))``,
summed over the entries that count (``loss_asl``). Head: global average pooling + linear.
Stateless.

Defaults: gamma_neg 4, gamma_pos 0, clip 0.05 (``train.py``; the class default gamma_pos is 1),
eps 1e-8, focal weight detached (``AsymmetricLoss`` and ``train.py``).

Deviations from the official code:
- Partial labels (ASL has no notion of unknown labels): ``unknown="ignore"`` sums over the observed
  entries only, ``"negative"`` treats unknowns as negatives (= CSL's negative mode with
  gamma_unann = gamma_neg). ``"auto"`` (default) reads ``task.info["mask_protocol"]``: negative under
  single positive (ignoring there leaves no negative term at all), ignore otherwise.
- P24: the two official classes give the same loss but different gradients (focal weight detached
  in ``AsymmetricLoss``, attached in ``AsymmetricLossOptimized``); ``detach_focal=False`` gives the latter.
- P23: the focal weight is computed under a scoped grad mode (the code re-enables grad mode
  unconditionally); no numeric effect.
- P25: the official sum grows with B x C; ``reduction="mean"`` divides by B x C (off by default).
- The loss is computed in float32 under autocast. The official recipe (TResNet, OneCycle, EMA,
  true weight decay) is not reproduced: the profiles' common recipe trains every method.
Pitfall (P…, C…) and fixture (F…, W…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from benchmark.contract import collectives
from benchmark.contract.card import MethodCard
from benchmark.contract.method import Batch, Method, TrainContext
from benchmark.core.registry import METHODS
from methods.modules.asl import asl_per_entry

UNKNOWN_RULES = ("auto", "ignore", "negative")
REDUCTIONS = ("sum", "mean")


@dataclass(frozen=True)
class ASLConfig:
    gamma_neg: float = 4.0        # train.py (class default 4)
    gamma_pos: float = 0.0        # train.py (class default 1)
    clip: float = 0.05            # probability margin m of the negatives (0 = none)
    eps: float = 1e-8             # log clamp (class default)
    detach_focal: bool = True     # AsymmetricLoss / train.py; False = AsymmetricLossOptimized's gradients (P24)
    reduction: str = "sum"        # official "sum"; "mean" = sum / (B x C) (P25)
    unknown: str = "auto"         # "auto" | "ignore" | "negative" (suite rule for unknown labels, spec 5.4)
    dropout: float = 0.0          # before the linear head (0 = none)

    def __post_init__(self):
        if self.unknown not in UNKNOWN_RULES:
            raise ValueError(f"unknown must be one of {UNKNOWN_RULES}; got {self.unknown!r}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}; got {self.reduction!r}")
        if self.gamma_neg < 0 or self.gamma_pos < 0:
            raise ValueError(f"gamma_neg and gamma_pos must be >= 0; got {self.gamma_neg}, {self.gamma_pos}")
        if not 0.0 <= self.clip < 1.0:
            raise ValueError(f"clip must be in [0, 1); got {self.clip}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")


def resolve_unknown(rule: str, mask_protocol: str | None) -> str:
    """The "auto" rule of spec 5.3: unknowns are negatives under single positive, ignored otherwise."""
    if rule != "auto":
        return rule
    return "negative" if mask_protocol == "single_positive" else "ignore"


@METHODS.register_module()
class ASL(Method):
    """Asymmetric loss (Ridnik et al., ICCV 2021) on a pooled linear head."""

    name = "asl"
    card = MethodCard(default_grid=True, display_name="ASL")
    Config = ASLConfig

    def __init__(self, task, cfg=None, backbone=None):
        super().__init__(task, cfg, backbone)
        self.unknown = resolve_unknown(self.cfg.unknown, task.info.get("mask_protocol"))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(self.cfg.dropout)
        self.head = nn.Linear(task.feature_dim, task.num_classes)

    def predict_scores(self, inputs: Tensor) -> Tensor:
        return self.head(self.drop(self.pool(self.features(inputs)).flatten(1)))

    def compute_losses(self, batch: Batch, ctx: TrainContext) -> dict[str, Tensor]:
        cfg = self.cfg
        logits = self.predict_scores(batch.inputs).float()
        per_entry = asl_per_entry(logits, batch.targets, cfg.gamma_pos, cfg.gamma_neg, cfg.clip, cfg.eps,
                                  cfg.detach_focal)
        if self.unknown == "ignore":
            per_entry = per_entry * batch.observed.to(per_entry.dtype)
        total = per_entry.sum()
        # DDP: a rank's sum x world size trains like the global batch's sum (benchmark.contract.collectives)
        return {"loss_asl": total * collectives.sum_scale() if cfg.reduction == "sum" else total / per_entry.numel()}
