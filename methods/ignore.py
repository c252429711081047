"""IGNORE: information-gap-based false-negative loss rejection, ResNet-50 path.

Paper: G. Song, N. Kim, J.-S. Lee, J.-H. Lee, "IGNORE: Information Gap-based False Negative Loss
Rejection for Single Positive Multi-Label Learning", ECCV 2024,
https://www.ecva.net/papers/eccv_2024/papers_ECCV/papers/05081.pdf.
Official code: https://github.com/gyeong-ryeol-song/SPML-IGNORE (``train_resnet.py``, ``losses.py``
``ignore_loss``, ``functions.py`` ``generate_resnet_cam_and_mask``, ``models.py`` ``ResNet_1x1``).
Spec: ``specs/methods_wave3.md`` section 4; the building blocks live in :mod:`methods.modules.ignore`
(fixtures X9-X12).

Model: a 1 x 1 convolution with bias on the backbone maps (the CAM) and its spatial mean as logits
(BoostLU's ``CamHead`` with alpha = 1); the head trains at lr x ``head_lr_mult`` in the finetune
protocol. Each training step, in the official order: logits and CAM of the weak view; logits of the
strong view (RandAugment(3, 5) then the weak pipeline: ``Method.augmentation`` names the two-view
pipeline ``weak_strong``, so finetune inputs are [B, 2, 3, S, S]); the masked weak image (each row kept
where its positive's normalised CAM exceeds ``cam_threshold``) and its logits, under ``no_grad`` in
train mode; gap = |logits - masked logits|; the thresholds G (scalar) and A (per class) updated as
exponential moving averages; then the loss: ``loss_spbc`` (observed positives, weak view),
``loss_ignore`` (assume-negative loss on the strong view over the entries not rejected; an unknown
entry is rejected after the warm-up when gap > G and logit > A_c) and ``loss_reg`` (MSE between the
views' logits). ``recovered_labels()``: the entries rejected at least once in the epoch (suspected
false negatives, scored as positives, as LL-R).

Frozen protocol (cached maps [B, D, h, w]; a documented deviation): the mask is computed at the CAM
resolution and multiplies the cached maps; there is no strong view, so ``loss_ignore`` uses the weak
predictions and ``loss_reg`` is absent. Under ``random`` (observed negatives; the official code
asserts) observed negatives get the assume-negative term and are never rejected, a row with several
positives is masked with the union of its positives' masks and rows without positive stay unmasked.

Deviations from the official code (each with its reason):
- The thresholds are buffers (checkpointed, identical on every rank: updated with the global batch),
  not local variables of the training function (P54); ``ema_bias_correction`` (default False =
  official) divides them by 1 - lambda^t.
- ``warm_up`` is rescaled to the schedule: max(1, round(warm_up x T / schedule_epochs)) epochs with
  ``schedule_epochs`` = 25 (official epochs), so a short schedule still rejects; 0 = unscaled.
- A batch without observed positive skips the G update (officially G becomes NaN for good) and has no
  ``loss_spbc`` term (officially NaN) (P54, P56); ``spbc=False`` drops the term instead of overwriting
  the weight in the config (P56).
- The masked forward runs under ``no_grad`` (same values and BatchNorm statistics; no graph, P55).
- Under DDP the mask's batch rule, the thresholds and the means of ``loss_spbc`` / ``loss_ignore`` use
  the global batch (the official code is single-process; P56).
- ``cam_norm="spatial"`` offers the per-image min-max the paper's figure suggests (P52; default
  "batch", the code's rule). Observed negatives and multi-positive rows (above; P53).
- The code's start-up failure (P51) and its Q2L path are not reproduced; recipe: the README ResNet-50
  command (P57); selection: the suite's rule (the code selects on a clean validation split).
Pitfall (P…) and fixture (X…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from benchmark.contract.card import MethodCard
from benchmark.contract.method import Batch, Method, TrainContext
from benchmark.contract.sample_table import SampleTable
from benchmark.core.registry import METHODS
from methods.boostlu import CamHead
from methods.modules import ignore as ign
from methods.modules.param_groups import head_lr_groups


@dataclass(frozen=True)
class IgnoreConfig:
    spbc_weight: float = 0.1         # README ResNet-50 command --spbc_weight 0.1 (config.py:109 default 0.5 = Q2L, P57)
    ignore_weight: float = 1.0       # config.py:110, README --ignore_weight 1
    reg_weight: float = 0.5          # config.py:108, README --reg_weight 0.5
    gap_lambda: float = 0.999        # EMA decay of G per step (config.py:104, README)
    avg_lambda: float = 0.999        # EMA decay of A per step (config.py:105, README)
    warm_up: int = 3                 # epochs without rejection (config.py:102), rescaled by schedule_epochs
    schedule_epochs: int = 25        # warm_up x max_epochs / 25 (official num_epochs, README); 0 = unscaled
    cam_threshold: float = 0.8       # mask keeps normalised CAM > 0.8 (config.py:103)
    cam_norm: str = "batch"          # P52: "batch" = cam_minmax_norm over the batch (official); "spatial" per image
    ema_bias_correction: bool = False  # P54: False = official (EMA started at 0, no correction)
    lat: bool = True                 # also require logit > A_c to reject (config.py:116 --lat)
    strong_aug: bool = True          # loss_ignore on the strong view (config.py:113 --strong_aug)
    ignore: bool = True              # reject candidates (config.py:114 --ignore); False = AN on every entry
    spbc: bool = True                # loss_spbc (config.py:115 --spbc); False = term absent (P56)
    reg: bool = True                 # loss_reg (config.py:117 --reg)
    head_lr_mult: float = 10.0       # finetune only: CAM conv at lr x 10 (config.py:96 lr_mult, train_resnet.py:30-33)
    log_eps: float = 1e-5            # nl(x) = -log(x + eps) (losses.py:4 LOG_EPSILON)

    def __post_init__(self):
        for name in ("spbc_weight", "ignore_weight", "reg_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")
        for name in ("gap_lambda", "avg_lambda"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1); got {getattr(self, name)}")
        for name in ("warm_up", "schedule_epochs"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                raise ValueError(f"{name} must be an integer >= 0; got {value!r}")
        if not 0.0 <= self.cam_threshold < 1.0:
            raise ValueError(f"cam_threshold must be in [0, 1); got {self.cam_threshold}")
        if self.cam_norm not in ign.CAM_NORMS:
            raise ValueError(f"cam_norm must be one of {ign.CAM_NORMS}; got {self.cam_norm!r}")
        if not self.head_lr_mult > 0:
            raise ValueError(f"head_lr_mult must be > 0; got {self.head_lr_mult}")
        if not self.log_eps > 0:
            raise ValueError(f"log_eps must be > 0; got {self.log_eps}")


def warm_up_epochs(warm_up: int, max_epochs: int, schedule_epochs: int) -> int:
    """Epochs without rejection: ``warm_up`` (``schedule_epochs`` 0 or ``warm_up`` 0), else
    max(1, round(warm_up x max_epochs / schedule_epochs))."""
    if not schedule_epochs or not warm_up:
        return warm_up
    return max(1, round(warm_up * max_epochs / schedule_epochs))


@METHODS.register_module()
class Ignore(Method):
    """IGNORE (Song et al., ECCV 2024), ResNet path."""

    name = "ignore"
    Config = IgnoreConfig
    # relative_cost: finetune = 3 backbone forwards + 2 backwards per step (about 7 forward units against
    # partial_bce's 3, ~2.3x) plus RandAugment on the loader; on frozen maps the three head passes cost
    # little (~1.2x). 2.5 ranks it by its finetune cost, where run order matters.
    card = MethodCard(relative_cost=2.5, display_name="IGNORE")

    def __init__(self, task, cfg=None, backbone=None):
        super().__init__(task, cfg, backbone)
        self.head = CamHead(task.feature_dim, task.num_classes, alpha=1.0)
        self.register_buffer("gap_threshold", torch.zeros((), dtype=torch.float32))            # G
        self.register_buffer("avg_threshold", torch.zeros(task.num_classes, dtype=torch.float32))  # A
        self.register_buffer("gap_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("avg_updates", torch.zeros((), dtype=torch.long))
        self.rejected_epoch = SampleTable(task.num_train, task.num_classes)   # reset every epoch
        self.seen_epoch = SampleTable(task.num_train)

    @classmethod
    def augmentation(cls, cfg) -> str:
        """The two-view pipeline (weak SPML view, strong RandAugment(3, 5) view)."""
        return "weak_strong"

    def predict_scores(self, inputs: Tensor) -> Tensor:
        return self.head(self.features(inputs))

    def _logits_and_cam(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        cam = self.head.cam(self.features(inputs))
        return cam.mean(dim=(2, 3)), cam

    def _views(self, inputs: Tensor) -> tuple[Tensor, Tensor | None]:
        """(weak, strong): finetune images [B, 2, 3, S, S]; cached maps [B, D, h, w] have no strong view."""
        if self.task.protocol != "finetune":
            return inputs, None
        if inputs.dim() != 5 or inputs.shape[1] < 2:
            raise ValueError(f"ignore trains on two views per image ([B, 2, 3, S, S], the 'weak_strong' "
                             f"pipeline); got inputs of shape {tuple(inputs.shape)}")
        return inputs[:, 0], inputs[:, 1]

    def thresholds(self) -> tuple[Tensor, Tensor]:
        """(G, A) as used by the rejection (bias-corrected when ``ema_bias_correction``)."""
        cfg = self.cfg
        return (ign.corrected(self.gap_threshold, cfg.gap_lambda, int(self.gap_updates), cfg.ema_bias_correction),
                ign.corrected(self.avg_threshold, cfg.avg_lambda, int(self.avg_updates), cfg.ema_bias_correction))

    def warm_up(self, ctx: TrainContext) -> int:
        return warm_up_epochs(self.cfg.warm_up, ctx.max_epochs, self.cfg.schedule_epochs)

    def _gap(self, weak: Tensor, logits: Tensor, cam: Tensor, batch: Batch) -> Tensor:
        """|logits - logits of the masked input| (detached): at image size in finetune, at the CAM
        resolution on cached maps; the masked forward in the current (train) mode, without a graph."""
        size = tuple(weak.shape[-2:]) if self.task.protocol == "finetune" else None
        mask = ign.cam_mask(cam, batch.targets, batch.observed, self.cfg.cam_threshold, self.cfg.cam_norm, size)
        with torch.no_grad():
            masked = self.predict_scores(weak * mask.to(weak.dtype))
        return (logits.detach().float() - masked.float()).abs()

    def _update_thresholds(self, gap: Tensor, logits: Tensor, pos: Tensor) -> None:
        if ign.update_gap_threshold(self.gap_threshold, gap, pos, self.cfg.gap_lambda):
            self.gap_updates += 1
        ign.update_avg_threshold(self.avg_threshold, logits, self.cfg.avg_lambda)
        self.avg_updates += 1

    def compute_losses(self, batch: Batch, ctx: TrainContext) -> dict[str, Tensor]:
        cfg = self.cfg
        weak, strong = self._views(batch.inputs)
        logits, cam = self._logits_and_cam(weak)
        logits_s = self.predict_scores(strong) if strong is not None else None
        gap = self._gap(weak, logits, cam, batch)
        self._update_thresholds(gap, logits, ign.positives(batch.targets, batch.observed))
        if ctx.epoch + 1 > self.warm_up(ctx):
            gap_t, avg_t = self.thresholds()
            reject = ign.rejected(gap, logits.detach().float(), gap_t, avg_t, batch.observed, cfg.lat)
        else:
            reject = torch.zeros_like(batch.observed)
        with torch.autocast(logits.device.type, enabled=False):
            losses = ign.ignore_loss(
                logits.float(), batch.targets, batch.observed, reject,
                logits_strong=logits_s.float() if logits_s is not None else None,
                spbc_weight=cfg.spbc_weight if cfg.spbc else 0.0, ignore_weight=cfg.ignore_weight,
                reg_weight=cfg.reg_weight, strong_aug=cfg.strong_aug, use_ignore=cfg.ignore, use_reg=cfg.reg,
                eps=cfg.log_eps)
        with torch.no_grad():
            self.rejected_epoch.write(batch.index, reject, torch.logical_or)
            self.seen_epoch.write(batch.index, True)
        return losses

    def on_train_epoch_start(self, ctx: TrainContext) -> None:
        self.rejected_epoch.clear()
        self.seen_epoch.clear()

    def on_train_epoch_end(self, ctx: TrainContext) -> dict[str, float]:
        gap_t, avg_t = self.thresholds()
        return {"gap_threshold": float(gap_t), "avg_threshold_mean": float(avg_t.mean()),
                "rejected": float(self.rejected_epoch.rows.sum()), "warm_up_epochs": float(self.warm_up(ctx))}

    def recovered_labels(self) -> tuple[Tensor, Tensor] | None:
        rows = self.seen_epoch.rows.nonzero().flatten()
        if rows.numel() == 0:
            return None
        return rows, self.rejected_epoch[rows]

    def param_groups(self, lr: float, weight_decay: float) -> list[dict] | None:
        return head_lr_groups(self, lr, self.cfg.head_lr_mult)
