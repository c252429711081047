"""One run, end to end: data, mask, side information, method, MMEngine runner, results folder."""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
from pathlib import Path

import torch

from benchmark.config.run_spec import RunSpec
from benchmark.contract import collectives
from benchmark.contract.card import display_name
from benchmark.contract.method import TrainContext
from benchmark.core import process_group
from benchmark.core.errors import UserError
from benchmark.core.registry import get_method
from benchmark.core.run_folder import RunBusy, RunFolder
from benchmark.core.run_status import Heartbeat
from benchmark.core.scores import keep_selected
from benchmark.engine import checkpoints
from benchmark.engine.prepared_run import PreparedRun, pick_device
from benchmark.engine.provenance import environment_record, recipe_record
from benchmark.engine.runner import MethodHook, build_runner, release_runner
from benchmark.engine.sampling import iterate_train, loaders, per_rank_batch_size
from benchmark.engine.seeding import seed_everything

log = logging.getLogger(__name__)


def run_one(spec: RunSpec, out_dir, progress=None, keep_checkpoints: bool = False, num_workers: int = 0,
            threads: int | None = None, say=print) -> RunFolder:
    """Train and evaluate one run; resumes from the run folder's last checkpoint when present.

    The run folder is owned for the whole call (:meth:`RunFolder.claim`; :class:`RunBusy` when
    another process trains it). A run marked done whose records are broken is retrained, and an
    unreadable checkpoint means a fresh start, each with one line through ``say``. The torch thread
    count is ``spec.threads`` (part of the run id, so a resumed run has the count it started with and
    its numbers are bit-identical to an uninterrupted run's); ``threads`` is the count of a spec
    without one (built outside the CLI), and such a run resumes with the count it recorded.
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
        if folder.path.is_symlink():              # planted: removed, never trained (or read) through
            say(f"run {spec.describe()}: its folder is a symbolic link; removing the link and training the run afresh")
            folder.reset()
        if folder.done:
            why = folder.verify()
            if why is None:
                return ("done",)
            say(f"run {spec.describe()}: its finished records are broken ({why}); retraining it")
            folder.reset()
        (folder.path / "error.txt").unlink(missing_ok=True)
        ckpt = folder.last_checkpoint()
        if ckpt is not None and (problem := folder.checkpoint_problem(ckpt) or checkpoints.unsafe_reason(ckpt)):
            say(f"run {spec.describe()}: checkpoint {ckpt.name} is unreadable ({problem}); starting the run afresh")
            ckpt = None
        resume = str(ckpt) if ckpt is not None else None
        threads = spec.threads or threads          # the planned count is part of the run's identity
        if resume is None:
            folder.reset()                          # nothing to resume from: a fresh start
        elif not spec.threads:
            threads = folder.spec_record().get("torch_threads") or threads
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


def _train_and_evaluate(spec: RunSpec, folder: RunFolder, progress, keep_checkpoints: bool, num_workers: int,
                        resume: str | None) -> None:
    method_cls = get_method(spec.method)
    device = pick_device()
    if spec.device == "cuda" and device.type != "cuda":
        raise UserError(f"run {spec.describe()} was planned for a GPU (its id says device=cuda) but this process "
                        "sees none; run it where a GPU is visible, or plan the grid again here")
    if spec.device == "cpu":
        device = torch.device("cpu")            # the id says CPU: a GPU here does not change the run
    prep = PreparedRun(spec, device)
    cfg = method_cls.make_config(dict(spec.method_config), profile=spec.profile)
    task = prep.task_spec(method_cls.card.requires)
    world, per_rank = process_group.world_size(), per_rank_batch_size(spec, len(prep.train_rows))
    parallel = {"world_size": world, "global_batch_size": per_rank * world, "batch_size_per_rank": per_rank,
                "backend": process_group.backend() if world > 1 else None, "lr": spec.lr}
    record = {**spec.to_dict(), "run_id": spec.run_id, "identity": spec.identity(), "mask_sha256": prep.mask.sha256,
              "recipe": recipe_record(spec),
              "privileged": {k: task.info[k] for k in task.info["privileged"]},
              "trunk_baseline": method_cls.card.trunk_baseline if method_cls.card.trunk_baseline != spec.method else None,
              "method_display": display_name(method_cls),
              "resolved_config": dataclasses.asdict(cfg) if cfg is not None else None,
              "mask_manifest": prep.mask.path.name if prep.mask.path else None,
              "num_train": int(len(prep.train_rows)), "num_val": int(len(prep.val_rows)),
              "num_test": int(len(prep.splits.test)), **environment_record(),
              "torch_threads": torch.get_num_threads(), "parallel": parallel}
    if process_group.is_main():
        folder.start(record, resumed=resume is not None)
    seed_everything(spec.seed)
    method = method_cls(task, cfg, backbone=prep.backbone)
    train_loader, eval_loader = loaders(prep, spec, num_workers)
    ctx = TrainContext(max_epochs=spec.epochs, iters_per_epoch=len(train_loader), seed=spec.seed,
                       profile=spec.profile, device=device, world_size=world,
                       iterate_train=iterate_train(prep.train_set(augmented=False), device))
    method.ctx = ctx
    hook = MethodHook(folder, ctx, recovery_fn=prep.recovery_scorer(), progress=progress)
    runner = build_runner(method, spec, folder, train_loader, eval_loader, hook, device,
                          Path(resume) if resume else None)
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
    _keep_scores(spec, folder, prep.splits.test)
    folder.finish(keep_checkpoints)


def _keep_scores(spec: RunSpec, folder: RunFolder, test) -> None:
    """``scores.npz``: the test scores of the epochs the selection rules pick from metrics.jsonl (read
    back as the report reads it), from the evaluations' temporaries in ``work/``; written before
    ``done``, whose marker holds its sha256 (a kill in between resumes and writes it again)."""
    evals = {r["epoch"]: r for r in folder.records("eval") if isinstance(r.get("epoch"), int)}
    kept = keep_selected(folder.path, evals, test.image_ids, test.class_names)
    if kept["missing"]:
        log.warning("run %s: no stored test scores for epoch(s) %s (evaluated before this version kept them); "
                    "scores.npz holds epoch(s) %s", spec.describe(), kept["missing"], kept["epochs"] or "none")
