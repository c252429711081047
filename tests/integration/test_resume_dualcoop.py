"""DualCoOp through the engine on the tiny random CLIP (smoke profile): under the random and the
single-positive protocols a run cut after an epoch and resumed from its checkpoint equals the
uninterrupted run, and training changes the prompt vectors and nothing else of the model."""
from __future__ import annotations

import pytest
import torch

from benchmark.core.registry import discover
from tests.conftest import cut_and_resume, initial_state, records_by_epoch, smoke_spec

discover()


@pytest.mark.parametrize("mask_protocol", ["random", "single_positive"])
def test_dualcoop_resumes_bit_identically_and_trains_only_the_prompts(mask_protocol, tmp_path):
    spec = smoke_spec("dualcoop", epochs=2, mask_protocol=mask_protocol)
    assert (spec.backbone, spec.clip_arch, spec.clip_weights) == ("clip:tiny-RN", "tiny-RN", None)
    initial = initial_state(spec)
    changed = {}

    def compare(cut):
        saved = torch.load(cut.last_checkpoint(), weights_only=False)["state_dict"]
        state = {k[len("method."):]: v for k, v in saved.items() if k.startswith("method.")}
        assert set(state) == set(initial)
        changed.update({k: not torch.equal(v, initial[k]) for k, v in state.items()})

    whole, resumed = cut_and_resume(spec, tmp_path, cut_after=1, before_resume=compare)
    for kind in ("eval", "train"):
        assert records_by_epoch(resumed, kind) == records_by_epoch(whole, kind)
    assert sorted(k for k, moved in changed.items() if moved) == ["prompts_neg.ctx", "prompts_pos.ctx"]
    assert any(k.startswith("text.transformer.") for k in changed)        # the frozen tower is in the state
    train = records_by_epoch(whole, "train")
    assert all(r["loss_asl_pair"] > 0 for r in train.values()) and train[2]["loss"] < train[1]["loss"]
