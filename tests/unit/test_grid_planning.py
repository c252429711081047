"""How a grid plans its workers, without training: torch threads per run, jobs capped by memory,
GPUs dealt to workers. Moved here from the launcher and reliability files, which run grids."""
from __future__ import annotations

import os


def test_grid_threads_depend_on_the_machine_and_flags_never_on_the_grid(monkeypatch):
    """The count is part of the run id: a run must have one id whatever else its grid holds."""
    import torch

    import benchmark.launch.planning as launcher

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert launcher.default_threads(9, None) == launcher.default_threads(1, None) == 1
    assert launcher.default_threads(9, 1) == 2       # --jobs 1: one run uses both cores
    assert launcher.default_threads(9, 2) == 1


def test_default_jobs_shrink_to_what_memory_holds(monkeypatch):
    import benchmark.launch.planning as launcher

    gib = 2 ** 30
    monkeypatch.setattr(launcher, "available_memory", lambda: 10 * gib)
    assert launcher.memory_cap(4, 3 * gib) == 2            # 10 GB free / (3 + 2) GB per run
    assert launcher.memory_cap(4, 30 * gib) == 1
    assert launcher.memory_cap(2, 0) == 2
    monkeypatch.setattr(launcher, "available_memory", lambda: None)
    assert launcher.memory_cap(4, 30 * gib) == 4


def test_parallel_workers_are_dealt_the_visible_gpus_round_robin(monkeypatch):
    """--jobs N on a GPU node: each worker sees one GPU (CUDA_VISIBLE_DEVICES set before CUDA starts
    in it), dealt from the parent's visible GPUs; without GPUs nothing is pinned."""
    import queue

    import torch

    from benchmark.launch import planning as launcher
    from benchmark.launch.worker import pin_device

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
    pin_device(plan)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4"
    pin_device(plan)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "6"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    none = queue.Queue()
    none.put(None)
    pin_device(none)
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
