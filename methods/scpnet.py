"""SCPNet: a structured semantic prior, a prompt on CLIP and prior-enhanced self-supervision.

Paper: Z. Ding, A. Wang, H. Chen, Q. Zhang, P. Liu, Y. Bao, W. Yan, J. Han, "Exploring Structured
Semantic Prior for Multi Label Recognition with Incomplete Labels", CVPR 2023,
https://openaccess.thecvf.com/content/CVPR2023/papers/Ding_Exploring_Structured_Semantic_Prior_for_Multi_Label_Recognition_With_Incomplete_CVPR_2023_paper.pdf
Official code: https://github.com/jameslahm/SCPNet (commit d56341a: ``model.py``, ``loss.py``, ``scpnet.py``,
``train.py``, ``utils.py``, ``configs/``). Spec: ``specs/methods_wave3_clip.md`` section 3; building blocks
in :mod:`methods.modules.scp` (fixtures Y3-Y6).

Model (``requires clip, clip_trunk, clip_trunk_trainable``): image feature = CLIP's attention pool of the
trunk's maps (``finetune``: a trainable copy of the trunk, in train mode while training; ``frozen``: cached
maps); text features T of "a photo of a <name>." whose 4 context tokens start as those words and are
learned (frozen tower); T' = T + GCN(T) over the prior A; logits = s cos(image, T'_c), s = 10 or CLIP's
learnable logit scale (``scale="clip"``, NUS-WIDE; P83). Prior (``relation``): ``"clip_text"``, the cosine
similarities of the frozen CLIP text features of "a photo of a <name>." (the official files' generator is
unreleased, P75), or ``"file:PATH"`` (C x C ``.npy``), processed into A and the soft targets R (Y3, P76).
Training: one forward of the 3B views (weak, weak, strong; P78); ``loss_splc`` = SPLC on view 1 (Y4, P81),
``loss_consistency`` = lambda_u x the consistency loss of view 3 against view 2 (Y5), both sums (P80,
x world size under DDP); the class-wise status comes from the memory ``selected`` [N, C] (SampleTable, Y6,
P79). Adam over four groups (non-GCN / GCN x decay / no decay for 1-D tensors and biases), the GCN at lr x
``gcn_lr_mult``, coupled L2 (P74). None fields: :data:`OFFICIAL` per dataset (voc2007 takes VOC 2012's),
else :data:`GUESS`.

Protocols: designed for single positive. ``random`` (suite extension, spec 1.2): observed negatives keep
target 0 in SPLC (only unknown entries are corrected) and are removed from the hard labels l.

Deviations from the official code:
- The class-wise status and the memory are buffers (checkpointed; official trainer attributes, P79).
- EMA: built only with ``ema_eval=True`` (then validation, selection and test use it); the official
  keeps one and takes max(regular, EMA) per epoch on the test split (P82), the suite selects on val.
- No 224-px assertion: the attention pool's positional embedding is interpolated to the map (P84).
- GCN widths D - 2D - 2D - D for any ResNet CLIP (official literal 1024 - 2048 - 2048 - 1024, P77).
- ``frozen`` protocol: the three views are the same cached maps (no augmentation), so the consistency
  term is self-training on the same features; the forward runs once.
- The memory is bool (official long); ``relation="file:PATH"`` is validated (shape, finite, symmetric)
  and ``sparse_topk >= 2`` is required (P75). Recipe deviations (beta1 cycling, P73): the recipe file.
- CPU profiles: the tiny random CLIP, whose random text tower gives a well-formed but meaningless prior,
  with class-specific contexts (``csc=True``, card profile override; official: one shared context).
Pitfall (P…) and fixture (X…/Y…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from benchmark.contract import collectives
from benchmark.contract.card import MethodCard
from benchmark.contract.method import Batch, Method, TaskSpec, TrainContext
from benchmark.contract.sample_table import SampleTable
from benchmark.core.errors import UserError
from benchmark.core.registry import METHODS
from methods.modules import prompts as prompting
from methods.modules import scp
from methods.modules.dense_clip import attention_pool
from methods.modules.ema import WeightEMA

# configs/scpnet+{coco,voc,nuswide,cub}.yaml; gcn_lr_mult = gcn_lr / lr; ema_decay = utils.get_ema_co
PER_DATASET = ("hard_k", "kl_lambda", "temperature", "sparse_topk", "gcn_lr_mult", "scale", "ema_decay")
OFFICIAL = {name: dict(zip(PER_DATASET, row)) for name, row in {
    "coco": (2, 1.0, 0.2, 62, 1 / 3, 10.0, 0.82 ** (1 / 641)), "voc": (5, 2.0, 0.3, 20, 5.0, 10.0, 0.82 ** (1 / 45)),
    "nuswide": (6, 1.0, 0.2, 50, 10 / 3, "clip", 0.82 ** (1 / 931)),
    "cub": (31, 3.0, 0.3, 312, 2 / 3, 10.0, 0.82 ** (1 / 63))}.items()}
# [GUESS] other datasets: every class kept (as VOC, CUB), T 0.3 (VOC, CUB), COCO's hard_k and kl_lambda, one
# lr, and the official EMA rule (the EMA keeps 0.82 of its value per epoch: 0.82 ** (1 / iterations per epoch)).
GUESS = dict(zip(PER_DATASET, (2, 1.0, 0.3, None, 1.0, 10.0, None)))
SUITE_TO_OFFICIAL = {"voc2007": "voc", "voc2012": "voc", "coco2014": "coco", "nuswide": "nuswide", "cub": "cub"}


def dataset_values(dataset: str | None, num_classes: int) -> dict:
    """The per-dataset values of the suite dataset key (the GUESS row, sized to C, for the others)."""
    values = dict(OFFICIAL.get(SUITE_TO_OFFICIAL.get(dataset or "", ""), GUESS))
    if values["sparse_topk"] is None:
        values["sparse_topk"] = num_classes
    if dataset not in SUITE_TO_OFFICIAL:
        values["hard_k"] = min(values["hard_k"], num_classes)
    return values


@dataclass(frozen=True)
class SCPNetConfig:
    ctx_init: str = "a photo of a"        # configs/scpnet+*.yaml ctx_init; n_ctx 4 = its word count
    csc: bool = False                     # suite: one context per class (DualCoOp's --csc); official: shared
    relation: str = "clip_text"           # "clip_text" | "file:PATH" (official: relation+<dataset>.npy)
    reweight_p: float = 0.2               # yaml reweight_p (rho)
    sparse_topk: int | None = None        # None = per dataset (coco 62, voc 20, nuswide 50, cub 312); >= 2 (P75)
    temperature: float | None = None      # yaml T; None = per dataset (coco/nuswide 0.2, voc/cub 0.3)
    hard_k: int | None = None             # None = per dataset (coco 2, voc 5, nuswide 6, cub 31)
    kl_lambda: float | None = None        # None = per dataset (coco/nuswide 1, voc 2, cub 3)
    p_cutoff: float = 0.95                # yaml p_cutoff
    lambda_u: float = 0.125               # yaml lambda_u
    splc_tau: float = 0.6                 # loss.py SPLC defaults (tau, change_epoch, margin, gamma)
    splc_change_epoch: int = 1            # 0-based epoch from which SPLC corrects unknown targets
    splc_margin: float = 1.0
    splc_gamma: float = 2.0
    scale: float | str | None = None      # logit scale: a number, "clip" (learned), None = per dataset (P83)
    gcn_lr_mult: float | None = None      # GCN lr / lr; None = per dataset (yaml gcn_lr / lr)
    ema_eval: bool = False                # evaluate (and select) with the EMA of the weights
    ema_decay: float | None = None        # None = per dataset (utils.get_ema_co), else 0.82 ** (1 / iters)

    def __post_init__(self):
        if not self.ctx_init.replace("_", " ").split():
            raise ValueError("ctx_init must name at least one word (official 'a photo of a')")
        if self.relation != "clip_text" and not (self.relation.startswith("file:")
                                                and Path(self.relation[5:]).expanduser().is_file()):
            raise ValueError(f"relation must be 'clip_text' or 'file:PATH' of an existing .npy file; got "
                             f"{self.relation!r}")
        if self.sparse_topk is not None and self.sparse_topk < 2:
            raise ValueError(f"sparse_topk must be >= 2 (1 leaves rows without mass: NaN, P75); got {self.sparse_topk}")
        if not 0 < self.reweight_p < 1 or not 0 < self.p_cutoff <= 1 or not 0 < self.splc_tau < 1:
            raise ValueError("reweight_p, splc_tau must be in (0, 1) and p_cutoff in (0, 1]")
        positive = {"temperature": self.temperature, "hard_k": self.hard_k, "gcn_lr_mult": self.gcn_lr_mult}
        if any(v is not None and not v > 0 for v in positive.values()):
            raise ValueError(f"temperature, hard_k and gcn_lr_mult must be > 0; got {positive}")
        if min(self.lambda_u, self.splc_margin, self.splc_gamma, self.splc_change_epoch, self.kl_lambda or 0) < 0:
            raise ValueError("lambda_u, kl_lambda, splc_margin, splc_gamma, splc_change_epoch must be >= 0")
        number = isinstance(self.scale, (int, float)) and not isinstance(self.scale, bool)
        if not (self.scale is None or self.scale == "clip" or (number and self.scale > 0)):
            raise ValueError(f"scale must be a positive number, 'clip' or None; got {self.scale!r}")
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1); got {self.ema_decay}")


class SCPHead(nn.Module):
    """Everything SCPNet trains besides the trunk: attention pool, prompt context, GCN, logit scale."""

    def __init__(self, pool: nn.Module, prompts: prompting.ContextPrompts, dim: int, logit_scale: Tensor | None):
        super().__init__()
        self.pool, self.prompts, self.gcn = pool, prompts, scp.SemanticGCN(dim)
        self.logit_scale = nn.Parameter(logit_scale.detach().clone().float()) if logit_scale is not None else None


@METHODS.register_module()
class SCPNet(Method):
    """SCPNet (Ding, Wang et al., CVPR 2023): prompt + prior GCN on a fine-tuned CLIP, SPLC and consistency."""

    name = "scpnet"
    Config = SCPNetConfig
    # CPU profiles: the tiny random CLIP's text features are nearly the same for every class name, so a shared
    # context cannot tell classes apart (default profile: test mAP 14 against 28 with class-specific contexts)
    card = MethodCard(requires={"clip", "clip_trunk", "clip_trunk_trainable"}, relative_cost=2.5,
                      profile_overrides={"smoke": {"csc": True}, "default": {"csc": True}}, display_name="SCPNet")

    def __init__(self, task: TaskSpec, cfg=None, backbone=None):
        super().__init__(task, cfg, backbone)
        clip, cfg = task.clip, self.cfg
        pool = getattr(getattr(clip, "visual", None), "attnpool", None)
        if clip is None or not hasattr(pool, "q_proj"):
            raise UserError("scpnet needs the run's ResNet CLIP (TaskSpec.clip; --clip-arch RN50, P69); run it "
                            "through the harness, which builds it from --clip-arch / --clip-weights")
        if task.protocol == "frozen" and task.feature_dim != pool.v_proj.in_features:
            raise UserError(f"scpnet: cached maps of width {task.feature_dim} do not fit the CLIP's attention pool "
                            f"({pool.v_proj.in_features}); the frozen features must be the CLIP trunk's")
        values = dataset_values(task.info.get("dataset"), task.num_classes)
        self.values = {k: values[k] if getattr(cfg, k) is None else getattr(cfg, k) for k in PER_DATASET}
        self.hard_k = int(self.values["hard_k"])
        if self.hard_k > task.num_classes:
            raise UserError(f"scpnet hard_k={self.hard_k} exceeds the {task.num_classes} classes")
        prompts = prompting.ContextPrompts(clip, task.class_names, csc=cfg.csc, init_words=cfg.ctx_init)
        self.head = SCPHead(copy.deepcopy(pool).requires_grad_(True), prompts, int(clip.text_projection.shape[1]),
                            clip.logit_scale if self.values["scale"] == "clip" else None)
        self.text = prompting.PromptTextEncoder(clip)
        for name, matrix in zip(("gcn_relation", "relation"), self._prior(clip, task)):
            self.register_buffer(name, matrix)
        self.selected = SampleTable(task.num_train, task.num_classes)          # the pseudo-label memory
        self.register_buffer("classwise_acc", torch.full((task.num_classes,), 1.0 / task.num_classes))
        self.epoch_labels = SampleTable(task.num_train, task.num_classes)      # hard labels l of this epoch
        self.seen = SampleTable(task.num_train)
        self.ema = WeightEMA(self._live(), self.values["ema_decay"] or 0.0) if cfg.ema_eval else None
        self._eval_text: tuple | None = None

    def _prior(self, clip: nn.Module, task: TaskSpec) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        try:
            raw = scp.clip_text_similarity(clip, task.class_names) if cfg.relation == "clip_text" else \
                torch.as_tensor(np.load(Path(cfg.relation[5:]).expanduser(), allow_pickle=False))
            raw = scp.check_raw_relation(raw, task.num_classes)
            return scp.process_relation(raw, int(self.values["sparse_topk"]), cfg.reweight_p,
                                        float(self.values["temperature"]))
        except (ValueError, TypeError, OSError) as exc:
            raise UserError(f"scpnet relation={cfg.relation}: {exc}") from None

    def _live(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "head": self.head}

    # ------------------------------------------------------------------ model
    def _encoded_prompts(self, prompts: prompting.ContextPrompts) -> Tensor:
        """Text features of the prompts [C, D]; without gradients computed once per state of ctx."""
        key = None
        if not torch.is_grad_enabled():
            key = (id(prompts.ctx), prompts.ctx._version, prompts.ctx.device,
                   torch.is_autocast_enabled(prompts.ctx.device.type))
            if self._eval_text is not None and self._eval_text[0] == key:
                return self._eval_text[1]
        text = self.text(prompts(), prompts.token_ids)
        self._eval_text = (key, text) if key is not None else None
        return text

    def _logits(self, head: SCPHead, maps: Tensor) -> Tensor:
        image = attention_pool(head.pool, maps.to(head.pool.q_proj.weight.dtype))
        image = image / image.norm(dim=-1, keepdim=True)
        text = head.gcn(self._encoded_prompts(head.prompts), self.gcn_relation)
        text = text / text.norm(dim=-1, keepdim=True)
        scale = head.logit_scale.exp() if head.logit_scale is not None else float(self.values["scale"])
        return scale * image @ text.t().to(image.dtype)

    def predict_scores(self, inputs: Tensor) -> Tensor:
        if self.training or self.ema is None:
            return self._logits(self.head, self.features(inputs))
        shadow = self.ema.shadow
        return self._logits(shadow["head"], shadow["backbone"](inputs))

    # ------------------------------------------------------------------ training
    def compute_losses(self, batch: Batch, ctx: TrainContext) -> dict[str, Tensor]:
        if self.ema is not None:
            self.ema.flush(self._live())          # fold in the step that followed the previous call
        inputs = batch.inputs
        if inputs.dim() == 5:                     # [B, 3 views, 3, S, S]: one forward of the 3B images (P78)
            if inputs.shape[1] != 3:
                raise ValueError(f"scpnet trains on 3 views (weak, weak, strong); got {inputs.shape[1]}")
            stacked = inputs.transpose(0, 1).reshape(-1, *inputs.shape[2:])
            labelled, weak, strong = self._logits(self.head, self.features(stacked)).float().chunk(3)
        else:                                     # cached maps (frozen) or one view: the same logits thrice
            labelled = weak = strong = self._logits(self.head, self.features(inputs)).float()
        losses = self.losses_from_logits(labelled, weak, strong, batch, ctx)
        if self.ema is not None:
            self.ema.mark_step()
        return losses

    def losses_from_logits(self, labelled: Tensor, weak: Tensor, strong: Tensor, batch: Batch,
                           ctx: TrainContext) -> dict[str, Tensor]:
        """SPLC on view 1, the consistency loss of view 3 against view 2, the memory updated (Y6)."""
        cfg = self.cfg
        with torch.autocast(labelled.device.type, enabled=False):
            status = scp.classwise_status(self.selected.rows, self.hard_k)
            if status is not None:
                self.classwise_acc.copy_(status)
            positives = batch.observed & (batch.targets > 0.5)
            negatives = batch.observed & ~positives
            sup, _ = scp.splc_loss(labelled, positives.float(), ~batch.observed, ctx.epoch >= cfg.splc_change_epoch,
                                   cfg.splc_tau, cfg.splc_margin, cfg.splc_gamma)
            probs_weak = torch.sigmoid(weak.detach().float())
            labels, mask = scp.hard_pseudo_labels(probs_weak, self.classwise_acc, positives, negatives, self.hard_k,
                                                  cfg.p_cutoff)
            cons = scp.consistency_loss(strong, probs_weak, labels, mask, self.relation,
                                        float(self.values["kl_lambda"]))
        self._remember(batch, labels)
        scale = collectives.sum_scale()          # sums over the batch: DDP averages the ranks' gradients
        return {"loss_splc": sup * scale, "loss_consistency": cfg.lambda_u * cons * scale}

    @torch.no_grad()
    def _remember(self, batch: Batch, labels: Tensor) -> None:
        """Rows whose hard labels hold a 1 overwrite their memory row; every row's l is this epoch's."""
        index, labels = batch.index.to(self.selected.rows.device), labels.to(self.selected.rows.device)
        self.selected.write(index, torch.where(labels.any(dim=1, keepdim=True), labels, self.selected[index]))
        self.epoch_labels.write(index, labels & ~batch.observed.to(labels.device))
        self.seen.write(index, True)

    # ------------------------------------------------------------------ epoch hooks
    def on_train_epoch_start(self, ctx: TrainContext) -> None:
        self.epoch_labels.clear()
        self.seen.clear()
        if self.ema is not None:
            self.ema.decay = self.values["ema_decay"] or 0.82 ** (1.0 / max(1, ctx.iters_per_epoch))

    def on_train_epoch_end(self, ctx: TrainContext) -> dict[str, float]:
        diag = {"classwise_acc_mean": float(self.classwise_acc.mean()),
                "selected_rows": float(self.selected.rows.any(dim=1).sum())}
        if self.ema is not None:
            self.ema.flush(self._live())          # the last step of the epoch, before evaluation
            diag["ema_updates"] = float(self.ema.updates)
        if bool(self.seen.rows.any()):
            diag["pseudo_positives_per_image"] = float(self.epoch_labels.rows.sum()) / float(self.seen.rows.sum())
        return diag

    def recovered_labels(self) -> tuple[Tensor, Tensor] | None:
        """The hard pseudo-labels l of the last epoch minus the observed labels."""
        index = self.seen.rows.nonzero().squeeze(1)
        return (index, self.epoch_labels[index]) if len(index) else None

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Four Adam groups (utils.add_weight_decay): non-GCN and GCN, each without decay (1-D tensors and
        biases) and with it (coupled L2, P74); the GCN at lr x gcn_lr_mult. Empty groups are left out."""
        groups = [([], 0.0, lr), ([], weight_decay, lr), ([], 0.0, lr * self.values["gcn_lr_mult"]),
                  ([], weight_decay, lr * self.values["gcn_lr_mult"])]
        for name, param in ((n, p) for n, p in self.named_parameters() if p.requires_grad):
            groups[2 * name.startswith("head.gcn.") + (param.ndim != 1 and not name.endswith(".bias"))][0].append(param)
        return [{"params": p, "weight_decay": wd, "lr": rate} for p, wd, rate in groups if p]

    @classmethod
    def augmentation(cls, cfg) -> str:
        return "scpnet"
