"""MMEngine glue: the Runner built from Python objects, the one hook that drives a Method's epoch
events and logs results, (checkpoints load through :mod:`benchmark.engine.checkpoints`).
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import torch
from mmengine.evaluator import Evaluator
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.runner import Runner

from benchmark.contract import collectives
from benchmark.contract.method import Batch, Method, TrainContext
from benchmark.core import process_group
from benchmark.core.errors import UserError
from benchmark.core.files import atomic_write_text
from benchmark.core.run_folder import RunFolder
from benchmark.core.scores import write_epoch_scores
from benchmark.engine import checkpoints, ddp_model  # noqa: F401 - checkpoints: the safe loader
from benchmark.engine.metrics import MultiLabelMetric
from benchmark.engine.peak_memory import PeakMemory
from benchmark.engine.seeding import seed_everything

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or inf; the message names the method, term, epoch and iteration."""




class MethodModel(BaseModel):
    """MMEngine's view of a :class:`Method`. Training batches become a :class:`Batch` for
    ``compute_losses``; evaluation batches (inputs and row numbers) give the method their inputs
    only. Checkpoints hold the method's state under ``method.``."""

    def __init__(self, method: Method):
        super().__init__()
        self.method = method

    def forward(self, inputs, targets=None, observed=None, index=None, mode: str = "tensor", **_):
        if mode == "loss":
            batch = Batch(inputs=inputs, targets=targets, observed=observed, index=index)
            return self.method.compute_losses(batch, self.method.ctx)
        logits = self.method.predict_scores(inputs)
        return [{"logits": logits.detach().float()}] if mode == "predict" else logits


