"""``status``: what a results folder says about each run (done, running, failed, stopped, missing),
read from the folders and their heartbeats. Moved here from the SLURM file, which submits grids."""
from __future__ import annotations

import json
import os
import time

from benchmark.core.run_folder import RunFolder
from benchmark.core.run_status import Heartbeat, grid_status, read_heartbeat
from tests.conftest import copy_run, smoke_spec


def _wait_for(predicate, timeout=180.0, step=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def test_heartbeat_is_fresh_while_the_block_runs_and_gone_after(tmp_path):
    folder = RunFolder(tmp_path, "run")
    with Heartbeat(folder, every=0.05):
        first = read_heartbeat(folder)
        assert first[1]["pid"] == os.getpid()
        before = (folder.path / "heartbeat").stat().st_mtime_ns
        assert _wait_for(lambda: (folder.path / "heartbeat").stat().st_mtime_ns != before, timeout=5)
    assert read_heartbeat(folder) is None


def test_status_tells_done_running_failed_stopped_and_missing(tmp_path):
    specs = [smoke_spec("partial_bce", ratio=r) for r in (0.1, 0.2, 0.3, 0.4, 0.5)]
    done, running, failed, stopped, missing = (RunFolder(tmp_path, s.run_id) for s in specs)
    for folder, spec in zip((done, running, failed, stopped), specs):
        folder.start({"method": spec.method, "epochs": spec.epochs})
        folder.log({"kind": "eval", "epoch": 1})
    done.log({"kind": "eval", "epoch": 2})
    done.finish()
    beat = {"pid": 1, "host": "node-17", "time": time.time(), "job": "4242_1"}
    (running.path / "heartbeat").write_text(json.dumps(beat))
    (failed.path / "error.txt").write_text("RuntimeError: deliberate\n\ntraceback")
    (stopped.path / "heartbeat").write_text(json.dumps(beat))
    old = time.time() - 3600
    os.utime(stopped.path / "heartbeat", (old, old))
    states = {s.run_id: s for s in grid_status(tmp_path, specs, stale=300)}
    assert [states[s.run_id].state for s in specs] == ["done", "running", "failed", "stopped", "missing"]
    assert "job 4242_1" in states[specs[1].run_id].detail and "node-17" in states[specs[1].run_id].detail
    assert states[specs[2].run_id].detail == "RuntimeError: deliberate"
    assert states[specs[3].run_id].epoch == 1 and states[specs[3].run_id].epochs == 2
    assert {s.state for s in grid_status(tmp_path)} == {"done", "running", "failed", "stopped"}  # folders only


def test_status_of_a_trained_run_trusts_its_done_marker_only_while_the_records_match(trained, tmp_path):
    """A run folder as the engine leaves it is done; once its metrics.jsonl no longer has the sha256
    its ``done`` marker holds, it is not (it will be retrained), though ``done`` is still there."""
    spec = smoke_spec("partial_bce", epochs=2)
    folder = copy_run(trained(spec), tmp_path)
    marker = json.loads((folder.path / "done").read_text())
    assert set(marker) == {"metrics_sha256", "spec_sha256", "scores_sha256"}
    (state,) = grid_status(tmp_path, [spec])
    assert (state.state, state.epoch, state.epochs) == ("done", 2, 2)
    with open(folder.path / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"kind": "eval", "epoch": 2, "test/mAP": 99.0}) + "\n")
    assert folder.done and folder.verify() == "metrics.jsonl changed after the run finished"
    (state,) = grid_status(tmp_path, [spec])
    assert state.state == "stopped" and "starts afresh" in state.detail
