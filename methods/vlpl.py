"""VLPL: vision-language pseudo-labels for single-positive multi-label learning.

Paper: X. Xing, Z. Xiong, A. Stylianou, S. Sastry, L. Gong, N. Jacobs, "VLPL: Vision Language Pseudo Labels
for Multi-label Learning with Single Positive Labels", CVPR Workshops 2024, https://arxiv.org/abs/2310.15985.
Official code: https://github.com/mvrl/VLPL (commit ed09b59: ``losses.py`` ``loss_EM_PL``,
``compute_batch_loss``; ``models.py`` ``ImageClassifier.forward`` (resnet50 branch); ``main_clip.py``;
``*text_feature*.npy``). Spec: ``specs/methods_wave3_clip.md`` 4.6 (fixture Y10); loss and pseudo-labels
in :mod:`methods.modules.damp`. AEVLP (``methods/aevlp.py``) is its generalisation.

Model: global average pooling + linear head (ResNet-50 + ``FCNet`` in the official code), one parameter
group (``main_clip.py`` builds one Adam group: ``head_lr_mult`` 1). CLIP (``requires clip, clip_views``)
only makes pseudo-labels: the harness encodes each training image once with the run's frozen CLIP (the
448-px ImageNet-normalised image resized to the CLIP size, 336 for ViT-L/14@336, P98); the method holds
the unit-norm text features of the class prompts. Pseudo-label = [softmax(cos / temp) > threshold]
(absolute, one view; the negative pseudo-labels of the ResNet branch are commented out in the code).
Loss terms (sum / (B * C) each, nl eps 1e-5, float32 also under autocast; their sum is ``loss_EM_PL``):
``loss_pos`` nl(p) at observed positives, ``loss_em`` -alpha H(p) at unknown entries without a
pseudo-label, ``loss_pl`` beta_pos [0.9 nl(p) + 0.1 nl(1 - p)] at pseudo-labelled unknown entries, once
the 1-based epoch is past ``warmup_epoch`` (official 0; before it EM alone). alpha per dataset
(``main_clip.py``): pascal 0.2, coco 0.1, nuswide 0.1, cub 0.01 (voc2007 / voc2012 take pascal; others 0.1
[GUESS]). ``recovered_labels()``: the pseudo-labels of the unknown entries in the last epoch.

Protocols: designed for single positive. Random protocol (spec 1.2): ``loss_neg`` nl(1 - p) at observed
negatives (the official loss gives them 0), which are never pseudo-labelled.

Deviations from the official code:
- Text features: the official ships precomputed ViT-L/14@336 text features (``*text_feature*.npy``, the
  VOC and COCO files of the bare class names, "labelonly"); the suite encodes ``prompt`` with the run's
  CLIP text tower: the bare name for pascal / coco, "a photo of a <name>." elsewhere [GUESS: the prompt of
  the NUS-WIDE and CUB files is not in the repository].
- The CLIP view is encoded once per image and cached (official: every step, with the classifier image's
  random flip); ``clip_flips=True`` caches both orientations and draws one per step (p 0.5, seeded).
  CLIP runs in open_clip with OpenAI weights (official: Hugging Face ``openai/clip-vit-large-patch14-336``,
  the same network, P98, P99).
- Selection: the suite's rule and all epochs (official: best clean-validation epoch).
Pitfall (P…) and fixture (X…/Y…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from benchmark.contract.card import MethodCard
from benchmark.contract.method import Batch, TrainContext
from benchmark.core.registry import METHODS
from methods.aevlp import CLIPPseudoLabels, class_text_features, unit
from methods.em import SUITE_TO_OFFICIAL
from methods.modules import damp, spml

# main_clip.py, per official dataset: alpha (EM weight) and the text prompt of its text-feature file
OFFICIAL = {"pascal": {"alpha": 0.2, "prompt": "{}"}, "coco": {"alpha": 0.1, "prompt": "{}"},
            "nuswide": {"alpha": 0.1, "prompt": "a photo of a {}."}, "cub": {"alpha": 0.01, "prompt": "a photo of a {}."}}
GUESS = {"alpha": 0.1, "prompt": "a photo of a {}."}      # [GUESS] datasets the code has no values for
DATASET_VALUES = {key: OFFICIAL[name] for key, name in SUITE_TO_OFFICIAL.items()}


def dataset_values(dataset: str | None) -> dict:
    return dict(DATASET_VALUES.get(dataset or "", GUESS))


@dataclass(frozen=True)
class VLPLConfig:
    alpha: float | None = None          # None = per dataset (main_clip.py P['alpha'])
    beta_pos: float = 0.7               # pseudo-label weight (main_clip.py P['beta_pos'], every dataset)
    positive_weight: float = 0.9        # nl(p) share at pseudo-labels (losses.py:227, literal 0.9 / 0.1)
    threshold: float = 0.3              # on softmax(cos / temp) (main_clip.py -th default 0.3)
    temp: float = 0.01                  # main_clip.py -t default 0.01
    warmup_epoch: int = 0               # EM only while the 1-based epoch <= this (main_clip.py, every dataset 0)
    prompt: str | None = None           # None = per dataset ("{}" pascal / coco, "a photo of a {}." else)
    pre_resize: int = 448               # the classifier image size the CLIP view is resized from (datasets.py:60)
    clip_norm: str = "imagenet"         # the CLIP view is the ImageNet-normalised image (P98); "clip" switch
    clip_flips: bool = False            # True: both orientations cached, one drawn per step
    log_eps: float = 1e-5               # losses.py LOG_EPSILON (P94)
    head_lr_mult: float = 1.0           # one Adam group in main_clip.py

    def __post_init__(self):
        for name in ("beta_pos", "temp", "log_eps", "head_lr_mult"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0; got {getattr(self, name)}")
        if self.alpha is not None and not self.alpha >= 0:
            raise ValueError(f"alpha must be >= 0 or None; got {self.alpha}")
        for name in ("positive_weight", "threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]; got {getattr(self, name)}")
        if not (isinstance(self.warmup_epoch, int) and self.warmup_epoch >= 0):
            raise ValueError(f"warmup_epoch must be an integer >= 0; got {self.warmup_epoch!r}")
        if not (isinstance(self.pre_resize, int) and self.pre_resize > 0):
            raise ValueError(f"pre_resize must be a positive integer; got {self.pre_resize!r}")
        if self.prompt is not None and "{}" not in self.prompt:
            raise ValueError(f"prompt must hold '{{}}' for the class name; got {self.prompt!r}")
        if self.clip_norm not in ("imagenet", "clip"):
            raise ValueError(f"clip_norm must be 'imagenet' or 'clip'; got {self.clip_norm!r}")


@METHODS.register_module()
class VLPL(CLIPPseudoLabels):
    """EM loss with thresholded CLIP pseudo-labels (Xing et al., CVPRW 2024) on a pooled linear head."""

    name = "vlpl"
    Config = VLPLConfig
    card = MethodCard(requires={"clip", "clip_views"}, relative_cost=1.1, display_name="VLPL")

    def __init__(self, task, cfg=None, backbone=None):
        super().__init__(task, cfg, backbone)
        values = dataset_values(task.info.get("dataset"))
        self.alpha = values["alpha"] if self.cfg.alpha is None else self.cfg.alpha
        prompt = values["prompt"] if self.cfg.prompt is None else self.cfg.prompt
        self.register_buffer("text_features", unit(class_text_features(task.clip, task.class_names, prompt)))

    @classmethod
    def clip_view_rule(cls, cfg: VLPLConfig, dataset: str) -> dict:
        return {"grid": 0, "pre_resize": cfg.pre_resize, "norm": cfg.clip_norm, "flips": cfg.clip_flips}

    def pseudo_labels(self, batch: Batch, ctx: TrainContext) -> Tensor:
        """Positive pseudo-labels of the unknown entries (bool [B, C]; none without a view cache)."""
        scores = self.batch_scores(batch, ctx, self.cfg.temp)
        if scores is None:
            return torch.zeros_like(batch.observed)
        return damp.vlpl_pseudo_labels(scores, self.cfg.threshold) & ~batch.observed

    def compute_losses(self, batch: Batch, ctx: TrainContext) -> dict[str, Tensor]:
        logits = self.predict_scores(batch.inputs)
        with torch.autocast(logits.device.type, enabled=False):
            probs = torch.sigmoid(logits.float())
            pseudo = self.pseudo_labels(batch, ctx)
            active = pseudo if ctx.epoch + 1 > self.cfg.warmup_epoch else None
            terms = damp.em_pl_terms(probs, batch.targets, batch.observed, active, self.alpha, self.cfg.beta_pos,
                                     self.cfg.positive_weight, self.cfg.log_eps)
        self.record(batch, pseudo if active is not None else torch.zeros_like(pseudo))
        names = {"apl": "pl"}
        return {f"loss_{names.get(key, key)}": spml.mean_matrix(matrix) for key, matrix in terms.items()}

    def on_train_epoch_end(self, ctx: TrainContext) -> dict[str, float]:
        return self.pseudo_counts()
