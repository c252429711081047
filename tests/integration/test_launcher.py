"""Parallel grids: the same numbers as one run at a time, plugins reach the worker processes, and a
run that crashes is recorded while the others finish."""
from __future__ import annotations

import os

from benchmark.core.registry import METHODS, discover
from benchmark.core.run_folder import RunFolder
from benchmark.launch.grid import run_grid
from tests.conftest import records_by_epoch, smoke_spec

discover()

BROKEN_PLUGIN = '''
from benchmark.contract.method import Method
from benchmark.core.registry import METHODS


@METHODS.register_module()
class AlwaysCrashes(Method):
    name = "always_crashes"

    def __init__(self, task, cfg=None, backbone=None):
        super().__init__(task, cfg, backbone)
        raise RuntimeError("deliberate failure")
'''


def _grid(out, methods, jobs, plugins=()):
    specs = [smoke_spec(m, ratio=r, epochs=2) for m in methods for r in (0.3, 0.7)]
    return specs, run_grid(specs, out, show_progress=False, jobs=jobs, threads=1, plugins=plugins)


def test_parallel_grid_matches_serial_grid(tmp_path):
    specs, serial = _grid(tmp_path / "serial", ["partial_bce", "dsrb"], jobs=1)
    _, parallel = _grid(tmp_path / "parallel", ["partial_bce", "dsrb"], jobs=2)
    assert len(serial.finished) == len(parallel.finished) == 4 and not parallel.failed
    for spec in specs:
        one, two = RunFolder(tmp_path / "serial", spec.run_id), RunFolder(tmp_path / "parallel", spec.run_id)
        assert two.done
        for kind in ("eval", "train"):
            assert records_by_epoch(two, kind) == records_by_epoch(one, kind)


def test_crash_in_a_worker_is_recorded_and_the_grid_goes_on(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "always_crashes.py").write_text(BROKEN_PLUGIN)
    discover((str(plugins),))
    try:
        specs, outcome = _grid(tmp_path / "out", ["always_crashes", "partial_bce"], jobs=2, plugins=(str(plugins),))
    finally:
        METHODS.module_dict.pop("always_crashes", None)   # keep the registry as other tests expect it
    assert len(outcome.finished) == 2 and len(outcome.failed) == 2
    for spec in specs:
        folder = RunFolder(tmp_path / "out", spec.run_id)
        if spec.method == "always_crashes":
            assert "deliberate failure" in (folder.path / "error.txt").read_text() and not folder.done
        else:
            assert folder.done


def test_default_jobs_shrink_to_what_memory_holds(monkeypatch):
    import benchmark.launch.grid as launcher

    gib = 2 ** 30
    monkeypatch.setattr(launcher, "available_memory", lambda: 10 * gib)
    assert launcher._memory_cap(4, 3 * gib) == 2            # 10 GB free / (3 + 2) GB per run
    assert launcher._memory_cap(4, 30 * gib) == 1
    assert launcher._memory_cap(2, 0) == 2
    monkeypatch.setattr(launcher, "available_memory", lambda: None)
    assert launcher._memory_cap(4, 30 * gib) == 4


def test_parallel_workers_are_dealt_the_visible_gpus_round_robin(monkeypatch):
    """--jobs N on a GPU node: each worker sees one GPU (CUDA_VISIBLE_DEVICES set before CUDA starts
    in it), dealt from the parent's visible GPUs; without GPUs nothing is pinned."""
    import queue

    import torch

    from benchmark.launch import grid as launcher

    assert launcher.gpu_plan(4, ["0", "1"]) == ["0", "1", "0", "1"]
    assert launcher.gpu_plan(2, []) == [None, None]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert launcher.visible_gpus() == ["4", "6"]
    assert launcher.default_jobs(8) == 2 and launcher.default_jobs(1) == 1
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert launcher.visible_gpus() == ["0", "1"]
    plan = queue.Queue()
    for device in launcher.gpu_plan(2, ["4", "6"]):
        plan.put(device)
    launcher._pin_device(plan)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4"
    launcher._pin_device(plan)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "6"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    none = queue.Queue()
    none.put(None)
    launcher._pin_device(none)
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
