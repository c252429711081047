"""Semantic-aware representation blending (SARB, DSRB; spec sections 6 and 7) on class features.

Label encoding: the project's (``targets`` in [0, 1], ``observed`` bool). A blended entry gets
the soft positive target 1 - alpha (or 1 - beta) and counts as known when that target is > 0,
which is exactly the HCP code's rule (its BCE keeps entries with target > 0 in the positive
branch and drops target 0). The soft targets keep their graph, so alpha and beta receive
gradients through the targets as well as through the blended features, as in the official code.

* :func:`instance_blend` (ILRB / IPRB): partner j(b) = B-1-b (the flipped batch); where y_bc is
  unknown and y_j(b)c is a known positive, f~ = alpha f_bc + (1-alpha) f_j(b)c and y~ = 1 - alpha.
* :func:`pick_unknown`: the entries that prototype blending overwrites (one random unknown class
  per image in both methods), with the P11 fix and the official rule as a switch.
* :func:`prototype_blend` (PLRB / PPRB): f^ = beta f + (1-beta) prototype, y^ = 1 - beta on the
  picked entries.
* :func:`peak_quadrants` and :class:`QuadrantPrototypes`: DSRB's location-sensitive prototypes.
* :class:`RepresentationBlending` (with :class:`BlendingConfig`): the objective SARB and DSRB share,
  the BCE, the instance contrastive term, both blends, alpha / beta and the prototype schedule; each
  method's file adds how its prototypes are made and which entries they blend.

Why DSRB works on class vectors here although the paper blends per-location maps
M_{c,l} = a_{c,l} x_l: both blends mix with one coefficient for all locations and then sum over
the locations, so sum_l [k M_{b,c,l} + (1-k) N_l] = k f_bc + (1-k) sum_l N_l exactly. The
quadrant of a map needs only its channel sum, sum_d M_{c,l,d} = a_{c,l} * sum_d x_{l,d}. So the
[B, h, w, C, D] tensor of the official code (a 64 MB prototype table and ~2 GB of maps per COCO
batch of 8 at D = 1024) is never formed, and the prototype table keeps the location sums of the
official mean maps ([C, 4, D] buffers). ``tests/test_dsrb.py`` checks this against the literal
map-level formulas.
Pitfall (P…, C…) and fixture (F…, W…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from benchmark.contract import collectives
from benchmark.contract.method import Batch, TrainContext
from benchmark.core.errors import UserError
from methods.modules.contrastive import instance_contrastive_loss
from methods.modules.losses import masked_bce
from methods.modules.sarl import SARLMethod

PICK_RULES = ("unknown", "official")


def _soft_positive(picked: Tensor, value: Tensor, targets: Tensor, observed: Tensor) -> tuple[Tensor, Tensor]:
    """Targets with ``value`` (a soft positive, possibly with a graph) on the picked entries, and
    which entries count: picked ones only if ``value`` > 0 (HCP ignores a target of exactly 0)."""
    value = value.to(targets.dtype)
    new_targets = torch.where(picked, value, targets)
    new_observed = torch.where(picked, bool(value.detach() > 0), observed)
    return new_targets, new_observed


def instance_blend(feats: Tensor, targets: Tensor, observed: Tensor, alpha: Tensor
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Instance-level blending with the flipped batch (spec 6 ILRB, 7 IPRB; fidelity F10).

    Returns (blended features [B, C, D], targets, observed, blended entries [B, C] bool).
    """
    feats = feats.float()              # blend in fp32 (bf16 autocast would round alpha)
    if collectives.is_distributed():
        # The partner of global row g is row B-1-g of the global batch, possibly on another rank: taken
        # from the global batch (with its gradient to that rank).
        everyone, all_targets, all_observed = collectives.global_batch(feats, targets, observed)
        partner_pos = collectives.own_rows(all_observed.flip(0)) & (collectives.own_rows(all_targets.flip(0)) > 0.5)

        def partner():
            return collectives.own_rows(everyone.flip(0))
    else:
        partner_pos = observed.flip(0) & (targets.flip(0) > 0.5)

        def partner():                 # made here, after kappa: the single-process graph as before
            return feats.flip(0)
    picked = ~observed & partner_pos
    kappa = torch.where(picked, alpha.to(feats.dtype), torch.ones((), dtype=feats.dtype, device=feats.device))
    kappa = kappa.unsqueeze(-1)
    blended = kappa * feats + (1 - kappa) * partner()
    new_targets, new_observed = _soft_positive(picked, 1 - alpha, targets, observed)
    return blended, new_targets, new_observed, picked


