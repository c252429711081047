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
Pitfall (P…, C…) and fixture (F…, W…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmark.contract.method import TrainContext
from benchmark.core.registry import METHODS
from methods.modules.blending import (
    BlendingConfig,
    RepresentationBlending,
    pick_unknown,
)
from methods.modules.prototypes import PrototypeBank
from methods.modules.sarl import SARL_PROFILES


@dataclass(frozen=True)
class SARBConfig(BlendingConfig):
    num_prototypes: int = 10           # prototypeNum (script 10)
    kmeans_n_init: int = 10            # sklearn's default when the code was written


@METHODS.register_module()
class SARB(RepresentationBlending):
    """Semantic-aware representation blending: instance- and prototype-level (k-means) blending."""

    name = "sarb"
    Config = SARBConfig
    card = RepresentationBlending.card.replace(profile_overrides={
        "smoke": dict(SARL_PROFILES["smoke"], num_prototypes=3, kmeans_n_init=1),
        "default": dict(SARL_PROFILES["default"], kmeans_n_init=1),
    }, display_name="SARB")

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
