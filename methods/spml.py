"""AN, AN-LS, WAN and EPR: the single-positive baselines of Cole et al.

Paper: E. Cole, O. Mac Aodha, T. Lorieul, P. Perona, D. Morris, N. Jojic, "Multi-Label Learning from
Single Positive Labels", CVPR 2021, https://arxiv.org/abs/2106.09708.
Official code: https://github.com/elijahcole/single-positive-multi-label (``losses.py``: ``loss_an``,
``loss_an_ls``, ``loss_wan``, ``loss_epr``; ``train.py``). Spec: ``specs/methods_wave2.md`` section 2;
the loss matrices live in :mod:`methods.modules.spml` (fixtures W1-W4). ROLE is in ``methods/role.py``.

Model: global average pooling + linear head (SPML's ``ImageClassifier``; in the frozen protocol this
is SPML's ``linear_fixed_features`` mode). Losses work on probabilities with nl(x) = -log(x + 1e-5)
and are reduced by sum / (B * C) over every entry, in float32 also under autocast.

- ``an``: every unknown label is a negative.
- ``an_ls``: AN with label smoothing 0.1 on positives and negatives alike.
- ``wan``: assumed negatives weighted by gamma = 1 / (C - 1).
- ``epr``: only the observed positives, plus (mean_b sum_c p - k)^2 / C^2; k is the mean number of
  positives per training image (``requires expected_num_pos``).

Protocols. ``single_positive`` is what the methods were designed for. Under ``random`` (observed
negatives) the official losses assert and stop (pitfall P26); the suite's extension (spec 2.7,
default on): AN / AN-LS are unchanged (an observed negative is a negative, as an unknown is); WAN
gives observed negatives weight 1 and unknowns gamma; EPR adds nl(1 - p) on observed negatives
(SPML's ``iu`` loss plus the regulariser). ``observed_negatives=False`` (WAN, EPR) treats observed
negatives as unknowns instead. k for EPR: the harness's estimate from observed labels under
``random``; under ``single_positive`` the value from the hidden training labels, as Cole et al. do
(privileged information, recorded in spec.json; pitfall P27). ``expected_num_pos=<float>`` fixes it.

Deviations from the official code:
- Observed negatives are supported (above) instead of an AssertionError (P26).
- Recipe: the official script grids batch size {8, 16} x lr {1e-5 ... 1e-2} with Adam without weight
  decay and picks the best run on a clean validation split; the suite trains every method with the
  profile's recipe and selects epochs on the observed labels of its validation split (P37).
- Evaluation never drops the last test batch (the official loaders use ``drop_last=True``, P28).
- Without a harness value (direct use outside a run) EPR falls back to the batch's own estimate.
Pitfall (P…, C…) and fixture (F…, W…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from benchmark.contract.card import MethodCard
from benchmark.contract.method import Batch, Method, TrainContext
from benchmark.core.registry import METHODS
from methods.modules import spml


def _check_positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be > 0; got {value}")


@dataclass(frozen=True)
class ANConfig:
    log_eps: float = 1e-5            # SPML LOG_EPSILON in nl(x) = -log(x + eps)

    def __post_init__(self):
        _check_positive("log_eps", self.log_eps)


@dataclass(frozen=True)
class ANLSConfig(ANConfig):
    ls_coef: float = 0.1             # SPML train.py P['ls_coef']

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.ls_coef < 0.5:
            raise ValueError(f"ls_coef must be in [0, 0.5); got {self.ls_coef}")


@dataclass(frozen=True)
class WANConfig(ANConfig):
    unknown_weight: float | None = None   # None = 1 / (C - 1) (hard-coded in SPML loss_wan)
    observed_negatives: bool = True        # suite extension: observed negatives weight 1 (False: as unknowns)

    def __post_init__(self):
        super().__post_init__()
        if self.unknown_weight is not None and not self.unknown_weight >= 0:
            raise ValueError(f"unknown_weight must be >= 0 or None; got {self.unknown_weight}")


@dataclass(frozen=True)
class EPRConfig(ANConfig):
    expected_num_pos: float | None = None  # k; None = the harness's value (TaskSpec.info), spec 1.4
    observed_negatives: bool = True        # suite extension: nl(1 - p) on observed negatives

    def __post_init__(self):
        super().__post_init__()
        _check_positive("expected_num_pos", self.expected_num_pos)


class SPMLMethod(Method):
    """Pooled-linear classifier trained with one of Cole et al.'s loss matrices."""

    Config = ANConfig

    def __init__(self, task, cfg=None, backbone=None):
        super().__init__(task, cfg, backbone)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(task.feature_dim, task.num_classes)

    def predict_scores(self, inputs: Tensor) -> Tensor:
        return self.head(self.pool(self.features(inputs)).flatten(1))

    def expected_num_pos(self, batch: Batch) -> float:
        if getattr(self.cfg, "expected_num_pos", None) is not None:
            return float(self.cfg.expected_num_pos)
        if "expected_num_pos" in self.task.info:
            return float(self.task.info["expected_num_pos"])
        return spml.batch_expected_positives(batch.targets, batch.observed)

    def compute_losses(self, batch: Batch, ctx: TrainContext) -> dict[str, Tensor]:
        logits = self.predict_scores(batch.inputs)
        with torch.autocast(logits.device.type, enabled=False):
            return self.loss_terms(torch.sigmoid(logits.float()), batch)

    def loss_terms(self, probs: Tensor, batch: Batch) -> dict[str, Tensor]:
        raise NotImplementedError


