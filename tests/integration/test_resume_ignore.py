"""IGNORE through the engine: a frozen smoke run cut after an epoch past the warm-up and resumed from its
checkpoint equals the uninterrupted run (the thresholds G and A are buffers the checkpoint carries), and a
finetune smoke run trains on the two-view pipeline (strong view, masked image, loss_reg)."""
from __future__ import annotations

import math

import torch

from benchmark.core.registry import discover
from tests.conftest import cut_and_resume, records_by_epoch, smoke_spec

discover()


def test_ignore_resume_after_rejection_started_matches_uninterrupted_run(tmp_path):
    # 3 smoke epochs: warm-up max(1, round(3 x 3 / 25)) = 1 epoch, so epoch 2 rejects; the resumed third
    # epoch starts from the thresholds of 2 epochs of EMA steps, which only the checkpoint carries.
    spec = smoke_spec("ignore", epochs=3, mask_protocol="single_positive")

    def thresholds_saved(cut):
        state = {k.removeprefix("method."): v for k, v in
                 torch.load(cut.last_checkpoint(), weights_only=False)["state_dict"].items()}
        assert state["gap_threshold"].item() > 0 and state["avg_threshold"].abs().sum() > 0
        assert int(state["avg_updates"]) > 0 and int(state["gap_updates"]) == int(state["avg_updates"])

    whole, resumed = cut_and_resume(spec, tmp_path, cut_after=2, before_resume=thresholds_saved)
    for kind in ("eval", "train", "recovery"):
        assert records_by_epoch(resumed, kind) == records_by_epoch(whole, kind)
    train = records_by_epoch(whole, "train")
    assert train[1]["diag/rejected"] == 0 and train[2]["diag/rejected"] > 0 and train[3]["diag/rejected"] > 0
    assert train[3]["diag/gap_threshold"] > train[2]["diag/gap_threshold"] > 0
    assert "loss_spbc" in train[3] and "loss_reg" not in train[3]              # frozen: no strong view
    assert 3 in records_by_epoch(whole, "recovery")


def test_ignore_finetune_trains_on_two_views_with_the_consistency_term(tmp_path):
    from benchmark.engine.lifecycle import run_one

    spec = smoke_spec("ignore", protocol="finetune", epochs=1, batch_size=16, mask_protocol="single_positive")
    folder = run_one(spec, tmp_path, threads=1)      # 9 steps of 3 forwards; one thread is the fast one on 2 cores
    assert folder.finished
    train = records_by_epoch(folder, "train")[1]
    for key in ("loss", "loss_spbc", "loss_ignore", "loss_reg"):
        assert math.isfinite(train[key]), key
    assert train["loss_reg"] > 0 and train["diag/gap_threshold"] > 0
    assert math.isfinite(records_by_epoch(folder, "eval")[1]["test/mAP"])
