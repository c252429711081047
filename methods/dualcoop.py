"""DualCoOp: positive and negative prompts learned on a frozen CLIP.

Paper: X. Sun, P. Hu, K. Saenko, "DualCoOp: Fast Adaptation to Multi-Label Recognition with Limited
Annotations", NeurIPS 2022, https://arxiv.org/abs/2206.09541.
Official code: https://github.com/sunxm2357/DualCoOp (commit 49e71d7: ``models/dualcoop.py``,
``clip/model.py`` ``AttentionConv``, ``utils/asymmetric_loss.py``, ``utils/trainers.py``).
Spec: ``specs/methods_wave3_clip.md`` section 2; fixtures Y1 (loss), Y2 (aggregation), Y11 (token ids).

Model (``requires clip, clip_trunk``): the backbone is the CLIP's ResNet trunk, frozen and in eval
mode in both protocols (in ``frozen`` the harness caches its maps). Dense tokens z_l (the spatial
mean and the h*w positions through the attention pool's value and output projections,
:mod:`methods.modules.dense_clip`), text features t_k of 2C learned prompts (C negative, then C
positive; :mod:`methods.modules.prompts`), s_kl = 20 <z_l/|z_l|, t_k/|t_k|>; per class the softmax
over tokens of the positive similarities weighs both prompts: o_c = 5 sum_l s_cl w_cl, logits
[B, 2, C] (index 0 negative). Score: o+ - o- (its sigmoid is the official two-way softmax). Loss
``loss_asl_pair``: loss_w x the two-prompt asymmetric loss (gamma- 2, gamma+ 1, clip 0.05, eps 1e-6,
focal weight detached) summed over the counted entries, in float32 also under autocast. Only the
context vectors train (SGD, weight decay 5e-4 on them, P65). Text features are recomputed every
training step and once per evaluation pass. The official ``-pp`` is the known proportion, the suite's
``random`` ratio (P70; CSL's RPS value is the removed share).

Deviations from the official code:
- Unknown labels: the official ignores them (random-proportion protocol). Under ``single_positive``
  that leaves no negative term, so ``unknown="auto"`` (default) counts them as negatives there and
  ignores them otherwise, as the suite's ASL does; ``"ignore"`` / ``"negative"`` force a rule.
- The text tower is frozen explicitly (official: requires_grad stays True, not in the optimizer, P68)
  and the discarded 32-head attention of ``AttentionConv`` is not computed (P61): no numeric effect.
- The positional embedding is interpolated from the checkpoint's grid to the map size once (P62):
  the same values when training and test sizes agree (official recipe); ``val.py``'s 224-px test
  after 448-px training, which cannot load, is not reproduced.
- ``gamma_neg=0`` / ``gamma_pos=0`` are honoured (the official CLI skips falsy values, P64).
- The harness's recipe engine: a linear warm-up from lr/100 over epoch 0 and an iteration-level
  cosine (T_max 50 epochs) replace DASSL's constant lr 1e-5 in epoch 0 and per-epoch cosine steps
  (recorded in the recipe); the ``clsl`` pipeline (resize, flip, colour cutout, RandAugment pair)
  replaces Resize -> CutoutPIL -> pip RandAugment (no flip), the closest harness pipeline.
- Model selection, masks: the suite's (held-out validation, seeded masks); the official selects on
  the test split (P66) and draws an unseeded mask per run (P67).
- The official loader rounds conv/linear weights to float16 before casting back (OpenAI files are
  float16 already: identical); a float32 OpenCLIP checkpoint is used as it is.
- CPU profiles (smoke, default): the tiny random CLIP of the harness (no pretrained CLIP), with
  class-specific contexts (``csc=True``, card profile override): the numbers test the pipeline, not
  DualCoOp.
Pitfall (P…) and fixture (X…/Y…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from benchmark.contract import collectives
from benchmark.contract.card import MethodCard
from benchmark.contract.method import Batch, Method, TrainContext
from benchmark.core.errors import UserError
from benchmark.core.registry import METHODS
from methods.asl import UNKNOWN_RULES, resolve_unknown
from methods.modules.dense_clip import DenseCLIPTokens
from methods.modules.prompts import ContextPrompts, PromptTextEncoder


@dataclass(frozen=True)
class DualCoOpConfig:
    n_ctx_pos: int = 16                  # utils/build_cfg.py extend_cfg N_CTX_POS (--n_ctx_pos)
    n_ctx_neg: int = 16                  # N_CTX_NEG
    csc: bool = False                    # class-specific contexts (--csc; README's generic command sets it)
    prompt_init: tuple[str, str] | None = None   # (positive words, negative words); None = N(0, 0.02^2)
    loss_w: float = 1.0                  # opts.py --loss_w (README COCO example 0.03 at pp 0.5)
    gamma_neg: float = 2.0               # extend_cfg ASL_GAMMA_NEG (opts.py default 2)
    gamma_pos: float = 1.0               # ASL_GAMMA_POS
    clip: float = 0.05                   # AsymmetricLoss probability margin of the negatives
    eps: float = 1e-6                    # AsymmetricLoss log clamp
    logit_factors: tuple[float, float] = (20.0, 5.0)   # literals of DualCoop.forward (P63)
    unknown: str = "auto"                # "auto" | "ignore" | "negative" (suite rule, spec 1.2)

    def __post_init__(self):
        if self.n_ctx_pos < 1 or self.n_ctx_neg < 1:
            raise ValueError(f"n_ctx_pos and n_ctx_neg must be >= 1; got {self.n_ctx_pos}, {self.n_ctx_neg}")
        if self.prompt_init is not None and (len(self.prompt_init) != 2 or not all(
                isinstance(w, str) and w.strip() for w in self.prompt_init)):
            raise ValueError(f"prompt_init must be two non-empty strings (positive, negative words); got "
                             f"{self.prompt_init!r}")
        if self.loss_w <= 0 or self.gamma_neg < 0 or self.gamma_pos < 0:
            raise ValueError(f"loss_w must be > 0 and gamma_neg, gamma_pos >= 0; got {self.loss_w}, "
                             f"{self.gamma_neg}, {self.gamma_pos}")
        if not 0.0 <= self.clip < 1.0 or not self.eps > 0:
            raise ValueError(f"clip must be in [0, 1) and eps > 0; got {self.clip}, {self.eps}")
        if len(self.logit_factors) != 2 or not all(f > 0 for f in self.logit_factors):
            raise ValueError(f"logit_factors must be two positive numbers; got {self.logit_factors!r}")
        if self.unknown not in UNKNOWN_RULES:
            raise ValueError(f"unknown must be one of {UNKNOWN_RULES}; got {self.unknown!r}")


def region_logits(tokens: Tensor, text: Tensor, token_scale: float = 20.0, logit_scale: float = 5.0) -> Tensor:
    """Class-specific region aggregation (fixture Y2): tokens [B, L, E], text [2C, E] (C negative
    prompts, then C positive) -> logits [B, 2, C], index 0 negative. The softmax weights over the L
    tokens come from the positive prompts and serve both prompts of a class (P60: L includes the mean)."""
    tokens = tokens / tokens.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    sims = token_scale * torch.einsum("ble,ke->bkl", tokens, text.to(tokens.dtype))    # [B, 2C, L]
    count = text.shape[0] // 2
    weights = torch.softmax(sims[:, count:], dim=-1)
    out = logit_scale * (sims * torch.cat([weights, weights], dim=1)).sum(-1)          # [B, 2C]
    return out.reshape(out.shape[0], 2, count)


def pair_asl(logits: Tensor, targets: Tensor, counted: Tensor, gamma_neg: float = 2.0, gamma_pos: float = 1.0,
             clip: float = 0.05, eps: float = 1e-6) -> Tensor:
    """DualCoOp's asymmetric loss on two-prompt logits [B, 2, C] (fixture Y1): p, q from the two-way
    softmax, q clipped to min(q + clip, 1), focal weights detached, summed over the ``counted`` entries."""
    probs = torch.softmax(logits.float(), dim=1)
    p, q = probs[:, 1], probs[:, 0]
    if clip > 0:
        q = (q + clip).clamp(max=1)
    y = targets.float()
    loss = y * torch.log(p.clamp(min=eps)) + (1 - y) * torch.log(q.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        with torch.no_grad():
            focus = p * y + q * (1 - y)
            weight = torch.pow(1 - focus, gamma_pos * y + gamma_neg * (1 - y))
        loss = loss * weight
    return -(loss * counted.to(loss.dtype)).sum()


@METHODS.register_module()
class DualCoOp(Method):
    """DualCoOp (Sun et al., NeurIPS 2022): learned positive / negative prompts on a frozen CLIP."""

    name = "dualcoop"
    Config = DualCoOpConfig
    # CPU profiles: the tiny random CLIP's text tower gives nearly the same features for every class name
    # (cosine ~0.87), so one shared context cannot tell classes apart (test mAP stays at the label-frequency
    # level); class-specific contexts (--csc, the README's generic command) can.
    card = MethodCard(requires={"clip", "clip_trunk"}, relative_cost=2.0,
                      profile_overrides={"smoke": {"csc": True}, "default": {"csc": True}},
                      display_name="DualCoOp")

    def __init__(self, task, cfg=None, backbone=None):
        super().__init__(task, cfg, backbone)
        clip = task.clip
        if clip is None:
            raise UserError("dualcoop needs the run's CLIP (TaskSpec.clip): its card requires 'clip'; run it "
                            "through the harness, which builds it from --clip-arch / --clip-weights")
        self.backbone.requires_grad_(False)          # the CLIP trunk is frozen (only the prompts train)
        self.dense = DenseCLIPTokens(clip.visual)
        self.text = PromptTextEncoder(clip)
        words = self.cfg.prompt_init or (None, None)
        self.prompts_pos = ContextPrompts(clip, task.class_names, self.cfg.n_ctx_pos, self.cfg.csc, words[0])
        self.prompts_neg = ContextPrompts(clip, task.class_names, self.cfg.n_ctx_neg, self.cfg.csc, words[1])
        self.register_buffer("token_ids", torch.cat([self.prompts_neg.token_ids, self.prompts_pos.token_ids]),
                             persistent=False)
        self.unknown = resolve_unknown(self.cfg.unknown, task.info.get("mask_protocol"))
        self._eval_text: tuple | None = None          # (key, text features) of the current evaluation pass

    def text_features(self) -> Tensor:
        """[2C, E]: the C negative prompts, then the C positive ones. Without gradients (evaluation) they
        are computed once per state of the context vectors."""
        key = None
        if not torch.is_grad_enabled():
            key = (self.prompts_pos.ctx._version, self.prompts_neg.ctx._version, self.prompts_pos.ctx.device,
                   torch.is_autocast_enabled(self.prompts_pos.ctx.device.type))
            if self._eval_text is not None and self._eval_text[0] == key:
                return self._eval_text[1]
        prompts = torch.cat([self.prompts_neg(), self.prompts_pos()], dim=0)
        text = self.text(prompts, self.token_ids)
        self._eval_text = (key, text) if key is not None else None
        return text

    def pair_logits(self, inputs: Tensor) -> Tensor:
        """[B, 2, C] logits, index 0 negative (the official model's output)."""
        with torch.no_grad():
            maps = self.features(inputs)
        tokens = self.dense(maps.to(self.dense.v_proj.weight.dtype))
        return region_logits(tokens, self.text_features(), *self.cfg.logit_factors)

    def predict_scores(self, inputs: Tensor) -> Tensor:
        logits = self.pair_logits(inputs)
        return logits[:, 1] - logits[:, 0]

    def compute_losses(self, batch: Batch, ctx: TrainContext) -> dict[str, Tensor]:
        cfg = self.cfg
        logits = self.pair_logits(batch.inputs)
        counted = batch.observed if self.unknown == "ignore" else torch.ones_like(batch.observed)
        with torch.autocast(logits.device.type, enabled=False):
            loss = pair_asl(logits.float(), batch.targets, counted, cfg.gamma_neg, cfg.gamma_pos, cfg.clip, cfg.eps)
        # DDP: a rank's sum x world size trains like the global batch's sum (benchmark.contract.collectives)
        return {"loss_asl_pair": cfg.loss_w * loss * collectives.sum_scale()}

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """The context vectors only, at the recipe's lr and weight decay (official: SGD on the prompts)."""
        return [{"params": [self.prompts_pos.ctx, self.prompts_neg.ctx]}]

    @classmethod
    def augmentation(cls, cfg) -> str:
        return "clsl"
