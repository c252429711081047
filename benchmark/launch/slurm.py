"""Grids on a SLURM cluster through submitit: one job array, one task per unfinished run.

The submitting process does what array tasks must not race for: it builds the shared caches
(dataset files, masks, frozen feature maps, label embeddings; :func:`warm_shared_caches`), then
submits, prints the job id and where the logs go, and returns. Each task trains one run with
:func:`benchmark.engine.lifecycle.run_one`, so the run folder stays the only source of truth:

- a second submission of the same command submits only the runs that are not finished, and none
  that is running now (a fresh heartbeat or a live owner; see :mod:`benchmark.core.run_status`); a
  duplicate task that starts anyway finds the run finished or owned and exits;
- a task the scheduler stops (time limit, preemption) is requeued by submitit
  (:class:`TrainRun` is ``Checkpointable``: SLURM's ``USR2`` before the end makes submitit
  resubmit the same call) and resumes from the run's last epoch checkpoint, as after a local
  SIGKILL; the epoch in progress is redone;
- with several GPUs per run each array task is N SLURM tasks (one per GPU), the ranks of one DDP
  run (``TorchDistributedEnvironment`` sets what torchrun would; rank 0 writes the run folder);
- ``cluster="local"`` uses submitit's ``LocalExecutor`` (real subprocesses through submitit's own
  code, no SLURM): the tests, and ``--launcher submitit-local``.

None of this knows what a method is.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import submitit

from benchmark.config.run_spec import RunSpec
from benchmark.core.cache import REPO_ROOT
from benchmark.core.errors import UserError
from benchmark.core.run_status import SUBMISSIONS, run_state
from benchmark.launch.planning import longest_first, unique_runs
from benchmark.launch.worker import die_with_parent, prepare_process, train_one

LOGS = ".submitit"


def parse_time(text: str) -> int:
    """SLURM's time formats (MM, HH:MM:SS, D-HH[:MM[:SS]], MM:SS) in whole minutes."""
    text = str(text).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise UserError(f"--slurm-time {text!r} is not a SLURM time (e.g. 12:00:00, 90, 1-00:00:00)")
    days, a, b, c = (int(g) if g else None for g in m.groups())
    if days is not None:                          # D-HH[:MM[:SS]]
        h, mi, s = a, b or 0, c or 0
        minutes = days * 1440 + h * 60 + mi + (s > 0)
    elif c is not None:                           # HH:MM:SS
        minutes = a * 60 + b + (c > 0)
    elif b is not None:                           # MM:SS
        minutes = a + (b > 0)
    else:                                         # MM
        minutes = a
    if minutes < 1:
        raise UserError(f"--slurm-time {text!r} must be at least one minute")
    return minutes


class TrainRun(submitit.helpers.Checkpointable):
    """One array task: train one run into its folder. Requeued after a timeout or a preemption with
    the same arguments (the default ``checkpoint``): the run folder holds the state."""

    def __call__(self, spec: RunSpec, out_dir: Path, keep_checkpoints: bool = False, num_workers: int = 0,
                 threads: int = 1, plugins: tuple[str, ...] = ()) -> str:
        from benchmark.core import process_group

        _task_init(threads, plugins)
        if submitit.JobEnvironment().num_tasks > 1:
            # Several tasks per run (--slurm-gpus-per-run N > 1): they are the ranks of one DDP run, as
            # under torchrun. Every task sees the node's GPUs and takes GPU LOCAL_RANK.
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            process_group.init()
        try:
            status, detail = train_one(spec, Path(out_dir), None, keep_checkpoints, num_workers, threads,
                                    say=print if process_group.is_main() else (lambda line: None))
        finally:
            process_group.shutdown()
        line = f"run {spec.describe()} ({spec.run_id}): {status}" + (f": {detail}" if detail else "")
        print(line, flush=True)
        if status == "failed":
            raise RuntimeError(line)            # the scheduler shows the task FAILED; error.txt has the traceback
        return status


def _task_init(threads: int, plugins: tuple[str, ...]) -> None:
    if os.environ.get("SUBMITIT_EXECUTOR") == "local":
        # submitit's local controller is the parent: a task must not outlive it. (On SLURM the job's
        # cgroup ends every process of the task; a parent-death signal there would fire on the exit
        # of whichever slurmstepd thread forked us.)
        die_with_parent(os.getppid())
    prepare_process(max(1, int(threads)), tuple(plugins))


@dataclass
class Submission:
    job_ids: list[str] = field(default_factory=list)
    submitted: list[str] = field(default_factory=list)      # run ids
    finished: list[str] = field(default_factory=list)       # already done: not submitted
    running: list[str] = field(default_factory=list)        # running now: not submitted
    logs: Path | None = None
    jobs: list = field(default_factory=list)                # submitit Job objects (wait with .result())


