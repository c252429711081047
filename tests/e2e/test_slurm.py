"""Grids through submitit (issue 14, part 1). SLURM itself is absent here: submitit's LocalExecutor runs
real subprocess jobs through submitit's own code (pickled calls, its signal handling and requeue), and
a fake ``sbatch``/``srun``/``squeue`` on PATH checks what a SLURM submission asks for.

- a grid submitted through submitit gives the records of ``--launcher local``; submitting it again
  submits nothing;
- a task preempted (SIGUSR2, as SLURM sends before a time limit) is requeued by submitit and resumes
  from its last epoch: records bit-identical to an uninterrupted run;
- a task whose job is SIGKILLed leaves no process behind; submitting again resumes the run;
- ``--launcher slurm`` builds the caches first, asks sbatch for one array, and a second submission
  skips runs still queued; ``status`` reads the folders.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from benchmark.core.registry import discover
from benchmark.core.run_folder import RunFolder
from benchmark.core.run_status import grid_status, read_heartbeat
from benchmark.engine.lifecycle import run_one
from benchmark.launch.grid import run_grid
from benchmark.launch.submit import submit
from tests.conftest import records_by_epoch, smoke_spec
from tests.integration.test_reliability import _alive, _descendants
from tests.integration.test_status import _wait_for

discover()
REPO = Path(__file__).resolve().parents[2]


def _submit(specs, out, **kw):
    return submit("submitit-local", specs, out, threads=1, time_min=15, say=lambda line: None, **kw)


def test_submitit_grid_matches_the_local_launcher_and_a_finished_grid_submits_nothing(tmp_path):
    specs = [smoke_spec("partial_bce", ratio=r, epochs=2) for r in (0.3, 0.7)]
    run_grid(specs, tmp_path / "local", show_progress=False, jobs=1, threads=1)
    sub = _submit(specs, tmp_path / "sub")
    assert len(sub.submitted) == 2 and len(sub.jobs) == 2
    assert [job.result() for job in sub.jobs] == ["finished", "finished"]
    for spec in specs:
        one, two = RunFolder(tmp_path / "local", spec.run_id), RunFolder(tmp_path / "sub", spec.run_id)
        assert two.finished and not (two.path / "heartbeat").exists()
        for kind in ("eval", "train", "recovery"):
            assert records_by_epoch(two, kind) == records_by_epoch(one, kind)
    again = _submit(specs, tmp_path / "sub")
    assert again.submitted == [] and again.jobs == [] and sorted(again.finished) == sorted(s.run_id for s in specs)
    assert [s.state for s in grid_status(tmp_path / "sub", specs)] == ["done", "done"]


def test_a_preempted_task_is_requeued_and_resumes_exactly(tmp_path):
    spec = smoke_spec("partial_bce", ratio=0.5, epochs=24)
    whole = run_one(spec, tmp_path / "whole", threads=1)
    out = tmp_path / "sub"
    sub = _submit([spec], out)
    folder = RunFolder(out, spec.run_id)
    assert _wait_for(lambda: folder.last_checkpoint() and read_heartbeat(folder))
    pid = read_heartbeat(folder)[1]["pid"]
    assert grid_status(out, [spec])[0].state == "running"
    os.kill(pid, signal.SIGUSR2)                    # what SLURM sends before a time limit or a preemption
    assert sub.jobs[0].result() == "finished"       # submitit requeued the task, which resumed
    resumed = folder.spec_record().get("resumed")
    assert resumed, "the run should have resumed from its checkpoint, not restarted"
    for kind in ("eval", "train"):
        assert records_by_epoch(folder, kind) == records_by_epoch(whole, kind)
    log = "".join(p.read_text() for p in (out / ".submitit").glob("*/*_log.*"))
    assert "Calling checkpoint method" in log and "Requeued job" in log


def test_a_killed_job_leaves_no_process_and_resubmission_resumes(tmp_path):
    spec = smoke_spec("partial_bce", ratio=0.4, epochs=24)
    out = tmp_path / "sub"
    sub = _submit([spec], out)
    folder = RunFolder(out, spec.run_id)
    assert _wait_for(lambda: folder.last_checkpoint() and read_heartbeat(folder))
    controller = sub.jobs[0]._process                # submitit's job process; the task is its child
    task = read_heartbeat(folder)[1]["pid"]
    tree = _descendants(controller.pid)
    assert task in tree
    controller.send_signal(signal.SIGKILL)
    controller.wait()
    assert _wait_for(lambda: not any(_alive(p) for p in tree), timeout=15), "a task outlived its job"
    assert not folder.done
    state = grid_status(out, [spec], stale=300)[0]
    assert state.state == "stopped" and "resumes" in state.detail   # fresh heartbeat, but its pid is gone
    again = _submit([spec], out)
    assert again.submitted == [spec.run_id] and again.jobs[0].result() == "finished"
    assert folder.finished and folder.spec_record().get("resumed")
    assert sorted(records_by_epoch(folder, "eval")) == list(range(1, 25))


FAKE = {
    "sbatch": '#!/bin/sh\ncp "$1" "$FAKE_SLURM/script.$(date +%s%N)"\necho "Submitted batch job 4242"\n',
    "srun": "#!/bin/sh\nexit 0\n",
    "squeue": '#!/bin/sh\necho "$@" > "$FAKE_SLURM/squeue.args"\nprintf "4242_0\\n4242_2\\n"\n',
}


def test_slurm_submission_builds_caches_first_and_skips_queued_runs(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in FAKE.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    cache, out = tmp_path / "cache", tmp_path / "out"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM": str(tmp_path),
           "MLRPL_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    grid = ["--profile", "smoke", "--embeddings", "random", "--methods", "partial_bce", "--ratios", "0.2,0.5,0.8",
            "--epochs", "2", "--out", str(out)]
    cmd = [sys.executable, "run_benchmark.py", *grid, "--launcher", "slurm", "--slurm-partition", "gpu",
           "--slurm-gpus-per-run", "1", "--slurm-time", "12:00:00", "--slurm-array-parallelism", "2",
           "--slurm-setup", "module load cuda", "--slurm-param", "account=abc"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "submitted 3 run(s) as job 4242" in proc.stdout and f"status --out {out}" in proc.stdout
    script = next(tmp_path.glob("script.*")).read_text()
    for line in ("--array=0-2%2", "--partition=gpu", "--gpus-per-node=1", "--time=720", "--account=abc",
                 "--cpus-per-task=8", "--signal=USR2@90", "module load cuda"):
        assert line in script, line
    assert len(list((cache / "features").glob("*.npy"))) == 2     # train and test maps, before any task
    record = json.loads((out / ".submitit" / "submissions.jsonl").read_text())
    assert record["job_id"] == "4242" and len(record["run_ids"]) == 3
    status = subprocess.run([sys.executable, "run_benchmark.py", "status", *grid], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert status.returncode == 0, status.stderr
    assert "3 runs in" in status.stdout and "3 missing" in status.stdout and "slurm job 4242" in status.stdout
    # Tasks 0 and 2 are still in the queue (fake squeue): only the other run is submitted again.
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "submitted 1 run(s)" in again.stdout and "2 running or queued" in again.stdout
    assert "--jobs=4242" in (tmp_path / "squeue.args").read_text()
    scripts = sorted(tmp_path.glob("script.*"))
    assert len(scripts) == 2 and "--array" not in scripts[1].read_text()   # one run: a plain job


def test_a_run_spans_two_ranks_through_submitit(tmp_path):
    """--slurm-gpus-per-run N > 1: each array task is N submitit tasks that train the run together with
    DDP (here two gloo ranks on the CPU); rank 0 writes the folder, and the numbers are one process's."""
    specs = [smoke_spec("partial_bce", ratio=0.5, epochs=2), smoke_spec("ll_ct", ratio=0.5, epochs=3)]
    run_grid(specs, tmp_path / "local", show_progress=False, jobs=1, threads=1)
    sub = _submit(specs, tmp_path / "sub", ranks_per_run=2)
    assert [job.results() for job in sub.jobs] == [["finished", "finished"]] * 2
    for spec in specs:
        one, two = RunFolder(tmp_path / "local", spec.run_id), RunFolder(tmp_path / "sub", spec.run_id)
        assert two.finished and two.spec_record()["parallel"]["world_size"] == 2
        assert not two.records("rank_check")
        ours, theirs = records_by_epoch(two, "eval"), records_by_epoch(one, "eval")
        assert sorted(ours) == sorted(theirs)
        for epoch in ours:
            assert abs(ours[epoch]["test/mAP"] - theirs[epoch]["test/mAP"]) < 0.01
