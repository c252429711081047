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
flags (:func:`default_threads`), recorded in spec.json, and reused when a run resumes.

Workers die with their parent (:func:`_die_with_parent`), and a run folder has one owner at a
time (:meth:`RunFolder.claim`): a second grid on the same folder skips the runs the first is
training and says so.
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

from benchmark.config.run_spec import RunSpec
from benchmark.core.errors import UserError
from benchmark.core.files import atomic_write_text
from benchmark.core.run_folder import RunBusy, RunFolder

log = logging.getLogger(__name__)


@dataclass
class GridOutcome:
    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)        # being trained by another process
    seconds: float = 0.0


def default_jobs(num_runs: int) -> int:
    """Parallel runs when none is asked for: one per GPU where there are GPUs (each worker pinned to
    its own, :func:`gpu_plan`), else one per core (at most 8)."""
    import torch

    if num_runs < 2:
        return 1
    if torch.cuda.is_available():
        return max(1, min(torch.cuda.device_count(), num_runs))
    return max(1, min(os.cpu_count() or 1, 8, num_runs))


def gpu_plan(jobs: int, gpus: list[str]) -> list[str | None]:
    """The GPU each of ``jobs`` workers sees (a ``CUDA_VISIBLE_DEVICES`` entry): the visible GPUs dealt
    round robin, so with as many jobs as GPUs each worker has its own; None everywhere without GPUs."""
    return [gpus[i % len(gpus)] if gpus else None for i in range(jobs)]


def visible_gpus() -> list[str]:
    """This process's GPUs as ``CUDA_VISIBLE_DEVICES`` entries (its own list when it has one)."""
    import torch

    if not torch.cuda.is_available():
        return []
    given = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return given[:torch.cuda.device_count()] if given else [str(i) for i in range(torch.cuda.device_count())]


def _pin_device(devices) -> None:
    """A worker takes the next GPU of the plan before CUDA starts in it (spawned workers have not
    touched CUDA yet), so ``cuda`` in the worker is that GPU alone."""
    device = devices.get(timeout=60)
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device


def default_threads(num_runs: int, jobs: int | None) -> int:
    """Torch threads per run when none is asked for: the cores shared among the runs the *whole* grid
    would train at once. It depends on the grid and the flags only, never on how many runs are left,
    so a grid finished in several sittings gives the numbers it would give in one."""
    jobs = jobs or default_jobs(num_runs)
    return max(1, (os.cpu_count() or 1) // max(1, min(jobs, num_runs)))


def _train(spec: RunSpec, out_dir: Path, progress, keep_checkpoints: bool, num_workers: int, threads: int,
           say) -> tuple[str, str | None]:
    """Train one run: ("finished" | "skipped" | "failed" | "busy", detail). A failure's traceback goes to error.txt,
    its first line names the problem."""
    from benchmark.engine.lifecycle import run_one

    try:
        folder = run_one(spec, out_dir, progress=progress, keep_checkpoints=keep_checkpoints,
                         num_workers=num_workers, threads=threads, say=say)
        # A run another process finished after this grid started is not trained twice, nor counted so.
        return ("finished", None) if getattr(folder, "trained_here", False) else ("skipped", "finished elsewhere")
    except RunBusy as exc:
        return "busy", str(exc)
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a bug in one method must not cost the other runs
        from benchmark.core import process_group
        from benchmark.engine.runner import NonFiniteLoss

        folder = RunFolder(out_dir, spec.run_id)
        line = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if process_group.is_main():
            folder.path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder.path / "error.txt", line + "\n\n" + traceback.format_exc())
        if process_group.is_distributed() and not isinstance(exc, NonFiniteLoss):
            # Under torchrun a failure on one rank leaves the others inside a collective: stop the
            # launch (torchrun ends every rank); the next launch resumes from the last checkpoint.
            raise
        return "failed", f"{line} (see {folder.path}/error.txt)"


def _progress_line(epoch: int, max_epochs: int, val_map: float | None) -> str:
    return f"epoch {epoch}/{max_epochs}" + (f" val mAP {val_map:.1f}" if val_map else "")


def unique_runs(runs: list[RunSpec]) -> list[RunSpec]:
    """The runs in order, each RunSpec once (a grid naming a method twice trains it once)."""
    seen: set[str] = set()
    return [r for r in runs if not (r.run_id in seen or seen.add(r.run_id))]


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
    bar.update(1)


def _run_serial(todo, out_dir, bar, outcome, threads, keep_checkpoints, num_workers) -> None:
    for spec in todo:
        bar.set_description(spec.describe())

        def progress(epoch, max_epochs, val_map, _bar=bar):
            _bar.set_postfix_str(_progress_line(epoch, max_epochs, val_map))

        _record(spec, _train(spec, out_dir, progress, keep_checkpoints, num_workers, threads, bar.write), bar, outcome)