def pick_unknown(observed: Tensor, eligible: Tensor, k: int, rule: str = "unknown",
                 uniform: Tensor | None = None) -> Tensor:
    """The entries prototype blending overwrites, [B, C] bool: per image the ``k`` entries with the
    largest u_bc ~ U(0, 1) among the candidates (SARB: k = 1 by argmax; DSRB: top-k).

    ``eligible``: the candidates, unknown entries (in the callers: of classes that have a prototype;
    in the official code every class has one, it crashes otherwise).
    ``rule="unknown"`` (default): an image with fewer than k candidates blends only those, so a
    known label is never overwritten (pitfall P11 fixed). ``rule="official"``: the code's top-k
    (argmax for k = 1) of u * 1[eligible], which picks known classes with score 0 when an image has
    fewer than k candidates (class 0 under argmax; CUDA top-k's choice among zeros is unspecified)
    and overwrites their target with 1 - beta.
    ``uniform``: the draws u (default: ``torch.rand`` on the labels' device).
    """
    if rule not in PICK_RULES:
        raise ValueError(f"pick rule {rule!r} is unknown; use one of {PICK_RULES}")
    u = torch.rand(observed.shape, device=observed.device) if uniform is None else uniform
    k = min(k, observed.shape[1])
    if rule == "official":
        scores = u * eligible.to(u.dtype)
        index = scores.argmax(dim=1, keepdim=True) if k == 1 else scores.topk(k, dim=1).indices
        return torch.zeros_like(observed).scatter_(1, index, True)
    scores = torch.where(eligible, u, torch.full_like(u, -1.0))
    index = scores.topk(k, dim=1).indices
    return torch.zeros_like(observed).scatter_(1, index, True) & eligible


