"""Engine behaviour: determinism, checkpoint resume (the torch >= 2.6 fix), run folders."""
from __future__ import annotations

import json

import pytest

from benchmark.core.registry import discover
from benchmark.engine.lifecycle import run_one
from tests.conftest import cut_and_resume, records_by_epoch, smoke_spec

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


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path):
    whole, resumed = cut_and_resume(smoke_spec(epochs=3, lr_step=2), tmp_path, cut_after=2)
    assert resumed.done
    assert records_by_epoch(resumed, "eval") == records_by_epoch(whole, "eval")
    assert records_by_epoch(resumed, "train") == records_by_epoch(whole, "train")
    assert not list(resumed.work_dir.glob("*.pth")), "checkpoints are removed once a run is done"


def test_finished_run_is_skipped(tmp_path):
    spec = smoke_spec(epochs=1)
    folder = run_one(spec, tmp_path)
    before = (folder.path / "metrics.jsonl").read_text()
    again = run_one(spec, tmp_path)
    assert (again.path / "metrics.jsonl").read_text() == before


def test_run_ids_differ_when_anything_differs():
    assert smoke_spec(ratio=0.1).run_id != smoke_spec(ratio=0.2).run_id
    assert smoke_spec(seed=0).run_id != smoke_spec(seed=1).run_id
    assert smoke_spec(method_config=(("loss", "hcp"),)).run_id != smoke_spec().run_id
    assert smoke_spec().run_id == smoke_spec().run_id


def test_paper_profile_uses_the_methods_own_recipe(tmp_path):
    """CLSL's AdamW + per-iteration OneCycle replaces the profile recipe in the paper profile only."""
    import torch

    from benchmark.core.registry import get_method
    from benchmark.engine.runner import build_optim_wrapper

    cls = get_method("clsl")
    cpu = smoke_spec("clsl")
    paper = smoke_spec("clsl", profile="paper")
    from benchmark.contract.method import TaskSpec

    task = TaskSpec(num_classes=3, class_names=["a", "b", "c"], num_train=4, feature_dim=16, feature_size=(2, 2),
                    protocol="frozen", label_embeddings=torch.randn(3, 8))
    method = cls(task, cls.make_config({"width": 16, "heads": 2, "ffn_dim": 16, "att_dim": 8}))
    assert isinstance(build_optim_wrapper(method, paper, torch.device("cpu")).optimizer, torch.optim.AdamW)
    assert isinstance(build_optim_wrapper(method, cpu, torch.device("cpu")).optimizer, torch.optim.Adam)
    assert not isinstance(build_optim_wrapper(method, cpu, torch.device("cpu")).optimizer, torch.optim.AdamW)


def test_finetune_protocol_trains_the_backbone_on_images(tmp_path):
    """finetune: images with augmentation go through the backbone, which is trained."""
    import torch

    from benchmark.engine.lifecycle import PreparedRun, pick_device

    spec = smoke_spec(protocol="finetune", epochs=1, batch_size=16)
    folder = run_one(spec, tmp_path)
    assert folder.done
    evals = folder.records("eval")
    assert len(evals) == 1 and 0.0 <= evals[0]["test/mAP"] <= 100.0
    prep = PreparedRun(spec, pick_device())
    batch = prep.train_set().__getitems__([0, 1])
    assert batch["inputs"].shape == (2, 3, spec.image_size, spec.image_size)
    assert any(p.requires_grad for p in prep.backbone.parameters())
    assert torch.isfinite(batch["inputs"]).all()


def test_line_cut_by_a_kill_does_not_swallow_the_next_record(tmp_path):
    """A SIGKILL mid-write leaves a line without its newline; the resumed run's record must survive."""
    from benchmark.core.run_folder import RunFolder

    folder = RunFolder(tmp_path, "run")
    folder.path.mkdir()
    folder.log({"kind": "eval", "epoch": 1, "test/mAP": 50.0})
    with open(folder.path / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 2, "kind": "eval", "test/mA')           # cut here
    folder.log({"kind": "eval", "epoch": 2, "test/mAP": 61.0})
    assert [(r["epoch"], r["test/mAP"]) for r in folder.records("eval")] == [(1, 50.0), (2, 61.0)]


def test_kill_between_training_and_evaluation_still_evaluates_that_epoch(tmp_path, monkeypatch):
    """A run stopped after training its last epoch but before evaluating it must, when resumed,
    evaluate that epoch (mmengine's own checkpoint hook would have saved it as finished)."""
    from benchmark.engine.runner import MethodHook

    spec = smoke_spec(epochs=2)
    whole = run_one(spec, tmp_path / "whole")

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
