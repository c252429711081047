"""One run, end to end: data, mask, side information, method, MMEngine runner, results folder."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import logging
import platform
import subprocess
from importlib import metadata

import numpy as np
import torch
from mmengine.dataset import DefaultSampler
from torch.utils.data import DataLoader, Sampler

from benchmark.config.run_spec import RunSpec
from benchmark.contract import collectives
from benchmark.contract.method import Batch, TaskSpec, TrainContext
from benchmark.core import process_group
from benchmark.core.cache import REPO_ROOT
from benchmark.core.errors import UserError
from benchmark.core.registry import get_dataset, get_method
from benchmark.core.run_folder import RunBusy, RunFolder
from benchmark.core.run_status import Heartbeat
from benchmark.engine.data import (
    TEST,
    VAL,
    EvalSet,
    FeatureSource,
    ImageSource,
    TrainSet,
    batch_collate,
    split_train_val,
    training_maps,
)
from benchmark.engine.runner import MethodHook, build_runner, release_runner
from benchmark.engine.seeding import seed_everything
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


@functools.lru_cache(maxsize=1)
def environment_record() -> dict:
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        sha = proc.stdout.strip() if proc.returncode == 0 else None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                    capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        sha, dirty = None, None
    versions = {}
    for pkg in ("torch", "torchvision", "timm", "mmengine", "numpy", "scikit-learn"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})"
    return {"git_sha": sha, "git_dirty": dirty, "versions": versions, "device": device,
            "python": platform.python_version(), "host": platform.node()}


def warm_shared_caches(spec: RunSpec) -> int:
    """Build what concurrent runs would otherwise race to write: the dataset cache, the mask file,
    the frozen feature maps and the label embeddings (a parallel grid calls this first). Returns
    the bytes of feature maps one run of this spec holds in memory (0 in the finetune protocol)."""
    from datasets.masks import get_mask
    from datasets.side_info import label_embeddings

    key = (spec.dataset, spec.dataset_size, spec.data_root, spec.preset)
    splits = load_dataset(*key)
    get_mask(splits.train, spec.mask_protocol, spec.ratio, spec.seed)
    held = 0
    if spec.protocol == "frozen":
        for split in ("train", "test"):
            path = _feature_file(key, split, spec.backbone, spec.backbone_weights, spec.image_size)
            held += 4 * path.stat().st_size     # a run holds the maps and the evaluation copy, in fp32
    if "label_embeddings" in get_method(spec.method).requires:
        label_embeddings(splits.class_names, spec.embeddings, dataset=spec.dataset)
    return held


@functools.lru_cache(maxsize=None)
def _feature_file(data: tuple, split: str, backbone: str, weights, image_size: int):
    """The feature cache file of a split, extracted first if missing; the maps are not kept in
    memory (the parent of a parallel grid only prepares them for its workers)."""
    from benchmark.engine.features import cached_features, feature_cache_path

    labelset = getattr(load_dataset(*data), split)
    path = feature_cache_path(labelset, backbone, weights, image_size)
    if not path.is_file():
        cached_features(labelset, backbone, weights, image_size, pick_device().type, path=path)
    return path


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
        self.mask = get_mask(train, spec.mask_protocol, spec.ratio, spec.seed)
        self.train_rows, self.val_rows = split_train_val(len(train), spec.val_fraction, spec.seed)
        observed = self.mask.observed
        self.targets = (train.labels * observed).astype(np.float32)   # unknown entries are 0
        self.observed = observed
        self.backbone = None                      # the trainable backbone (finetune protocol only)
        self.train_source, self.pass_source, self.eval_source, shape = self._sources()
        self.feature_dim, self.feature_size = shape

    def _sources(self):
        """(training source, un-augmented training source for epoch passes, eval source, map shape)."""
        spec = self.spec
        if spec.protocol == "frozen":
            tail = (spec.backbone, spec.backbone_weights, spec.image_size, self.device.type)
            train_f = _features(self.data_key, "train", *tail)
            test_f = _features(self.data_key, "test", *tail)
            eval_f = torch.cat([train_f[torch.as_tensor(self.val_rows, dtype=torch.long)], test_f])
            train_src = FeatureSource(train_f)
            return train_src, train_src, FeatureSource(eval_f), (train_f.shape[1], tuple(train_f.shape[2:]))
        from benchmark.engine.backbones import build_backbone, imagenet_normalization
        from benchmark.engine.transforms import eval_transform, training_pipeline

        self.backbone = build_backbone(spec.backbone, spec.backbone_weights)
        mean, std = imagenet_normalization(self.backbone)
        plain = eval_transform(spec.image_size, mean, std)
        paths = self.splits.train.image_paths
        method_cls = get_method(spec.method)
        cfg = method_cls.make_config(dict(spec.method_config), profile=spec.profile)
        augment = training_pipeline(method_cls.augmentation(cfg), spec.image_size, mean, std)
        train_src = ImageSource(paths, augment)
        # Epoch-level passes (prototypes) read un-augmented images; the official code uses the
        # augmented, shuffled training loader there (pitfall P9).
        pass_src = ImageSource(paths, plain)
        eval_src = ImageSource([paths[i] for i in self.val_rows] + list(self.splits.test.image_paths), plain)
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
                "privileged": []}
        if "expected_num_pos" in requires:
            info.update(self.expected_num_pos())
        if "label_embeddings" in requires:
            emb = torch.from_numpy(label_embeddings(names, self.spec.embeddings, dataset=self.spec.dataset))
        if "label_graph" in requires:
            adj, empty = cooccurrence_graph(self.targets[rows], self.observed[rows])
            graph, info["empty_classes"] = torch.from_numpy(adj), list(empty)
        return TaskSpec(num_classes=len(names), class_names=list(names), num_train=len(rows),
                        feature_dim=self.feature_dim, feature_size=self.feature_size, protocol=self.spec.protocol,
                        label_embeddings=emb, label_graph=graph, info=info)

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


def per_rank_batch_size(spec: RunSpec, num_train: int) -> int:
    """The batch each rank trains on: the run's (global) batch size, capped by the training rows,
    split evenly over the ranks of a torchrun launch (the preflight refuses a batch size the world
    size does not divide)."""
    world = process_group.world_size()
    if min(spec.batch_size, num_train) < world:
        raise UserError(f"{num_train} training rows in batches of {spec.batch_size} cannot feed {world} ranks; "
                        "use fewer ranks")
    return min(spec.batch_size, num_train) // world


class TrainOrder(Sampler):
    """The training rows of a rank, one epoch: the seeded permutation of MMEngine's DefaultSampler
    (``seed + epoch``), cut to whole global batches and dealt round robin over the ranks, so the
    ranks' batches of an iteration together are exactly the single-process batch and every rank
    runs the same number of iterations. In one process it yields what DefaultSampler with a
    ``drop_last`` loader trains on. ``set_epoch`` is called by MMEngine's DistSamplerSeedHook."""

    def __init__(self, num_rows: int, global_batch: int, seed: int):
        self.num_rows, self.global_batch, self.seed, self.epoch = num_rows, global_batch, seed, 0
        self.rank, self.world = process_group.rank(), process_group.world_size()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def used(self) -> int:
        """Rows in whole global batches: the loader's ``drop_last`` would drop the rest anyway."""
        return (self.num_rows // self.global_batch) * self.global_batch

    def __iter__(self):
        gen = torch.Generator()
        gen.manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_rows, generator=gen).tolist()
        return iter(order[:self.used][self.rank::self.world])

    def __len__(self) -> int:
        return self.used // self.world