class MethodHook(Hook):
    """Turns MMEngine's epoch events into the Method's hooks; logs losses, diagnostics and metrics
    to the run folder, keeps each evaluation's test scores in ``work/``; checkpoints after each
    evaluation so a resumed run loses no logged epoch.

    Under torchrun (``benchmark.contract.collectives``) every rank runs the hook and only rank 0 writes: logged
    losses and diagnostics are averaged over the ranks, recovered labels are gathered from every
    rank before they are scored, a non-finite loss on any rank stops every rank at the same
    iteration, and after each epoch the ranks compare their method state (``rank_check`` records name any tensor that differs)."""

    priority = "NORMAL"

    def __init__(self, folder: RunFolder, ctx: TrainContext, recovery_fn=None, progress=None):
        self.folder, self.ctx, self.recovery_fn, self.progress = folder, ctx, recovery_fn, progress
        self.memory = PeakMemory()
        self._sums: dict[str, float] = {}
        self._count = 0
        self._epoch_start = 0.0

    @staticmethod
    def _method(runner) -> Method:
        model = runner.model
        return (model.module if hasattr(model, "module") else model).method

    def before_train_epoch(self, runner) -> None:
        self.ctx.epoch = runner.epoch
        seed_everything(self.ctx.seed * 1000 + runner.epoch)  # resumable: each epoch reseeds
        self._sums, self._count, self._epoch_start = {}, 0, time.perf_counter()
        self._method(runner).on_train_epoch_start(self.ctx)
        if process_group.rank() > 0:
            # Epoch hooks draw the same numbers on every rank (their results must agree); the draws
            # inside steps (dropout, random blends) are each rank's own, as they are each row's own in
            # one process. Rank 0 keeps the single-process stream.
            seed_everything(self.ctx.seed * 1000 + runner.epoch + 10**6 * process_group.rank())

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self.ctx.iter_in_epoch = batch_idx

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        values = {}
        for key, value in (outputs or {}).items():
            value = float(value.detach() if hasattr(value, "detach") else value)
            values[key] = value
            self._sums[key] = self._sums.get(key, 0.0) + value
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if collectives.any_rank(bool(bad)):            # every rank stops together (no rank left waiting)
            if not bad:
                raise NonFiniteLoss(f"{self._method(runner).name}: a loss term is not finite on another rank at "
                                    f"epoch {runner.epoch + 1}, iteration {batch_idx + 1}; the run stopped there")
            term = next((k for k in bad if k != "loss"), bad[0])
            raise NonFiniteLoss(f"{self._method(runner).name}: loss term {term} is {values[term]} at epoch "
                                f"{runner.epoch + 1}, iteration {batch_idx + 1}; the run stopped there")
        self._count += 1
        self.memory.sample()

    def after_train_epoch(self, runner) -> None:
        method = self._method(runner)
        record = {"kind": "train", "epoch": runner.epoch + 1,
                  "epoch_seconds": time.perf_counter() - self._epoch_start,
                  "lr": runner.optim_wrapper.get_lr()["lr"][0]}
        record.update(_rank_mean({k: v / max(1, self._count) for k, v in self._sums.items()}))
        record.update({f"diag/{k}": v for k, v in _rank_mean(method.on_train_epoch_end(self.ctx)).items()})
        self._log(runner, record)
        recovered = method.recovered_labels()
        if process_group.is_distributed() and collectives.any_rank(recovered is not None):
            if recovered is None:           # this rank recovered nothing; another did
                recovered = (torch.zeros(0, dtype=torch.long),
                             torch.zeros(0, method.task.num_classes, dtype=torch.bool))
            index, pseudo = collectives.gather_rows(recovered[0].cpu(), recovered[1].cpu())
            # Methods that already share their tables hold every row on every rank: count each once.
            index, first = _first_occurrence(index)
            recovered = (index, pseudo[first])
        if recovered is not None and self.recovery_fn is not None:
            self._log(runner, {"kind": "recovery", "epoch": runner.epoch + 1, **self.recovery_fn(*recovered)})
        differing = ddp_model.differing_state(method)
        if differing:
            self._log(runner, {"kind": "rank_check", "epoch": runner.epoch + 1, "identical": False,
                               "differing": differing})
            log.warning("%s: after epoch %d the ranks hold different values of %s", method.name, runner.epoch + 1,
                        ", ".join(differing[:5]))

    def after_val_epoch(self, runner, metrics=None) -> None:
        self._log(runner, {"kind": "eval", "epoch": runner.epoch, **(metrics or {})})
        self._keep_scores(runner)              # before the checkpoint: a resumed run re-evaluates past it
        self._checkpoint(runner)
        if self.progress is not None:          # every rank (a grid shows rank 0's bar only)
            self.progress(runner.epoch, runner.max_epochs, (metrics or {}).get("val/mAP"))

    def _log(self, runner, record: dict) -> None:
        """One record into metrics.jsonl and, with ``--tensorboard``, its numbers into TensorBoard at
        step = epoch (tags ``train/<loss>``, ``diag/<name>``, ``recovery/<name>``; MMEngine's LoggerHook
        adds the evaluation metrics ``val/...`` and ``test/...``). Rank 0 only."""
        if not process_group.is_main():
            return
        self.folder.log(record)
        kind = record["kind"]
        if tensorboard_enabled() and kind != "eval":
            scalars = {(k if "/" in k else f"{kind}/{k}"): float(v) for k, v in record.items()
                       if k not in ("kind", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool)
                       and math.isfinite(v)}
            if scalars:
                runner.visualizer.add_scalars(scalars, step=int(record["epoch"]))

    def _keep_scores(self, runner) -> None:
        """The test scores and per-class AP of this evaluation into ``work/`` (atomically); the run keeps
        those of its selected epochs in ``scores.npz`` when it ends (:mod:`benchmark.core.scores`). Rank 0,
        where the metric computed them."""
        if not process_group.is_main():
            return
        metric = next((m for m in runner.val_evaluator.metrics if isinstance(m, MultiLabelMetric)), None)
        kept = metric.take_scores("test") if metric is not None else None
        if kept is not None:
            write_epoch_scores(self.folder.work_dir, runner.epoch, *kept)

    def _checkpoint(self, runner) -> None:
        """Atomic: written under a temporary name, then renamed, then pointed to; a kill or a full
        disk mid-write leaves the previous checkpoint in charge."""
        if not process_group.is_main():               # rank 0 writes; every rank resumes from its file
            return
        work = self.folder.work_dir
        name = f"epoch_{runner.epoch}.pth"
        tmp = f".{name}.{os.urandom(6).hex()}.tmp"           # unpredictable: never a planted link
        try:
            runner.save_checkpoint(str(work), tmp, meta={"epoch": runner.epoch, "iter": runner.iter})
            os.replace(work / tmp, work / name)
        finally:
            (work / tmp).unlink(missing_ok=True)
        atomic_write_text(work / "last_checkpoint", name)            # a name inside work/, never a path
        for old in work.glob("epoch_*.pth"):
            if old.name != name:
                old.unlink()


