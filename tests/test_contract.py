"""The contract every registered method keeps, parametrised over the registry."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from benchmark.registry import discover, METHODS
from tests.conftest import smoke_spec

discover()
ALL_METHODS = sorted(METHODS.module_dict)


def _evals(folder, kind):
    return [r for r in folder.records(kind)]


@pytest.mark.parametrize("name", ALL_METHODS)
def test_method_trains_two_epochs_with_hooks(name, tmp_path, monkeypatch):
    from benchmark.experiment import run_one

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


def _built(name, registry_task):
    cls = METHODS.get(name)
    torch.manual_seed(0)
    return cls(registry_task, cls.make_config({}))


@pytest.fixture(scope="module")
def toy_task():
    from benchmark.method import TaskSpec

    c = 6
    graph = torch.eye(c) * 0.5 + 0.5
    return TaskSpec(num_classes=c, class_names=[f"c{i}" for i in range(c)], num_train=16, feature_dim=32,
                    feature_size=(4, 4), protocol="frozen", label_embeddings=torch.randn(c, 50),
                    label_graph=graph)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_predictions_shape_and_state_dict_round_trip(name, toy_task):
    from benchmark.method import Batch

    method = _built(name, toy_task)
    feats = torch.randn(8, 32, 4, 4)
    batch = Batch(inputs=feats, targets=(torch.rand(8, 6) > 0.5).float(), observed=torch.rand(8, 6) > 0.3,
                  index=torch.arange(8))
    method.train()
    losses = method.compute_losses(batch, method.ctx)
    assert losses and all(k.startswith("loss") for k in losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    method.eval()
    with torch.no_grad():
        scores = method.predict_scores(feats)
    assert scores.shape == (8, 6)
    clone = _built(name, toy_task)
    clone.load_state_dict(copy.deepcopy(method.state_dict()))
    clone.eval()
    with torch.no_grad():
        assert torch.equal(clone.predict_scores(feats), scores)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_method_never_sees_hidden_labels(name, tmp_path, monkeypatch):
    """Flipping every hidden (unknown) training label changes nothing the method computes."""
    import benchmark.experiment as experiment
    from datasets.masks import get_mask

    spec = smoke_spec(name, ratio=0.3, epochs=2)
    base = experiment.load_dataset(spec.dataset, spec.dataset_size)
    mask = get_mask(base.train, spec.mask_protocol, spec.ratio, spec.seed).observed
    flipped = copy.copy(base)
    flipped.train = base.train.subset(range(len(base.train)), base.train.name)
    flipped.train.labels = (base.train.labels ^ (~mask)).astype("uint8")
    assert (flipped.train.labels != base.train.labels).any()

    first = experiment.run_one(spec, tmp_path / "a")
    monkeypatch.setattr(experiment, "load_dataset", lambda *a, **k: flipped)
    second = experiment.run_one(spec, tmp_path / "b")
    strip = lambda recs: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in recs]
    assert strip(first.records("train")) == strip(second.records("train"))
    assert first.records("eval") == second.records("eval")
