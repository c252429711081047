"""What runs inside the process that trains a run: one run trained with its failure recorded
(:func:`train_one`), the process set up (:func:`prepare_process`), tied to its parent
(:func:`die_with_parent`) and, in a grid's worker pool (:mod:`benchmark.launch.pool`), pinned to its
GPU and reporting progress to the parent through its pipe."""
from __future__ import annotations

import logging
import os
import time
import traceback
from pathlib import Path

from benchmark.config.run_spec import RunSpec
from benchmark.core.errors import UserError
from benchmark.core.files import NO_SPACE, DiskFull, atomic_write_text, disk_full
from benchmark.core.run_folder import RunBusy, RunFolder

log = logging.getLogger(__name__)


def train_one(spec: RunSpec, out_dir: Path, progress, keep_checkpoints: bool, num_workers: int, threads: int,
              say) -> tuple[str, str | None]:
    """Train one run: ("finished" | "skipped" | "failed" | "busy", detail). A failure's traceback goes to error.txt,
    its first line names the problem. A failure for lack of disk space is no failed run: it raises
    :class:`DiskFull` (one line; the grid stops, as every later run would fail alike)."""
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
        if disk_is_full(exc):
            raise disk_full(Path(out_dir), what=f"run {spec.describe()}") from None
        from benchmark.core import process_group
        from benchmark.engine.runner import NonFiniteLoss

        folder = RunFolder(out_dir, spec.run_id)
        line = (f"{type(exc).__name__}: {exc}".splitlines() or [type(exc).__name__])[0]
        if process_group.is_main():
            _record_failure(folder, line + "\n\n" + traceback.format_exc())
        if process_group.is_distributed() and not isinstance(exc, NonFiniteLoss):
            # Under torchrun a failure on one rank leaves the others inside a collective: stop the
            # launch (torchrun ends every rank); the next launch resumes from the last checkpoint.
            raise
        return "failed", f"{line} (see {folder.path}/error.txt)"


def disk_is_full(exc: BaseException) -> bool:
    """Whether a failure comes from a full disk (or quota): an OSError with ENOSPC/EDQUOT anywhere in
    its chain (``__cause__``/``__context__``), or a RuntimeError saying so (as torch.save raises)."""
    seen, todo = set(), [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in NO_SPACE:
            return True
        if isinstance(err, RuntimeError) and "No space left on device" in str(err):
            return True
        todo += [err.__cause__, err.__context__]
    return False


def _record_failure(folder: RunFolder, text: str) -> None:
    """``error.txt`` of a failed run, best effort: only a full disk (:class:`DiskFull`) escapes."""
    try:
        folder.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder.path / "error.txt", text)
    except DiskFull:
        raise
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise disk_full(folder.path.parent, what=f"{folder.path.name}/error.txt") from None
        log.warning("could not write %s/error.txt: %s", folder.path, exc)
    except Exception as exc:  # noqa: BLE001 -- recording a failure never raises another one
        log.warning("could not write %s/error.txt: %s", folder.path, exc)


def lost_worker_line(exitcode: int | None) -> str:
    """The first line of ``error.txt`` of a run whose worker process died under it."""
    import signal

    resume = "the run resumes from its last checkpoint when the grid runs again"
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown signal"
        hint = ": out of memory? see dmesg" if -exitcode == signal.SIGKILL else ""
        return f"killed by signal {-exitcode} ({name}){hint}; {resume}"
    return f"its worker process exited with code {exitcode} while training it; {resume}"


def record_lost_worker(spec: RunSpec, out_dir: Path, exitcode: int | None, pid: int | None = None) -> str:
    """In the grid's parent: record the run of a worker that died (``error.txt``); returns the
    outcome's detail. Only a full disk (:class:`DiskFull`) escapes."""
    folder = RunFolder(out_dir, spec.run_id)
    line = lost_worker_line(exitcode)
    _record_failure(folder, f"{line}\n\nrun {spec.describe()} ({spec.run_id}); worker pid {pid}, exit code "
                            f"{exitcode}. The kernel log (dmesg, journalctl -k) names the process the OOM killer "
                            "chose.\n")
    return f"{line} (see {folder.path}/error.txt)"


def progress_line(epoch: int, max_epochs: int, val_map: float | None) -> str:
    return f"epoch {epoch}/{max_epochs}" + (f" val mAP {val_map:.1f}" if val_map else "")


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


def pin_device(device) -> None:
    """A worker takes its GPU of the plan (a ``CUDA_VISIBLE_DEVICES`` entry, or None for none; or the next
    one of a queue of them) before CUDA starts in it (spawned workers have not touched CUDA yet), so
    ``cuda`` in the worker is that GPU alone."""
    if hasattr(device, "get"):
        device = device.get(timeout=60)
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


def worker_init(threads: int, plugins: tuple[str, ...], parent: int, device: str | None) -> None:
    """A grid worker's set-up (:class:`benchmark.launch.pool.WorkerPool`): its GPU, tied to the
    parent, then the process itself."""
    pin_device(device)
    die_with_parent(parent)
    prepare_process(threads, plugins)


def worker_train(spec: RunSpec, out_dir: Path, keep_checkpoints: bool, num_workers: int, threads: int):
    """A grid worker's task: one run, its progress and messages sent to the parent."""
    from benchmark.launch.pool import report

    def progress(epoch, max_epochs, val_map):
        report((spec.describe(), progress_line(epoch, max_epochs, val_map), (epoch, max_epochs)))

    return train_one(spec, out_dir, progress, keep_checkpoints, num_workers, threads,
                     say=lambda line: report((None, line)))
