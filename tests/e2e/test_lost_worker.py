"""A grid survives a worker killed from outside (the OOM killer, kill -9): the killed run is recorded
as failed with the signal, a new worker takes its place and the other runs finish; a UserError in a
worker still stops the grid; no worker outlives the grid; a full disk stops the grid with one line
instead of counting as a failed run."""
from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest

from benchmark.core.errors import UserError
from benchmark.core.files import DiskFull
from benchmark.core.registry import discover
from benchmark.core.run_folder import RunFolder
from benchmark.launch.grid import run_grid
from benchmark.launch.pool import WorkerPool
from tests.conftest import smoke_spec

pytestmark = pytest.mark.slow

KILLED_PLUGIN = '''
import os
import signal

import torch.nn.functional as F
from torch import nn

from benchmark.contract.card import MethodCard
from benchmark.contract.method import Method
from benchmark.core.registry import METHODS


@METHODS.register_module()
class KilledFromOutside(Method):
    """Its worker is SIGKILLed in its second training step, as the OOM killer would."""

    name = "killed_from_outside"
    card = MethodCard(relative_cost=5.0)           # started first

    def __init__(self, task, cfg=None, backbone=None):
        super().__init__(task, cfg, backbone)
        self.head = nn.Linear(task.feature_dim, task.num_classes)

    def predict_scores(self, inputs):
        return self.head(self.features(inputs).mean(dim=(2, 3)))

    def compute_losses(self, batch, ctx):
        if ctx.iter_in_epoch == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return {"loss_bce": F.binary_cross_entropy_with_logits(self.predict_scores(batch.inputs), batch.targets)}
'''

USER_ERROR_PLUGIN = '''
from benchmark.contract.card import MethodCard
from benchmark.contract.method import Method
from benchmark.core.errors import UserError
from benchmark.core.registry import METHODS


@METHODS.register_module()
class NeedsAFile(Method):
    name = "needs_a_file"
    card = MethodCard(relative_cost=5.0)

    def __init__(self, task, cfg=None, backbone=None):
        super().__init__(task, cfg, backbone)
        raise UserError("--set prior_file=/nowhere/prior.npy does not exist; give an existing file")
'''


def _plugin(tmp_path: Path, name: str, body: str) -> tuple[str, ...]:
    folder = tmp_path / f"plugins_{name}"
    folder.mkdir()
    (folder / f"{name}.py").write_text(body)
    discover((str(folder),))
    return (str(folder),)


def _pool_workers() -> set[int]:
    """Live child processes of this one started by multiprocessing's spawn (grid workers)."""
    mine = str(os.getpid())
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if fields[1] == mine and fields[0] != "Z" and b"spawn_main" in cmdline:
            found.add(int(stat.parent.name))
    return found


# ------------------------------------------------------------------------------------------- grids
def test_a_killed_worker_costs_its_run_only_and_a_new_worker_takes_its_place(tmp_path, forget_plugins):
    plugins = _plugin(tmp_path, "killed_from_outside", KILLED_PLUGIN)
    killed = smoke_spec("killed_from_outside", epochs=2)
    others = [smoke_spec("partial_bce", ratio=r, epochs=1) for r in (0.3, 0.7)]
    before = _pool_workers()
    outcome = run_grid([killed, *others], tmp_path / "out", show_progress=False, jobs=2, threads=1, plugins=plugins)
    assert [run_id for run_id, _ in outcome.failed] == [killed.run_id]
    assert "signal 9" in outcome.failed[0][1] and "error.txt" in outcome.failed[0][1]
    error = (RunFolder(tmp_path / "out", killed.run_id).path / "error.txt").read_text().splitlines()
    assert error[0].startswith("killed by signal 9 (SIGKILL): out of memory? see dmesg"), error[0]
    assert "resumes from its last checkpoint" in error[0]
    assert any(line.startswith(f"run {killed.describe()}") and "worker pid " in line and "exit code -9" in line
               for line in error)
    assert sorted(outcome.finished) == sorted(s.run_id for s in others)       # the third run too
    assert all(RunFolder(tmp_path / "out", s.run_id).done for s in others)
    assert not RunFolder(tmp_path / "out", killed.run_id).done
    assert _pool_workers() <= before                                          # none left behind


def test_a_user_error_in_a_worker_stops_the_grid_and_leaves_no_worker(tmp_path, forget_plugins):
    plugins = _plugin(tmp_path, "needs_a_file", USER_ERROR_PLUGIN)
    specs = [smoke_spec("needs_a_file", epochs=1), smoke_spec("partial_bce", epochs=2)]
    before = _pool_workers()
    with pytest.raises(UserError, match="prior_file=/nowhere/prior.npy does not exist"):
        run_grid(specs, tmp_path / "out", show_progress=False, jobs=2, threads=1, plugins=plugins)
    assert _pool_workers() <= before
    assert not (RunFolder(tmp_path / "out", specs[0].run_id).path / "error.txt").exists()


