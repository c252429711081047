"""How a grid plans its workers, from the grid and the machine only: parallel runs (one per core
or per GPU, capped by memory), torch threads per run, the GPU each worker sees, the order runs start
in (longest first)."""
from __future__ import annotations

import os

from tqdm.auto import tqdm

from benchmark.config.run_spec import RunSpec


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


def default_threads(num_runs: int, jobs: int | None) -> int:
    """Torch threads per run when none is asked for. The count is part of every run id (the last digits
    depend on it), so it depends on the machine and the flags only, never on the grid: the same run in a
    one-run grid and in a 60-run grid is one run. On a CPU one thread per run (a grid fills the cores
    with parallel runs, ~1.4x faster on 2 cores than two-thread runs), all cores with ``--jobs 1``; with
    GPUs the cores shared among the GPUs. ``num_runs`` is unused, kept for callers."""
    import torch

    cores = os.cpu_count() or 1
    if torch.cuda.is_available():
        return max(1, cores // max(1, torch.cuda.device_count()))
    return max(1, cores // jobs) if jobs else 1


def unique_runs(runs: list[RunSpec]) -> list[RunSpec]:
    """The runs in order, each RunSpec once (a grid naming a method twice trains it once)."""
    seen: set[str] = set()
    return [r for r in runs if not (r.run_id in seen or seen.add(r.run_id))]


RUN_OVERHEAD = 2 << 30       # bytes a run needs besides its feature maps (model, batches, torch)


def available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_cap(jobs: int, held: int) -> int:
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


def longest_first(todo: list[RunSpec]) -> list[RunSpec]:
    """Runs ordered by decreasing expected cost (``MethodCard.relative_cost`` x epochs; stable, so the grid's
    order stays within a cost), the LPT rule: the last runs to start are the short ones."""
    from benchmark.core.registry import get_method

    return sorted(todo, key=lambda spec: -get_method(spec.method).card.relative_cost * spec.epochs)
