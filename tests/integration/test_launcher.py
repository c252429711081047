"""Parallel grids: the same numbers as one run at a time, plugins reach the worker processes, and a
run that crashes is recorded while the others finish."""
from __future__ import annotations

import pytest

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


@pytest.mark.slow
def test_parallel_grid_matches_serial_grid(tmp_path):
    specs, serial = _grid(tmp_path / "serial", ["partial_bce", "dsrb"], jobs=1)
    _, parallel = _grid(tmp_path / "parallel", ["partial_bce", "dsrb"], jobs=2)
    assert len(serial.finished) == len(parallel.finished) == 4 and not parallel.failed
    for spec in specs:
        one, two = RunFolder(tmp_path / "serial", spec.run_id), RunFolder(tmp_path / "parallel", spec.run_id)
        assert two.done
        for kind in ("eval", "train"):
            assert records_by_epoch(two, kind) == records_by_epoch(one, kind)


@pytest.mark.slow
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
