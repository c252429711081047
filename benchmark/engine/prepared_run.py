"""A run's inputs, prepared once per RunSpec: the dataset splits, the mask, the frozen feature maps or
image sources, the side information and the task the method is given.
"""
from __future__ import annotations

import functools
import logging

import numpy as np
import torch

from benchmark.config.run_spec import CLIP_BACKBONE, RunSpec
from benchmark.contract.method import TaskSpec
from benchmark.core import process_group
from benchmark.core.errors import UserError
from benchmark.core.registry import get_dataset, get_method
from benchmark.engine.data import (
    TEST,
    VAL,
    EvalSet,
    FeatureSource,
    ImageSource,
    TrainSet,
    split_train_val,
    training_maps,
)
from datasets.base import DatasetSplits

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def load_dataset(name: str, size: str, root: str | None = None, preset: str | None = None) -> DatasetSplits:
    """The dataset's splits (memoised per process: a grid reuses them across runs)."""
    return get_dataset(name)(size=size, root=root, preset=preset)


@functools.lru_cache(maxsize=8)
def _features(data: tuple, split: str, backbone: str, weights, image_size: int, device: str):
    from benchmark.engine.features import cached_features

    splits = load_dataset(*data)
    # Converted here, once per process (this cache is shared by the grid's runs), not once per run.
    return training_maps(cached_features(getattr(splits, split), backbone, weights, image_size, device))


def warm_shared_caches(spec: RunSpec) -> int:
    """Build what concurrent runs would otherwise race to write: the dataset cache, the mask file,
    the frozen feature maps, the label embeddings and the CLIP view features (a parallel grid calls
    this first). Returns the bytes of feature maps one run of this spec holds in memory (0 in the
    finetune protocol)."""
    from datasets.masks import get_mask
    from datasets.side_info import label_embeddings

    key = (spec.dataset, spec.dataset_size, spec.data_root, spec.preset)
    splits = load_dataset(*key)
    get_mask(splits.train, spec.mask_protocol, spec.ratio, spec.seed, pack=dict(spec.inputs).get("mask_pack"))
    held = 0
    if spec.protocol == "frozen":
        for split in ("train", "test"):
            path = _feature_file(key, split, spec.backbone, spec.trunk_weights, spec.image_size)
            held += 4 * path.stat().st_size     # a run holds the maps and the evaluation copy, in fp32
    if "label_embeddings" in get_method(spec.method).card.requires:
        label_embeddings(splits.class_names, spec.embeddings, dataset=spec.dataset)
    if "clip_views" in get_method(spec.method).card.requires:
        from benchmark.engine.clip import build_clip

        views = _clip_views(spec, splits.train, build_clip(spec.clip_arch, spec.clip_weights), pick_device())
        held += views.numel() * views.element_size()      # a run holds its training rows' views
    return held


@functools.lru_cache(maxsize=None)
def _feature_file(data: tuple, split: str, backbone: str, weights, image_size: int):
    """The feature cache file of a split, verified against its manifest and extracted first if missing
    or bad; the maps are not kept in memory (the parent of a parallel grid only prepares them for its
    workers)."""
    from benchmark.engine.features import ensure_feature_cache

    labelset = getattr(load_dataset(*data), split)
    return ensure_feature_cache(labelset, backbone, weights, image_size, pick_device().type)


def _clip_views(spec: RunSpec, labelset, clip, device) -> torch.Tensor:
    """The cached CLIP view features of ``labelset`` for the method of ``spec`` (computed on ``device``)."""
    from benchmark.engine.clip import clip_fingerprint
    from benchmark.engine.clip_scores import check_rule, clip_view_features

    cls = get_method(spec.method)
    rule = check_rule(cls.clip_view_rule(cls.make_config(dict(spec.method_config), profile=spec.profile),
                                         spec.dataset), spec.method)
    return clip_view_features(labelset, clip, clip_fingerprint(spec.clip_arch, spec.clip_weights), rule, device)


def pick_device() -> torch.device:
    """The GPU when there is one (under torchrun: this rank's GPU), else the CPU."""
    return process_group.device()