def _loaders(prep: PreparedRun, spec: RunSpec, num_workers: int):
    train = prep.train_set()
    per_rank = per_rank_batch_size(spec, len(train))
    train_loader = DataLoader(train, batch_size=per_rank, sampler=TrainOrder(len(train), per_rank * process_group.world_size(),
                                                                             spec.seed),
                              collate_fn=batch_collate, drop_last=True, num_workers=num_workers)
    eval_set = prep.eval_set()
    # Frozen: 128 rows per evaluation batch (25 % faster than 256 on a CPU for the SARL heads, logits
    # bit-identical for every default-grid method at 1 and 2 threads). Under torchrun each rank scores
    # its share and MMEngine's metric collects them in the original order.
    eval_loader = DataLoader(eval_set, batch_size=128 if spec.protocol == "frozen" else 32,
                             sampler=DefaultSampler(eval_set, shuffle=False, seed=spec.seed),
                             collate_fn=batch_collate, num_workers=num_workers)
    return train_loader, eval_loader


def _iterate_train(train: TrainSet, device: torch.device, batch_size: int = 256):
    """Epoch passes over the training rows in a fixed order, without augmentation. Under torchrun
    each rank iterates its contiguous share (:func:`benchmark.contract.collectives.shard`); methods gather what they
    collect (``benchmark.contract.collectives.gather_rows``), which restores the single-process order."""
    rows = collectives.shard(len(train))

    def iterate():
        for start in range(rows.start, rows.stop, batch_size):
            raw = train.__getitems__(list(range(start, min(start + batch_size, rows.stop))))
            yield Batch(**{k: v.to(device) for k, v in raw.items()})
    return iterate