def _rank_mean(values: dict) -> dict:
    """The mean over the ranks of each number in ``values`` (keys any rank has; a single process: as is)."""
    if not process_group.is_distributed():
        return values
    parts = collectives.gather_objects(values)
    keys = list(dict.fromkeys(k for part in parts for k in part))
    return {k: sum(float(p[k]) for p in parts if k in p) / sum(1 for p in parts if k in p) for k in keys}


def _first_occurrence(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted unique rows of ``index``, the position of each one's first occurrence)."""
    unique, inverse = torch.unique(index, sorted=True, return_inverse=True)
    first = torch.full((len(unique),), len(index), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(len(index)), reduce="amin")
    return unique, first


TENSORBOARD_ENV = "MLRPL_TENSORBOARD"     # set by ``run_benchmark.py --tensorboard``; inherited by workers


def tensorboard_enabled() -> bool:
    return os.environ.get(TENSORBOARD_ENV) == "1"


def tensorboard_visualizer(folder: RunFolder) -> dict | None:
    """MMEngine's TensorBoard backend writing into ``<run folder>/tensorboard/`` (opt-in), else None
    (MMEngine's default local backend)."""
    if not tensorboard_enabled():
        return None
    return dict(type="Visualizer", vis_backends=[dict(type="TensorboardVisBackend",
                                                      save_dir=str(folder.path / "tensorboard"))])


OPTIMIZERS = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW, "SGD": torch.optim.SGD}


class AutocastOptimWrapper(OptimWrapper):
    """bf16 training: the forward and loss under ``torch.autocast`` on the run's device (CPU or GPU).
    bf16 has fp32's exponent range, so no loss scaling is needed; MMEngine's AmpOptimWrapper (used for
    fp16, with its GradScaler) refuses CPUs."""

    def __init__(self, *args, device_type: str = "cpu", **kwargs):
        super().__init__(*args, **kwargs)
        self.device_type = device_type

    def optim_context(self, model):
        import contextlib

        stack = contextlib.ExitStack()
        stack.enter_context(super().optim_context(model))
        stack.enter_context(torch.autocast(self.device_type, dtype=torch.bfloat16))
        return stack


def release_runner(runner: Runner) -> None:
    """mmengine keeps one logger, message hub and visualizer per experiment name for the life of
    the process; a grid builds a runner per run, so drop them (and close the log file) after each."""
    from mmengine.logging import MessageHub, MMLogger
    from mmengine.visualization import Visualizer

    name = runner.experiment_name
    logger = MMLogger._instance_dict.pop(name, None)
    for handler in list(getattr(logger, "handlers", [])):
        handler.close()
        logger.removeHandler(handler)
    MessageHub._instance_dict.pop(name, None)
    Visualizer._instance_dict.pop(name, None)


def build_optim_wrapper(method: Method, spec, device: torch.device):
    """The optimizer of the run's recipe (``spec.train``) over the method's parameter groups, in an
    MMEngine wrapper: plain (fp32: never autocast), :class:`AutocastOptimWrapper` (bf16 autocast) or
    AmpOptimWrapper (fp16 autocast with loss scaling, GPU only), with gradient clipping when the recipe
    clips."""
    train = spec.train
    groups = method.param_groups(train.lr, train.weight_decay)
    params = groups if groups is not None else [p for p in method.parameters() if p.requires_grad]
    options = dict(lr=train.lr, weight_decay=train.weight_decay)
    if train.optimizer == "SGD" and train.momentum is not None:
        options["momentum"] = train.momentum
    if train.optimizer in ("Adam", "AdamW") and train.betas is not None:
        options["betas"] = train.betas
    optimizer = OPTIMIZERS[train.optimizer](params, **options)
    clip = dict(clip_grad=dict(max_norm=train.grad_clip)) if train.grad_clip else {}
    if train.precision == "fp32":
        return OptimWrapper(optimizer=optimizer, **clip)
    if train.precision == "bf16":
        return AutocastOptimWrapper(optimizer=optimizer, device_type=device.type, **clip)
    if device.type != "cuda":
        raise UserError("--precision fp16 needs a GPU (fp16 autocast on a CPU is not supported); use bf16 or fp32")
    return AmpOptimWrapper(optimizer=optimizer, dtype="float16", **clip)


