"""LL-R, LL-Ct, LL-Cp: large-loss rejection and correction.

Paper: Y. Kim, J. M. Kim, Z. Akata, J. Lee, "Large Loss Matters in Weakly Supervised Multi-Label
Classification", CVPR 2022, https://arxiv.org/abs/2206.03740.
Official code: https://github.com/snucml/LargeLossMatters (``losses.py`` ``compute_batch_loss``,
``train.py``, ``config.py``). Spec: ``specs/methods_wave2.md`` section 3 (fixtures W6-W8, W10); the
selection lives in :mod:`methods.modules.large_loss`.

Model: global average pooling + linear head; in the finetune protocol the head trains at lr x
``head_lr_mult`` (official 10). Loss ``loss_ll``: BCE-with-logits against "every unknown label is
negative", mean over all B x C entries, where from the second epoch on the k unknown entries with the
largest loss are rejected (LL-R: loss 0), temporarily corrected (LL-Ct: target 1 for this step), or
corrected for good (LL-Cp: written into a per-sample bool buffer ``corrected`` [N, C], so from then on
the entry is an observed positive; checkpoints carry it). k = ceil(B C (1 - clean_rate)) with
clean_rate = 1 - epoch x delta (LL-R, LL-Ct) and ceil(B C delta) per batch (LL-Cp). ``delta_rel`` is
in percent per epoch (defaults from the BoostLU code's lookup: LL-R 0.5, LL-Ct 0.2, LL-Cp 0.1; the LL
README gives the range 0.1-0.5). ``schedule_epochs`` = 10 scales delta by 10 / max_epochs so a short
CPU schedule ends near the modification rate of the official 10 epochs; 0 = unscaled (the official
k at every epoch, float accumulation included, W7).

Protocols: designed for ``single_positive``. Under ``random`` it runs unchanged: observed negatives
are negatives and are never modified; k counts all B x C entries (P22), so the fraction of unknown
labels modified grows with the known proportion, and the k clamp (below) matters.

Diagnostics: k of the last batch, entries modified this epoch, permanent corrections so far.
``recovered_labels()``: LL-Cp the permanently corrected entries; LL-Ct the entries temporarily
corrected during the last epoch; LL-R the entries rejected during the last epoch (suspected
positives, scored as such).

Deviations from the official code (each with a switch back):
- P17: the LL code as shipped tests ``mod_scheme is 'LL-Cp'``, which is always False, so its LL-Cp
  runs as LL-Ct and never corrects a label. Default ``cp_mode="intended"`` (k = ceil(B C delta) and
  write-back, as the first code release and the BoostLU code); ``cp_mode="as_shipped"`` restores it.
- P18: the LL code writes back only entries with u > tau (none when k = 1). Default
  ``cp_correct="topk"`` writes back the k modified entries (BoostLU's code); ``"strict"`` = LL code.
- P20: when k exceeds the unknown entries with positive loss, tau = 0 and every entry is modified,
  observed labels included (LL-R loss 0; LL-Ct/Cp flip observed labels). Default ``k_clamp=True``
  caps k at that count (no modification when it is 0); ``k_clamp=False`` is the official rule.
- ``schedule_epochs`` (above) rescales delta for schedules other than 10 epochs; 0 = official.
- Corrections are written to the buffer right after the batch's loss; the official write-back lands
  in the dataset and is seen when the sample is next drawn, which is the next epoch (equivalent).
- Recipe and selection: the profile's common recipe (not Adam 1e-5, batch 16, 10 epochs, early stop
  on a clean validation split) and the suite's validation rule (P37).
Pitfall (P…, C…) and fixture (F…, W…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from benchmark.contract.method import Batch, Method, TrainContext
from benchmark.contract.sample_table import SampleTable
from benchmark.core.registry import METHODS
from methods.modules import large_loss as ll
from methods.modules.param_groups import head_lr_groups

DEFAULT_DELTA_REL = {"LL-R": 0.5, "LL-Ct": 0.2, "LL-Cp": 0.1}   # percent per epoch (BoostLU config.py)
CP_MODES = ("intended", "as_shipped")
CP_CORRECT = ("topk", "strict")


@dataclass(frozen=True)
class LargeLossConfig:
    delta_rel: float | None = None   # percent per epoch; None = per scheme (LL-R 0.5, LL-Ct 0.2, LL-Cp 0.1)
    k_clamp: bool = True             # P20: k <= unknown entries with loss > 0; False = official
    schedule_epochs: int = 10        # delta x schedule_epochs / max_epochs (official recipe: 10 epochs); 0 = unscaled
    head_lr_mult: float = 10.0       # finetune only: head lr = lr x 10 (LL config.py lr_mult)

    def __post_init__(self):
        if self.delta_rel is not None and not 0.0 <= self.delta_rel < 100.0:
            raise ValueError(f"delta_rel must be a percentage in [0, 100) or None; got {self.delta_rel}")
        if not (isinstance(self.schedule_epochs, int) and self.schedule_epochs >= 0):
            raise ValueError(f"schedule_epochs must be an integer >= 0; got {self.schedule_epochs}")
        if not self.head_lr_mult > 0:
            raise ValueError(f"head_lr_mult must be > 0; got {self.head_lr_mult}")


@dataclass(frozen=True)
class LLCpConfig(LargeLossConfig):
    cp_mode: str = "intended"        # P17: "as_shipped" = the LL code's LL-Cp (runs as LL-Ct)
    cp_correct: str = "topk"         # P18: "topk" = the k modified entries (BoostLU code); "strict" = u > tau (LL code)

    def __post_init__(self):
        super().__post_init__()
        if self.cp_mode not in CP_MODES:
            raise ValueError(f"cp_mode must be one of {CP_MODES}; got {self.cp_mode!r}")
        if self.cp_correct not in CP_CORRECT:
            raise ValueError(f"cp_correct must be one of {CP_CORRECT}; got {self.cp_correct!r}")


class LargeLossMethod(Method):
    """A classifier trained with large-loss rejection / correction; ``scheme`` picks the variant."""

    Config = LargeLossConfig
    scheme_name = "LL-R"

    def __init__(self, task, cfg=None, backbone=None):
        super().__init__(task, cfg, backbone)
        self.head = self.build_head(task)
        n, c = task.num_train, task.num_classes
        self.corrected = SampleTable(n, c)          # LL-Cp, permanent
        self.modified_epoch = SampleTable(n, c)     # reset every epoch
        self.seen_epoch = SampleTable(n)
        self.register_buffer("last_k", torch.zeros((), dtype=torch.long))

    def build_head(self, task) -> nn.Module:
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(task.feature_dim, task.num_classes))

    @property
    def scheme(self) -> str:
        return self.scheme_name

    @property
    def permanent(self) -> bool:
        return self.scheme == "LL-Cp" and getattr(self.cfg, "cp_mode", "intended") == "intended"

    def delta(self, ctx: TrainContext) -> float:
        rel = self.cfg.delta_rel if self.cfg.delta_rel is not None else DEFAULT_DELTA_REL[self.scheme]
        delta = rel / 100
        if self.cfg.schedule_epochs:
            delta *= self.cfg.schedule_epochs / max(1, ctx.max_epochs)
        return delta

    def predict_scores(self, inputs: Tensor) -> Tensor:
        return self.head(self.features(inputs))

    def compute_losses(self, batch: Batch, ctx: TrainContext) -> dict[str, Tensor]:
        logits = self.predict_scores(batch.inputs)
        targets, observed = batch.targets, batch.observed
        if self.scheme == "LL-Cp":
            fixed = self.corrected[batch.index]
            targets, observed = torch.where(fixed, torch.ones_like(targets), targets), observed | fixed
        delta = self.delta(ctx)
        # k of the global batch (its B x C entries); under DDP every rank's batch has the same size
        k = ll.num_modified(logits.numel() * ctx.world_size, ll.clean_rate(ctx.epoch, delta), delta, self.permanent)
        with torch.autocast(logits.device.type, enabled=False):
            sel = ll.large_loss(logits, targets, observed, k, self.scheme, self.cfg.k_clamp,
                                getattr(self.cfg, "cp_correct", "topk"))
        with torch.no_grad():
            self.modified_epoch.write(batch.index, sel.modified, torch.logical_or)
            self.seen_epoch.write(batch.index, True)
            self.last_k.fill_(sel.k)
            if self.permanent:
                self.corrected.write(batch.index, sel.corrected, torch.logical_or)
        return {"loss_ll": sel.loss}

    def on_train_epoch_start(self, ctx: TrainContext) -> None:
        self.modified_epoch.clear()
        self.seen_epoch.clear()

    def on_train_epoch_end(self, ctx: TrainContext) -> dict[str, float]:
        return {"k_last_batch": float(self.last_k), "modified": float(self.modified_epoch.rows.sum()),
                "corrected": float(self.corrected.rows.sum()),
                "clean_rate": ll.clean_rate(ctx.epoch, self.delta(ctx))}

    def recovered_labels(self) -> tuple[Tensor, Tensor] | None:
        rows = self.seen_epoch.rows.nonzero().flatten()
        if rows.numel() == 0:
            return None
        table = self.corrected if self.permanent else self.modified_epoch
        return rows, table[rows]

    def param_groups(self, lr: float, weight_decay: float) -> list[dict] | None:
        return head_lr_groups(self, lr, self.cfg.head_lr_mult)


@METHODS.register_module()
class LLR(LargeLossMethod):
    """Large loss rejection (Kim et al., CVPR 2022)."""

    name = "ll_r"
    card = LargeLossMethod.card.replace(display_name="LL-R")
    scheme_name = "LL-R"


@METHODS.register_module()
class LLCt(LargeLossMethod):
    """Large loss temporary correction (Kim et al., CVPR 2022)."""

    name = "ll_ct"
    card = LargeLossMethod.card.replace(display_name="LL-Ct")
    scheme_name = "LL-Ct"


@METHODS.register_module()
class LLCp(LargeLossMethod):
    """Large loss permanent correction (Kim et al., CVPR 2022)."""

    name = "ll_cp"
    Config = LLCpConfig
    card = LargeLossMethod.card.replace(display_name="LL-Cp")
    scheme_name = "LL-Cp"
