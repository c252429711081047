"""ROLE's two-stage ``linear_init`` through the engine (finetune protocol): during the linear stage the
backbone stays as loaded (weights and BatchNorm statistics) while the head and the estimator train, and
a run cut in stage 1 and resumed into stage 2 equals the uninterrupted run."""
from __future__ import annotations

import torch


def _method_state(folder) -> dict:
    saved = torch.load(folder.last_checkpoint(), weights_only=False)["state_dict"]
    return {key.removeprefix("method."): value for key, value in saved.items()}


def _starting_method(spec):
    """The method as the engine builds it before training (same seed, same packaged backbone)."""
    from benchmark.core.registry import get_method
    from benchmark.engine.prepared_run import PreparedRun, pick_device
    from benchmark.engine.seeding import seed_everything

    cls = get_method(spec.method)
    prep = PreparedRun(spec, pick_device())
    cfg = cls.make_config(dict(spec.method_config), profile=spec.profile)
    task = prep.task_spec(cls.card.requires)
    seed_everything(spec.seed)
    return cls(task, cfg, backbone=prep.backbone)


def test_role_linear_init_freezes_the_backbone_in_stage_1_and_resumes_into_stage_2(tmp_path):
    from benchmark.core.registry import discover
    from methods.modules import spml
    from tests.conftest import cut_and_resume, records_by_epoch, smoke_spec

    discover()
    # 2 epochs: epoch 1 is the linear stage, epoch 2 end to end; the cut after epoch 1 leaves a stage-1
    # checkpoint, so the resumed run crosses the boundary (hands theta over, unfreezes the backbone) itself.
    spec = smoke_spec("role", protocol="finetune", epochs=2, mask_protocol="single_positive", image_size=32,
                      method_config=(("stages", "linear_init"), ("linear_init_epochs", 1)))
    start = _starting_method(spec).state_dict()

    def stage_1(cut):
        state = _method_state(cut)
        assert int(state["training_stage"]) == 1
        backbone = [k for k in start if k.startswith("backbone.")]
        assert backbone and [k for k in backbone if not torch.equal(state[k], start[k])] == []
        assert not torch.equal(state["head.weight"], start["head.weight"])
        theta, observed = state["label_logits"], state["observed_mask"]
        assert observed.any() and not torch.equal(theta[~observed], start["label_logits"][~observed])
        assert not torch.allclose(theta[observed], torch.tensor(spml.LOGIT_POS))    # observed positives moved too

    whole, resumed = cut_and_resume(spec, tmp_path, cut_after=1, before_resume=stage_1)
    for kind in ("eval", "train", "recovery"):
        assert records_by_epoch(resumed, kind) == records_by_epoch(whole, kind)
    assert sorted(records_by_epoch(whole, "eval")) == [1, 2]
