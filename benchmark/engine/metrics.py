"""Multi-label evaluation metrics: per-class AP, mAP and the thresholded CP/CR/CF1/OP/OR/OF1.

Pure numpy functions come first; :class:`MultiLabelMetric` adapts them to MMEngine.

Conventions shared by every function:

- ``scores`` is a float array ``[N, C]`` of logits (``score >= 0`` means probability >= 0.5),
  ``labels`` is ``{0, 1}`` ``[N, C]``, ``ignore`` (optional) is bool ``[N, C]`` and marks the
  entries excluded from evaluation. Ignored entries count nowhere: not in any ranking, not as
  a prediction, not as a ground-truth positive.
- Numpy arrays and torch tensors are both accepted.
- AP is the VOC2012 all-point interpolated AP used by the official code bases: rank by score
  (descending, stable, so ties keep their original order), compute precision/recall, make the
  precision envelope monotone from the right, and sum delta-recall x envelope precision.
  Because recall grows by ``1 / n_pos`` exactly at each positive, this equals the mean of the
  envelope precision at the positives; the non-interpolated AP is the mean of the raw precision
  at the positives (sklearn's ``average_precision_score`` when there are no ties).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric

THRESHOLD_KEYS = ("CP", "CR", "CF1", "OP", "OR", "OF1")


def as_numpy(x: Any) -> np.ndarray:
    """Return ``x`` (numpy array, torch tensor or nested sequence) as a numpy array on the CPU."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _prepare(scores: Any, labels: Any, ignore: Any | None) -> tuple[np.ndarray, ...]:
    """Check shapes and values; return float scores, bool labels, bool valid-entry mask."""
    s = as_numpy(scores).astype(np.float64)
    y = as_numpy(labels)
    if s.shape != y.shape:
        raise ValueError(f"scores shape {s.shape} != labels shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must contain only 0 and 1 (mark unknown entries with `ignore`)")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if ignore is None:
        valid = np.ones(s.shape, dtype=bool)
    else:
        ig = as_numpy(ignore)
        if ig.shape != s.shape:
            raise ValueError(f"ignore shape {ig.shape} != scores shape {s.shape}")
        valid = ~ig.astype(bool)
    return s, y.astype(bool), valid


def average_precision(scores_1d: Any, labels_1d: Any, interpolated: bool = True) -> float:
    """AP of one class (VOC2012 all-point interpolated, or non-interpolated); NaN if no positive."""
    s, y, _ = _prepare(np.ravel(as_numpy(scores_1d)), np.ravel(as_numpy(labels_1d)), None)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    hits = y[np.argsort(-s, kind="stable")]
    precision = np.cumsum(hits) / np.arange(1, hits.size + 1)
    if interpolated:
        # Envelope: each precision becomes the max precision at any equal-or-higher recall.
        precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(precision[hits].sum() / n_pos)


def per_class_ap(
    scores: Any, labels: Any, ignore: Any | None = None, interpolated: bool = True
) -> np.ndarray:
    """AP of every class ``[C]``, ignored entries removed per class; NaN where no positive is left."""
    s, y, valid = _prepare(scores, labels, ignore)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D [N, C], got shape {s.shape}")
    return np.array(
        [
            average_precision(s[valid[:, c], c], y[valid[:, c], c], interpolated)
            for c in range(s.shape[1])
        ],
        dtype=np.float64,
    )


def mean_ap(
    scores: Any, labels: Any, ignore: Any | None = None, interpolated: bool = True
) -> float:
    """Mean AP over the classes that keep at least one positive; NaN if no class has one."""
    aps = per_class_ap(scores, labels, ignore, interpolated)
    scored = aps[~np.isnan(aps)]
    return float(scored.mean()) if scored.size else float("nan")


