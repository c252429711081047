"""What runs inside the process that trains a run: one run trained with its failure recorded
(:func:`train_one`), the process set up (:func:`prepare_process`), tied to its parent
(:func:`die_with_parent`) and, in a grid's worker pool, pinned to its GPU and reporting progress to
the parent through a queue."""
from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

from benchmark.config.run_spec import RunSpec
from benchmark.core.errors import UserError
from benchmark.core.files import atomic_write_text
from benchmark.core.run_folder import RunBusy, RunFolder


def train_one(spec: RunSpec, out_dir: Path, progress, keep_checkpoints: bool, num_workers: int, threads: int,
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


def progress_line(epoch: int, max_epochs: int, val_map: float | None) -> str:
    return f"epoch {epoch}/{max_epochs}" + (f" val mAP {val_map:.1f}" if val_map else "")


_EVENTS = None                   # a worker's queue to the parent (progress lines, messages)


def die_with_parent(parent: int) -> None:
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


def pin_device(devices) -> None:
    """A worker takes the next GPU of the plan before CUDA starts in it (spawned workers have not
    touched CUDA yet), so ``cuda`` in the worker is that GPU alone."""
    device = devices.get(timeout=60)
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device


def prepare_process(threads: int | None, plugins: tuple[str, ...]) -> None:
    """What a process that trains runs sets first (a grid worker, a SLURM task): the allocator, the
    libraries' warnings, its torch threads, the registered methods."""
    import torch

    from benchmark.core.quiet import quiet_libraries
    from benchmark.core.registry import discover
    from benchmark.engine.allocator import tune_allocator

    tune_allocator()
    if threads:
        torch.set_num_threads(threads)
    quiet_libraries()
    discover(plugins)


def worker_init(threads: int, plugins: tuple[str, ...], events, parent: int, devices) -> None:
    global _EVENTS
    pin_device(devices)
    die_with_parent(parent)
    _EVENTS = events
    prepare_process(threads, plugins)


def worker_train(spec: RunSpec, out_dir: Path, keep_checkpoints: bool, num_workers: int, threads: int):
    def progress(epoch, max_epochs, val_map):
        _EVENTS.put((spec.describe(), progress_line(epoch, max_epochs, val_map)))

    return train_one(spec, out_dir, progress, keep_checkpoints, num_workers, threads,
                     say=lambda line: _EVENTS.put((None, line)))
