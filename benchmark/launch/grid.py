"""Runs a grid: skips finished runs, resumes unfinished ones, shows progress, never loses results.

A failing run (a bug, not bad input) is recorded in its folder as ``error.txt`` and the grid
goes on; a :class:`UserError` stops the grid at once (it would hit every run alike).

Parallel runs (``jobs > 1``, the CPU default when there are several runs): each run trains in
one of ``jobs`` worker processes with ``threads`` torch threads each. The small matrices of the
CPU profiles use two threads poorly (1.4x from the second core, against 2x from a second
process), so a 2-core machine runs two one-thread runs at a time. Everything several runs
would write at once (dataset cache, mask files, feature maps, label embeddings) is built first,
in the parent process. Each run is deterministic for its thread count; results computed with
another thread count can differ in the last digits, so the count is fixed by the grid and the
flags (:func:`benchmark.launch.planning.default_threads`), recorded in spec.json, and reused when a run resumes.

Workers die with their parent (:func:`benchmark.launch.worker.die_with_parent`), and a run folder has one owner at a
time (:meth:`RunFolder.claim`): a second grid on the same folder skips the runs the first is
training and says so. A worker killed from outside (the OOM killer, ``kill -9``) costs its own run
only: that run is recorded as failed (``error.txt`` names the signal; it resumes from its last
checkpoint when the grid runs again), a new worker takes its place and the other runs go on
(:class:`benchmark.launch.pool.WorkerPool`). A run that fails for lack of disk space stops the grid
with one line (:class:`benchmark.core.files.DiskFull`).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.config.run_spec import RunSpec
from benchmark.core.run_folder import RunFolder
from benchmark.launch.planning import (
    default_jobs,
    default_threads,
    gpu_plan,
    longest_first,
    memory_cap,
    unique_runs,
    visible_gpus,
)
from benchmark.launch.pool import WorkerPool
from benchmark.launch.progress import GridProgress
from benchmark.launch.worker import (
    progress_line,
    record_lost_worker,
    train_one,
    worker_init,
    worker_train,
)

log = logging.getLogger(__name__)


@dataclass
class GridOutcome:
    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)        # being trained by another process
    seconds: float = 0.0


def run_grid(runs: list[RunSpec], out_dir: Path, keep_checkpoints: bool = False, num_workers: int = 0,
             show_progress: bool = True, jobs: int | None = None, threads: int | None = None,
             plugins: tuple[str, ...] = ()) -> GridOutcome:
    from benchmark.contract import collectives
    from benchmark.core import process_group

    out_dir.mkdir(parents=True, exist_ok=True)
    runs = unique_runs(runs)
    outcome, start = GridOutcome(), time.perf_counter()
    todo = [r for r in runs if not RunFolder(out_dir, r.run_id).finished]
    if process_group.is_distributed():
        # torchrun: every rank trains the same runs in the same order (rank 0's view of the folder),
        # on caches rank 0 built first.
        chosen = set(collectives.broadcast_object([t.run_id for t in todo]))
        todo = [r for r in runs if r.run_id in chosen]
        if process_group.is_main():
            _warm_caches(todo, None)
        process_group.barrier()
        show_progress = show_progress and process_group.is_main()
    outcome.skipped = [r.run_id for r in runs if r not in todo]
    threads = threads or default_threads(len(runs), jobs)
    auto = jobs is None
    jobs = min(jobs or default_jobs(len(todo)), max(1, len(todo)))
    bar = GridProgress(runs, outcome.skipped, show=show_progress)
    try:
        if jobs > 1:
            held = _warm_caches(todo, bar)
            if auto:
                jobs = memory_cap(jobs, held)
        bar.training_started()
        if jobs > 1:
            _run_parallel(todo, out_dir, bar, outcome, jobs, threads, plugins, keep_checkpoints, num_workers)
        else:
            _run_serial(todo, out_dir, bar, outcome, threads, keep_checkpoints, num_workers)
    finally:
        bar.close()
        outcome.seconds = time.perf_counter() - start
    return outcome


def _record(spec: RunSpec, result: tuple[str, str | None], bar, outcome: GridOutcome) -> None:
    status, detail = result
    if status == "finished":
        outcome.finished.append(spec.run_id)
    elif status == "skipped":
        outcome.skipped.append(spec.run_id)
    elif status == "busy":
        outcome.busy.append(spec.run_id)
        bar.write(f"run {spec.describe()} skipped: {detail}")
    else:
        outcome.failed.append((spec.run_id, detail))
        bar.write(f"run {spec.describe()} failed: {detail}")
    bar.run_done(spec)


def _run_serial(todo, out_dir, bar, outcome, threads, keep_checkpoints, num_workers) -> None:
    for spec in todo:
        bar.set_description(spec.describe())

        def progress(epoch, max_epochs, val_map, _bar=bar, _spec=spec):
            _bar.epoch(_spec, epoch, max_epochs)
            _bar.set_status(progress_line(epoch, max_epochs, val_map))

        _record(spec, train_one(spec, out_dir, progress, keep_checkpoints, num_workers, threads, bar.write), bar, outcome)


# --------------------------------------------------------------------------- parallel runs
def _warm_caches(todo, bar) -> int:
    """Shared caches built in the parent; returns the largest feature-map bytes one run holds."""
    from benchmark.engine.prepared_run import warm_shared_caches

    if bar is not None:
        bar.set_description(f"preparing data for {len(todo)} runs (dataset, masks, feature maps)")
    return max((warm_shared_caches(spec) for spec in todo), default=0)


def _run_parallel(todo, out_dir, bar, outcome, jobs, threads, plugins, keep_checkpoints, num_workers) -> None:
    todo = longest_first(todo)
    bar.set_description(f"{jobs} runs at a time, {threads} thread(s) each")
    plan = gpu_plan(jobs, visible_gpus())
    if plan[0] is not None:
        bar.write(f"{jobs} workers on GPU(s) {', '.join(plan)} (CUDA_VISIBLE_DEVICES of each worker)")
    parent = os.getpid()
    pool = WorkerPool(jobs, worker_init, lambda slot: (threads, plugins, parent, plan[slot]), worker_train)
    latest: dict[str, str] = {}

    def done(task, result):
        spec = task[0]
        latest.pop(spec.describe(), None)
        _record(spec, result, bar, outcome)

    def lost(task, exitcode, pid):
        # A worker killed under its run (the OOM killer, kill -9): that run failed, the others go on.
        spec = task[0]
        latest.pop(spec.describe(), None)
        _record(spec, ("failed", record_lost_worker(spec, out_dir, exitcode, pid)), bar, outcome)

    by_name = {spec.describe(): spec for spec in todo}

    def event(item):
        name, line, *epochs = item
        if name is None:
            bar.write(line)
            return
        latest[name] = line
        if epochs and name in by_name:
            bar.epoch(by_name[name], *epochs[0])

    def tick():
        bar.set_status(" | ".join(f"{k}: {v}" for k, v in latest.items()))

    # A UserError in a worker re-raises here; on it, Ctrl-C or SIGTERM the pool kills every worker at
    # once instead of waiting for the runs (each resumes from its last checkpoint next time).
    pool.run([(spec, out_dir, keep_checkpoints, num_workers, threads) for spec in todo], done, lost, event, tick)
