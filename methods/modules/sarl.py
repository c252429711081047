"""The SARL / SSGRL trunk shared by the HCP methods (spec section 2) and the paper-profile
backbone freezing (spec 1.4).

``SARLTrunk`` maps backbone feature maps [B, D_in, h, w] to class features and logits:
optional average pooling (HCP: 2x2 on 14x14 ResNet-101 maps) -> 1x1 conv + BN to ``feature_dim``
(skipped when D_in already equals it, as in the official code) -> semantic decoupling -> ``head(f)``
= GGNN + tanh output layer + element-wise classifier. ``head`` is a separate module so SARB / DSRB
can score blended class features with it.

``SARLMethod`` is the base of the HCP-family methods (HST, SARB, DSRB): it checks the side
information and the pooling against the task, builds ``self.trunk`` from the config fields
``feature_dim / hidden_dim / output_dim / ggnn_steps / pool`` and, in the finetune protocol with
``freeze_backbone``, freezes a ResNet's stem to layer3 with its BatchNorm kept in eval mode.

Under DDP (``--launcher pytorch``) the trunk's training BatchNorm layers normalise with the global
batch's statistics (``benchmark.engine.ddp_model.SyncBatchNorm``); the official code's ``nn.DataParallel``
replicas each used their own share of the batch. The suite's choice keeps a run's numbers
independent of how many GPUs trained it.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmark.contract.card import MethodCard
from benchmark.contract.method import Method
from benchmark.core.errors import UserError
from methods.modules.graph import GraphClassifier
from methods.modules.prototypes import (
    collect_positive_features,
    is_refresh_epoch,
    scaled_epoch,
)
from methods.modules.semantic import SemanticDecoupling

RESNET_FROZEN = ("conv1", "bn1", "layer1", "layer2", "layer3")


# The CPU profiles' dimensions of every SARL-based method (HST and SARB add their own fields).
SARL_PROFILES = {
    "smoke": dict(feature_dim=32, hidden_dim=16, output_dim=32, pool=1),
    "default": dict(feature_dim=64, hidden_dim=32, output_dim=64, pool=1),
}


class SARLTrunk(nn.Module):
    """Pool / channel change, semantic decoupling and the graph head of spec section 2.

    Args:
        in_dim: channels of the backbone maps.
        label_embeddings: [C, E] (kept as a buffer, not trained, as in the official code).
        adjacency: [C, C] observed co-occurrence graph A (in-matrix A, out-matrix A^T).
        feature_dim / hidden_dim / output_dim: HCP 1024 / 512 / 1024.
        steps: GGNN steps (3). pool: average-pool kernel and stride (1 = none).
    """

    def __init__(self, in_dim: int, label_embeddings: Tensor, adjacency: Tensor, feature_dim: int = 1024,
                 hidden_dim: int = 512, output_dim: int = 1024, steps: int = 3, pool: int = 2) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(pool, stride=pool) if pool > 1 else nn.Identity()
        self.reduce = nn.Identity() if in_dim == feature_dim else nn.Sequential(
            nn.Conv2d(in_dim, feature_dim, kernel_size=1, bias=False), nn.BatchNorm2d(feature_dim))
        self.register_buffer("embeddings", label_embeddings.detach().float().clone())
        self.semantic = SemanticDecoupling(feature_dim, label_embeddings.shape[1], hidden_dim)
        self.head = GraphClassifier(feature_dim, output_dim, adjacency, steps)

    def feature_map(self, maps: Tensor) -> Tensor:
        """Backbone maps [B, D_in, h, w] -> method maps [B, feature_dim, h', w']."""
        return self.reduce(self.pool(maps))

    def class_features(self, maps: Tensor, with_maps: bool = False) -> tuple[Tensor, Tensor | None]:
        """Pre-GGNN class features f [B, C, feature_dim] (and weighted maps [B, h', w', C, feature_dim])."""
        return self.semantic(self.feature_map(maps), self.embeddings, with_maps=with_maps)

    def decouple(self, maps: Tensor) -> tuple[Tensor, Tensor]:
        """(method maps x [B, feature_dim, h', w'], class attention a [B, C, h', w']): the two factors
        of the weighted maps M_{c,l} = a_{c,l} x_l, without forming the [B, h', w', C, D] product."""
        fmap = self.feature_map(maps)
        return fmap, self.semantic.attention(fmap, self.embeddings)

    def forward(self, maps: Tensor) -> tuple[Tensor, Tensor]:
        """(logits [B, C], class features f [B, C, feature_dim])."""
        feats, _ = self.class_features(maps)
        return self.head(feats), feats


def freeze_resnet_trunk(backbone: nn.Module) -> list[nn.Module]:
    """Freeze a timm ResNet's stem and layer1-3 (spec 1.4; only layer4 trains) and return the frozen
    modules, which the caller keeps in eval mode (their BatchNorm statistics stay fixed).

    ``backbone`` is a ``benchmark.engine.backbones.Backbone`` (the timm model in ``.model``) or a timm
    model; anything that is not a ResNet (no ``layer1``-``layer4``) is left alone and [] returned.
    """
    model = getattr(backbone, "model", backbone)
    if not all(hasattr(model, name) for name in ("layer1", "layer2", "layer3", "layer4", "conv1")):
        return []
    frozen = [getattr(model, name) for name in RESNET_FROZEN if isinstance(getattr(model, name, None), nn.Module)]
    for module in frozen:
        for param in module.parameters():
            param.requires_grad_(False)
        module.eval()
    return frozen


class SARLMethod(Method):
    """Base class of the methods built on :class:`SARLTrunk` (HST, SARB, DSRB)."""

    # relative_cost: default profile ~27-36 s a run against partial_bce's 1.6 s
    card = MethodCard(requires={"label_embeddings", "label_graph"}, trunk_baseline="ssgrl", relative_cost=17.0,
                      profile_overrides={p: dict(v) for p, v in SARL_PROFILES.items()})

    def __init__(self, task, cfg=None, backbone=None):
        super().__init__(task, cfg, backbone)
        cfg = self.cfg
        if task.label_embeddings is None or task.label_graph is None:
            raise UserError(f"{self.name} needs label embeddings and the label graph; run it through the harness "
                            "(--embeddings)")
        if cfg.pool > 1 and min(task.feature_size) < cfg.pool:
            raise UserError(f"{self.name} pool={cfg.pool} exceeds the {task.feature_size} feature maps; "
                            f"set {self.name}.pool=1")
        self.trunk = SARLTrunk(task.feature_dim, task.label_embeddings, task.label_graph, cfg.feature_dim,
                               cfg.hidden_dim, cfg.output_dim, cfg.ggnn_steps, cfg.pool)
        freeze = task.protocol == "finetune" and cfg.freeze_backbone
        self._freeze = bool(freeze_resnet_trunk(self.backbone)) if freeze else False

    def frozen_modules(self) -> list[nn.Module]:
        """The frozen ResNet stages, looked up by name each time (DDP replaces BatchNorm layers)."""
        if not self._freeze:
            return []
        model = getattr(self.backbone, "model", self.backbone)
        return [getattr(model, name) for name in RESNET_FROZEN if isinstance(getattr(model, name, None), nn.Module)]

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen_modules():   # frozen ResNet stages keep their BatchNorm statistics
            module.eval()
        return self

    def predict_scores(self, inputs: Tensor) -> Tensor:
        return self.trunk(self.features(inputs))[0]

    # ------------------------------------------------------------------ HCP schedule and prototypes
    def scheduled_epoch(self, ctx, epochs: int) -> int:
        """``epochs`` of the 20-epoch HCP recipe, rescaled to this run (``cfg.schedule_epochs``)."""
        return scaled_epoch(epochs, self.cfg.schedule_epochs, ctx.max_epochs)

    def prototypes_due(self, ctx, start: int, ready: bool, recompute: bool = True) -> bool:
        """Prototypes are (re)computed at ``start`` and every ``cfg.prototype_interval`` epochs after
        it (if ``recompute``), and whenever they are missing from ``start`` on (spec 5.5)."""
        interval = self.scheduled_epoch(ctx, self.cfg.prototype_interval)
        return is_refresh_epoch(ctx.epoch, start, interval, recompute) or (ctx.epoch >= start and not ready)

    def fit_kmeans_prototypes(self, bank, ctx) -> None:
        """``bank`` (a PrototypeBank) refitted on the known-positive pre-GGNN class features."""
        classes, feats = self.known_positive_rows(ctx, lambda x: self.trunk.class_features(self.features(x))[0])
        bank.fit(classes, feats, seed=ctx.seed * 1000 + ctx.epoch, n_init=self.cfg.kmeans_n_init)

    @torch.no_grad()
    def known_positive_rows(self, ctx, feature_fn) -> tuple[Tensor, ...]:
        """:func:`collect_positive_features` of ``feature_fn`` over ``ctx.iterate_train()`` (training
        rows in a fixed order, no augmentation) with the model in eval mode, as the prototype
        passes of the official code do (spec 5.5)."""
        if ctx.iterate_train is None:
            raise RuntimeError(f"{self.name} needs ctx.iterate_train to compute prototypes")
        was_training = self.training
        self.eval()
        try:
            return collect_positive_features(feature_fn, ctx.iterate_train())
        finally:
            self.train(was_training)