# --------------------------------------------------------------------- the pool on its own (no torch)
def test_the_pool_reuses_its_workers_and_replaces_a_dead_one():
    """eval as the task: two workers, five tasks, one of which SIGKILLs its worker."""
    pids, lost = [], []
    tasks = [("__import__('os').getpid()",)] * 2 + [("__import__('signal').raise_signal(9)",)] + \
            [("__import__('os').getpid()",)] * 2
    pool = WorkerPool(2, int, lambda slot: (), eval)
    pool.run(tasks, lambda task, pid: pids.append(pid), lambda task, code, pid: lost.append((task, code)), every=0.1)
    assert lost == [(tasks[2], -signal.SIGKILL)]
    assert len(pids) == 4 and len(set(pids)) <= 3                   # 2 workers + 1 replacement, re-used
    assert os.getpid() not in pids and not _pool_workers()


def test_workers_that_keep_dying_while_starting_stop_the_pool():
    pool = WorkerPool(2, os._exit, lambda slot: (3,), eval, max_early_deaths=3)
    with pytest.raises(UserError, match="3 grid worker processes in a row died while starting .*exit code 3"):
        pool.run([("1",)] * 4, lambda *a: None, lambda *a: pytest.fail("no task was taken"), every=0.1)
    assert not _pool_workers()


def test_a_user_error_raised_in_a_pool_worker_is_raised_in_the_parent():
    raises = ("(_ for _ in ()).throw(__import__('benchmark.core.errors', fromlist=['x']).UserError("
              "'--ratios 7 is not a fraction; use values in (0, 1)'))")
    pool = WorkerPool(2, int, lambda slot: (), eval)
    with pytest.raises(UserError, match="--ratios 7 is not a fraction"):
        pool.run([("__import__('time').sleep(30)",), (raises,)], lambda *a: None, lambda *a: None, every=0.1)
    assert not _pool_workers()                   # the sleeping worker was killed, not waited for


# ------------------------------------------------------------------------------------- train_one rules
def _train_one_raising(monkeypatch, tmp_path, exc):
    import benchmark.engine.lifecycle as lifecycle
    from benchmark.launch.worker import train_one

    def run_one(*args, **kwargs):
        RunFolder(tmp_path, spec.run_id).path.mkdir(parents=True, exist_ok=True)
        raise exc

    spec = smoke_spec("partial_bce", epochs=1)
    monkeypatch.setattr(lifecycle, "run_one", run_one)
    return spec, lambda: train_one(spec, tmp_path, None, False, 0, 1, say=lambda line: None)


def _chained_no_space():
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as inner:
            raise ValueError("could not save the checkpoint") from inner
    except ValueError as exc:
        return exc


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"),
                                 RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter "
                                              "failed writing file data/0: No space left on device"),
                                 _chained_no_space()])
def test_a_full_disk_stops_the_grid_instead_of_failing_one_run(monkeypatch, tmp_path, exc):
    spec, train = _train_one_raising(monkeypatch, tmp_path, exc)
    with pytest.raises(DiskFull) as err:
        train()
    line = str(err.value)
    assert "\n" not in line and f"no space left on the device of {tmp_path}" in line
    assert f"run {spec.describe()}" in line
    assert not (RunFolder(tmp_path, spec.run_id).path / "error.txt").exists()


def test_recording_a_failure_raises_nothing_but_a_full_disk(monkeypatch, tmp_path):
    import benchmark.launch.worker as worker
    from benchmark.core.files import disk_full

    spec, train = _train_one_raising(monkeypatch, tmp_path, KeyError("broken method"))
    status, detail = train()
    assert status == "failed" and detail.startswith("KeyError: 'broken method'")
    assert (RunFolder(tmp_path, spec.run_id).path / "error.txt").read_text().startswith("KeyError: 'broken method'")

    def refused(path, text):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(worker, "atomic_write_text", refused)
    assert train()[0] == "failed"                                   # recorded at best, never a second error

    def full(path, text):
        raise disk_full(Path(path).parent, len(text), Path(path).name)

    monkeypatch.setattr(worker, "atomic_write_text", full)
    with pytest.raises(DiskFull, match="writing error.txt"):
        train()


def test_the_error_of_a_lost_worker_names_its_signal_or_exit_code():
    from benchmark.launch.worker import lost_worker_line

    assert lost_worker_line(-9) == ("killed by signal 9 (SIGKILL): out of memory? see dmesg; the run resumes from "
                                    "its last checkpoint when the grid runs again")
    assert lost_worker_line(-11).startswith("killed by signal 11 (SIGSEGV); the run resumes")
    assert lost_worker_line(1).startswith("its worker process exited with code 1 while training it")
