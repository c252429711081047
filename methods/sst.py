"""SST: structured semantic transfer for multi-label recognition with partial labels.

Paper: T. Chen, T. Pu, H. Wu, Y. Xie, L. Lin, "Structured Semantic Transfer for Multi-Label
Recognition with Partial Labels", AAAI 2022, https://arxiv.org/abs/2112.10941.
Official code: https://github.com/HCPLab-SYSU/HCP-MLR-PL (``SST.py``, ``model/SST.py``, ``loss/SST.py``,
``scripts/SST.sh``). Spec: ``specs/methods_wave2.md`` section 7 (supersedes wave 1's), pitfalls
P33-P36, fixtures W13-W15.

Model: the SARL trunk (``methods.modules.sarl``) plus the intra-image co-occurrence head
(``methods.modules.cooccurrence``, the same layers as HST's IST head), and the positive-feature
memory (``methods.modules.feature_memory``: K = 100 known-positive pre-GGNN features per class).
Per iteration: trunk -> memory update with the batch's known positives (before the pseudo-labels,
as in the code) -> from the pseudo-label epoch E_g on, hard pseudo-positives of unknown entries:
intra (IST) where the mean co-occurrence probability with the image's known positives reaches
theta, inter (CST) where the mean cosine to the class's stored features reaches theta. Losses, with
ramp = i/N in epoch 0: ``loss_bce`` (HCP masked BCE), ``loss_cooc`` (10 * ramp * co-occurrence ASL),
``loss_instance`` (0.05 * ramp * instance contrastive), and from E_g ``loss_bce_intra`` and
``loss_bce_inter`` (masked BCE on the targets augmented with the pseudo-positives, weight 1 each).

Schedule: theta = 0.95 until E_g, then max(0.75, 0.95 - 0.025 * (e - E_g) * s) with s = 20 / E
(``schedule_epochs`` / run epochs), so the floor is reached at the same fraction of training as in
the 20-epoch recipe (epoch 13); E_g = 5 of 20 is rescaled like HST's (default profile, 9 epochs:
E_g = 2). ``schedule_epochs = 0``: unscaled (s = 1).

``recovered_labels()``: the union of the intra and inter pseudo-positives of the last epoch
(``recovery="intra"`` / ``"inter"`` picks one), for the label-recovery diagnostics.

Deviations from the official code:
- P33 fixed: the inter score averages over the filled memory slots; the code averages over all K
  slots, the empty zero slots included, so a class with fewer than theta * K stored positives can
  never get an inter pseudo-label. ``memory_mean="official"`` restores it.
- P34: the memory is a registered buffer (checkpoints carry it; the code's plain attribute is lost
  on resume); the pseudo-label BCEs are the masked BCE (the code's margin = theta is a no-op on hard
  targets).
- P36: before E_g the pseudo-label terms are absent (the code adds them times 0).
- P35 does not arise: theta must stay below 1 (checked); the code's argparse default 1.0 gives no
  pseudo-label at all, the script's 0.95 is the default here.
- The instance loss works for any batch size and gives 0 on a batch without a known pair (P15).
- Dimensions and pooling are config fields; CPU profiles shrink them as for HST / SARB / DSRB.
Pitfall (P…, C…) and fixture (F…, W…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from benchmark.contract import collectives
from benchmark.contract.method import Batch, TrainContext
from benchmark.core.registry import METHODS
from methods.modules.contrastive import instance_contrastive_loss
from methods.modules.cooccurrence import CooccurrenceHead, intra_scores, pair_targets
from methods.modules.feature_memory import MEMORY_MEANS, PositiveFeatureMemory
from methods.modules.losses import cooccurrence_asl, masked_bce
from methods.modules.recovered import RECOVERY_SOURCES, RecoveredLabels
from methods.modules.sarl import SARLMethod


@dataclass(frozen=True)
class SSTConfig:
    feature_dim: int = 1024            # changeChannel: 1x1 conv + BN to this size (none if the maps already have it)
    hidden_dim: int = 512              # semantic-decoupling intermediate size and co-occurrence g_c size
    output_dim: int = 1024             # output layer and co-occurrence pair-MLP width
    ggnn_steps: int = 3
    pool: int = 2                      # 2x2 avg-pool of the 14x14 ResNet-101 maps; 1 = none (small maps)
    freeze_backbone: bool = True       # finetune + timm ResNet: stem..layer3 frozen, BN in eval (spec 1.4)
    pseudo_label_epoch: int = 5        # generateLabelEpoch, in epochs of the 20-epoch recipe (rescaled)
    schedule_epochs: int = 20          # epoch count the schedule refers to; 0 = no rescaling
    prototype_interval: int = 5        # unused by SST (SARLMethod's prototype rule); kept for the shared base
    intra_bce_weight: float = 1.0      # intraBCEWeight (script and argparse 1.0)
    inter_bce_weight: float = 1.0      # interBCEWeight (script and argparse 1.0)
    cooc_weight: float = 10.0          # intraCooccurrenceWeight (script 10; argparse 1.0)
    instance_weight: float = 0.05      # interDistanceWeight (script 0.05; argparse 1.0)
    gamma_pos: float = 1.0             # co-occurrence ASL
    gamma_neg: float = 2.0
    asl_clip: float = 0.05
    memory_size: int = 100             # interExampleNumber K (script 100; argparse 50)
    theta_start: float = 0.95          # intraBCEMargin / interBCEMargin (script 0.95; argparse 1.0, P35)
    theta_step: float = 0.025          # decrement per epoch after E_g (hard-coded in SST.py)
    theta_floor: float = 0.75          # (hard-coded in SST.py)
    memory_mean: str = "filled"        # "filled" (P33 fixed) | "official" (mean over all K slots)
    recovery: str = "union"            # pseudo-positives reported by recovered_labels()

    def __post_init__(self):
        if self.memory_mean not in MEMORY_MEANS:
            raise ValueError(f"memory_mean must be one of {MEMORY_MEANS}; got {self.memory_mean!r}")
        if self.recovery not in RECOVERY_SOURCES:
            raise ValueError(f"recovery must be one of {RECOVERY_SOURCES}; got {self.recovery!r}")
        if not 0.0 <= self.theta_floor <= self.theta_start < 1.0 or self.theta_step < 0:
            raise ValueError(f"theta_floor <= theta_start < 1 and theta_step >= 0 must hold; got "
                             f"{self.theta_floor}, {self.theta_start}, {self.theta_step}")
        if self.memory_size < 1 or self.pseudo_label_epoch < 0:
            raise ValueError(f"memory_size must be >= 1 and pseudo_label_epoch >= 0; got "
                             f"{self.memory_size}, {self.pseudo_label_epoch}")


def sst_theta(epoch: int, start_epoch: int, cfg: SSTConfig, max_epochs: int) -> float:
    """The pseudo-label threshold of ``epoch`` (spec 7.4 / 7.5)."""
    if epoch <= start_epoch:
        return cfg.theta_start
    scale = cfg.schedule_epochs / max_epochs if cfg.schedule_epochs > 0 else 1.0
    return max(cfg.theta_floor, cfg.theta_start - cfg.theta_step * (epoch - start_epoch) * scale)


def intra_pseudo_labels(pair_logits: Tensor, targets: Tensor, observed: Tensor, theta: float) -> Tensor:
    """Unknown entries whose mean co-occurrence probability with the known positives reaches theta (W13)."""
    return ~observed & (intra_scores(pair_logits.detach().float(), targets, observed) >= theta)


def inter_pseudo_labels(similarity: Tensor, observed: Tensor, theta: float) -> Tensor:
    """Unknown entries whose mean cosine to the class's stored positives reaches theta (W14)."""
    return ~observed & (similarity >= theta)