def _top_k_mask(scores: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
    """Bool mask of each row's ``k`` highest-scoring valid entries (ties: lower class index)."""
    ranked = np.where(valid, scores, -np.inf)
    top = np.argsort(-ranked, axis=1, kind="stable")[:, :k]
    mask = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(mask, top, True, axis=1)
    return mask & valid


def _ratio(num: float, den: float) -> float:
    """``num / den``, or 0.0 when the denominator is 0."""
    return float(num / den) if den else 0.0


def _f1(p: float, r: float) -> float:
    """Harmonic mean of ``p`` and ``r``; 0.0 when both are 0."""
    return _ratio(2.0 * p * r, p + r)


def threshold_metrics(
    scores: Any,
    labels: Any,
    ignore: Any | None = None,
    threshold: float = 0.0,
    top_k: int | None = None,
) -> dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 as fractions.

    An entry is predicted positive iff ``score >= threshold`` and, with ``top_k``, it is among
    the image's ``top_k`` highest-scoring non-ignored entries. Per class, ``Nc`` = correct
    positives, ``Np`` = predicted positives (0 counts as 1), ``Ng`` = ground-truth positives.
    CP averages ``Nc/Np`` over the classes with at least one non-ignored entry (all classes
    when nothing is ignored, the literature form); CR averages ``Nc/Ng`` over the classes with
    ``Ng > 0`` only (recall is undefined without a positive). CF1 and OF1 are the harmonic
    means of the averaged precision and recall (not a mean of per-class F1).
    """
    s, y, valid = _prepare(scores, labels, ignore)
    pred = (s >= threshold) & valid
    if top_k is not None:
        if int(top_k) < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k}")
        pred &= _top_k_mask(s, valid, int(top_k))
    pos = y & valid
    n_correct = (pred & pos).sum(axis=0).astype(np.float64)
    n_pred = pred.sum(axis=0).astype(np.float64)
    n_gt = pos.sum(axis=0).astype(np.float64)
    seen, has_pos = valid.any(axis=0), n_gt > 0
    cp = float((n_correct[seen] / np.maximum(n_pred[seen], 1.0)).mean()) if seen.any() else 0.0
    cr = float((n_correct[has_pos] / n_gt[has_pos]).mean()) if has_pos.any() else 0.0
    op = _ratio(n_correct.sum(), n_pred.sum())
    o_r = _ratio(n_correct.sum(), n_gt.sum())
    return {"CP": cp, "CR": cr, "CF1": _f1(cp, cr), "OP": op, "OR": o_r, "OF1": _f1(op, o_r)}


def ap_summary(scores: Any, labels: Any, ignore: Any | None = None) -> dict[str, float]:
    """``mAP`` (interpolated) and ``mAP_noninterp`` in percent, plus ``num_classes_scored``."""
    return _ap_summary(per_class_ap(scores, labels, ignore, interpolated=True), scores, labels, ignore)


def _ap_summary(aps: np.ndarray, scores: Any, labels: Any, ignore: Any | None) -> dict[str, float]:
    """:func:`ap_summary` from the interpolated per-class AP ``aps`` (fractions) already computed."""
    scored = ~np.isnan(aps)
    return {
        "mAP": 100.0 * float(aps[scored].mean()) if scored.any() else float("nan"),
        "mAP_noninterp": 100.0 * mean_ap(scores, labels, ignore, interpolated=False),
        "num_classes_scored": int(scored.sum()),
    }


def evaluate_multilabel(
    scores: Any, labels: Any, ignore: Any | None = None
) -> dict[str, float]:
    """Every metric in percent: mAP (interpolated), mAP_noninterp, the threshold-0 metrics, the
    top-3 metrics (``*_top3``) and ``num_classes_scored`` (an int: classes with a positive)."""
    return evaluate_with_class_ap(scores, labels, ignore)[0]


def evaluate_with_class_ap(
    scores: Any, labels: Any, ignore: Any | None = None
) -> tuple[dict[str, float], np.ndarray]:
    """:func:`evaluate_multilabel` and the interpolated AP of every class in percent ``[C]`` (NaN
    where no positive is left): what an evaluation logs and what ``report --recompute`` re-derives
    from a run's stored scores (one function for both, so they agree to the last digit)."""
    aps = per_class_ap(scores, labels, ignore, interpolated=True)
    out = _ap_summary(aps, scores, labels, ignore)
    scored_count = out.pop("num_classes_scored")
    for key, value in threshold_metrics(scores, labels, ignore).items():
        out[key] = 100.0 * value
    for key, value in threshold_metrics(scores, labels, ignore, top_k=3).items():
        out[f"{key}_top3"] = 100.0 * value
    out["num_classes_scored"] = scored_count
    return out, 100.0 * aps


class MultiLabelMetric(BaseMetric):
    """MMEngine metric over the model's predict outputs, reported per split.

    ``process`` receives a list of dicts ``{"logits": [B, C] float, "labels": [B, C] {0, 1},
    "eval_mask": [B, C] bool (True = entry counts), "split": [B] long}`` where ``split`` indexes
    ``splits``. Results are stored one entry per sample so that MMEngine's ``collect_results``
    can order them across ranks and drop the samples a distributed sampler pads in.

    Every split present is scored with ``ignore = ~eval_mask`` and keys ``"<split>/<metric>"``:
    splits named in ``full_splits`` get every key of :func:`evaluate_multilabel`; the others
    (e.g. ``val``, the held-out part of the training set scored on its observed labels) get
    ``mAP``, ``mAP_noninterp`` and ``num_classes_scored``.

    Each split is scored with its rows in the evaluation set's order (the loader's ``eval_index``),
    and the last evaluation of every full split is kept: :meth:`take_scores` hands the hook its
    float32 scores and per-class AP, which the run keeps at its selected epochs
    (:mod:`benchmark.core.scores`).
    """

    default_prefix = ""  # keys already carry their split ("val/mAP"); "" = no extra prefix, no warning

    def __init__(
        self,
        splits: Sequence[str] = ("val", "test"),
        full_splits: Sequence[str] = ("test",),
        collect_device: str = "cpu",
        prefix: str | None = None,
        collect_dir: str | None = None,
        reference: dict | None = None,
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix, collect_dir=collect_dir)
        self.splits = tuple(splits)
        self.full_splits = tuple(full_splits)
        self.reference = reference
        self._kept: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        """Move each batch dict to CPU numpy and store one ``(logits, labels, mask, split, row)``
        tuple per sample. With a ``reference`` (the harness's evaluation labels, masks and splits),
        labels are looked up by the loader's ``eval_index`` (the sample's ``row``): the model's outputs
        carry logits only. Without one, ``row`` is the order of arrival."""
        for batch in data_samples:
            if self.reference is not None:
                rows = as_numpy(data_batch["eval_index"]).astype(np.int64).reshape(-1)
                batch = {**{k: v[rows] for k, v in self.reference.items()}, "logits": batch["logits"]}
            logits = as_numpy(batch["logits"]).astype(np.float32)
            labels = as_numpy(batch["labels"]).astype(np.uint8)
            mask = as_numpy(batch["eval_mask"]).astype(bool)
            split = as_numpy(batch["split"]).astype(np.int64).reshape(-1)
            if self.reference is None:
                rows = np.arange(len(self.results), len(self.results) + logits.shape[0])
            for i in range(logits.shape[0]):
                self.results.append((logits[i], labels[i], mask[i], int(split[i]), int(rows[i])))

    def compute_metrics(self, results: list) -> dict[str, float]:
        """Concatenate the stored samples and score every split present."""
        self._kept = {}
        if not results:
            return {}
        logits = np.stack([r[0] for r in results])
        labels = np.stack([r[1] for r in results])
        mask = np.stack([r[2] for r in results])
        split = np.array([r[3] for r in results], dtype=np.int64)
        row = np.array([r[4] if len(r) > 4 else i for i, r in enumerate(results)], dtype=np.int64)
        unknown = sorted(set(split.tolist()) - set(range(len(self.splits))))
        if unknown:
            raise ValueError(f"split codes {unknown} have no name in splits={self.splits}")
        metrics: dict[str, float] = {}
        for code, name in enumerate(self.splits):
            rows = np.flatnonzero(split == code)
            rows = rows[np.argsort(row[rows], kind="stable")]        # the evaluation set's order
            if rows.size:
                metrics.update(self._score_split(name, logits[rows], labels[rows], mask[rows]))
        return metrics

    def _score_split(
        self, name: str, logits: np.ndarray, labels: np.ndarray, mask: np.ndarray
    ) -> dict[str, float]:
        """Metrics of one split, keys prefixed with ``"<name>/"``; a full split's scores and per-class
        AP are kept for :meth:`take_scores`."""
        if name in self.full_splits:
            values, class_ap = evaluate_with_class_ap(logits, labels, ignore=~mask)
            self._kept[name] = (logits, class_ap.astype(np.float32))
        else:
            values = ap_summary(logits, labels, ignore=~mask)
        return {f"{name}/{key}": value for key, value in values.items()}

    def take_scores(self, split: str = "test") -> tuple[np.ndarray, np.ndarray] | None:
        """``(scores [N, C] float32, per-class AP [C] float32 percent)`` of the last evaluation of a
        full split, rows in the evaluation set's order, or None (not evaluated here: under torchrun only
        rank 0 computes the metrics). Handed over once."""
        return self._kept.pop(split, None)
