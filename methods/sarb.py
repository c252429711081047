"""SARB: semantic-aware representation blending for multi-label recognition with partial labels.

Paper: T. Pu, T. Chen, H. Wu, L. Lin, "Semantic-Aware Representation Blending for Multi-Label
Image Recognition with Partial Labels", AAAI 2022, https://arxiv.org/abs/2203.02172.
Official code: https://github.com/HCPLab-SYSU/HCP-MLR-PL (``SARB.py``, ``model/SARB.py``,
``loss/SARB.py``, ``scripts/SARB.sh``). Spec: ``specs/methods.md`` sections 2, 5.4, 5.5 and 6.

Model: the SARL trunk (``methods.modules.sarl``) plus two learnable scalars alpha, beta
(initialised to 0.5, clamped into [0, 1] at every blending forward). Per iteration, with
ramp = i/N in epoch 0 (spec 6):

* ``loss_bce``: partial BCE of the logits (spec 2.1);
* ``loss_instance``: 0.05 * ramp * instance contrastive loss of the class features (spec 5.4);
* from the blending epoch E_mix on, ``loss_blend_instance``: BCE of head(f~) against y~ (ILRB,
  the flipped-batch partner, ``methods.modules.blending.instance_blend``), weight 1;
* and ``loss_blend_prototype``: BCE of head(f^) against y^ (PLRB: one random unknown class per
  image blended with prototype k of its class, k drawn once per iteration), weight 1.

Prototypes: 10 k-means centres per class of the known-positive pre-GGNN features, at E_mix and
every ``prototype_interval`` epochs after it (official 5, 10, 15). E_mix and the interval are
epochs of the 20-epoch recipe, rescaled to the run length like HST's (``scaled_epoch``).

Deviations from the official code:
- P11 fixed: an image without an unknown label is not prototype-blended (the code's argmax over
  an all-zero row picks class 0 and overwrites its known label with 1 - beta);
  ``pick_rule="official"`` restores the code's rule. Classes without prototypes (the code
  crashes on them) are never picked, under either rule. Blending runs in fp32 under autocast.
- Prototypes live in buffers (checkpointed; the code keeps them in a plain attribute, so a run
  resumed between refreshes crashes), k-means is seeded, features come from the fixed-order
  un-augmented training rows (the code uses the shuffled, augmented loader), a class with fewer
  known positives than K repeats its points and one with none is never picked (the code crashes).
- The instance loss works for any batch size and gives 0 instead of NaN on a batch without a
  known pair (``methods.modules.contrastive``).
- Dimensions and pooling are config fields; CPU profiles shrink them like HST's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from benchmark.contract import collectives
from benchmark.contract.method import Batch, TrainContext
from benchmark.core.errors import UserError
from benchmark.core.registry import METHODS
from methods.modules.blending import (
    PICK_RULES,
    instance_blend,
    pick_unknown,
    prototype_blend,
)
from methods.modules.contrastive import instance_contrastive_loss
from methods.modules.losses import masked_bce
from methods.modules.prototypes import PrototypeBank
from methods.modules.sarl import SARLMethod


@dataclass(frozen=True)
class BlendingConfig:
    feature_dim: int = 1024            # changeChannel: 1x1 conv + BN to this size
    hidden_dim: int = 512              # semantic-decoupling intermediate size
    output_dim: int = 1024             # output layer width
    ggnn_steps: int = 3
    pool: int = 2                      # 2x2 avg-pool of the 14x14 ResNet-101 maps; 1 = none (small maps)
    freeze_backbone: bool = True       # finetune + timm ResNet: stem..layer3 frozen, BN in eval (spec 1.4)
    blend_epoch: int = 5               # mixupEpoch, in epochs of the 20-epoch recipe (rescaled)
    prototype_interval: int = 5        # recomputePrototypeInterval, idem
    schedule_epochs: int = 20          # epoch count the two schedule fields refer to; 0 = no rescaling
    instance_weight: float = 0.05      # contrastiveLossWeight (script)
    instance_blend_weight: float = 1.0     # weight of the instance-blending BCE
    prototype_blend_weight: float = 1.0    # weight of the prototype-blending BCE
    alpha_init: float = 0.5            # code: 0.5 (not configurable there)
    beta_init: float = 0.5
    learnable_alpha: bool = True       # isAlphaLearnable (script True)
    learnable_beta: bool = True        # isBetaLearnable (script True)
    pick_rule: str = "unknown"         # "unknown": P11 fixed; "official": the code's rule


@dataclass(frozen=True)
class SARBConfig(BlendingConfig):
    num_prototypes: int = 10           # prototypeNum (script 10)
    kmeans_n_init: int = 10            # sklearn's default when the code was written


SARL_PROFILES = {
    "smoke": dict(feature_dim=32, hidden_dim=16, output_dim=32, pool=1),
    "default": dict(feature_dim=64, hidden_dim=32, output_dim=64, pool=1),
}


class RepresentationBlending(SARLMethod):
    """The part SARB and DSRB share: the loss, alpha / beta, the schedule and the diagnostics.

    Subclasses implement :meth:`prototypes_ready`, :meth:`refresh_prototypes` and
    :meth:`prototype_entries` (which entries to blend, with which prototypes).
    """

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.pick_rule not in PICK_RULES:
            raise UserError(f"{cls.name} pick_rule={cfg.pick_rule!r} is unknown; use one of {PICK_RULES}")

    def __init__(self, task, cfg=None, backbone=None):
        super().__init__(task, cfg, backbone)
        cfg = self.cfg
        self.alpha = nn.Parameter(torch.tensor(float(cfg.alpha_init)), requires_grad=cfg.learnable_alpha)
        self.beta = nn.Parameter(torch.tensor(float(cfg.beta_init)), requires_grad=cfg.learnable_beta)
        self._counts = torch.zeros(3)

    # ------------------------------------------------------------------ to implement
    @property
    def prototypes_ready(self) -> bool:
        raise NotImplementedError

    def refresh_prototypes(self, ctx: TrainContext) -> None:
        raise NotImplementedError

    def prototype_entries(self, maps: tuple[Tensor, Tensor], feats: Tensor, observed: Tensor
                          ) -> tuple[Tensor, Tensor]:
        """(picked entries [B, C] bool, their prototypes [B, C, D] or [C, D])."""
        raise NotImplementedError

    # ------------------------------------------------------------------ schedule
    def blend_epoch(self, ctx: TrainContext) -> int:
        return self.scheduled_epoch(ctx, self.cfg.blend_epoch)

    # ------------------------------------------------------------------ forward
    def compute_losses(self, batch: Batch, ctx: TrainContext) -> dict[str, Tensor]:
        cfg, t, o = self.cfg, batch.targets, batch.observed
        fmap, attention = self.trunk.decouple(self.features(batch.inputs))
        feats = self.trunk.semantic.pool(fmap, attention)
        losses = {"loss_bce": masked_bce(self.trunk.head(feats), t, o),
                  "loss_instance": cfg.instance_weight * ctx.ramp * instance_contrastive_loss(*collectives.global_batch(feats, t, o))}
        if ctx.epoch < self.blend_epoch(ctx):
            return losses
        with torch.no_grad():             # the code clamps .data at every blending forward
            self.alpha.clamp_(0.0, 1.0)
            self.beta.clamp_(0.0, 1.0)
        mixed, mixed_t, mixed_o, blended = instance_blend(feats, t, o, self.alpha)
        losses["loss_blend_instance"] = cfg.instance_blend_weight * masked_bce(self.trunk.head(mixed), mixed_t, mixed_o)
        picked = torch.zeros_like(blended)
        if self.prototypes_ready:
            picked, prototypes = self.prototype_entries((fmap, attention), feats, o)
            mixed, mixed_t, mixed_o = prototype_blend(feats, t, o, picked, prototypes, self.beta)
            losses["loss_blend_prototype"] = (cfg.prototype_blend_weight
                                              * masked_bce(self.trunk.head(mixed), mixed_t, mixed_o))
        counts = torch.stack([blended.sum(), picked.sum(), (picked & o).sum()]).float()
        self._counts = self._counts.to(counts.device) + counts   # read once per epoch (no per-step sync)
        return losses

    # ------------------------------------------------------------------ epoch hooks
    def on_train_epoch_start(self, ctx: TrainContext) -> None:
        self._counts = torch.zeros(3)
        if self.prototypes_due(ctx, self.blend_epoch(ctx), self.prototypes_ready):
            self.refresh_prototypes(ctx)

    def on_train_epoch_end(self, ctx: TrainContext) -> dict[str, float]:
        instance, prototype, known = (float(v) for v in collectives.all_reduce(self._counts))   # every rank's
        return {"alpha": float(self.alpha.detach()), "beta": float(self.beta.detach()),
                "blended_instance": instance, "blended_prototype": prototype, "blended_known": known}


@METHODS.register_module()
class SARB(RepresentationBlending):
    """Semantic-aware representation blending: instance- and prototype-level (k-means) blending."""

    name = "sarb"
    Config = SARBConfig
    profile_overrides = {
        "smoke": dict(SARL_PROFILES["smoke"], num_prototypes=3, kmeans_n_init=1),
        "default": dict(SARL_PROFILES["default"], kmeans_n_init=1),
    }

    def __init__(self, task, cfg=None, backbone=None):
        super().__init__(task, cfg, backbone)
        self.bank = PrototypeBank(task.num_classes, self.cfg.num_prototypes, self.cfg.feature_dim)

    @property
    def prototypes_ready(self) -> bool:
        return self.bank.ready

    def refresh_prototypes(self, ctx: TrainContext) -> None:
        """k-means prototypes of the known-positive class features (eval mode, fixed-order training rows)."""
        self.fit_kmeans_prototypes(self.bank, ctx)

    def prototype_entries(self, maps, feats, observed):
        """One prototype index k for the whole batch, then one random unknown class per image (argmax)."""
        k = int(torch.randint(self.bank.prototypes.shape[1], (1,)))
        eligible = ~observed & self.bank.valid.unsqueeze(0)
        picked = pick_unknown(observed, eligible, 1, self.cfg.pick_rule)
        return picked, self.bank.prototypes[:, k]
