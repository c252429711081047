"""CSL: class-aware selective loss for multi-label learning with partial annotations.

Paper: E. Ben-Baruch, T. Ridnik, I. Friedman, A. Ben-Cohen, N. Zamir, A. Noy, L. Zelnik-Manor,
"Multi-label Classification with Partial Annotations using Class-aware Selective Loss", CVPR 2022,
https://arxiv.org/abs/2110.10955. Official code: https://github.com/Alibaba-MIIL/PartialLabelingCSL
(``src/loss_functions/partial_asymmetric_loss.py``, ``train.py``). Spec: ``specs/methods_wave2.md``
section 6, pitfalls P31, P32, fixture W12. (Not the ``clsl`` method, whose v2 title is also "CSL".)

Loss (``loss_csl``): the partial ASL of every entry (``methods.modules.asl.partial_asl_per_entry``:
known positives with gamma_pos, known negatives with gamma_neg, un-annotated entries as negatives
with gamma_unann, focal weight detached), times the per-entry weights W of the mode
(``methods.modules.selective``), summed. Modes: ``negative``, ``ignore``, ``ignore_normalize_classes``
and ``selective`` (default): un-annotated entries of classes whose prior exceeds ``prior_threshold``
are ignored, and so are the ``likelihood_topk`` likeliest un-annotated entries. Head: GAP + linear.

Class prior (``prior``; buffers ``class_prior``, ``prior_sum``, ``prior_count``, ``prior_ready``, so
checkpoints carry it): ``"temporary"`` (default, the paper's procedure, spec 6.5): at the start of
epoch 0 a temporary linear head is trained in ``ignore`` mode on the pooled, un-augmented training
features for ``prior_epochs`` (0 = the run's epochs; batch = the run's), and the prior is the running
mean of sigmoid(training logits) over all its iterations (the official ``ComputePrior``, first
iterations included; :func:`methods.modules.selective.running_prior`); ``"observed"``:
n+_obs(c) / n_obs(c); ``"file:PATH"``: an official CSV (``Classes,avg_pred``); ``"none"``:
likelihood rule only. Only the selective mode uses a prior. The official validation-stream mean
(``ComputePrior`` with ``training=False``) is never fed by the official ``train.py`` and is not used
here either (a method never sees validation inputs); ``running_prior`` computes it for a caller that has
validation logits.

``recovered_labels()``: the entries ignored by the likelihood rule during the last epoch (the
suspected positives), for the label-recovery diagnostics.

Deviations from the official code:
- P32: ``prior_threshold = 0`` applies the prior (every class with a positive prior is ignored); the
  code's truthiness test silently disables it. ``zero_threshold_disables_prior=True`` restores it.
- P32: top-K is per image (each image's ``likelihood_topk`` likeliest un-annotated entries); the
  code takes ``likelihood_topk * B`` entries over the whole batch. ``topk_scope="batch"`` restores it.
  Both rank with a stable sort (the code's ``argsort`` leaves ties unspecified).
- P31: a prior file is validated (exactly C rows in class order, numeric values; checked when the
  method is built, the file's existence when the config is); ``validate_prior_file=False`` reads it
  like the code (file order, NaN where unreadable, cut or padded to C).
- The temporary model is a linear head on frozen backbone features (the code's README trains a
  full temporary model), with Adam at ``prior_lr`` and no weight decay; its initialisation and batch
  order are seeded from the run seed, and the global RNG is left untouched.
- The prior's running sum is kept in float64 (the official ``ComputePrior`` sums in float32, which
  drifts over tens of thousands of iterations); each batch's sum is float32 as in the code.
- ``reduction="mean"`` (sum / (B x C)) is a suite switch; the code sums (P25). The loss is computed in
  float32 under autocast; CUDA is not hard-coded. The official recipe (TResNet-M, OneCycle, EMA,
  RandAugment) is not reproduced: the profiles' common recipe trains every method.
Pitfall (P…, C…) and fixture (F…, W…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from benchmark.contract import collectives
from benchmark.contract.card import MethodCard
from benchmark.contract.method import Batch, Method, TrainContext
from benchmark.contract.sample_table import SampleTable
from benchmark.core.registry import METHODS
from methods.modules.asl import partial_asl_per_entry
from methods.modules.selective import (
    PARTIAL_MODES,
    TOPK_SCOPES,
    mode_weights,
    observed_rates,
    prior_ignore_mask,
    read_prior_csv,
    running_prior,
    selective_weights,
)

REDUCTIONS = ("sum", "mean")


@dataclass(frozen=True)
class CSLConfig:
    mode: str = "selective"            # partial_loss_mode: negative | ignore | ignore_normalize_classes | selective
    gamma_pos: float = 0.0             # README RPS command (argparse 0)
    gamma_neg: float = 1.0             # README RPS command (argparse 1; FPC command 3)
    gamma_unann: float = 4.0           # README RPS / FPC commands (argparse 2)
    alpha_pos: float = 1.0             # per-type loss weights (argparse 1)
    alpha_neg: float = 1.0
    alpha_unann: float = 1.0
    clip: float = 0.0                  # probability margin of (un-annotated) negatives (argparse 0)
    eps: float = 1e-8                  # log clamp (code)
    likelihood_topk: int = 5           # K per image (official: K * B per batch, see topk_scope)
    topk_scope: str = "image"          # "image" (P32 fixed) | "batch" (official)
    prior: str = "temporary"           # "temporary" | "observed" | "file:PATH" | "none"
    prior_threshold: float = 0.5       # README commands (argparse 0.05)
    zero_threshold_disables_prior: bool = False   # True = the code's truthiness test (P32)
    validate_prior_file: bool = True   # False = read a prior file like the code (P31)
    prior_epochs: int = 0              # temporary model's epochs; 0 = the run's epochs
    prior_lr: float = 1e-3             # temporary model's Adam lr (the CPU profiles' lr)
    reduction: str = "sum"             # official "sum"; "mean" = sum / (B x C) (P25)

    def __post_init__(self):
        for name, value, allowed in (("mode", self.mode, PARTIAL_MODES), ("topk_scope", self.topk_scope, TOPK_SCOPES),
                                     ("reduction", self.reduction, REDUCTIONS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}; got {value!r}")
        prior = str(self.prior)
        if prior not in ("temporary", "observed", "none", "None") and not prior.startswith("file:"):
            raise ValueError(f"prior must be temporary, observed, none or file:PATH; got {self.prior!r}")
        if prior.startswith("file:") and not Path(prior[5:]).is_file():
            raise ValueError(f"prior must name an existing file; got {self.prior!r} (no such file)")
        if min(self.gamma_pos, self.gamma_neg, self.gamma_unann) < 0:
            raise ValueError(f"gamma_pos, gamma_neg and gamma_unann must be >= 0; got "
                             f"{self.gamma_pos}, {self.gamma_neg}, {self.gamma_unann}")
        if self.likelihood_topk < 0 or self.prior_epochs < 0:
            raise ValueError(f"likelihood_topk and prior_epochs must be >= 0; got {self.likelihood_topk}, "
                             f"{self.prior_epochs}")
        if not 0.0 <= self.clip < 1.0 or self.prior_lr <= 0:
            raise ValueError(f"clip must be in [0, 1) and prior_lr > 0; got {self.clip}, {self.prior_lr}")


@METHODS.register_module()
class CSL(Method):
    """Class-aware selective loss (Ben-Baruch et al.) on a pooled linear head."""

    name = "csl"
    Config = CSLConfig
    card = MethodCard(display_name="CSL")

    def __init__(self, task, cfg=None, backbone=None):
        super().__init__(task, cfg, backbone)
        c = task.num_classes
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(task.feature_dim, c)
        self.register_buffer("class_prior", torch.zeros(c))
        self.register_buffer("prior_sum", torch.zeros(c, dtype=torch.float64))
        self.register_buffer("prior_count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("prior_ready", torch.zeros((), dtype=torch.bool))
        self.recovered = SampleTable(task.num_train, c)
        self.recovered_seen = SampleTable(task.num_train)
        self._counts = torch.zeros(4)       # ignored by prior / by likelihood / by either, un-annotated (per epoch)
        prior = str(self.cfg.prior)
        if prior.startswith("file:"):
            self.class_prior.copy_(read_prior_csv(prior[5:], task.class_names, self.cfg.validate_prior_file))
            self.prior_ready.fill_(True)

    @property
    def uses_prior(self) -> bool:
        return self.cfg.mode == "selective" and str(self.cfg.prior) not in ("none", "None")

    # ------------------------------------------------------------------ loss
    def predict_scores(self, inputs: Tensor) -> Tensor:
        return self.head(self.pool(self.features(inputs)).flatten(1))

    def csl_loss(self, logits: Tensor, targets: Tensor, observed: Tensor, mode: str | None = None
                 ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(loss, ignored by prior, ignored by likelihood) of float32 ``logits`` under ``mode``."""
        cfg, mode = self.cfg, mode or self.cfg.mode
        per_entry = partial_asl_per_entry(logits, targets, observed, cfg.gamma_pos, cfg.gamma_neg, cfg.gamma_unann,
                                          cfg.alpha_pos, cfg.alpha_neg, cfg.alpha_unann, cfg.clip, cfg.eps)
        by_prior = by_likelihood = None
        if mode == "selective":
            p = torch.sigmoid(logits.detach())
            p_neg = (1.0 - p + cfg.clip).clamp(max=1.0) if cfg.clip > 0 else 1.0 - p
            ignore = None
            if self.uses_prior and bool(self.prior_ready):
                ignore = prior_ignore_mask(self.class_prior, cfg.prior_threshold, cfg.zero_threshold_disables_prior)
            weights, by_prior, by_likelihood = selective_weights(p_neg, observed, ignore, cfg.likelihood_topk,
                                                                 cfg.topk_scope)
        else:
            weights = mode_weights(mode, observed).to(per_entry.dtype)
        total = (per_entry * weights).sum()
        return (total if cfg.reduction == "sum" else total / per_entry.numel()), by_prior, by_likelihood

    def compute_losses(self, batch: Batch, ctx: TrainContext) -> dict[str, Tensor]:
        logits = self.predict_scores(batch.inputs).float()
        loss, by_prior, by_likelihood = self.csl_loss(logits, batch.targets, batch.observed)
        if self.cfg.reduction == "sum":
            loss = loss * collectives.sum_scale()          # DDP: trains like the global batch's sum (benchmark.contract.collectives)
        if by_likelihood is not None:
            with torch.no_grad():
                self.recovered.write(batch.index, by_likelihood)
                self.recovered_seen.write(batch.index, True)
                counts = torch.stack([by_prior.sum(), by_likelihood.sum(), (by_prior | by_likelihood).sum(),
                                      (~batch.observed).sum()]).float().cpu()
                self._counts = self._counts + counts
        return {"loss_csl": loss}

    # ------------------------------------------------------------------ class prior
    def estimate_prior(self, ctx: TrainContext) -> None:
        """Fill the prior buffers (``temporary`` or ``observed``) from ``ctx.iterate_train()``."""
        if ctx.iterate_train is None:
            raise RuntimeError("csl needs ctx.iterate_train to estimate the class prior")
        if str(self.cfg.prior) == "observed":
            self.class_prior.copy_(observed_rates(ctx.iterate_train()).to(self.class_prior))
        else:
            self._train_temporary_model(ctx)
        self.prior_ready.fill_(True)

    def _train_temporary_model(self, ctx: TrainContext) -> None:
        was_training = self.training
        self.eval()
        with torch.no_grad():
            rows = [(self.pool(self.features(b.inputs)).flatten(1).float(), b.targets, b.observed)
                    for b in ctx.iterate_train()]
        self.train(was_training)
        # Each rank pooled its share of the rows; all of them, in order, train the same head on every rank.
        feats, targets, observed = collectives.gather_rows(*(torch.cat(parts) for parts in zip(*rows)))
        n = feats.shape[0]
        batch = max(1, n // max(1, ctx.iters_per_epoch))
        gen = torch.Generator().manual_seed(ctx.seed * 1000 + 77)
        with torch.random.fork_rng(devices=[]):          # its default init must not draw from the global RNG
            head = nn.Linear(feats.shape[1], self.task.num_classes).to(feats.device)
        with torch.no_grad():
            bound = 1.0 / feats.shape[1] ** 0.5
            head.weight.copy_(torch.rand(head.weight.shape, generator=gen) * 2 * bound - bound)
            head.bias.copy_(torch.rand(head.bias.shape, generator=gen) * 2 * bound - bound)
        optimizer = torch.optim.Adam(head.parameters(), lr=self.cfg.prior_lr)
        prior, state = torch.zeros(self.task.num_classes), None
        with torch.enable_grad():
            for _ in range(self.cfg.prior_epochs or ctx.max_epochs):
                order = torch.randperm(n, generator=gen).to(feats.device)
                for start in range(0, max(1, n - batch + 1), batch):    # drop_last, like the run's loader
                    idx = order[start:start + batch]
                    logits = head(feats[idx])
                    prior, state = running_prior(logits, state)        # ComputePrior.update, every iteration
                    loss = self.csl_loss(logits, targets[idx], observed[idx], mode="ignore")[0]
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
        if state is not None:
            self.prior_sum.copy_(state[0])
            self.prior_count.copy_(state[1])
        self.class_prior.copy_(prior)

    # ------------------------------------------------------------------ epoch hooks
    def on_train_epoch_start(self, ctx: TrainContext) -> None:
        self.recovered.clear()
        self.recovered_seen.clear()
        self._counts = torch.zeros(4)
        if self.uses_prior and not bool(self.prior_ready):
            self.estimate_prior(ctx)

    def on_train_epoch_end(self, ctx: TrainContext) -> dict[str, float]:
        if self.cfg.mode != "selective":
            return {}
        by_prior, by_likelihood, either, unann = (float(v) for v in collectives.all_reduce(self._counts))
        diag = {"ignored_prior": by_prior, "ignored_likelihood": by_likelihood,
                "ignored_share": either / max(1.0, unann)}
        if self.uses_prior and bool(self.prior_ready):
            ignore = prior_ignore_mask(self.class_prior, self.cfg.prior_threshold,
                                       self.cfg.zero_threshold_disables_prior)
            diag["prior_classes"] = float(ignore.sum()) if ignore is not None else 0.0
            diag["prior_mean"] = float(self.class_prior.nan_to_num(0.0).mean())
        return diag

    def recovered_labels(self) -> tuple[Tensor, Tensor] | None:
        """(rows, un-annotated entries ignored as likely positives) of the last epoch; None outside selective."""
        index = self.recovered_seen.rows.nonzero(as_tuple=True)[0]
        if index.numel() == 0:
            return None
        return index, self.recovered[index]
