"""Runs a grid: skips finished runs, resumes unfinished ones, shows progress, never loses results.

A failing run (a bug, not bad input) is recorded in its folder as ``error.txt`` and the grid
goes on; a :class:`UserError` stops the grid at once (it would hit every run alike).

Parallel runs (``jobs > 1``, the CPU default when there are several runs): each run trains in
one of ``jobs`` worker processes with ``threads`` torch threads each. The small matrices of the
CPU profiles use two threads poorly (1.4x from the second core, against 2x from a second
process), so a 2-core machine runs two one-thread runs at a time. Everything several runs
would write at once (dataset cache, mask files, feature maps, label embeddings) is built first,
in the parent process. Each run is still deterministic for its thread count; results computed
with another thread count can differ in the last digits (spec.json records the count).
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from benchmark.errors import UserError
from benchmark.spec import RunSpec
from benchmark.store import RunFolder

log = logging.getLogger(__name__)


@dataclass
class GridOutcome:
    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def default_jobs(num_runs: int) -> int:
    """Parallel runs when none is asked for: 1 on a GPU (one device), else one per core (at most 8)."""
    import torch

    if torch.cuda.is_available() or num_runs < 2:
        return 1
    return max(1, min(os.cpu_count() or 1, 8, num_runs))


def _train(spec: RunSpec, out_dir: Path, progress, keep_checkpoints: bool, num_workers: int) -> str | None:
    """Train one run; None on success, else the failure line (the traceback goes to error.txt)."""
    from benchmark.experiment import run_one

    try:
        run_one(spec, out_dir, progress=progress, keep_checkpoints=keep_checkpoints, num_workers=num_workers)
        return None
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a bug in one method must not cost the other runs
        folder = RunFolder(out_dir, spec.run_id)
        folder.path.mkdir(parents=True, exist_ok=True)
        (folder.path / "error.txt").write_text(traceback.format_exc())
        return f"{type(exc).__name__}: {exc} (see {folder.path}/error.txt)"


def _progress_line(epoch: int, max_epochs: int, val_map: float | None) -> str:
    return f"epoch {epoch}/{max_epochs}" + (f" val mAP {val_map:.1f}" if val_map else "")


def run_grid(runs: list[RunSpec], out_dir: Path, keep_checkpoints: bool = False, num_workers: int = 0,
             show_progress: bool = True, jobs: int | None = None, threads: int | None = None,
             plugins: tuple[str, ...] = ()) -> GridOutcome:
    out_dir.mkdir(parents=True, exist_ok=True)
    outcome, start = GridOutcome(), time.perf_counter()
    todo = [r for r in runs if not RunFolder(out_dir, r.run_id).done]
    outcome.skipped = [r.run_id for r in runs if r not in todo]
    auto = jobs is None
    jobs = min(jobs or default_jobs(len(todo)), max(1, len(todo)))
    bar = tqdm(total=len(runs), initial=len(outcome.skipped), unit="run", disable=not show_progress,
               dynamic_ncols=True, desc="grid")
    try:
        if jobs > 1:
            held = _warm_caches(todo, bar)
            if auto:
                jobs = _memory_cap(jobs, held)
        if jobs > 1:
            _run_parallel(todo, out_dir, bar, outcome, jobs, threads, plugins, keep_checkpoints, num_workers)
        else:
            _run_serial(todo, out_dir, bar, outcome, threads, keep_checkpoints, num_workers)
    finally:
        bar.close()
        outcome.seconds = time.perf_counter() - start
    return outcome


def _record(spec: RunSpec, failure: str | None, bar, outcome: GridOutcome) -> None:
    if failure is None:
        outcome.finished.append(spec.run_id)
    else:
        outcome.failed.append((spec.run_id, failure))
        bar.write(f"run {spec.describe()} failed: {failure}")
    bar.update(1)


def _run_serial(todo, out_dir, bar, outcome, threads, keep_checkpoints, num_workers) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)
    for spec in todo:
        bar.set_description(spec.describe())

        def progress(epoch, max_epochs, val_map, _bar=bar):
            _bar.set_postfix_str(_progress_line(epoch, max_epochs, val_map))

        _record(spec, _train(spec, out_dir, progress, keep_checkpoints, num_workers), bar, outcome)


# --------------------------------------------------------------------------- parallel runs
RUN_OVERHEAD = 2 << 30       # bytes a run needs besides its feature maps (model, batches, torch)


def _warm_caches(todo, bar) -> int:
    """Shared caches built in the parent; returns the largest feature-map bytes one run holds."""
    from benchmark.experiment import warm_shared_caches

    bar.set_description(f"preparing data for {len(todo)} runs")
    return max(warm_shared_caches(spec) for spec in todo)


def available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _memory_cap(jobs: int, held: int) -> int:
    """Fewer parallel runs when the machine cannot hold that many copies of the feature maps
    (each process loads its own; frozen COCO at 448 px is tens of GB). Only for the default
    ``--jobs``; an explicit value is obeyed."""
    free = available_memory()
    if free is None:
        return jobs
    fit = max(1, free // (held + RUN_OVERHEAD))
    if fit < jobs:
        tqdm.write(f"running {fit} run(s) at a time instead of {jobs}: each needs about "
                   f"{(held + RUN_OVERHEAD) / 2**30:.1f} GB and {free / 2**30:.1f} GB is free (--jobs sets it)")
    return min(jobs, fit)


def _worker_init(threads: int, plugins: tuple[str, ...]) -> None:
    import torch

    from benchmark.cli import quiet_libraries
    from benchmark.registry import discover

    torch.set_num_threads(threads)
    quiet_libraries()
    discover(plugins)


def _worker_train(spec: RunSpec, out_dir: Path, events, keep_checkpoints: bool, num_workers: int) -> str | None:
    def progress(epoch, max_epochs, val_map):
        events.put((spec.describe(), _progress_line(epoch, max_epochs, val_map)))

    return _train(spec, out_dir, progress, keep_checkpoints, num_workers)


def _run_parallel(todo, out_dir, bar, outcome, jobs, threads, plugins, keep_checkpoints, num_workers) -> None:
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    bar.set_description(f"{jobs} runs at a time, {threads} thread(s) each")
    ctx = mp.get_context("spawn")          # fork after torch has started threads can deadlock
    with ctx.Manager() as manager:
        events = manager.Queue()
        pool = ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init, initargs=(threads, plugins))
        try:
            pending = {pool.submit(_worker_train, spec, out_dir, events, keep_checkpoints, num_workers): spec
                       for spec in todo}
            latest: dict[str, str] = {}
            while pending:
                done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                _drain(events, latest)
                for future in done:
                    spec = pending.pop(future)
                    latest.pop(spec.describe(), None)
                    _record(spec, future.result(), bar, outcome)    # a UserError re-raises here
                bar.set_postfix_str(" | ".join(f"{k}: {v}" for k, v in latest.items()), refresh=True)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _drain(events, latest: dict[str, str]) -> None:
    while True:
        try:
            name, line = events.get_nowait()
        except queue.Empty:
            return
        latest[name] = line
