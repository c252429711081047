"""EM+APL through the engine: a smoke run with APL rounds, cut after an epoch that holds pseudo-labels
and resumed from its checkpoint, equals the uninterrupted run; a single-positive run pseudo-labels
and trains with the APL term."""
from __future__ import annotations

import math

import torch


def _state(folder) -> dict:
    saved = torch.load(folder.last_checkpoint(), weights_only=False)["state_dict"]
    return {key.removeprefix("method."): value for key, value in saved.items()}


def test_em_apl_resume_after_pseudo_labels_exist_matches_uninterrupted_run(tmp_path):
    from benchmark.core.registry import discover
    from tests.conftest import cut_and_resume, records_by_epoch, smoke_spec

    discover()
    # 4 epochs, T_w = 2 unscaled: rounds after epochs 2 and 3 (none after the last). Cut after epoch 2:
    # the resumed epoch 3 trains on the checkpoint's pseudo-labels and adds the second round to them.
    spec = smoke_spec("em_apl", epochs=4, method_config=(("warmup_epoch", 2), ("schedule_epochs", 0)))

    def has_pseudo_labels(cut):
        state = _state(cut)
        assert state["pl_selected.rows"].any() and int(state["apl_rounds"]) == 1
        assert (state["pl_value.rows"][state["pl_selected.rows"]] > 0).all()
        assert state["unknown_count"].sum() > 0

    whole, resumed = cut_and_resume(spec, tmp_path, cut_after=2, before_resume=has_pseudo_labels)
    for kind in ("eval", "train"):
        assert records_by_epoch(resumed, kind) == records_by_epoch(whole, kind)
    train = records_by_epoch(whole, "train")
    assert train[1]["diag/pseudo_labels"] == 0 and "loss_apl" not in train[1] and "loss_apl" not in train[2]
    assert train[3]["diag/pseudo_labels"] > train[2]["diag/pseudo_labels"] > 0
    assert train[3]["diag/apl_rounds"] == 2 and train[4]["diag/pseudo_labels_round"] == 0
    assert 0 < train[3]["diag/pseudo_label_mean"] < 0.5
    assert "loss_apl" in train[3] and "loss_neg" in train[3]       # random protocol: observed negatives


def test_em_apl_single_positive_run_pseudo_labels_and_trains(tmp_path):
    from benchmark.core.registry import discover
    from benchmark.engine.lifecycle import run_one
    from tests.conftest import records_by_epoch, smoke_spec

    discover()
    spec = smoke_spec("em_apl", epochs=3, mask_protocol="single_positive",
                      method_config=(("warmup_epoch", 1), ("schedule_epochs", 0)))
    folder = run_one(spec, tmp_path, keep_checkpoints=True)
    train = records_by_epoch(folder, "train")
    assert train[1]["diag/pseudo_labels"] > 0 and train[2]["diag/pseudo_labels"] > train[1]["diag/pseudo_labels"]
    assert "loss_apl" in train[2] and "loss_neg" not in train[2]      # single positive: no observed negative
    assert all(math.isfinite(r["loss"]) for r in train.values())
    state = _state(folder)
    # two rounds of floor(0.9 U_c / 2): with one positive per image, U_c = N - (positives of c)
    quota = torch.floor(0.9 * state["unknown_count"].double() / 2).long()
    assert torch.equal(state["pl_selected.rows"].sum(0), 2 * quota)
