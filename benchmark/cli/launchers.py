"""The launcher-specific parts of ``run_benchmark.py``: joining a torchrun launch
(``--launcher pytorch``) and submitting a grid through submitit (``--launcher slurm``)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from benchmark.cli.plan import checked_grid
from benchmark.contract import collectives
from benchmark.core import process_group
from benchmark.core.errors import UserError, one_line


def _start_ranks(args, out: Path):
    """--launcher pytorch: rank 0 checks the grid before the process group exists (the checks, plugin
    contract runs included, are single-process work that may write caches), then every rank joins
    the group and receives the grid, or rank 0's error. Ranks other than 0 print nothing (rank 0
    speaks for the run; every rank would print the same lines)."""
    if not process_group.launched_by_torchrun():
        raise UserError("--launcher pytorch runs under torchrun: torchrun --nproc-per-node N run_benchmark.py "
                        "--launcher pytorch ... (one process per GPU)")
    if args.jobs not in (None, 1):
        raise UserError("--jobs applies to --launcher local; under torchrun the ranks train one run at a time "
                        "together (run several torchrun commands on separate --out folders for more)")
    args.jobs = 1
    if args.threads is None:      # the node's cores shared among its ranks, not every rank taking all
        args.threads = max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    result, failure = None, None
    if int(os.environ["RANK"]) == 0:
        try:
            result = ("ok", checked_grid(args, out))
        except UserError as exc:
            result = ("user", one_line(exc))
        except Exception as exc:  # noqa: BLE001 - the other ranks must hear of it, then it is raised here
            result, failure = ("error", f"{type(exc).__name__}: {exc}"), exc
    process_group.init()
    if not process_group.is_main():
        sys.stdout = open(os.devnull, "w")      # noqa: SIM115 - for the life of the process
    status, value = collectives.broadcast_object(result)
    if status == "user":
        raise UserError(value)
    if status == "error":
        if failure is not None:
            raise failure
        raise RuntimeError(f"rank 0 failed while checking the grid: {value}")
    return value


def _check_local_launcher(args) -> None:
    """The SLURM flags belong to --launcher slurm (the launcher's name is checked in cmd_run)."""
    given = [f"--{k.replace('_', '-')}" for k in ("slurm_partition", "slurm_array_parallelism")
             if getattr(args, k) is not None] + (["--slurm-setup"] if args.slurm_setup else []) + \
        (["--slurm-param"] if args.slurm_param else [])
    if given:
        raise UserError(f"{', '.join(given)}: only with --launcher slurm")


def _submit(args, runs, out: Path, profile) -> int:
    """--launcher slurm: the grid's unfinished runs become one job array; nothing waits for it."""
    from benchmark.launch.slurm import parse_time
    from benchmark.launch.submit import submit

    if args.jobs is not None:
        raise UserError("--jobs applies to --launcher local; with slurm each run is its own array task "
                        "(--slurm-array-parallelism limits how many run at once)")
    params = {}
    for item in args.slurm_param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--slurm-param {item!r} must be KEY=VALUE (e.g. account=ABC)")
        params[key.strip().replace("_", "-")] = value
    for flag in ("slurm_gpus_per_run", "slurm_cpus_per_run", "slurm_array_parallelism"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "slurm_gpus_per_run" else 1):
            raise UserError(f"--{flag.replace('_', '-')} {value} is too small")
    result = submit(args.launcher, runs, out, keep_checkpoints=args.keep_checkpoints, num_workers=args.workers if args.workers is not None else profile.num_workers,
                    threads=args.threads, plugins=tuple(args.plugins), partition=args.slurm_partition,
                    gpus_per_run=args.slurm_gpus_per_run, cpus_per_run=args.slurm_cpus_per_run,
                    time_min=parse_time(args.slurm_time), array_parallelism=args.slurm_array_parallelism,
                    setup=tuple(args.slurm_setup), params=params or None)
    kept = f"{len(result.finished)} already done, {len(result.running)} running or queued"
    if not result.submitted:
        print(f"nothing to submit: {kept}. Watch: python run_benchmark.py status --out {out}")
        return 0
    task = "<job>_<task>" if args.launcher == "slurm" else "<job>"
    print(f"submitted {len(result.submitted)} run(s) as job {', '.join(result.job_ids)} ({kept}); logs in "
          f"{result.logs}/{task}/\nwatch: python run_benchmark.py status --out {out}\n"
          f"when done: python run_benchmark.py report --out {out}")
    return 0
