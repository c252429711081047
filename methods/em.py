"""EM and EM+APL: entropy maximisation of the unknown labels, and asymmetric pseudo-labelling.

Paper: D. Zhou, P. Chen, Q. Wang, G. Chen, P.-A. Heng, "Acknowledging the Unknown for Multi-label
Learning with Single Positive Labels", ECCV 2022, https://arxiv.org/abs/2203.16219.
Official code: https://github.com/Correr-Zhou/SPML-AckTheUnknown (``losses.py`` ``loss_EM``,
``loss_EM_APL``, ``compute_batch_loss``; ``main.py`` ``train``, ``aysmmetric_pseudo_labeling``, the
per-dataset hyper-parameters). Spec: ``specs/methods_wave3.md`` section 2; loss matrices and the APL
round in :mod:`methods.modules.em` (fixtures X1-X5).

Model: global average pooling + linear head (SPML's ``ImageClassifier``), one parameter group.
Loss terms, each sum / (B * C) over the batch in float32 (their sum is the official loss):
``loss_pos`` nl(p) at observed positives; ``loss_em`` -alpha H(p) at unknown entries (rewards
uncertainty: pulls unknown logits towards 0); ``em_apl`` adds ``loss_apl`` beta [s nl(p) + (1 - s)
nl(1 - p)] at its pseudo-labelled entries (present once the batch holds one).

APL (``em_apl``): after every epoch e >= T_w (1-based) but the last, one pass over the training set
(``ctx.iterate_train()``: fixed order, no augmentation; eval mode, no gradient) predicts p; per class
the q_c = floor(rho U_c / (T - T_w)) unknown, not yet pseudo-labelled entries with the lowest p become
soft negatives with s = p, kept for the rest of training (U_c: unknown entries of class c). Under
DDP every rank gathers the pass's rows before selecting, so all ranks select the same entries. State
(checkpointed): tables ``pl_selected`` (bool) and ``pl_value`` (s, float32), buffers
``unknown_count`` [C] and ``apl_rounds``.

alpha, beta, warmup_epoch: None = the official value of the run's dataset (``TaskSpec.info
["dataset"]``, :data:`DATASET_VALUES`; voc2007 takes the code's pascal = VOC 2012 values; datasets
the code has none for: alpha 0.1, beta 0.2, T_w 5 [GUESS]). ``schedule_epochs`` = 10 rescales T_w to
the run: T_w,eff = max(1, round(T_w T / 10)); 0 = unscaled.

Protocols: designed for single positive. Random protocol (suite extension): ``loss_neg`` nl(1 - p)
at observed negatives, which are never pseudo-label candidates nor counted in U_c.

Deviations from the official code (switch back in brackets):
- P38: APL also labels when the training loader has one batch (``single_batch="official"``).
- P39: no APL pass after the last epoch, its labels would never be used (``last_round="run"``);
  T_w,eff >= T gives a warning and no APL instead of an OverflowError.
- P40: pseudo-labels live in their own tables; an observed negative -1 is a negative
  (``observed_negatives="soft_positive"``: -1 read as a soft positive, weight beta; for ``em``
  ``"assert"`` stops as ``loss_EM`` does).
- P41: a selected p of exactly 0 stays unlabelled, as in the official code (no switch needed).
- P42: the pass runs without augmentation in a fixed order and ranks ties by (p, training row)
  (``apl_tie_order="official"``: numpy's unstable argsort over the reverse-stacked batches).
- P43: no early stopping; the suite's selection rule (P37) and all epochs.
- T_w is rescaled to short runs (``schedule_epochs=0``); recipe: the profile's (official: ACK values).
Pitfall (P…) and fixture (X…/Y…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from benchmark.contract import collectives
from benchmark.contract.card import MethodCard
from benchmark.contract.method import Batch, TrainContext
from benchmark.contract.sample_table import SampleTable
from benchmark.core.registry import METHODS
from methods.modules import em, spml
from methods.modules.prototypes import scaled_epoch
from methods.spml import SPMLMethod

# ACK main.py __main__, per official dataset: (alpha, beta, warmup_epoch); rho = 0.9 everywhere.
OFFICIAL = {"pascal": {"alpha": 0.2, "beta": 0.02, "warmup_epoch": 5},
            "coco": {"alpha": 0.1, "beta": 0.9, "warmup_epoch": 5},
            "nuswide": {"alpha": 0.1, "beta": 0.2, "warmup_epoch": 4},
            "cub": {"alpha": 0.01, "beta": 0.4, "warmup_epoch": 3}}
GUESS = {"alpha": 0.1, "beta": 0.2, "warmup_epoch": 5}    # [GUESS] datasets the code has no values for
SUITE_TO_OFFICIAL = {"voc2007": "pascal", "voc2012": "pascal", "coco2014": "coco", "nuswide": "nuswide",
                     "cub": "cub"}
DATASET_VALUES = {key: OFFICIAL[name] for key, name in SUITE_TO_OFFICIAL.items()}


def dataset_values(dataset: str | None) -> dict:
    """alpha, beta and warmup_epoch of the suite dataset key (the GUESS row for the others)."""
    return dict(DATASET_VALUES.get(dataset or "", GUESS))


@dataclass(frozen=True)
class EMConfig:
    alpha: float | None = None          # None = per dataset (ACK main.py: pascal 0.2, coco/nuswide 0.1, cub 0.01)
    log_eps: float = 1e-5               # ACK losses.py LOG_EPSILON
    observed_negatives: str = "negative"   # nl(1 - p), weight 1; "assert" = official loss_EM (stops, P40)
    NEGATIVES: ClassVar[tuple[str, ...]] = ("negative", "assert")

    def __post_init__(self):
        if self.alpha is not None and not self.alpha >= 0:
            raise ValueError(f"alpha must be >= 0 or None; got {self.alpha}")
        if not self.log_eps > 0:
            raise ValueError(f"log_eps must be > 0; got {self.log_eps}")
        if self.observed_negatives not in self.NEGATIVES:
            raise ValueError(f"observed_negatives must be one of {self.NEGATIVES}; got {self.observed_negatives!r}")


@dataclass(frozen=True)
class EMAPLConfig(EMConfig):
    beta: float | None = None           # None = per dataset (ACK main.py: pascal 0.02, coco 0.9, nuswide 0.2, cub 0.4)
    neg_proportion: float = 0.9         # rho (ACK main.py, every dataset)
    warmup_epoch: int | None = None     # T_w, 1-based; None = per dataset (pascal 5, coco 5, nuswide 4, cub 3)
    schedule_epochs: int = 10           # T_w rescaled from a 10-epoch recipe (ACK num_epochs); 0 = unscaled (official)
    last_round: str = "skip"            # "run" = official extra pass after the last epoch (P39)
    single_batch: str = "label"         # "official" = no labels when the loader has one batch (P38)
    observed_negatives: str = "negative"   # "soft_positive" = official loss_EM_APL reading of -1 (P40)
    apl_tie_order: str = "stable"       # (p, row); "official" = numpy argsort over reverse-stacked batches (P42)
    NEGATIVES: ClassVar[tuple[str, ...]] = em.NEGATIVE_READINGS

    def __post_init__(self):
        super().__post_init__()
        if self.beta is not None and not self.beta >= 0:
            raise ValueError(f"beta must be >= 0 or None; got {self.beta}")
        if not 0 < self.neg_proportion <= 1:
            raise ValueError(f"neg_proportion must be in (0, 1]; got {self.neg_proportion}")
        if self.warmup_epoch is not None and not (isinstance(self.warmup_epoch, int) and self.warmup_epoch >= 1):
            raise ValueError(f"warmup_epoch must be an integer >= 1 (1-based) or None; got {self.warmup_epoch}")
        if not (isinstance(self.schedule_epochs, int) and self.schedule_epochs >= 0):
            raise ValueError(f"schedule_epochs must be an integer >= 0; got {self.schedule_epochs}")
        for name, allowed in (("last_round", ("skip", "run")), ("single_batch", em.SINGLE_BATCH),
                              ("apl_tie_order", em.TIE_ORDERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}; got {getattr(self, name)!r}")


class EMBase(SPMLMethod):
    """Pooled-linear classifier trained with EM (and, in subclasses, APL pseudo-labels)."""

    Config = EMConfig

    def __init__(self, task, cfg=None, backbone=None):
        super().__init__(task, cfg, backbone)
        values = dataset_values(task.info.get("dataset"))
        for name in ("alpha", "beta", "warmup_epoch"):
            given = getattr(self.cfg, name, None)
            setattr(self, name, values[name] if given is None else given)

    def pseudo_labels(self, batch: Batch) -> tuple[Tensor | None, Tensor | None]:
        return None, None

    def loss_terms(self, probs: Tensor, batch: Batch) -> dict[str, Tensor]:
        reading = self.cfg.observed_negatives
        if reading == "assert":
            if bool((batch.observed & (batch.targets <= 0.5)).any()):
                raise ValueError(f"{self.name}: observed_negatives='assert' (official loss_EM) stops at a batch "
                                 "with observed negatives; use observed_negatives='negative'")
            reading = "negative"
        selected, soft = self.pseudo_labels(batch)
        terms = em.em_terms(probs, batch.targets, batch.observed, self.alpha, selected, soft,
                            getattr(self, "beta", 0.0), reading, self.cfg.log_eps)
        return {f"loss_{key}": spml.mean_matrix(matrix) for key, matrix in terms.items()}


@METHODS.register_module()
class EM(EMBase):
    """Entropy-maximisation loss (Zhou et al., ECCV 2022)."""

    name = "em"
    Config = EMConfig
    card = MethodCard(relative_cost=1.0, display_name="EM")


@METHODS.register_module()
class EMAPL(EMBase):
    """EM loss with asymmetric pseudo-labelling (Zhou et al., ECCV 2022)."""

    name = "em_apl"
    Config = EMAPLConfig
    card = MethodCard(relative_cost=1.3, display_name="EM+APL")

    def __init__(self, task, cfg=None, backbone=None):
        super().__init__(task, cfg, backbone)
        n, c = task.num_train, task.num_classes
        self.pl_selected = SampleTable(n, c)
        self.pl_value = SampleTable(n, c, dtype=torch.float32)
        self.register_buffer("unknown_count", torch.zeros(c, dtype=torch.long))
        self.register_buffer("apl_rounds", torch.zeros((), dtype=torch.long))
        self._warned = False

    def pseudo_labels(self, batch: Batch) -> tuple[Tensor, Tensor]:
        index = batch.index.to(self.pl_selected.rows.device)
        return (self.pl_selected[index].to(batch.observed.device),
                self.pl_value[index].to(batch.targets.device))

    def effective_warmup(self, ctx: TrainContext) -> int:
        """T_w,eff: the 1-based epoch after which the first APL round runs."""
        return scaled_epoch(self.warmup_epoch, self.cfg.schedule_epochs, ctx.max_epochs)

    def apl_due(self, ctx: TrainContext) -> bool:
        epoch, warmup = ctx.epoch + 1, self.effective_warmup(ctx)
        if ctx.max_epochs - warmup <= 0:
            if not self._warned:
                warnings.warn(f"em_apl: warm-up epoch {warmup} is not before the last epoch {ctx.max_epochs}; "
                              "no APL round runs (the official code raises OverflowError at T = T_w, P39)",
                              UserWarning, stacklevel=2)
                self._warned = True
            return False
        if epoch < warmup or (self.cfg.last_round == "skip" and epoch >= ctx.max_epochs):
            return False
        if ctx.iterate_train is None:
            raise RuntimeError("em_apl needs ctx.iterate_train for its pseudo-labelling pass")
        return True

    @torch.no_grad()
    def predict_train(self, ctx: TrainContext) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(index, p, observed, batch number) of every training row, gathered over the ranks, rows in
        training order; eval mode for the pass, the previous mode restored."""
        was_training = self.training
        self.eval()
        c, parts = self.task.num_classes, []
        try:
            for number, b in enumerate(ctx.iterate_train()):
                probs = torch.sigmoid(self.predict_scores(b.inputs).float())
                parts.append((b.index.cpu(), probs.cpu(), b.observed.cpu(), torch.full((len(b.index),), number)))
        finally:
            self.train(was_training)
        if not parts:
            parts = [(torch.zeros(0, dtype=torch.long), torch.zeros(0, c), torch.zeros(0, c, dtype=torch.bool),
                      torch.zeros(0, dtype=torch.long))]
        index, probs, observed, number = (torch.cat([p[i] for p in parts]) for i in range(4))
        first = torch.ones_like(number, dtype=torch.bool)
        first[1:] = number[1:] != number[:-1]
        index, probs, observed, first = collectives.gather_rows(index, probs, observed, first)
        blocks = first.long().cumsum(0)          # the pass's batches in order, every rank's counted
        order = torch.argsort(index)
        return index[order], probs[order], observed[order], blocks[order]

    @torch.no_grad()
    def pseudo_label(self, ctx: TrainContext) -> int:
        """One APL round (spec 2.4): the new soft negatives written into the tables; returns their count."""
        index, probs, observed, blocks = self.predict_train(ctx)
        self.unknown_count.copy_((~observed).sum(0).to(self.unknown_count))
        table = self.pl_selected.rows
        idx = index.to(table.device)
        new = em.apl_round(probs, observed, table[idx].cpu(), self.unknown_count.cpu(), self.cfg.neg_proportion,
                           ctx.max_epochs - self.effective_warmup(ctx), ctx.iters_per_epoch,
                           self.cfg.single_batch, self.cfg.apl_tie_order, blocks)
        values = self.pl_value.rows
        table[idx] = table[idx] | new.to(table.device)
        values[idx] = torch.where(new, probs, values[idx].cpu()).to(values)
        self.apl_rounds += 1
        return int(new.sum())

    def on_train_epoch_end(self, ctx: TrainContext) -> dict[str, float]:
        new = self.pseudo_label(ctx) if self.apl_due(ctx) else 0
        selected = self.pl_selected.rows
        total = int(selected.sum())
        return {"pseudo_labels": float(total), "pseudo_labels_round": float(new),
                "pseudo_label_mean": float(self.pl_value.rows[selected].mean()) if total else 0.0,
                "apl_rounds": float(self.apl_rounds)}
