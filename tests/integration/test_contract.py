"""The contract every registered method keeps, parametrised over the registry."""
from __future__ import annotations

import math

import pytest

from benchmark.core.registry import METHODS, discover
from tests.conftest import smoke_spec

discover()
ALL_METHODS = sorted(METHODS.module_dict)


def _evals(folder, kind):
    return [r for r in folder.records(kind)]


@pytest.mark.parametrize("name", ALL_METHODS)
def test_method_trains_two_epochs_with_hooks(name, tmp_path, monkeypatch):
    from benchmark.engine.lifecycle import run_one

    cls = METHODS.get(name)
    calls = {"start": 0, "end": 0}
    orig_start, orig_end = cls.on_train_epoch_start, cls.on_train_epoch_end

    def start(self, ctx):
        calls["start"] += 1
        return orig_start(self, ctx)

    def end(self, ctx):
        calls["end"] += 1
        return orig_end(self, ctx)

    monkeypatch.setattr(cls, "on_train_epoch_start", start)
    monkeypatch.setattr(cls, "on_train_epoch_end", end)
    folder = run_one(smoke_spec(name, epochs=2), tmp_path)
    assert folder.done
    assert calls == {"start": 2, "end": 2}
    train = _evals(folder, "train")
    assert [r["epoch"] for r in train] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in train)
    evals = _evals(folder, "eval")
    assert [r["epoch"] for r in evals] == [1, 2]
    assert all(0.0 <= r["test/mAP"] <= 100.0 for r in evals)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_predictions_shape_and_state_dict_round_trip(name):
    from benchmark.cli.plugin_checks import check_on_toy_task

    check_on_toy_task(name)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_method_never_sees_hidden_labels(name, tmp_path):
    """Flipping every hidden (unknown) training label changes nothing the method computes."""
    from benchmark.cli.plugin_checks import check_hidden_labels

    check_hidden_labels(name, tmp_path)