@METHODS.register_module()
class AN(SPMLMethod):
    """Assume negative (Cole et al., CVPR 2021)."""

    name = "an"
    Config = ANConfig
    card = SPMLMethod.card.replace(display_name="AN")

    def loss_terms(self, probs, batch):
        matrix = spml.assume_negative_matrix(probs, batch.targets, batch.observed, 0.0, self.cfg.log_eps)
        return {"loss_an": spml.mean_matrix(matrix)}


@METHODS.register_module()
class ANLS(SPMLMethod):
    """Assume negative with label smoothing (Cole et al., CVPR 2021)."""

    name = "an_ls"
    Config = ANLSConfig
    card = SPMLMethod.card.replace(display_name="AN-LS")

    def loss_terms(self, probs, batch):
        matrix = spml.assume_negative_matrix(probs, batch.targets, batch.observed, self.cfg.ls_coef,
                                             self.cfg.log_eps)
        return {"loss_an": spml.mean_matrix(matrix)}


@METHODS.register_module()
class WAN(SPMLMethod):
    """Weighted assume negative (Cole et al., CVPR 2021)."""

    name = "wan"
    Config = WANConfig
    card = SPMLMethod.card.replace(display_name="WAN")

    def loss_terms(self, probs, batch):
        weight = self.cfg.unknown_weight
        if weight is None:
            weight = 1.0 / max(1, self.task.num_classes - 1)
        matrix = spml.weighted_an_matrix(probs, batch.targets, batch.observed, weight,
                                         self.cfg.observed_negatives, self.cfg.log_eps)
        return {"loss_an": spml.mean_matrix(matrix)}


@METHODS.register_module()
class EPR(SPMLMethod):
    """Expected positive regularisation (Cole et al., CVPR 2021)."""

    name = "epr"
    Config = EPRConfig
    card = MethodCard(requires={"expected_num_pos"}, display_name="EPR")

    def loss_terms(self, probs, batch):
        matrix = spml.epr_matrix(probs, batch.targets, batch.observed, self.cfg.observed_negatives,
                                 self.cfg.log_eps)
        reg = spml.expected_positive_reg(probs, self.expected_num_pos(batch))
        return {"loss_obs": spml.mean_matrix(matrix), "loss_epr": reg}