# --------------------------------------------------------------------------- parallel runs
RUN_OVERHEAD = 2 << 30       # bytes a run needs besides its feature maps (model, batches, torch)


def _warm_caches(todo, bar) -> int:
    """Shared caches built in the parent; returns the largest feature-map bytes one run holds."""
    from benchmark.engine.lifecycle import warm_shared_caches

    if bar is not None:
        bar.set_description(f"preparing data for {len(todo)} runs")
    return max((warm_shared_caches(spec) for spec in todo), default=0)


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


_EVENTS = None                   # a worker's queue to the parent (progress lines, messages)


def _die_with_parent(parent: int) -> None:
    """A worker must not outlive the grid that started it (a SIGKILLed parent cannot clean up):
    the kernel's parent-death signal where there is one (Linux), and a watchdog thread that
    notices the parent is gone (re-parented) everywhere."""
    import ctypes
    import signal
    import threading

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)      # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:                      # the parent died before prctl took effect
        os._exit(1)

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _worker_init(threads: int, plugins: tuple[str, ...], events, parent: int, devices) -> None:
    global _EVENTS
    _pin_device(devices)
    _die_with_parent(parent)
    import torch

    from benchmark.cli.main import quiet_libraries
    from benchmark.core.registry import discover
    from benchmark.engine.allocator import tune_allocator

    tune_allocator()
    _EVENTS = events
    torch.set_num_threads(threads)
    quiet_libraries()
    discover(plugins)


def _worker_train(spec: RunSpec, out_dir: Path, keep_checkpoints: bool, num_workers: int, threads: int):
    def progress(epoch, max_epochs, val_map):
        _EVENTS.put((spec.describe(), _progress_line(epoch, max_epochs, val_map)))

    return _train(spec, out_dir, progress, keep_checkpoints, num_workers, threads,
                  say=lambda line: _EVENTS.put((None, line)))


def longest_first(todo: list[RunSpec]) -> list[RunSpec]:
    """Runs ordered by decreasing expected cost (``Method.relative_cost`` x epochs; stable, so the grid's
    order stays within a cost), the LPT rule: the last runs to start are the short ones."""
    from benchmark.core.registry import get_method

    return sorted(todo, key=lambda spec: -get_method(spec.method).relative_cost * spec.epochs)


def _run_parallel(todo, out_dir, bar, outcome, jobs, threads, plugins, keep_checkpoints, num_workers) -> None:
    todo = longest_first(todo)
    bar.set_description(f"{jobs} runs at a time, {threads} thread(s) each")
    ctx = mp.get_context("spawn")          # fork after torch has started threads can deadlock
    events, devices = ctx.Queue(), ctx.Queue()
    plan = gpu_plan(jobs, visible_gpus())
    for device in plan:
        devices.put(device)
    if plan[0] is not None:
        bar.write(f"{jobs} workers on GPU(s) {', '.join(plan)} (CUDA_VISIBLE_DEVICES of each worker)")
    pool = ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                               initargs=(threads, plugins, events, os.getpid(), devices))
    try:
        pending = {pool.submit(_worker_train, spec, out_dir, keep_checkpoints, num_workers, threads): spec
                   for spec in todo}
        latest: dict[str, str] = {}
        while pending:
            done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            _drain(events, latest, bar)
            for future in done:
                spec = pending.pop(future)
                latest.pop(spec.describe(), None)
                _record(spec, future.result(), bar, outcome)    # a UserError re-raises here
            bar.set_postfix_str(" | ".join(f"{k}: {v}" for k, v in latest.items()), refresh=True)
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM) or a UserError: stop the running runs now instead of waiting
        # for them; each resumes from its last checkpoint next time.
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.kill()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        events.close()


def _drain(events, latest: dict[str, str], bar) -> None:
    while True:
        try:
            name, line = events.get_nowait()
        except queue.Empty:
            return
        if name is None:
            bar.write(line)
        else:
            latest[name] = line


# --------------------------------------------------------------------------- launcher strategies
# ``local`` trains here (run_grid above); the others hand each unfinished run to a scheduler through
# submitit and return at once: ``slurm`` (a job array) and ``submitit-local`` (submitit's
# LocalExecutor: real subprocess jobs through submitit's code, for tests and machines without
# SLURM). See benchmark/slurm.py.
SUBMITTERS = {"slurm": "slurm", "submitit-local": "local"}
LAUNCHERS = ("local", "pytorch", *SUBMITTERS)     # pytorch: run_grid on every rank of a torchrun launch


def submit(launcher: str, runs: list[RunSpec], out_dir: Path, **options):
    """Submit the grid through a scheduler strategy; returns a :class:`benchmark.launch.slurm.Submission`."""
    if launcher not in SUBMITTERS:
        raise UserError(f"--launcher {launcher!r} is unknown; choose one of {', '.join(LAUNCHERS)}")
    from benchmark.launch.slurm import submit_grid

    return submit_grid(runs, out_dir, cluster=SUBMITTERS[launcher], **options)