def build_schedulers(spec, group_lrs: list[float] | None = None) -> list[dict] | None:
    """The recipe's learning-rate schedule as MMEngine scheduler configs (None: a constant lr).
    ``group_lrs``: the optimizer's per-group learning rates; OneCycle sets every group's lr itself, so
    groups at other rates than the recipe's (a method's lr multipliers) get their own peaks."""
    train = spec.train
    out = []
    if train.warmup_epochs:
        out.append(dict(type="LinearLR", start_factor=0.01, by_epoch=True, begin=0, end=train.warmup_epochs,
                        convert_to_iter_based=True))
    begin = train.warmup_epochs if out else 0
    if train.schedule == "step":
        out.append(dict(type="StepLR", step_size=train.step_size, gamma=train.gamma, by_epoch=True))
    elif train.schedule == "multistep":
        out.append(dict(type="MultiStepLR", milestones=list(train.milestones), gamma=train.gamma, by_epoch=True))
    elif train.schedule == "onecycle":
        peaks = list(group_lrs) if group_lrs and any(lr != train.lr for lr in group_lrs) else train.lr
        out.append(dict(type="OneCycleLR", eta_max=peaks, pct_start=train.pct_start, anneal_strategy="cos",
                        div_factor=train.div_factor, final_div_factor=train.final_div_factor, by_epoch=True,
                        begin=0, end=train.schedule_epochs or train.epochs, convert_to_iter_based=True))
    elif train.schedule == "cosine":
        end = train.schedule_epochs or train.epochs
        out.append(dict(type="CosineAnnealingLR", T_max=end - begin, by_epoch=True, begin=begin, end=end,
                        convert_to_iter_based=True))
    return out or None


def build_runner(method: Method, spec, folder: RunFolder, train_loader, eval_loader, hook: MethodHook,
                 device: torch.device, resume: Path | None) -> Runner:
    """The MMEngine Runner of one run; ``resume`` is the checkpoint to resume from (the one the run
    folder names and the engine has checked), never one mmengine finds by itself."""
    model = MethodModel(method)
    if process_group.is_distributed():
        # Wrapped here rather than by the Runner, which would give a CPU module GPU device ids. Loss
        # terms that are not active yet leave parameters unused; per-sample state is shared by the
        # methods themselves (benchmark.contract.collectives), so buffers are not broadcast every step.
        from mmengine.model import MMDistributedDataParallel

        ddp_model.convert_sync_batchnorm(method)       # global-batch statistics, as in one process
        model = MMDistributedDataParallel(module=model.to(device),
                                          device_ids=[device.index] if device.type == "cuda" else None,
                                          broadcast_buffers=False, find_unused_parameters=True)
    optim_wrapper = build_optim_wrapper(method, spec, device)        # after the SyncBatchNorm conversion
    # the wrapper's groups: with several, MMEngine appends one that tracks the base lr (schedulers see it too)
    schedulers = build_schedulers(spec, [group["lr"] for group in optim_wrapper.param_groups])
    return Runner(
        model=model,
        work_dir=str(folder.work_dir),
        experiment_name=f"{folder.path.name}_{time.strftime('%Y%m%d_%H%M%S')}_{time.perf_counter_ns() % 10**6}",
        train_dataloader=train_loader,
        val_dataloader=eval_loader,
        # Under DDP the ranks' scores are gathered through the process group ("gpu" in MMEngine's
        # words; any backend), not through files in a `.dist_test` folder of the working directory.
        val_evaluator=Evaluator([MultiLabelMetric(splits=("val", "test"), reference=eval_loader.dataset.reference(),
                                                  collect_device="gpu" if process_group.is_distributed() else "cpu")]),
        train_cfg=dict(by_epoch=True, max_epochs=spec.epochs, val_interval=1),
        val_cfg=dict(),
        optim_wrapper=optim_wrapper,
        param_scheduler=schedulers,
        default_hooks=dict(runtime_info=dict(type="RuntimeInfoHook"), timer=dict(type="IterTimerHook"),
                           param_scheduler=dict(type="ParamSchedulerHook"),
                           sampler_seed=dict(type="DistSamplerSeedHook"),
                           logger=dict(type="LoggerHook", interval=10**9, log_metric_by_epoch=True),
                           # mmengine's default CheckpointHook saves *before* validation: a run killed
                           # between the two resumed past an epoch that was never evaluated. MethodHook
                           # checkpoints after each evaluation instead.
                           checkpoint=None),
        custom_hooks=[hook],
        visualizer=tensorboard_visualizer(folder),
        launcher="pytorch" if process_group.is_distributed() else "none",
        randomness=dict(seed=spec.seed, deterministic=False),
        resume=resume is not None,
        load_from=str(resume) if resume is not None else None,
        log_level="ERROR",
        default_scope="mmengine",
    )
