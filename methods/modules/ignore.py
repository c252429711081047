"""IGNORE's building blocks (spec ``specs/methods_wave3.md`` section 4): the masked input built from the
class activation maps of the observed positives, the false-negative rejection, the loss terms and the
threshold updates, as functions of tensors in the project's label encoding (``targets`` float {0, 1},
``observed`` bool).

Global batch: under DDP the batch rule's per-pixel minimum and maximum, the threshold means and the
loss denominators are taken over every rank's rows (``benchmark.contract.collectives``), so the ranks
compute what one process computes on the whole batch; in one process these are plain reductions.
Pitfall (P…) and fixture (X…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.contract import collectives
from methods.modules.spml import LOG_EPS, assume_negative_matrix, neg_log

CAM_NORMS = ("batch", "spatial")


def positives(targets: Tensor, observed: Tensor) -> Tensor:
    """Observed positives, bool [B, C]."""
    return observed & (targets > 0.5)


def normalise_cams(maps: Tensor, rule: str) -> Tensor:
    """Positive-class CAMs [M, h, w] normalised. ``"batch"`` (official ``cam_minmax_norm``, P52): per
    pixel, (S - min over the M maps) / (max over the M maps), the maps of every rank's rows included;
    0/0 gives NaN, which no threshold keeps. ``"spatial"``: per map, (S - min) / (max - min) over its
    pixels (0 for a constant map). Every rank must call it (a collective under the batch rule)."""
    if rule == "spatial":
        low = maps.amin(dim=(1, 2), keepdim=True)
        span = maps.amax(dim=(1, 2), keepdim=True) - low
        return torch.where(span > 0, (maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)
    inf = torch.full(maps.shape[1:], float("inf"), dtype=maps.dtype, device=maps.device)
    low = maps.amin(dim=0) if maps.shape[0] else inf
    high = maps.amax(dim=0) if maps.shape[0] else -inf
    low, high = collectives.all_reduce(low, "min"), collectives.all_reduce(high, "max")
    return (maps - low) / high


def cam_mask(cam: Tensor, targets: Tensor, observed: Tensor, threshold: float, rule: str = "batch",
             size: tuple[int, int] | None = None) -> Tensor:
    """The keep-mask [B, 1, H, W] (float 0/1) of the masked input (spec 4.3, X9).

    The CAMs [B, C, h, w] of the observed positives (row-major order) are normalised by ``rule``,
    upsampled bilinearly (``align_corners=False``) to ``size`` (None: the CAM resolution) and kept where
    they exceed ``threshold`` (strict). A row with one positive gets its map's mask (official); a row
    with several the union of its positives' masks; a row without positive keeps everything (both
    official behaviours the code cannot reach or crashes on, P53)."""
    pos = positives(targets, observed)
    rows, cols = pos.nonzero(as_tuple=True)
    norm = normalise_cams(cam.detach().float()[rows, cols], rule)
    if size is not None and norm.shape[0]:
        norm = F.interpolate(norm.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False).squeeze(1)
    elif size is not None:
        norm = norm.new_zeros((0, *size))
    keep = (norm > threshold).float()
    union = keep.new_zeros((cam.shape[0], *keep.shape[1:])).index_add_(0, rows, keep) > 0
    has = pos.any(dim=1)[:, None, None]
    return torch.where(has, union, True).float().unsqueeze(1)


def rejected(gap: Tensor, logits: Tensor, gap_threshold: Tensor, avg_threshold: Tensor, observed: Tensor,
             lat: bool = True) -> Tensor:
    """Entries whose loss is rejected, bool [B, C]: gap > G and (with ``lat``) logit > A_c, strict,
    among the **unknown** entries only (observed positives and observed negatives are never rejected;
    the official ``clip(R - y, 0, 1)`` with no observed negatives, P53). The warm-up is the caller's."""
    candidate = gap > gap_threshold
    if lat:
        candidate = candidate & (logits > avg_threshold)
    return candidate & ~observed


def _global_mean_terms(values: Tensor, keep: Tensor) -> Tensor:
    """sum(values over keep) / (entries kept in the global batch), DDP-correct (batch_normaliser)."""
    return (values * keep).sum() / collectives.batch_normaliser(keep.sum().to(values.dtype))


def ignore_loss(logits: Tensor, targets: Tensor, observed: Tensor, reject: Tensor, *, logits_strong: Tensor | None,
                spbc_weight: float, ignore_weight: float, reg_weight: float, strong_aug: bool = True,
                use_ignore: bool = True, use_reg: bool = True, eps: float = LOG_EPS) -> dict[str, Tensor]:
    """The weighted terms of ``ignore_loss`` (spec 4.4, X10, X11), float32 logits:

    - ``loss_spbc``: w_spbc x mean over the observed positives of nl(p) (weak view); absent when no
      rank's rows hold an observed positive or w_spbc = 0;
    - ``loss_ignore``: w_ign x mean over the kept (not ``reject``) entries of AN(p_s) (strong view; the
      weak view without ``logits_strong`` or with ``strong_aug`` False; all entries when ``use_ignore``
      is False);
    - ``loss_reg``: w_reg x mean over B x C of (logits_s - logits)^2; absent without a strong view or
      with ``use_reg`` False."""
    pos = positives(targets, observed)
    out = {}
    if spbc_weight and collectives.any_rank(bool(pos.any())):
        out["loss_spbc"] = spbc_weight * _global_mean_terms(neg_log(torch.sigmoid(logits), eps), pos.float())
    scored = logits_strong if logits_strong is not None and strong_aug else logits
    matrix = assume_negative_matrix(torch.sigmoid(scored), targets, observed, 0.0, eps)
    keep = (~reject if use_ignore else torch.ones_like(reject)).float()
    out["loss_ignore"] = ignore_weight * _global_mean_terms(matrix, keep)
    if logits_strong is not None and use_reg:
        out["loss_reg"] = reg_weight * F.mse_loss(logits_strong, logits)
    return out


@torch.no_grad()
def update_gap_threshold(gap_ema: Tensor, gap: Tensor, pos: Tensor, decay: float) -> bool:
    """G <- decay G + (1 - decay) x mean of ``gap`` over the observed positives of the global batch, in
    place (spec 4.5, X12). A global batch without positive leaves G as it is (officially NaN from then
    on, P54) and returns False. Every rank must call it (a collective)."""
    total = collectives.all_reduce(gap.detach().float()[pos].sum())
    count = collectives.all_reduce(pos.sum().float())
    if not bool(count > 0):
        return False
    gap_ema.mul_(decay).add_((1.0 - decay) * (total / count))
    return True


@torch.no_grad()
def update_avg_threshold(avg_ema: Tensor, logits: Tensor, decay: float) -> None:
    """A <- decay A + (1 - decay) x (mean over the rows of the global batch of the detached logits), in
    place (spec 4.5, X12). Every rank must call it (a collective)."""
    total = collectives.all_reduce(logits.detach().float().sum(dim=0))
    rows = collectives.all_reduce(torch.tensor(float(logits.shape[0]), device=logits.device))
    avg_ema.mul_(decay).add_((1.0 - decay) * (total / rows))


def corrected(ema: Tensor, decay: float, steps: int, bias_correction: bool) -> Tensor:
    """The threshold in use: the raw EMA (official, started at 0, P54) or, with ``bias_correction``,
    EMA / (1 - decay^steps) (the raw value before any step)."""
    if not bias_correction or steps <= 0:
        return ema
    return ema / (1.0 - decay ** steps)