def run_one(spec: RunSpec, out_dir, progress=None, keep_checkpoints: bool = False, num_workers: int = 0,
            threads: int | None = None, say=print) -> RunFolder:
    """Train and evaluate one run; resumes from the run folder's last checkpoint when present.

    The run folder is owned for the whole call (:meth:`RunFolder.claim`; :class:`RunBusy` when
    another process trains it). A run marked done whose records are broken is retrained, and an
    unreadable checkpoint means a fresh start, each with one line through ``say``. ``threads``
    (CPU) is the torch thread count of a new run; a resumed run uses the count it started with,
    so its numbers are bit-identical to an uninterrupted run's.
    """
    folder = RunFolder(out_dir, spec.run_id)
    if collectives.broadcast_object(folder.finished if process_group.is_main() else None):
        return folder
    with contextlib.ExitStack() as owned:
        # Under torchrun rank 0 owns the folder and decides (train, resume or skip); every rank follows.
        plan = _plan_run(spec, folder, owned, threads, say) if process_group.is_main() else None
        plan = collectives.broadcast_object(plan)
        if plan[0] == "busy":
            raise RunBusy(plan[1])
        if plan[0] == "error":
            raise RuntimeError(plan[1])
        if plan[0] == "done":
            return folder                # another process finished it while we waited
        _, resume, threads = plan
        with torch_threads(threads), (Heartbeat(folder) if process_group.is_main() else contextlib.nullcontext()):
            _train_and_evaluate(spec, folder, progress, keep_checkpoints, num_workers, resume)
        folder.trained_here = True           # not merely found finished by another process
    process_group.barrier()                           # rank 0 has written `done` before any rank moves on
    return folder


