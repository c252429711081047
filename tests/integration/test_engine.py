"""Engine behaviour: determinism, checkpoint resume (the torch >= 2.6 fix), run folders."""
from __future__ import annotations

import json
import math

import pytest

from benchmark.core.registry import discover
from benchmark.engine.lifecycle import run_one
from tests.conftest import copy_run, cut_and_resume, records_by_epoch, smoke_spec

discover()


def _metrics(folder):
    return [r for r in folder.records() if r["kind"] in ("eval", "train")]


def _strip(records):
    return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in records]


def test_same_spec_in_fresh_folders_gives_identical_metrics(tmp_path):
    spec = smoke_spec(epochs=2)
    a = run_one(spec, tmp_path / "a")
    b = run_one(spec, tmp_path / "b")
    assert _strip(_metrics(a)) == _strip(_metrics(b))
    assert json.loads((a.path / "spec.json").read_text())["mask_sha256"] == \
        json.loads((b.path / "spec.json").read_text())["mask_sha256"]
    assert json.loads((a.path / "spec.json").read_text())["method_display"] == "Partial-BCE"


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path):
    whole, resumed = cut_and_resume(smoke_spec(epochs=3, train={"schedule": "step", "step_size": 2}), tmp_path, cut_after=2)
    assert resumed.done
    assert records_by_epoch(resumed, "eval") == records_by_epoch(whole, "eval")
    assert records_by_epoch(resumed, "train") == records_by_epoch(whole, "train")
    assert not list(resumed.work_dir.glob("*.pth")), "checkpoints are removed once a run is done"


def test_finished_run_is_skipped(trained, tmp_path):
    spec = smoke_spec(epochs=1)
    folder = copy_run(trained(spec), tmp_path)
    before = (folder.path / "metrics.jsonl").read_text()
    again = run_one(spec, tmp_path)
    assert not getattr(again, "trained_here", False)
    assert (again.path / "metrics.jsonl").read_text() == before


def _backbone_tensors(folder) -> dict:
    """The backbone's tensors (timm names) in a run's last checkpoint (kept with keep_checkpoints)."""
    import torch

    state = torch.load(folder.last_checkpoint(), weights_only=False)["state_dict"]
    prefix = "method.backbone.model."
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def test_finetune_protocol_trains_the_backbone_on_images(tmp_path):
    """finetune: images with augmentation go through the backbone, and training changes every one of
    its weights and BatchNorm statistics (partial_bce freezes nothing)."""
    import torch

    from benchmark.engine.prepared_run import PreparedRun, pick_device

    spec = smoke_spec(protocol="finetune", epochs=1, batch_size=16)
    folder = run_one(spec, tmp_path, keep_checkpoints=True)
    assert folder.finished
    evals = folder.records("eval")
    assert [r["epoch"] for r in evals] == [1] and math.isfinite(evals[0]["test/mAP"])
    prep = PreparedRun(spec, pick_device())
    batch = prep.train_set().__getitems__([0, 1])
    assert batch["inputs"].shape == (2, 3, spec.image_size, spec.image_size)
    assert torch.isfinite(batch["inputs"]).all()
    assert not torch.equal(batch["inputs"], prep.train_set().__getitems__([0, 1])["inputs"]), "augmented"
    before = prep.backbone.model.state_dict()              # the packaged weights the run started from
    after = _backbone_tensors(folder)
    assert set(after) == set(before)
    floating = [key for key, value in before.items() if value.is_floating_point()]
    unchanged = [key for key in floating if torch.equal(before[key], after[key])]
    assert floating and not unchanged, f"finetuning left {unchanged} as they were"


def test_finetune_keeps_the_frozen_resnet_stages_fixed_and_trains_layer4(tmp_path):
    """SSGRL's finetune recipe freezes a ResNet's stem and layer1-3 (weights and BatchNorm statistics):
    after a training epoch those are bit-identical to the starting weights, and every layer4 tensor
    has changed."""
    import timm
    import torch

    model = timm.create_model("resnet10t", pretrained=False, num_classes=0, global_pool="")
    torch.save(model.state_dict(), tmp_path / "resnet10t.pth")
    spec = smoke_spec("ssgrl", protocol="finetune", epochs=1, batch_size=16, backbone="resnet10t",
                      backbone_weights=str(tmp_path / "resnet10t.pth"))
    folder = run_one(spec, tmp_path / "out", keep_checkpoints=True)
    assert folder.finished
    before, after = model.state_dict(), _backbone_tensors(folder)
    assert set(after) == set(before)
    frozen = [key for key in before if not key.startswith("layer4.")]
    layer4 = [key for key, value in before.items() if key.startswith("layer4.") and value.is_floating_point()]
    assert frozen and layer4
    assert [key for key in frozen if not torch.equal(before[key], after[key])] == []
    assert [key for key in layer4 if torch.equal(before[key], after[key])] == []


def test_kill_between_training_and_evaluation_still_evaluates_that_epoch(trained, tmp_path, monkeypatch):
    """A run stopped after training its last epoch but before evaluating it must, when resumed,
    evaluate that epoch (mmengine's own checkpoint hook would have saved it as finished)."""
    from benchmark.engine.runner import MethodHook

    spec = smoke_spec(epochs=2)
    whole = trained(spec)

    class Stop(Exception):
        pass

    def stop_before_last_evaluation(self, runner):
        if runner.epoch == spec.epochs:       # every after_train_epoch hook has run
            raise Stop

    monkeypatch.setattr(MethodHook, "before_val_epoch", stop_before_last_evaluation, raising=False)
    with pytest.raises(Stop):
        run_one(spec, tmp_path / "cut")
    monkeypatch.undo()
    resumed = run_one(spec, tmp_path / "cut")
    assert records_by_epoch(resumed, "eval") == records_by_epoch(whole, "eval")
    assert sorted(records_by_epoch(resumed, "eval")) == [1, 2]


def test_a_finished_run_leaves_no_data_behind_in_the_process(tmp_path):
    """The runner, loaders and hooks form reference cycles that hold the run's (fp32) feature maps;
    run_one collects them, so a worker's memory stays flat over a grid."""
    import gc

    from benchmark.engine.data import EvalSet, FeatureSource, TrainSet

    run_one(smoke_spec("hst", epochs=1), tmp_path)
    alive = [type(o).__name__ for o in gc.get_objects() if isinstance(o, (TrainSet, EvalSet, FeatureSource))]
    assert alive == []
