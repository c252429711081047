"""SCPNet through the engine on the tiny random CLIP (smoke profile): the random protocol on cached trunk
maps (frozen) and the single-positive protocol with the three-view pipeline and the trainable CLIP trunk
(finetune). A run cut after an epoch and resumed from its checkpoint equals the uninterrupted run; the
checkpoint holds a non-empty pseudo-label memory; in finetune the trunk trains and the text tower not."""
from __future__ import annotations

import pytest
import torch

from benchmark.core.registry import discover
from tests.conftest import cut_and_resume, records_by_epoch, smoke_spec

discover()


@pytest.mark.parametrize("protocol, mask_protocol", [("frozen", "random"), ("finetune", "single_positive")])
def test_scpnet_resumes_bit_identically(protocol, mask_protocol, tmp_path):
    size = {"image_size": 32} if protocol == "finetune" else {}          # 1 x 1 maps: the trunk is the cost
    # one torch thread: on a loaded 2-core machine two threads make these small convolutions 3-4 x slower
    spec = smoke_spec("scpnet", epochs=2, mask_protocol=mask_protocol, protocol=protocol, batch_size=72, threads=1,
                      **size)
    assert (spec.backbone, spec.clip_arch, spec.clip_weights) == ("clip:tiny-RN", "tiny-RN", None)
    seen = {}

    def inspect(cut):
        saved = torch.load(cut.last_checkpoint(), weights_only=False)["state_dict"]
        seen.update({k[len("method."):]: v for k, v in saved.items() if k.startswith("method.")})

    whole, resumed = cut_and_resume(spec, tmp_path, cut_after=1, before_resume=inspect)
    for kind in ("eval", "train", "recovery"):
        assert records_by_epoch(resumed, kind) == records_by_epoch(whole, kind)
    assert seen["selected.rows"].any(dim=1).sum() > 0 and seen["classwise_acc"].shape == (20,)
    train = records_by_epoch(whole, "train")
    assert all(r["loss_splc"] > 0 and r["loss_consistency"] >= 0 for r in train.values())
    if protocol == "finetune":
        from benchmark.engine.clip import tiny_clip

        clip = tiny_clip().state_dict()
        assert not torch.equal(seen["backbone.stem.0.weight"], clip["visual.conv1.weight"])          # trunk trained
        assert torch.equal(seen["text.transformer.resblocks.0.attn.in_proj_weight"],
                           clip["transformer.resblocks.0.attn.in_proj_weight"])                       # text frozen
