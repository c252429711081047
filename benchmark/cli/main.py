"""Command line: ``python run_benchmark.py [options]`` runs a grid; ``report`` rebuilds the
leaderboard from run folders; ``status``, ``samples`` and ``prepare`` (:mod:`benchmark.cli.subcommands`).
The flags are in :mod:`benchmark.cli.parser`, the grid they ask for in :mod:`benchmark.cli.plan`."""
from __future__ import annotations

import errno
import os
import signal
import sys
from pathlib import Path

from benchmark.cli.parser import SUBCOMMANDS, run_parser
from benchmark.cli.plan import checked_grid
from benchmark.core import process_group
from benchmark.core.cache import REPO_ROOT
from benchmark.core.errors import UserError, one_line
from benchmark.core.quiet import quiet_libraries


def _list(out=sys.stdout) -> int:
    from benchmark.config.profiles import PROFILES
    from benchmark.core.registry import DATASETS, METHODS

    print("methods:", file=out)
    for name, cls in sorted(METHODS.module_dict.items()):
        first = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        flag = " [default grid]" if cls.card.default_grid else ""
        print(f"  {name:14s}{flag} {first}", file=out)
    print("datasets:", file=out)
    for name, fn in sorted(DATASETS.module_dict.items()):
        first = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        print(f"  {name:14s} {first}", file=out)
    print("profiles: " + ", ".join(PROFILES) + " (each method's recipe per profile: run_benchmark.py recipes)", file=out)
    return 0


def cmd_run(argv: list[str]) -> int:
    from benchmark.cli.grid_file import (
        check_grid_target,
        expand_grid_argument,
        write_grid_file,
    )
    from benchmark.core.registry import discover
    from benchmark.launch.grid import run_grid

    args = run_parser().parse_args(expand_grid_argument(argv))
    if args.write_grid:
        check_grid_target(args.write_grid)
    discover(tuple(args.plugins))
    if args.list:
        return _list()
    from benchmark.config.profiles import get_profile

    profile = get_profile(args.profile)
    protocol = args.protocol or profile.protocol or "frozen"
    out = Path(args.out) if args.out else REPO_ROOT / "results" / f"{'+'.join(args.dataset)}-{protocol}-{profile.name}"
    from benchmark.cli.launchers import _check_local_launcher, _start_ranks, _submit
    from benchmark.launch.submit import LAUNCHERS

    if args.launcher not in LAUNCHERS:          # before any check that reads data
        raise UserError(f"--launcher {args.launcher!r} is unknown; choose local, pytorch (under torchrun) or slurm")
    if args.launcher == "pytorch":
        runs, methods, profile = _start_ranks(args, out)
    elif process_group.launched_by_torchrun() and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise UserError("this process was started by torchrun: add --launcher pytorch, so that the ranks train "
                        "each run together instead of each training the whole grid")
    else:
        runs, methods, profile = checked_grid(args, out)
    if args.write_grid:
        planned = {spec.threads for spec in runs}
        path = write_grid_file(args.write_grid, args, threads=planned.pop() if len(planned) == 1 else None)
        print(f"grid file: {path} (re-run with --grid {path})")
    if args.tensorboard:
        _enable_tensorboard()
    print(f"{len(runs)} runs: {', '.join(methods)} x {len(runs) // max(1, len(methods) * len(args.seeds) * len(args.dataset))}"
          f" proportions x {len(args.seeds)} seed(s) on {', '.join(args.dataset)} ({protocol}, {profile.name}) -> {out}")
    if args.launcher not in ("local", "pytorch"):
        return _submit(args, runs, out, profile)
    _check_local_launcher(args)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        workers = args.workers if args.workers is not None else profile.num_workers     # the profile's default
        outcome = run_grid(runs, out, keep_checkpoints=args.keep_checkpoints, num_workers=workers,
                           jobs=args.jobs, threads=args.threads, plugins=tuple(args.plugins))
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished runs are kept in {out}; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    busy = f", {len(outcome.busy)} being trained by another process" if outcome.busy else ""
    print(f"grid: {len(outcome.finished)} trained, {len(outcome.skipped)} already done, "
          f"{len(outcome.failed)} failed{busy}, {outcome.seconds:.1f} s")
    if not args.no_report and process_group.is_main():
        from benchmark.cli.subcommands import _report

        if outcome.finished or outcome.skipped:
            _report(out)         # one stable method order (the default grid's, baselines first), whatever the grid
        else:
            print(f"report: not written, no run of this grid has finished (see {out}/<run>/error.txt)", file=sys.stderr)
    return 1 if outcome.failed else 0


def _enable_tensorboard() -> None:
    """--tensorboard: runs (and the worker processes, which inherit the environment) add MMEngine's
    TensorBoard backend; the flag does not enter run ids, it changes no number."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError as exc:
        raise UserError(f"--tensorboard needs the tensorboard package ({exc}); pip install tensorboard") from None
    from benchmark.engine.runner import TENSORBOARD_ENV

    os.environ[TENSORBOARD_ENV] = "1"


def _terminate(signum, frame):
    """SIGTERM (a scheduler, ``kill``) ends a grid as Ctrl-C does: workers stopped, results kept."""
    raise KeyboardInterrupt


# Errors of the machine rather than of the suite: one line, exit 2, like bad input.
_ENVIRONMENT_ERRNOS = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                       errno.EPERM: "operation not permitted", errno.ENAMETOOLONG: "the name is too long",
                       errno.ELOOP: "a symbolic-link loop", errno.EMFILE: "too many open files",
                       errno.ENOTDIR: "a path component is a file, not a folder"}


def environment_error(exc: OSError) -> str | None:
    """The one line of a full disk, a read-only file system, a permission or a path problem met while
    running; None for other errors (a bug, which keeps its traceback)."""
    from benchmark.core.files import NO_SPACE, disk_full

    where = exc.filename or ""
    if exc.errno in NO_SPACE:
        return str(disk_full(Path(where).parent if where else Path.cwd()))
    if exc.errno in _ENVIRONMENT_ERRNOS:
        return (f"{where}: {_ENVIRONMENT_ERRNOS[exc.errno]}; fix the path or its permissions and run the same "
                "command again (finished runs are kept)")
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from benchmark.engine.allocator import tune_allocator

    tune_allocator()
    quiet_libraries()
    command = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else "run"
    if command == "run":
        handler = cmd_run
    else:
        from benchmark.cli import subcommands

        handler = getattr(subcommands, f"cmd_{command}")
    try:
        return handler(argv)
    except UserError as exc:
        if process_group.is_main():                  # under torchrun every rank has the same error: say it once
            print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        line = environment_error(exc)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2
    finally:
        process_group.shutdown()
