"""ROLE: regularised online label estimation (Cole et al.).

Paper: E. Cole, O. Mac Aodha, T. Lorieul, P. Perona, D. Morris, N. Jojic, "Multi-Label Learning from
Single Positive Labels", CVPR 2021, https://arxiv.org/abs/2106.09708.
Official code: https://github.com/elijahcole/single-positive-multi-label (``losses.py`` ``loss_role``,
``models.py`` ``LabelEstimator``, ``train.py``). Spec: ``specs/methods_wave2.md`` 2.6-2.7 (fixtures W5,
W16); loss matrices in :mod:`methods.modules.spml`.

Model: a pooled-linear classifier f (as ``an``) and a label estimator g, an N x C parameter theta of
logits, one row per training image (``batch.index``); q = sigmoid(theta[index]). Loss (``loss_role``,
sum / (B * C)): both f and g fit the observed positives, and each is pulled towards the other's
detached prediction; ``loss_epr`` = 1/2 [EPR(p) + EPR(q)] with k = mean positives per training image
(``requires expected_num_pos``; the hidden-label value under ``single_positive``, recorded as
privileged, P27). ``predict_scores`` uses f only. theta has its own optimizer group at lr x 10 and
without weight decay (pitfall P29: coupled L2 through Adam would drag the observed-positive logits
towards 0); the optimizer is dense, so rows not in the batch keep moving while their Adam moments
are non-zero (official behaviour).

Initialisation (W16): unknown entries uniform in (-logit(0.6), logit(0.6)), drawn in ``__init__``
from the run-seeded global generator; at the start of the first epoch one pass over the training
set writes +logit(0.995) into observed positives and -logit(0.995) into observed negatives, and
records the observed mask (a buffer, for ``recovered_labels``). The flag ``estimator_initialised``
is a buffer too, so a resumed run never re-initialises.

Stages (``stages``). ``"one"`` (default): one stage; the frozen protocol is SPML's
``linear_fixed_features`` mode, the finetune protocol its ``end_to_end`` mode. ``"linear_init"``
(the official default ``train_mode``): the first ``linear_init_epochs`` epochs of the run are the
linear stage, in which the backbone runs under ``no_grad`` and in eval mode (its weights and
BatchNorm statistics stay as loaded; only the head and theta train); from the next epoch on
everything trains, starting from the head as it is and from theta re-set to
logit(clamp(sigmoid(theta), 1e-5, 1 - 1e-5)) (the official hand-over through the estimated labels,
W16). A buffer ``training_stage`` (1 or 2) records where the run is, so a run resumed in stage 2 from
a stage-1 checkpoint crosses the boundary once. The engine builds one optimizer for the run: a
backbone parameter gets no gradient in stage 1, so Adam keeps no state for it (no moments, no step
count, no weight decay) and its first stage-2 step is the step of a fresh Adam. Freezing by a zero
learning rate would instead fill the backbone's moments during stage 1. In the frozen protocol the
backbone is the identity on cached features, so both stages train the same head and theta at the
same learning rate: ``linear_init`` then differs from ``one`` only by the hand-over clamp of theta.

Protocols: designed for ``single_positive``. Under ``random`` (suite extension, spec 2.7; the
official loss asserts, P26) observed negatives get 1/2 [nl(1 - p) + nl(1 - q)], mirroring the
positive term, and the -logit(0.995) init (the official init already supports them).
``observed_negatives=False`` treats them as unknowns.

Deviations from the official code:
- Observed negatives are supported (above) instead of an AssertionError (P26).
- ``linear_init`` is one run of the engine, not two: (a) both stages use the run's learning rate
  and batch size (official: stage 1 at a fixed lr / batch per loss and dataset, 1e-3 / 16 for ROLE,
  8 on CUB, recorded in the recipe; stage 2 at the searched ones), because the engine builds one
  loader and one optimizer per run and methods never see them; (b) the head's and theta's Adam
  moments carry across the boundary (official: a fresh Adam for stage 2), for the same reason;
  (c) stage 1 sees the run's augmented images through the frozen backbone (official: fixed
  pre-extracted features); (d) the last stage-1 state carries over (official: the best-validation
  epoch of stage 1), and the run's selection rule picks among all epochs of both stages (official:
  among the stage-2 epochs). ``"one"`` is the default because the suite's comparisons are one-stage.
- The init draws from the run-seeded generator (the official one is unseeded, P30).
- Recipe and selection: the profile's common recipe and the suite's validation rule instead of the
  official lr / batch grid on a clean validation split (P37); evaluation keeps every test image (P28).
Pitfall (P…, C…) and fixture (F…, W…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from benchmark.contract import collectives
from benchmark.contract.card import MethodCard
from benchmark.contract.method import Batch, TrainContext
from benchmark.core.errors import UserError
from benchmark.core.registry import METHODS
from methods.modules import spml
from methods.spml import EPRConfig, SPMLMethod

STAGES = ("one", "linear_init")


@dataclass(frozen=True)
class ROLEConfig(EPRConfig):
    estimator_lr_mult: float = 10.0   # SPML train.py P['lr_mult']: lr of theta = lr x 10
    estimator_init_w: float = 0.1     # unknown init in (-logit(0.5 + w), logit(0.5 + w)) (LabelEstimator)
    # "one" (suite default: SPML's end_to_end / linear_fixed_features) | "linear_init" (SPML train.py:262,
    # the official default train_mode: a linear stage, then end to end; see the module docstring)
    stages: str = "one"
    linear_init_epochs: int = 25      # linear-stage epochs (SPML train.py:303; the end-to-end stage: 10, train.py:349)

    def __post_init__(self):
        super().__post_init__()
        if not self.estimator_lr_mult > 0:
            raise ValueError(f"estimator_lr_mult must be > 0; got {self.estimator_lr_mult}")
        if not 0.0 <= self.estimator_init_w < 0.5:
            raise ValueError(f"estimator_init_w must be in [0, 0.5); got {self.estimator_init_w}")
        if self.stages not in STAGES:
            raise ValueError(f"stages must be one of {STAGES}; got {self.stages!r}")
        if self.linear_init_epochs < 1:
            raise ValueError(f"linear_init_epochs must be >= 1; got {self.linear_init_epochs}")


@METHODS.register_module()
class ROLE(SPMLMethod):
    """Regularised online label estimation (Cole et al., CVPR 2021)."""

    name = "role"
    Config = ROLEConfig
    card = MethodCard(requires={"expected_num_pos"}, display_name="ROLE")

    def __init__(self, task, cfg=None, backbone=None):
        super().__init__(task, cfg, backbone)
        n, c = task.num_train, task.num_classes
        q0 = spml.role_init_range(self.cfg.estimator_init_w)
        self.label_logits = nn.Parameter((torch.rand(n, c) * 2.0 - 1.0) * q0)
        self.register_buffer("observed_mask", torch.zeros(n, c, dtype=torch.bool))
        self.register_buffer("estimator_initialised", torch.zeros((), dtype=torch.bool))
        if self.cfg.stages == "linear_init":         # only then: one-stage checkpoints keep their keys
            self.register_buffer("training_stage", torch.ones((), dtype=torch.long))

    @torch.no_grad()
    def initialise_estimator(self, batches) -> None:
        """Write +-logit(0.995) into the observed entries of every training row; record the mask.
        Under DDP each rank reads its share of the rows and every rank writes all of them."""
        parts = [(b.index, b.observed, b.targets) for b in batches]
        if not parts:
            parts = [(torch.zeros(0, dtype=torch.long), torch.zeros(0, self.task.num_classes, dtype=torch.bool),
                      torch.zeros(0, self.task.num_classes))]
        index, observed, targets = collectives.gather_rows(*(torch.cat([p[i].cpu() for p in parts]) for i in range(3)))
        idx = index.to(self.label_logits.device)
        observed = observed.to(idx.device)
        pos = observed & (targets.to(idx.device) > 0.5)
        rows = self.label_logits[idx]
        rows[pos] = spml.LOGIT_POS
        if self.cfg.observed_negatives:
            rows[observed & ~pos] = -spml.LOGIT_POS
        self.label_logits[idx] = rows
        self.observed_mask[idx] = observed
        self.estimator_initialised.fill_(True)

    def on_train_epoch_start(self, ctx: TrainContext) -> None:
        if not bool(self.estimator_initialised) and ctx.iterate_train is not None:
            self.initialise_estimator(ctx.iterate_train())
        if self.cfg.stages == "linear_init":
            self.enter_stage(ctx)

    # ------------------------------------------------------------------ linear_init stages
    @property
    def in_linear_stage(self) -> bool:
        stage = getattr(self, "training_stage", None)
        return stage is not None and int(stage) == 1

    def enter_stage(self, ctx: TrainContext) -> None:
        """Stage 1 for the first ``linear_init_epochs`` epochs, then stage 2; theta is handed over once."""
        if ctx.max_epochs <= self.cfg.linear_init_epochs:
            raise UserError(f"role: stages=linear_init with linear_init_epochs={self.cfg.linear_init_epochs} leaves no "
                            f"end-to-end epoch in a {ctx.max_epochs}-epoch run; give more --epochs (official 25 + 10) "
                            "or a smaller role.linear_init_epochs")
        stage = 1 if ctx.epoch < self.cfg.linear_init_epochs else 2
        if stage == 2 and int(self.training_stage) == 1:
            with torch.no_grad():
                self.label_logits.copy_(spml.role_logits_from_estimates(torch.sigmoid(self.label_logits)))
        self.training_stage.fill_(stage)
        self.train(self.training)                   # the backbone's mode follows the stage

    def features(self, inputs: Tensor) -> Tensor:
        if self.in_linear_stage:                     # stage 1: fixed features, no backbone gradient
            with torch.no_grad():
                return self.backbone(inputs)
        return self.backbone(inputs)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.in_linear_stage:            # BatchNorm statistics stay as loaded in stage 1
            self.backbone.eval()
        return self

    def loss_terms(self, probs: Tensor, batch: Batch) -> dict[str, Tensor]:
        estimates = torch.sigmoid(self.label_logits[batch.index].float())
        matrix = spml.role_matrix(probs, estimates, batch.targets, batch.observed, self.cfg.observed_negatives,
                                  self.cfg.log_eps)
        reg = spml.role_reg(probs, estimates, self.expected_num_pos(batch))
        return {"loss_role": spml.mean_matrix(matrix), "loss_epr": reg}

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        others = [p for p in self.parameters() if p.requires_grad and p is not self.label_logits]
        return [{"params": others},
                {"params": [self.label_logits], "lr": lr * self.cfg.estimator_lr_mult, "weight_decay": 0.0}]

    def recovered_labels(self) -> tuple[Tensor, Tensor] | None:
        if not bool(self.estimator_initialised):
            return None
        with torch.no_grad():
            pseudo = (self.label_logits > 0) & ~self.observed_mask
        return torch.arange(self.task.num_train, device=pseudo.device), pseudo

    def on_train_epoch_end(self, ctx: TrainContext) -> dict[str, float]:
        with torch.no_grad():
            unknown = ~self.observed_mask
            q = torch.sigmoid(self.label_logits[unknown])
            return {"estimate_mean_unknown": float(q.mean()) if q.numel() else 0.0,
                    "estimate_above_half": float((q > 0.5).sum())}
