"""AEVLP and VLPL through the engine on the tiny random ViT CLIP (smoke profile): under the random and the
single-positive protocols a run cut after an epoch and resumed from its checkpoint equals the
uninterrupted run (AEVLP with the seeded flip draws), pseudo-labels are made and only the classifier
trains; the CLIP view cache is built once, reused by content and rebuilt when corrupt."""
from __future__ import annotations

import logging

import pytest
import torch

from benchmark.core.registry import discover
from tests.conftest import cut_and_resume, initial_state, records_by_epoch, smoke_spec

discover()

CASES = [("aevlp", "random", (("clip_flips", True),)), ("aevlp", "single_positive", ()),
         ("vlpl", "random", ()), ("vlpl", "single_positive", ())]


@pytest.mark.parametrize("method, mask_protocol, config", CASES)
def test_resumes_bit_identically_with_pseudo_labels(method, mask_protocol, config, tmp_path):
    spec = smoke_spec(method, epochs=2, mask_protocol=mask_protocol, method_config=config)
    assert (spec.clip_arch, spec.clip_weights, spec.protocol) == ("tiny-ViT", None, "frozen")
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
    train = records_by_epoch(whole, "train")
    assert all(r["diag/pseudo_labels"] > 0 for r in train.values())
    keys = {"loss_gpr", "loss_epr"} if method == "aevlp" else {"loss_pos", "loss_em", "loss_pl"}
    assert keys <= set(train[1])
    assert sorted(k for k, moved in changed.items() if moved) == ["head.bias", "head.weight", "pseudo_epoch.rows",
                                                                  "seen_epoch.rows"]


def test_view_cache_is_built_once_reused_by_content_and_rebuilt_when_corrupt(tmp_path, monkeypatch, caplog):
    from benchmark.engine import clip_scores
    from benchmark.engine.prepared_run import PreparedRun
    from datasets import side_info

    monkeypatch.setattr(side_info, "cache_dir", lambda *parts: (tmp_path / "/".join(parts)).mkdir(
        parents=True, exist_ok=True) or tmp_path.joinpath(*parts))
    calls = []

    def encode(paths, clip, rule, device):      # stands in for the CLIP pass (tests/unit/test_clip_scores.py)
        calls.append(rule)
        gen = torch.Generator().manual_seed(len(calls))
        return torch.randn(len(paths), clip_scores.num_views(rule), 16, generator=gen).numpy()

    monkeypatch.setattr(clip_scores, "encode_views", encode)
    spec = smoke_spec("aevlp", epochs=1)
    prep = PreparedRun(spec, torch.device("cpu"))
    task = prep.task_spec(frozenset({"clip", "clip_views", "expected_num_pos"}))
    assert task.clip_views.shape == (len(prep.train_rows), 17, 16) and task.clip_views.dtype == torch.float16
    full = prep.clip_views()
    assert torch.equal(task.clip_views, full[torch.as_tensor(prep.train_rows)]) and len(calls) == 1
    assert calls[0] == {"grid": 4, "pre_resize": None, "norm": "imagenet", "flips": False}
    other = PreparedRun(smoke_spec("aevlp", epochs=1, seed=3), torch.device("cpu"))   # another seed: the same cache
    assert torch.equal(other.clip_views(), full) and len(calls) == 1
    (npy,) = (tmp_path / "clip_views").glob("*.npy")
    raw = bytearray(npy.read_bytes())
    raw[len(raw) // 2] ^= 0x55
    npy.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING):
        again = PreparedRun(spec, torch.device("cpu")).clip_views()
    assert len(calls) == 2 and not torch.equal(again, full) and "failed its checksum" in caplog.text
    assert torch.equal(PreparedRun(spec, torch.device("cpu")).clip_views(), again) and len(calls) == 2
    vlpl = PreparedRun(smoke_spec("vlpl", epochs=1), torch.device("cpu")).clip_views()
    assert vlpl.shape == (len(full), 1, 16) and calls[2] == {"grid": 0, "pre_resize": 448, "norm": "imagenet",
                                                             "flips": False}