def _plan_run(spec: RunSpec, folder: RunFolder, owned: contextlib.ExitStack, threads: int | None, say) -> tuple:
    """Rank 0: claim the folder (held by ``owned``) and decide: ("train", resume, threads),
    ("done",), ("busy", why) or ("error", why)."""
    try:
        owned.enter_context(folder.claim())
        if folder.done:
            why = folder.verify()
            if why is None:
                return ("done",)
            say(f"run {spec.describe()}: its finished records are broken ({why}); retraining it")
            folder.reset()
        (folder.path / "error.txt").unlink(missing_ok=True)
        ckpt = folder.last_checkpoint()
        if ckpt is not None and (problem := folder.checkpoint_problem(ckpt)) is not None:
            say(f"run {spec.describe()}: checkpoint {ckpt.name} is unreadable ({problem}); starting the run afresh")
            ckpt = None
        resume = ckpt is not None
        if resume:
            threads = folder.spec_record().get("torch_threads") or threads
        else:
            folder.reset()
        return ("train", resume, threads)
    except RunBusy as exc:
        if not process_group.is_distributed():
            raise
        return ("busy", str(exc))
    except Exception as exc:  # noqa: BLE001 - the other ranks must hear of it, not wait for a broadcast
        if not process_group.is_distributed():
            raise
        return ("error", f"rank 0 could not prepare the run folder: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def torch_threads(count: int | None):
    """Run a block with ``count`` torch CPU threads (None: as it is), restoring the count after."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(int(count))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_lr(method_cls, cfg, spec: RunSpec) -> float:
    """The learning rate the run trains with: the method's paper recipe's, else the profile's. Under
    DDP it is not scaled: the batch size is the global one, as in one process."""
    recipe = method_cls.optim_recipe(cfg, spec) if spec.profile == "paper" else None
    return float(recipe["optimizer"].get("lr", spec.lr)) if recipe else float(spec.lr)


def _train_and_evaluate(spec: RunSpec, folder: RunFolder, progress, keep_checkpoints: bool, num_workers: int,
                        resume: bool) -> None:
    method_cls = get_method(spec.method)
    device = pick_device()
    prep = PreparedRun(spec, device)
    cfg = method_cls.make_config(dict(spec.method_config), profile=spec.profile)
    task = prep.task_spec(method_cls.requires)
    world, per_rank = process_group.world_size(), per_rank_batch_size(spec, len(prep.train_rows))
    parallel = {"world_size": world, "global_batch_size": per_rank * world, "batch_size_per_rank": per_rank,
                "backend": process_group.backend() if world > 1 else None, "lr": _run_lr(method_cls, cfg, spec)}
    record = {**spec.to_dict(), "run_id": spec.run_id, "mask_sha256": prep.mask.sha256,
              "privileged": {k: task.info[k] for k in task.info["privileged"]},
              "trunk_baseline": method_cls.trunk_baseline if method_cls.trunk_baseline != spec.method else None,
              "resolved_config": dataclasses.asdict(cfg) if cfg is not None else None,
              "mask_manifest": prep.mask.path.name if prep.mask.path else None,
              "num_train": int(len(prep.train_rows)), "num_val": int(len(prep.val_rows)),
              "num_test": int(len(prep.splits.test)), **environment_record(),
              "torch_threads": torch.get_num_threads(), "parallel": parallel}
    if process_group.is_main():
        folder.start(record, resumed=resume)
    seed_everything(spec.seed)
    method = method_cls(task, cfg, backbone=prep.backbone)
    train_loader, eval_loader = _loaders(prep, spec, num_workers)
    ctx = TrainContext(max_epochs=spec.epochs, iters_per_epoch=len(train_loader), seed=spec.seed,
                       profile=spec.profile, device=device, world_size=world,
                       iterate_train=_iterate_train(prep.train_set(augmented=False), device))
    method.ctx = ctx
    hook = MethodHook(folder, ctx, recovery_fn=prep.recovery_scorer(), progress=progress)
    runner = build_runner(method, spec, folder, train_loader, eval_loader, hook, device, resume)
    try:
        runner.train()
    finally:
        release_runner(runner)
        del runner
        # The runner, its loaders and hooks form reference cycles that hold the run's data (the fp32
        # feature maps: ~350 MB on the default profile); collect them now, not at some later
        # generation-2 pass, so a worker's memory stays flat over a grid.
        gc.collect()
    peaks = [v for v in collectives.gather_objects(hook.memory.peak_mb()) if v == v]
    peak_mb = max(peaks) if peaks else float("nan")          # the largest rank's
    if not process_group.is_main():
        return
    epochs = {r["epoch"]: r for r in folder.records("train")}
    folder.log({"kind": "summary", "train_seconds": sum(r.get("epoch_seconds", 0.0) for r in epochs.values()),
                "peak_memory_mb": peak_mb, "epochs": spec.epochs})
    folder.finish(keep_checkpoints)
