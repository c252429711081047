"""Launcher strategies: ``local`` trains here (:func:`benchmark.launch.grid.run_grid`); the others
hand each unfinished run to a scheduler through submitit and return at once: ``slurm`` (a job
array) and ``submitit-local`` (submitit's LocalExecutor: real subprocess jobs through submitit's
code, for tests and machines without SLURM). See :mod:`benchmark.launch.slurm`."""
from __future__ import annotations

from pathlib import Path

from benchmark.config.run_spec import RunSpec
from benchmark.core.errors import UserError

SUBMITTERS = {"slurm": "slurm", "submitit-local": "local"}
LAUNCHERS = ("local", "pytorch", *SUBMITTERS)     # pytorch: run_grid on every rank of a torchrun launch


def submit(launcher: str, runs: list[RunSpec], out_dir: Path, **options):
    """Submit the grid through a scheduler strategy; returns a :class:`benchmark.launch.slurm.Submission`."""
    if launcher not in SUBMITTERS:
        raise UserError(f"--launcher {launcher!r} is unknown; choose one of {', '.join(LAUNCHERS)}")
    from benchmark.launch.slurm import submit_grid

    return submit_grid(runs, out_dir, cluster=SUBMITTERS[launcher], **options)