def make_executor(cluster: str, folder: Path, *, partition: str | None = None, gpus_per_run: int = 0,
                  time_min: int = 60, array_parallelism: int | None = None, setup: tuple[str, ...] = (),
                  cpus_per_run: int | None = None, params: dict | None = None, ranks_per_run: int | None = None):
    """``ranks_per_run`` tasks per run (default: one per GPU, at least one): with more than one, the
    tasks train the run together with DDP (:class:`TrainRun`), each on its own GPU."""
    ranks = ranks_per_run or max(1, gpus_per_run)
    if cluster == "local":
        executor = submitit.LocalExecutor(folder=str(folder))
        executor.update_parameters(timeout_min=time_min, gpus_per_node=gpus_per_run, setup=list(setup),
                                   tasks_per_node=ranks)
        return executor
    _check_slurm()
    executor = submitit.SlurmExecutor(folder=str(folder))
    options = dict(time=time_min, job_name="mlrpl-grid", setup=list(setup), ntasks_per_node=ranks)
    if ranks > 1:      # a rank that fails ends its run's other ranks (they would wait in a collective)
        options["srun_args"] = ["--kill-on-bad-exit=1"]
    if partition:
        options["partition"] = partition
    if gpus_per_run:
        options["gpus_per_node"] = gpus_per_run
    if cpus_per_run:
        options["cpus_per_task"] = cpus_per_run
    if array_parallelism:
        options["array_parallelism"] = array_parallelism
    if params:
        options["additional_parameters"] = dict(params)
    executor.update_parameters(**options)
    return executor


def _check_slurm() -> None:
    if shutil.which("srun") is None or shutil.which("sbatch") is None:
        raise UserError("--launcher slurm needs sbatch and srun on PATH: submit from a SLURM login node")


def submit_grid(runs: list[RunSpec], out_dir: Path, cluster: str = "slurm", *, keep_checkpoints: bool = False,
                num_workers: int = 0, threads: int | None = None, plugins: tuple[str, ...] = (),
                say=print, **executor_options) -> Submission:
    """Submit the grid's unfinished runs (one array task each) and return without waiting."""
    from benchmark.engine.prepared_run import warm_shared_caches

    if cluster == "slurm":
        _check_slurm()                    # before anything is built or written
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = Submission()
    queued = queued_runs(out_dir) if cluster == "slurm" else {}
    todo = []
    for spec in unique_runs(runs):
        state = run_state(out_dir, spec.run_id, spec.describe(), spec.epochs).state
        if state == "done":
            result.finished.append(spec.run_id)
        elif state == "running" or spec.run_id in queued:
            result.running.append(spec.run_id)
            say(f"run {spec.describe()} is {'running' if state == 'running' else 'queued'} "
                f"(job {queued.get(spec.run_id, 'see status')}); not submitted again")
        else:
            todo.append(spec)
    if not todo:
        return result
    for spec in todo:                     # built once, here; array tasks only read them
        warm_shared_caches(spec)
    todo = longest_first(todo)
    threads = threads or executor_options.get("cpus_per_run") or 1
    logs = out_dir / LOGS
    result.logs = logs
    executor = make_executor(cluster, logs / "%j", **executor_options)
    # Tasks unpickle TrainRun and RunSpec from this repository wherever they start.
    path = os.environ.get("PYTHONPATH", "")
    if str(REPO_ROOT) not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), path) if p)
    n = len(todo)
    jobs = executor.map_array(TrainRun(), todo, [str(out_dir)] * n, [keep_checkpoints] * n, [num_workers] * n,
                              [threads] * n, [tuple(plugins)] * n)
    result.jobs = jobs
    result.submitted = [spec.run_id for spec in todo]
    ids = sorted({str(job.job_id).split("_")[0] for job in jobs})
    result.job_ids = ids
    record = {"time": time.time(), "launcher": "slurm" if cluster == "slurm" else f"submitit-{cluster}",
              "job_id": ",".join(ids), "runs": n, "run_ids": result.submitted, "logs": str(logs)}
    with open(out_dir / SUBMISSIONS, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    try:
        (logs / "%j").rmdir()             # the executor's folder template, made empty by LocalExecutor
    except OSError:
        pass
    return result


def queued_runs(out_dir: Path) -> dict[str, str]:
    """Runs of earlier SLURM submissions into ``out_dir`` whose array task is still queued or running
    ({run id: "JOB_TASK"}), from ``squeue``; empty when squeue is absent or fails. A run that
    is pending in the queue has no folder yet, so only the scheduler knows it was submitted."""
    import subprocess

    try:
        lines = (out_dir / SUBMISSIONS).read_text().splitlines()
    except OSError:
        return {}
    by_task: dict[str, str] = {}
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("launcher") != "slurm":
            continue
        run_ids = rec.get("run_ids", [])
        for index, run_id in enumerate(run_ids):     # one run is a plain job, several an array
            by_task[f"{rec['job_id']}_{index}" if len(run_ids) > 1 else str(rec["job_id"])] = run_id
    if not by_task or shutil.which("squeue") is None:
        return {}
    jobs = sorted({task.split("_")[0] for task in by_task})
    try:
        proc = subprocess.run(["squeue", "--noheader", "--array", "--format=%i", f"--jobs={','.join(jobs)}"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {}
    if proc.returncode != 0:
        return {}
    alive = {}
    for task in proc.stdout.split():
        if task in by_task:
            alive[by_task[task]] = task
    return alive