def prototype_blend(feats: Tensor, targets: Tensor, observed: Tensor, picked: Tensor, prototypes: Tensor,
                    beta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Prototype-level blending (spec 6 PLRB, 7 PPRB): on picked entries f^ = beta f + (1-beta) p and
    y^ = 1 - beta; ``prototypes`` [B, C, D] or [C, D] (one per entry or per class)."""
    feats = feats.float()              # blend in fp32 (bf16 autocast would round beta)
    beta_f = beta.to(feats.dtype)
    mixed = beta_f * feats + (1 - beta_f) * prototypes.to(feats.dtype)
    blended = torch.where(picked.unsqueeze(-1), mixed, feats)
    new_targets, new_observed = _soft_positive(picked, 1 - beta, targets, observed)
    return blended, new_targets, new_observed


def peak_scores(fmap: Tensor, attention: Tensor) -> Tensor:
    """Channel sums of the weighted maps, sum_d a_{c,l} x_{l,d} = a_{c,l} sum_d x_{l,d}: [B, C, h, w]."""
    return attention.float() * fmap.float().sum(dim=1, keepdim=True)   # fp32: no bf16 ties in the argmax


def peak_quadrants(scores: Tensor) -> Tensor:
    """DSRB's quadrant of each map's peak (spec 7; fidelity F11): row* = argmax over rows of the
    row maxima, col* = argmax over columns of the column maxima, q = 2 [row* >= h//2] + [col* >= w//2].
    ``scores`` [..., h, w] -> [...] (long, 0..3); first index wins ties, as torch.argmax."""
    h, w = scores.shape[-2:]
    row = scores.amax(dim=-1).argmax(dim=-1)
    col = scores.amax(dim=-2).argmax(dim=-1)
    return 2 * (row >= h // 2).long() + (col >= w // 2).long()


class QuadrantPrototypes(nn.Module):
    """DSRB's location-sensitive prototypes: per class and quadrant the mean of at most ``max_maps``
    known-positive weighted maps, stored as their location sums (see the module docstring) in the
    buffer ``prototypes`` [C, 4, D], with ``valid`` [C] and ``fitted``.

    Official rules kept: the first ``max_maps`` maps of a (class, quadrant) in loader order; with
    ``placeholder`` the mean includes the code's all-zero initial map (sum / (n + 1)); a quadrant
    without maps takes the plain mean of all the class's collected maps. Deviation: a class with no
    known positive (the code crashes on it) keeps zero prototypes and ``valid = False``.
    """

    def __init__(self, num_classes: int, dim: int, max_maps: int = 100, placeholder: bool = True) -> None:
        super().__init__()
        self.max_maps, self.placeholder = max_maps, placeholder
        self.register_buffer("prototypes", torch.zeros(num_classes, 4, dim))
        self.register_buffer("valid", torch.zeros(num_classes, dtype=torch.bool))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def ready(self) -> bool:
        return bool(self.fitted)

    def fit(self, classes: Tensor, quadrants: Tensor, feats: Tensor) -> None:
        """``classes`` [M], ``quadrants`` [M], ``feats`` [M, D] (the maps' location sums), in loader order."""
        num_classes, _, dim = self.prototypes.shape
        protos = torch.zeros(num_classes, 4, dim, dtype=torch.float64)
        valid = torch.zeros(num_classes, dtype=torch.bool)
        feats = feats.double().cpu()
        classes, quadrants = classes.cpu(), quadrants.cpu()
        for c in range(num_classes):
            kept = [feats[(classes == c) & (quadrants == q)][: self.max_maps] for q in range(4)]
            pooled = torch.cat(kept)
            if len(pooled) == 0:
                continue
            valid[c] = True
            for q, rows in enumerate(kept):
                if len(rows):
                    protos[c, q] = rows.sum(dim=0) / (len(rows) + int(self.placeholder))
                else:
                    protos[c, q] = pooled.mean(dim=0)
        self.prototypes.copy_(protos.float())
        self.valid.copy_(valid)
        self.fitted.fill_(True)

    def lookup(self, quadrants: Tensor) -> Tensor:
        """Prototype of class c in quadrant quadrants[b, c]: [B, C] -> [B, C, D]."""
        classes = torch.arange(quadrants.shape[1], device=quadrants.device)
        return self.prototypes[classes.unsqueeze(0), quadrants]


@dataclass(frozen=True)
class BlendingConfig:
    feature_dim: int = 1024            # changeChannel: 1x1 conv + BN to this size
    hidden_dim: int = 512              # semantic-decoupling intermediate size
    output_dim: int = 1024             # output layer width
    ggnn_steps: int = 3
    pool: int = 2                      # 2x2 avg-pool of the 14x14 ResNet-101 maps; 1 = none (small maps)
    freeze_backbone: bool = True       # finetune + timm ResNet: stem..layer3 frozen, BN in eval (spec 1.4)
    blend_epoch: int = 5               # mixupEpoch, in epochs of the 20-epoch recipe (rescaled)
    prototype_interval: int = 5        # recomputePrototypeInterval, idem
    schedule_epochs: int = 20          # epoch count the two schedule fields refer to; 0 = no rescaling
    instance_weight: float = 0.05      # contrastiveLossWeight (script)
    instance_blend_weight: float = 1.0     # weight of the instance-blending BCE
    prototype_blend_weight: float = 1.0    # weight of the prototype-blending BCE
    alpha_init: float = 0.5            # code: 0.5 (not configurable there)
    beta_init: float = 0.5
    learnable_alpha: bool = True       # isAlphaLearnable (script True)
    learnable_beta: bool = True        # isBetaLearnable (script True)
    pick_rule: str = "unknown"         # "unknown": P11 fixed; "official": the code's rule


class RepresentationBlending(SARLMethod):
    """The part SARB and DSRB share: the loss, alpha / beta, the schedule and the diagnostics.

    Subclasses implement :meth:`prototypes_ready`, :meth:`refresh_prototypes` and
    :meth:`prototype_entries` (which entries to blend, with which prototypes).
    """

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.pick_rule not in PICK_RULES:
            raise UserError(f"{cls.name} pick_rule={cfg.pick_rule!r} is unknown; use one of {PICK_RULES}")

    def __init__(self, task, cfg=None, backbone=None):
        super().__init__(task, cfg, backbone)
        cfg = self.cfg
        self.alpha = nn.Parameter(torch.tensor(float(cfg.alpha_init)), requires_grad=cfg.learnable_alpha)
        self.beta = nn.Parameter(torch.tensor(float(cfg.beta_init)), requires_grad=cfg.learnable_beta)
        self._counts = torch.zeros(3)

    # ------------------------------------------------------------------ to implement
    @property
    def prototypes_ready(self) -> bool:
        raise NotImplementedError

    def refresh_prototypes(self, ctx: TrainContext) -> None:
        raise NotImplementedError

    def prototype_entries(self, maps: tuple[Tensor, Tensor], feats: Tensor, observed: Tensor
                          ) -> tuple[Tensor, Tensor]:
        """(picked entries [B, C] bool, their prototypes [B, C, D] or [C, D])."""
        raise NotImplementedError

    # ------------------------------------------------------------------ schedule
    def blend_epoch(self, ctx: TrainContext) -> int:
        return self.scheduled_epoch(ctx, self.cfg.blend_epoch)

    # ------------------------------------------------------------------ forward
    def compute_losses(self, batch: Batch, ctx: TrainContext) -> dict[str, Tensor]:
        cfg, t, o = self.cfg, batch.targets, batch.observed
        fmap, attention = self.trunk.decouple(self.features(batch.inputs))
        feats = self.trunk.semantic.pool(fmap, attention)
        losses = {"loss_bce": masked_bce(self.trunk.head(feats), t, o),
                  "loss_instance": cfg.instance_weight * ctx.ramp * instance_contrastive_loss(*collectives.global_batch(feats, t, o))}
        if ctx.epoch < self.blend_epoch(ctx):
            return losses
        with torch.no_grad():             # the code clamps .data at every blending forward
            self.alpha.clamp_(0.0, 1.0)
            self.beta.clamp_(0.0, 1.0)
        mixed, mixed_t, mixed_o, blended = instance_blend(feats, t, o, self.alpha)
        losses["loss_blend_instance"] = cfg.instance_blend_weight * masked_bce(self.trunk.head(mixed), mixed_t, mixed_o)
        picked = torch.zeros_like(blended)
        if self.prototypes_ready:
            picked, prototypes = self.prototype_entries((fmap, attention), feats, o)
            mixed, mixed_t, mixed_o = prototype_blend(feats, t, o, picked, prototypes, self.beta)
            losses["loss_blend_prototype"] = (cfg.prototype_blend_weight
                                              * masked_bce(self.trunk.head(mixed), mixed_t, mixed_o))
        counts = torch.stack([blended.sum(), picked.sum(), (picked & o).sum()]).float()
        self._counts = self._counts.to(counts.device) + counts   # read once per epoch (no per-step sync)
        return losses

    # ------------------------------------------------------------------ epoch hooks
    def on_train_epoch_start(self, ctx: TrainContext) -> None:
        self._counts = torch.zeros(3)
        if self.prototypes_due(ctx, self.blend_epoch(ctx), self.prototypes_ready):
            self.refresh_prototypes(ctx)

    def on_train_epoch_end(self, ctx: TrainContext) -> dict[str, float]:
        instance, prototype, known = (float(v) for v in collectives.all_reduce(self._counts))   # every rank's
        return {"alpha": float(self.alpha.detach()), "beta": float(self.beta.detach()),
                "blended_instance": instance, "blended_prototype": prototype, "blended_known": known}