@METHODS.register_module()
class SST(SARLMethod):
    """Structured semantic transfer (intra-image co-occurrence + cross-image memory) on the SARL trunk."""

    name = "sst"
    Config = SSTConfig
    card = SARLMethod.card.replace(display_name="SST")

    def __init__(self, task, cfg=None, backbone=None):
        super().__init__(task, cfg, backbone)
        cfg, c = self.cfg, task.num_classes
        self.ist = CooccurrenceHead(c, cfg.feature_dim, cfg.hidden_dim, cfg.output_dim)
        self.memory = PositiveFeatureMemory(c, cfg.memory_size, cfg.feature_dim)
        self.recovered = RecoveredLabels(task.num_train, c)

    # ------------------------------------------------------------------ schedule
    def pseudo_label_epoch(self, ctx: TrainContext) -> int:
        return self.scheduled_epoch(ctx, self.cfg.pseudo_label_epoch)

    def theta(self, ctx: TrainContext) -> float:
        return sst_theta(ctx.epoch, self.pseudo_label_epoch(ctx), self.cfg, ctx.max_epochs)

    # ------------------------------------------------------------------ forward
    def compute_losses(self, batch: Batch, ctx: TrainContext) -> dict[str, Tensor]:
        cfg, t, o = self.cfg, batch.targets, batch.observed
        logits, feats = self.trunk(self.features(batch.inputs))
        pair_logits = self.ist(feats)
        self.memory.update(*collectives.gather_batch(feats.detach(), o & (t > 0.5)))   # the global batch (DDP)
        cooc = cooccurrence_asl(pair_logits, pair_targets(t, o), cfg.gamma_pos, cfg.gamma_neg, cfg.asl_clip)
        losses = {"loss_bce": masked_bce(logits, t, o),
                  "loss_cooc": cfg.cooc_weight * ctx.ramp * cooc,
                  "loss_instance": cfg.instance_weight * ctx.ramp * instance_contrastive_loss(*collectives.global_batch(feats, t, o))}
        if ctx.epoch < self.pseudo_label_epoch(ctx):
            return losses
        theta = self.theta(ctx)
        with torch.no_grad():
            intra = intra_pseudo_labels(pair_logits, t, o, theta)
            inter = inter_pseudo_labels(self.memory.similarity(feats, cfg.memory_mean), o, theta)
            self.recovered.record(batch.index, intra=intra, inter=inter)
        ones = torch.ones_like(t)
        losses["loss_bce_intra"] = cfg.intra_bce_weight * masked_bce(logits, torch.where(intra, ones, t), o | intra)
        losses["loss_bce_inter"] = cfg.inter_bce_weight * masked_bce(logits, torch.where(inter, ones, t), o | inter)
        return losses

    # ------------------------------------------------------------------ epoch hooks
    def on_train_epoch_start(self, ctx: TrainContext) -> None:
        self.recovered.clear()

    def on_train_epoch_end(self, ctx: TrainContext) -> dict[str, float]:
        return {"theta": self.theta(ctx), **self.recovered.counts(),
                "memory_fill": float(self.memory.count.float().mean() / self.cfg.memory_size)}

    def recovered_labels(self) -> tuple[Tensor, Tensor] | None:
        """(rows, pseudo-positives of unknown entries) from the last epoch; None before E_g."""
        return self.recovered.labels(self.cfg.recovery)
