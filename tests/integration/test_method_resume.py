"""Method state through the engine: each method's smoke run cut after an epoch and resumed from its
checkpoint equals the uninterrupted run, once the state a later epoch reads (a prior, prototypes, a
memory, an EMA, corrections, an estimator) exists. Moved here from the methods' unit files, which
test the methods' functions without the engine."""
from __future__ import annotations

import json
import math

import pytest
import torch


def test_csl_resume_after_the_prior_exists_matches_uninterrupted_run(tmp_path):
    from benchmark.core.registry import discover
    from tests.conftest import cut_and_resume, records_by_epoch, smoke_spec

    discover()
    # The temporary-model prior is estimated at the start of epoch 0 only: the resumed third epoch
    # must read it from the checkpoint.
    spec = smoke_spec("csl", epochs=3, method_config=(("prior_threshold", 0.2),))
    whole, resumed = cut_and_resume(spec, tmp_path, cut_after=2)
    for kind in ("eval", "train", "recovery"):
        assert records_by_epoch(resumed, kind) == records_by_epoch(whole, kind)
    last = records_by_epoch(whole, "train")[3]
    assert last["diag/ignored_likelihood"] > 0 and "diag/prior_classes" in last
    assert 3 in records_by_epoch(whole, "recovery")


def test_clsl_resume_from_checkpoint_matches_uninterrupted_run_with_ema(tmp_path):
    from benchmark.core.registry import discover
    from tests.conftest import cut_and_resume, records_by_epoch, smoke_spec

    discover()
    spec = smoke_spec("clsl", epochs=2, train={"schedule": "step", "step_size": 1})

    def has_ema(cut):
        checkpoint = torch.load(cut.last_checkpoint(), weights_only=False)
        assert any(key.startswith("method.ema.shadow.net.") for key in checkpoint["state_dict"])

    whole, resumed = cut_and_resume(spec, tmp_path, cut_after=1, before_resume=has_ema)
    for kind in ("eval", "train", "recovery"):
        assert records_by_epoch(resumed, kind) == records_by_epoch(whole, kind)
    assert records_by_epoch(whole, "train")[2]["diag/ema_updates"] == 2 * records_by_epoch(whole, "train")[1]["diag/ema_updates"]


@pytest.mark.parametrize("name", ["dsrb", "sarb"])
def test_sarb_dsrb_resume_after_prototypes_exist_matches_uninterrupted_run(name, tmp_path):
    from benchmark.core.registry import discover
    from tests.conftest import cut_and_resume, records_by_epoch, smoke_spec

    discover()
    # 3 smoke epochs: blending and prototypes from epoch 1; interval 20 (-> 3) means no refresh at
    # epoch 2, so the resumed third epoch reads the prototypes and alpha / beta from the checkpoint.
    spec = smoke_spec(name, epochs=3, method_config=(("prototype_interval", 20),))
    whole, resumed = cut_and_resume(spec, tmp_path, cut_after=2)
    for kind in ("eval", "train"):
        assert records_by_epoch(resumed, kind) == records_by_epoch(whole, kind)
    last = records_by_epoch(whole, "train")[3]
    assert last["diag/blended_prototype"] > 0 and last["diag/blended_known"] == 0 and "loss_blend_prototype" in last


def test_hst_resume_after_prototypes_exist_matches_uninterrupted_run(tmp_path):
    from benchmark.core.registry import discover
    from tests.conftest import cut_and_resume, records_by_epoch, smoke_spec

    discover()
    # 3 smoke epochs: pseudo-labels and prototypes from epoch 1; no refresh at epoch 2, so the
    # resumed third epoch must read the prototypes from the checkpoint.
    spec = smoke_spec("hst", epochs=3, method_config=(("recompute_prototypes", False),))
    whole, resumed = cut_and_resume(spec, tmp_path, cut_after=2)
    for kind in ("eval", "train", "recovery"):
        assert records_by_epoch(resumed, kind) == records_by_epoch(whole, kind)
    last = records_by_epoch(whole, "train")[3]
    assert last["diag/prototype_classes"] > 0 and "loss_proto" in last


def checkpoint_state(folder) -> dict:
    """The method's state dict in a run folder's last checkpoint (without the engine's "method." prefix)."""
    saved = torch.load(folder.last_checkpoint(), weights_only=False)["state_dict"]
    return {key.removeprefix("method."): value for key, value in saved.items()}


def test_ll_cp_resume_after_corrections_exist_matches_uninterrupted_run(tmp_path):
    from benchmark.core.registry import discover
    from tests.conftest import cut_and_resume, records_by_epoch, smoke_spec

    discover()
    spec = smoke_spec("ll_cp", epochs=3, mask_protocol="single_positive")

    def has_corrections(cut):
        state = checkpoint_state(cut)
        assert state["corrected.rows"].any()

    whole, resumed = cut_and_resume(spec, tmp_path, cut_after=2, before_resume=has_corrections)
    for kind in ("eval", "train", "recovery"):
        assert records_by_epoch(resumed, kind) == records_by_epoch(whole, kind)
    train = records_by_epoch(whole, "train")
    assert train[1]["diag/corrected"] == 0 and train[3]["diag/corrected"] > train[2]["diag/corrected"] > 0
    assert math.isfinite(train[3]["loss"])


def test_single_positive_run_records_the_privileged_k_and_recovers_labels(tmp_path):
    from benchmark.core.registry import discover
    from benchmark.engine.lifecycle import run_one
    from tests.conftest import smoke_spec

    discover()
    folder = run_one(smoke_spec("epr", epochs=1, mask_protocol="single_positive"), tmp_path)
    spec = json.loads((folder.path / "spec.json").read_text())
    assert "expected_num_pos" in spec["privileged"] and spec["privileged"]["expected_num_pos"] > 1.0


def test_role_resume_after_estimator_exists_matches_uninterrupted_run(tmp_path):
    from benchmark.core.registry import discover
    from tests.conftest import cut_and_resume, records_by_epoch, smoke_spec

    discover()
    spec = smoke_spec("role", epochs=2, mask_protocol="single_positive")

    def estimator_saved(cut):
        state = checkpoint_state(cut)
        assert bool(state["estimator_initialised"]) and state["observed_mask"].any()
        assert state["label_logits"].max() > 4.0

    whole, resumed = cut_and_resume(spec, tmp_path, cut_after=1, before_resume=estimator_saved)
    for kind in ("eval", "train", "recovery"):
        assert records_by_epoch(resumed, kind) == records_by_epoch(whole, kind)
    assert records_by_epoch(whole, "recovery")[2]["pseudo_positives"] >= 0


def test_sst_resume_after_the_memory_exists_matches_uninterrupted_run(tmp_path):
    from benchmark.core.registry import discover
    from tests.conftest import cut_and_resume, records_by_epoch, smoke_spec

    discover()
    # 3 smoke epochs, E_g = 1: the resumed third epoch's inter pseudo-labels read the memory
    # filled in epochs 0-1, which only the checkpoint carries. A low theta makes pseudo-labels fire.
    spec = smoke_spec("sst", epochs=3, method_config=(("theta_floor", 0.3), ("theta_start", 0.6)))
    whole, resumed = cut_and_resume(spec, tmp_path, cut_after=2)
    for kind in ("eval", "train", "recovery"):
        assert records_by_epoch(resumed, kind) == records_by_epoch(whole, kind)
    last = records_by_epoch(whole, "train")[3]
    assert last["diag/pseudo_inter"] > 0 and "loss_bce_inter" in last