class PreparedRun:
    """Everything a run trains on; built once per RunSpec."""

    def __init__(self, spec: RunSpec, device: torch.device):
        from datasets.masks import get_mask

        self.spec, self.device = spec, device
        self.data_key = (spec.dataset, spec.dataset_size, spec.data_root, spec.preset)
        self.splits = load_dataset(*self.data_key)
        train = self.splits.train
        # a mask pack's mask where the suite's own differs (the CLI installed it: --mask-pack)
        self.mask = get_mask(train, spec.mask_protocol, spec.ratio, spec.seed, pack=dict(spec.inputs).get("mask_pack"))
        self.train_rows, self.val_rows = split_train_val(len(train), spec.val_fraction, spec.seed)
        observed = self.mask.observed
        self.targets = (train.labels * observed).astype(np.float32)   # unknown entries are 0
        self.observed = observed
        self.backbone = None                      # the trainable backbone (finetune protocol only)
        self._clip = None                         # the run's CLIP, built on first use (clip_model)
        self.train_source, self.pass_source, self.eval_source, shape = self._sources()
        self.feature_dim, self.feature_size = shape

    def _sources(self):
        """(training source, un-augmented training source for epoch passes, eval source, map shape)."""
        spec = self.spec
        if spec.protocol == "frozen":
            tail = (spec.backbone, spec.trunk_weights, spec.image_size, self.device.type)
            train_f = _features(self.data_key, "train", *tail)
            test_f = _features(self.data_key, "test", *tail)
            eval_f = torch.cat([train_f[torch.as_tensor(self.val_rows, dtype=torch.long)], test_f])
            train_src = FeatureSource(train_f)
            return train_src, train_src, FeatureSource(eval_f), (train_f.shape[1], tuple(train_f.shape[2:]))
        from benchmark.engine.backbones import build_backbone, imagenet_normalization
        from benchmark.engine.transforms import eval_transform, training_pipeline

        method_cls = get_method(spec.method)
        if spec.backbone.startswith(CLIP_BACKBONE):
            from benchmark.engine.clip import clip_trunk

            # the CLIP's own trunk modules, shared with task.clip (frozen); a trainable copy for a card
            # requiring "clip_trunk_trainable"
            trainable = "clip_trunk_trainable" in method_cls.card.requires
            self.backbone = clip_trunk(spec.backbone, spec.clip_weights, self.clip_model(), trainable)
        else:
            self.backbone = build_backbone(spec.backbone, spec.backbone_weights)
        mean, std = imagenet_normalization(self.backbone)
        plain = eval_transform(spec.image_size, mean, std)
        paths = self.splits.train.image_paths
        cfg = method_cls.make_config(dict(spec.method_config), profile=spec.profile)
        augment = training_pipeline(method_cls.augmentation(cfg), spec.image_size, mean, std)
        train_src = ImageSource(paths, augment)
        # Epoch-level passes (prototypes) read un-augmented images; the official code uses the
        # augmented, shuffled training loader there (pitfall P9).
        pass_src = ImageSource(paths, plain)
        scored = plain if spec.train.test_image_size == spec.image_size else \
            eval_transform(spec.train.test_image_size, mean, std)        # the recipe's evaluation size
        eval_src = ImageSource([paths[i] for i in self.val_rows] + list(self.splits.test.image_paths), scored)
        with torch.no_grad():
            probe = self.backbone.eval()(torch.zeros(1, 3, spec.image_size, spec.image_size))
        return train_src, pass_src, eval_src, (probe.shape[1], tuple(probe.shape[2:]))

    def train_set(self, augmented: bool = True) -> TrainSet:
        rows = self.train_rows
        source = self.train_source if augmented else self.pass_source
        return TrainSet(source, rows, self.targets[rows], self.observed[rows])

    def eval_set(self) -> EvalSet:
        """Held-out rows scored on their observed labels, then the test split. A mask without observed
        negatives (single positive) would score every class at AP 100; there the held-out rows are
        scored with unknown entries as negatives (the "assume negative" val mAP), the only ranking
        signal the observed labels give."""
        test = self.splits.test
        val_labels = self.targets[self.val_rows].astype(np.uint8)
        val_mask = self.observed[self.val_rows]
        if not (val_mask & (val_labels == 0)).any():
            val_mask = np.ones_like(val_mask)
        test_mask = np.ones_like(test.labels, dtype=bool) if test.ignore is None else ~test.ignore
        return EvalSet(
            self.eval_source,
            labels=np.concatenate([val_labels, test.labels]),
            eval_mask=np.concatenate([val_mask, test_mask]),
            split=np.concatenate([np.full(len(self.val_rows), VAL), np.full(len(test), TEST)]).astype(np.int64),
        )

    def task_spec(self, requires: frozenset) -> TaskSpec:
        from datasets.side_info import cooccurrence_graph, label_embeddings

        rows = self.train_rows
        names = self.splits.class_names
        emb = graph = None
        info = {"mask_sha256": self.mask.sha256, "empty_classes": [], "mask_protocol": self.spec.mask_protocol,
                "dataset": self.spec.dataset, "privileged": []}
        if "expected_num_pos" in requires:
            info.update(self.expected_num_pos())
        if "label_embeddings" in requires:
            emb = torch.from_numpy(label_embeddings(names, self.spec.embeddings, dataset=self.spec.dataset))
        if "label_graph" in requires:
            adj, empty = cooccurrence_graph(self.targets[rows], self.observed[rows])
            graph, info["empty_classes"] = torch.from_numpy(adj), list(empty)
        clip = self.clip_model() if "clip" in requires else None
        views = self.clip_views()[torch.as_tensor(rows, dtype=torch.long)] if "clip_views" in requires else None
        return TaskSpec(num_classes=len(names), class_names=list(names), num_train=len(rows),
                        feature_dim=self.feature_dim, feature_size=self.feature_size, protocol=self.spec.protocol,
                        label_embeddings=emb, label_graph=graph, info=info, clip=clip, clip_views=views)

    def clip_views(self) -> torch.Tensor:
        """float16 [N, V, D] CLIP features of the views (the method's ``clip_view_rule``) of every image of
        the training split, from the images in both protocols, cached once per (CLIP, rule, images)."""
        return _clip_views(self.spec, self.splits.train, self.clip_model(), self.device)

    def clip_model(self):
        """The run's frozen CLIP (``spec.clip_arch`` with ``spec.clip_weights``), built once: the tiny random
        one without a file (CPU profiles, with a note), else the user's file (the CLI refuses a real
        architecture without one before any run starts)."""
        from benchmark.engine.clip import build_clip

        spec = self.spec
        if self._clip is None:
            if spec.clip_arch is None:
                raise UserError(f"run {spec.describe()} has no CLIP (RunSpec.clip_arch is None) but {spec.method} "
                                "requires one; give --clip-arch / --clip-weights, or plan the run with the CLI")
            if spec.clip_weights is None:
                log.warning("%s: CLIP %s with random weights (no --clip-weights): the numbers test the pipeline, "
                         "not CLIP", spec.method, spec.clip_arch)
            self._clip = build_clip(spec.clip_arch, spec.clip_weights)
        return self._clip

    def expected_num_pos(self) -> dict:
        """The average number of positives per training image (spec wave 2, 1.4). Estimated from the
        observed labels, sum_c n_pos_obs(c) / n_obs(c), when the mask has observed negatives; otherwise
        (single positive) the value Cole et al. use, taken from the hidden training labels and marked
        privileged: spec.json lists it and every leaderboard cell of the run carries a marker."""
        rows = self.train_rows
        observed, targets = self.observed[rows], self.targets[rows]
        has_negatives = bool((observed & (targets == 0)).any())
        if has_negatives:
            n_obs = observed.sum(axis=0)
            pos = (targets * observed).sum(axis=0)
            rate = np.divide(pos, n_obs, out=np.zeros(len(n_obs), dtype=np.float64), where=n_obs > 0)
            return {"expected_num_pos": float(rate.sum()), "expected_num_pos_source": "observed"}
        hidden = self.splits.train.labels[rows]
        return {"expected_num_pos": float(hidden.sum(axis=1).mean()), "expected_num_pos_source": "hidden labels",
                "privileged": ["expected_num_pos"]}

    def recovery_scorer(self):
        """Scores pseudo-positives of unknown entries against the hidden labels (harness only)."""
        hidden = self.splits.train.labels[self.train_rows].astype(bool)
        observed = self.observed[self.train_rows]

        def score(index: torch.Tensor, pseudo: torch.Tensor) -> dict:
            idx = index.cpu().numpy()
            pred = pseudo.cpu().numpy().astype(bool) & ~observed[idx]
            truth = hidden[idx] & ~observed[idx]
            tp = int((pred & truth).sum())
            return {"pseudo_positives": int(pred.sum()), "true_pseudo_positives": tp,
                    "precision": 100.0 * tp / max(1, int(pred.sum())),
                    "recall": 100.0 * tp / max(1, int(truth.sum()))}

        return score
