"""GR Loss: the generalised robust loss for single-positive multi-label learning.

Paper: Y. Chen, C. Li, X. Dai, J. Li, W. Sun, Y. Wang, R. Zhang, T. Zhang, B. Wang, "Boosting Single
Positive Multi-label Classification with Generalized Robust Loss", IJCAI 2024,
https://arxiv.org/abs/2405.03501.
Official code: https://github.com/yan4xi1/GRLoss (commit 5e13f7f: ``losses.py`` ``GR_loss``,
``models.py`` ``KFunction`` / ``VFunction``, ``train.py`` ``run_train``, ``config.py``). Spec:
``specs/methods_wave3.md`` section 3 (fixtures X6-X8); the loss and the schedule are the pure
functions of :mod:`methods.modules.robust`.

Model: global average pooling + linear head (SPML's ``ImageClassifier``, as ``an``); in the finetune
protocol the head trains at lr x ``head_lr_mult`` (official 10). Loss ``loss_gr``, the mean over all
B x C entries, in float32 also under autocast: -log(p + 1e-7) at observed positives and
V [K l1(p; q2) + (1 - K) l2(p; q3)] at unknown entries, where the soft pseudo-label K = sigmoid(w p + b)
and the weight V = exp(-(p - mu)^2 / (2 sigma^2)) are computed on detached p. (w, b, mu, sigma) move
linearly over the run from ``beta`` = (w0, w_T, b0, b_T) and ``alpha`` = (mu0, sigma0, mu_T, sigma_T)
with the official asymmetric step rules (P47), from ``ctx.epoch`` and ``ctx.max_epochs``: the method
is stateless, and a resumed run needs nothing but its epoch. With the defaults K < 0.5 everywhere, so
the soft label never favours the positive side; ``recovered_labels()`` is None.

``linear_init`` = n > 0 (finetune): the backbone runs without gradient for the first n epochs (the
official ``requires_grad=False``; BatchNorm statistics still update in train mode, as there) and the
schedule counts from n. In the frozen protocol there is no backbone to hold; the schedule still counts
from n. n must be smaller than the number of epochs (the official schedule divides by T - n).

Protocols: designed for ``single_positive``. Under ``random`` the official loss gives observed
negatives loss 0 (P48); the suite's extension ``observed_negatives`` (below) trains them.

Diagnostics: w, b, mu, sigma of the epoch and the mean K and V over the epoch's unknown entries
(summed over the ranks at the end of the epoch).

Deviations from the official code (each with a switch back):
- P48: observed negatives (random protocol) get -log(1 - p + 1e-7) with weight 1 by default
  (``observed_negatives="bce"``); ``"ignore"`` is the official loss 0 (still counted in the mean);
  ``"robust"`` applies the unknown term with K = 0, V = 1, i.e. l2(p; q3).
- P49: ``nan_safe=True`` takes the derivative of p^q2 at p = 0 (and of (1 - p)^q3 at p = 1 when
  q3 < 1) as 0, where the official code's gradient is NaN (inf x sigmoid'(z) = 0); loss values are
  identical. ``nan_safe=False`` restores the NaN.
- P44, P45, P46: the shipped entry point cannot train (``args.delta_rel`` undefined; list arguments
  parsed as characters; the learned-K variant crashes); the suite runs the loss with the
  ``config.py`` defaults and does not reproduce the learned-K variant (``--is_train``).
- P50: the official code selects the epoch on the clean labels of its validation split and stops
  early when validation mAP falls more than 2 points below the best; the suite keeps its own
  selection rule (P37) and trains every epoch.
Pitfall (P…) and fixture (X…/Y…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from benchmark.contract import collectives
from benchmark.contract.card import MethodCard
from benchmark.contract.method import Batch, TrainContext
from benchmark.core.errors import UserError
from benchmark.core.registry import METHODS
from methods.modules import robust
from methods.modules.param_groups import head_lr_groups
from methods.spml import SPMLMethod


def _check_quadruple(name: str, values) -> tuple[float, ...]:
    if len(values) != 4 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                                   for x in values):
        raise ValueError(f"{name} must be four finite numbers; got {values!r}")
    return tuple(float(x) for x in values)


@dataclass(frozen=True)
class GRLossConfig:
    beta: tuple[float, float, float, float] = (0.0, 2.0, -2.0, -2.0)   # (w0, w_T, b0, b_T) of K; GRL config.py --beta
    alpha: tuple[float, float, float, float] = (0.5, 2.0, 0.8, 0.5)    # (mu0, sigma0, mu_T, sigma_T) of V; config.py --alpha
    q2: float = 0.01                 # l1 exponent (towards the positive); config.py --q2q3[0]
    q3: float = 1.0                  # l2 exponent (towards the negative; 1 = MAE); config.py --q2q3[1]
    log_eps: float = 1e-7            # -log(p + eps) at observed positives; losses.py LOG_EPSILON
    linear_init: int = 0             # epochs with the backbone held (finetune); the schedule counts from it; config.py
    head_lr_mult: float = 10.0       # finetune only: head lr = lr x 10; config.py lr_mult
    observed_negatives: str = "bce"  # P48: "bce" (suite) | "ignore" (official: loss 0) | "robust" (l2 only)
    nan_safe: bool = True            # P49: zero derivative at the singular points (same values); False = official

    def __post_init__(self):
        object.__setattr__(self, "beta", _check_quadruple("beta", self.beta))
        object.__setattr__(self, "alpha", _check_quadruple("alpha", self.alpha))
        if not (self.alpha[1] > 0 and self.alpha[3] > 0):
            raise ValueError(f"alpha's sigma0 and sigma_T (2nd and 4th values) must be > 0; got {self.alpha}")
        for name in ("q2", "q3", "log_eps", "head_lr_mult"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0; got {getattr(self, name)}")
        if not (isinstance(self.linear_init, int) and not isinstance(self.linear_init, bool) and self.linear_init >= 0):
            raise ValueError(f"linear_init must be an integer >= 0; got {self.linear_init!r}")
        if self.observed_negatives not in robust.OBSERVED_NEGATIVES:
            raise ValueError(f"observed_negatives must be one of {robust.OBSERVED_NEGATIVES}; "
                             f"got {self.observed_negatives!r}")
        if not isinstance(self.nan_safe, bool):
            raise ValueError(f"nan_safe must be True or False; got {self.nan_safe!r}")


@METHODS.register_module()
class GRLoss(SPMLMethod):
    """Generalised robust loss (Chen et al., IJCAI 2024) on a pooled linear head."""

    name = "gr_loss"
    Config = GRLossConfig
    card = MethodCard(default_grid=False, relative_cost=1.0, display_name="GR Loss")

    def __init__(self, task, cfg=None, backbone=None):
        super().__init__(task, cfg, backbone)
        # sum K, sum V and count over the epoch's unknown entries (float64; diagnostics only)
        self.register_buffer("kv_sums", torch.zeros(3, dtype=torch.float64))

    def schedule(self, ctx: TrainContext) -> robust.KVSchedule:
        """(w, b, mu, sigma) of the current epoch (the official 1-based epoch is ctx.epoch + 1)."""
        try:
            return robust.kv_schedule(self.cfg.beta, self.cfg.alpha, ctx.epoch + 1, ctx.max_epochs,
                                      self.cfg.linear_init)
        except ValueError as exc:
            raise UserError(f"method '{self.name}': {exc}; lower --set linear_init") from None

    def backbone_held(self, ctx: TrainContext) -> bool:
        """The official ``linear_init`` epochs: the backbone gets no gradient (1-based epoch <= n)."""
        return ctx.epoch < self.cfg.linear_init

    def compute_losses(self, batch: Batch, ctx: TrainContext) -> dict[str, Tensor]:
        sched = self.schedule(ctx)
        if self.backbone_held(ctx):
            with torch.no_grad():
                maps = self.features(batch.inputs)
        else:
            maps = self.features(batch.inputs)
        logits = self.head(self.pool(maps).flatten(1))
        with torch.autocast(logits.device.type, enabled=False):
            probs = torch.sigmoid(logits.float())
            p_bar = probs.detach()
            k = robust.k_function(p_bar, sched.w, sched.b)
            v = robust.v_function(p_bar, sched.mu, sched.sigma)
            matrix = robust.gr_loss_matrix(probs, batch.targets, batch.observed, k, v, self.cfg.q2, self.cfg.q3,
                                           self.cfg.log_eps, self.cfg.observed_negatives, self.cfg.nan_safe)
        self._record_kv(k, v, ~batch.observed)
        return {"loss_gr": matrix.mean()}

    @torch.no_grad()
    def _record_kv(self, k: Tensor, v: Tensor, unknown: Tensor) -> None:
        sums = torch.stack([k[unknown].sum().double(), v[unknown].sum().double(), unknown.sum().double()])
        self.kv_sums += sums.to(self.kv_sums.device)

    def on_train_epoch_start(self, ctx: TrainContext) -> None:
        self.kv_sums.zero_()

    def on_train_epoch_end(self, ctx: TrainContext) -> dict[str, float]:
        # every rank saw its own rows: the epoch's sums over the ranks, identical on every rank afterwards
        self.kv_sums.copy_(collectives.all_reduce(self.kv_sums))
        sched = self.schedule(ctx)
        count = max(float(self.kv_sums[2]), 1.0)
        return {"w": sched.w, "b": sched.b, "mu": sched.mu, "sigma": sched.sigma,
                "mean_k_unknown": float(self.kv_sums[0]) / count, "mean_v_unknown": float(self.kv_sums[1]) / count,
                "backbone_held": float(self.backbone_held(ctx))}

    def recovered_labels(self) -> tuple[Tensor, Tensor] | None:
        return None                  # K is a soft label (< 0.5 everywhere with the defaults)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict] | None:
        return head_lr_groups(self, lr, self.cfg.head_lr_mult)
