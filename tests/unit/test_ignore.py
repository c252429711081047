"""IGNORE (spec wave 3, section 4): the masked input (X9, both cam_norm rules), the loss after and during
the warm-up (X10, X11), the threshold updates (X12), the edge rules of spec 4.7 and the method's two
protocols on toy inputs (no training run)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmark.contract.method import Batch, TaskSpec, TrainContext
from benchmark.core.errors import UserError
from methods.ignore import Ignore, IgnoreConfig, warm_up_epochs
from methods.modules import ignore as ign

# X10's inputs
LOGITS = torch.tensor([[3.0, 1.0, -1.0], [0.5, 2.0, 1.0]])
MASK_LOGITS = torch.tensor([[2.8, -1.0, -1.2], [0.5, 2.1, 0.9]])
STRONG = torch.tensor([[2.0, 1.0, -2.0], [0.0, 2.0, 1.0]])
TARGETS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
OBSERVED = TARGETS > 0.5            # single positive: only the positives are observed
WEIGHTS = {"spbc_weight": 0.1, "ignore_weight": 1.0, "reg_weight": 0.5}


def _x9_cam() -> torch.Tensor:
    cam = torch.zeros(2, 2, 2, 2)
    cam[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 10.0]])
    cam[1, 1] = torch.tensor([[4.0, 3.0], [2.0, 1.0]])
    return cam


X9_TARGETS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])


def test_x9_batch_rule_normalises_across_the_batch_per_pixel_and_blanks_image_1():
    cam = _x9_cam()
    norm = ign.normalise_cams(torch.stack([cam[0, 0], cam[1, 1]]), "batch")
    assert torch.allclose(norm[0], torch.tensor([[0.0, 0.0], [0.3333333, 0.9]]), atol=5e-8)
    assert torch.allclose(norm[1], torch.tensor([[0.75, 0.3333333], [0.0, 0.0]]), atol=5e-8)
    for size in (None, (2, 2)):           # CAM and image both 2 x 2: the bilinear resize is the identity
        mask = ign.cam_mask(cam, X9_TARGETS, X9_TARGETS > 0.5, 0.8, "batch", size)
        assert mask.shape == (2, 1, 2, 2)
        assert mask[0, 0].tolist() == [[0.0, 0.0], [0.0, 1.0]]
        assert mask[1, 0].tolist() == [[0.0, 0.0], [0.0, 0.0]]       # blanked although its CAM peaks at (0, 0)


def test_x9_spatial_rule_keeps_each_images_own_peak():
    mask = ign.cam_mask(_x9_cam(), X9_TARGETS, X9_TARGETS > 0.5, 0.8, "spatial", (2, 2))
    assert mask[0, 0].tolist() == [[0.0, 0.0], [0.0, 1.0]]
    assert mask[1, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    flat = ign.normalise_cams(torch.full((1, 2, 2), 3.0), "spatial")
    assert flat.tolist() == [[[0.0, 0.0], [0.0, 0.0]]]               # a constant map keeps nothing, no NaN


def test_mask_edge_rules_one_positive_blanked_rows_without_positive_and_several_positives():
    cam = _x9_cam()
    one = torch.tensor([[1.0, 0.0], [0.0, 0.0]])                    # one positive in the batch (P52)
    mask = ign.cam_mask(cam, one, one > 0.5, 0.8, "batch")
    assert mask[0].sum() == 0 and mask[1].eq(1).all()                # (S - S) / S = 0; row 1 unmasked
    both = torch.tensor([[1.0, 1.0], [0.0, 1.0]])                    # random protocol: row 0 has two
    observed = torch.tensor([[True, True], [True, True]])
    cam[0, 1] = torch.tensor([[9.0, 0.0], [0.0, 0.0]])
    mask = ign.cam_mask(cam, both * observed, observed, 0.8, "spatial")
    assert mask[0, 0].tolist() == [[1.0, 0.0], [0.0, 1.0]]           # union of its two positives' masks
    none = torch.zeros(2, 2)
    assert ign.cam_mask(cam, none, torch.ones(2, 2, dtype=torch.bool), 0.8, "batch", (4, 4)).eq(1).all()
    up = ign.cam_mask(cam[:1, :1], torch.ones(1, 1), torch.ones(1, 1, dtype=torch.bool), 0.8, "spatial", (4, 4))
    assert up.shape == (1, 1, 4, 4) and up[0, 0, 3, 3] == 1 and up[0, 0, 0, 0] == 0


def test_x10_loss_at_epoch_5_rejects_only_the_large_gap_large_logit_unknown():
    gap = (LOGITS - MASK_LOGITS).abs()
    reject = ign.rejected(gap, LOGITS, torch.tensor(0.5), torch.tensor([0.0, 0.5, 0.0]), OBSERVED)
    assert reject.tolist() == [[False, True, False], [False, False, False]]
    terms = ign.ignore_loss(LOGITS, TARGETS, OBSERVED, reject, logits_strong=STRONG, **WEIGHTS)
    assert terms["loss_spbc"].item() == pytest.approx(0.1 * 0.1809124, abs=5e-8)
    assert terms["loss_ignore"].item() == pytest.approx(0.6774104, abs=5e-7)
    assert terms["loss_reg"].item() == pytest.approx(0.5 * 0.375, abs=5e-8)
    assert sum(terms.values()).item() == pytest.approx(0.8830017, abs=5e-7)


def test_x11_loss_in_the_last_warm_up_epoch_keeps_every_entry():
    ctx = TrainContext(epoch=2, max_epochs=25)                       # official epoch 3 of 25
    assert warm_up_epochs(3, ctx.max_epochs, 25) == 3 and not ctx.epoch + 1 > 3
    terms = ign.ignore_loss(LOGITS, TARGETS, OBSERVED, torch.zeros(2, 3, dtype=torch.bool), logits_strong=STRONG,
                            **WEIGHTS)
    assert terms["loss_ignore"].item() == pytest.approx(0.7833794, abs=5e-7)
    assert sum(terms.values()).item() == pytest.approx(0.9889706, abs=5e-7)


def test_x12_threshold_updates_over_two_steps_and_the_bias_correction():
    gap_t, avg_t = torch.zeros(()), torch.zeros(3)
    pos = ign.positives(TARGETS, OBSERVED)
    assert ign.update_gap_threshold(gap_t, (LOGITS - MASK_LOGITS).abs(), pos, 0.999)
    ign.update_avg_threshold(avg_t, LOGITS, 0.999)
    assert gap_t.item() == pytest.approx(1.5e-4, abs=5e-10)
    assert torch.allclose(avg_t, torch.tensor([1.75e-3, 1.5e-3, 0.0]), atol=5e-10)
    assert ign.corrected(gap_t, 0.999, 1, True).item() == pytest.approx(0.15, rel=1e-4)   # the batch's own mean
    assert ign.update_gap_threshold(gap_t, (STRONG - LOGITS).abs(), pos, 0.999)
    ign.update_avg_threshold(avg_t, STRONG, 0.999)
    assert gap_t.item() == pytest.approx(6.4985e-4, abs=5e-10)
    assert torch.allclose(avg_t, torch.tensor([2.74825e-3, 2.9985e-3, -5e-4]), atol=5e-10)
    assert ign.corrected(gap_t, 0.999, 2, False) is gap_t


def test_batch_without_positive_skips_g_and_loss_spbc_and_observed_negatives_are_never_rejected():
    gap_t = torch.tensor(0.25)
    none = torch.zeros(2, 3, dtype=torch.bool)
    assert not ign.update_gap_threshold(gap_t, torch.ones(2, 3), none, 0.999) and gap_t.item() == 0.25
    terms = ign.ignore_loss(LOGITS, torch.zeros(2, 3), none, none, logits_strong=None, **WEIGHTS)
    assert set(terms) == {"loss_ignore"}                             # no positive: no spbc; no strong view: no reg
    observed = torch.ones(2, 3, dtype=torch.bool)                    # random protocol: every entry known
    assert not ign.rejected(torch.full((2, 3), 9.0), LOGITS, torch.tensor(0.0), torch.zeros(3), observed).any()
    # switches: weak view (strong_aug off), every entry (ignore off), no reg, no spbc
    reject = torch.tensor([[False, True, False], [False, False, False]])
    weak = ign.ignore_loss(LOGITS, TARGETS, OBSERVED, reject, logits_strong=STRONG, strong_aug=False, use_reg=False,
                           **{**WEIGHTS, "spbc_weight": 0.0})
    assert set(weak) == {"loss_ignore"}
    every = ign.ignore_loss(LOGITS, TARGETS, OBSERVED, reject, logits_strong=STRONG, use_ignore=False, **WEIGHTS)
    assert every["loss_ignore"].item() == pytest.approx(0.7833794, abs=5e-7)       # = X11's mean over 6
    assert weak["loss_ignore"].item() != pytest.approx(every["loss_ignore"].item(), abs=1e-3)


def _task(protocol: str, n: int = 8) -> TaskSpec:
    return TaskSpec(num_classes=3, class_names=["a", "b", "c"], num_train=n, feature_dim=8, feature_size=(4, 4),
                    protocol=protocol)


def _batch(inputs: torch.Tensor) -> Batch:
    targets = torch.zeros(inputs.shape[0], 3)
    targets[torch.arange(inputs.shape[0]), torch.arange(inputs.shape[0]) % 3] = 1.0
    return Batch(inputs, targets, targets > 0.5, torch.arange(inputs.shape[0]))


def test_frozen_step_updates_thresholds_rejects_after_warm_up_and_has_no_reg():
    torch.manual_seed(0)
    method = Ignore(_task("frozen"), IgnoreConfig())
    batch = _batch(torch.randn(6, 8, 4, 4))
    ctx = TrainContext(epoch=0, max_epochs=3)                        # warm_up: max(1, round(9 / 25)) = 1
    assert method.warm_up(ctx) == 1
    terms = method.compute_losses(batch, ctx)
    assert set(terms) == {"loss_spbc", "loss_ignore"} and all(torch.isfinite(v) for v in terms.values())
    assert method.gap_threshold.item() > 0 and method.avg_threshold.abs().sum() > 0
    assert int(method.gap_updates) == int(method.avg_updates) == 1
    assert not method.rejected_epoch.rows.any()                      # epoch 1 is the warm-up
    method.on_train_epoch_start(ctx)
    terms = method.compute_losses(batch, TrainContext(epoch=1, max_epochs=3))
    rows, rejected = method.recovered_labels()
    assert rows.tolist() == list(range(6)) and rejected.any() and not (rejected & batch.observed).any()
    sum(terms.values()).backward()
    assert method.head.cam.weight.grad.abs().sum() > 0
    assert method.param_groups(1e-3, 0.0) is None                   # frozen: one group


def test_finetune_step_runs_three_train_mode_forwards_on_two_views_and_head_lr_x10():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.BatchNorm2d(8))
    method = Ignore(_task("finetune"), IgnoreConfig(), backbone=backbone).train()
    batch = _batch(torch.randn(6, 2, 3, 16, 16))
    terms = method.compute_losses(batch, TrainContext(epoch=0, max_epochs=3))
    assert set(terms) == {"loss_spbc", "loss_ignore", "loss_reg"}
    assert int(backbone[1].num_batches_tracked) == 3                 # weak, strong, masked (P55)
    sum(terms.values()).backward()
    assert backbone[0].weight.grad.abs().sum() > 0
    groups = method.param_groups(1e-5, 0.0)
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(1e-4)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in method.head.parameters()}
    with pytest.raises(ValueError, match="two views"):
        method.compute_losses(_batch(torch.randn(6, 3, 16, 16)), TrainContext())
    method.eval()
    assert method.predict_scores(torch.randn(2, 3, 16, 16)).shape == (2, 3)


def test_config_checks_and_warm_up_rescaling():
    assert [warm_up_epochs(3, t, 25) for t in (1, 3, 8, 25, 50)] == [1, 1, 1, 3, 6]
    assert warm_up_epochs(3, 3, 0) == 3 and warm_up_epochs(0, 3, 25) == 0
    assert Ignore.augmentation(IgnoreConfig()) == "weak_strong"
    for bad in ({"cam_norm": "image"}, {"gap_lambda": 1.0}, {"warm_up": -1}, {"cam_threshold": 1.5},
                {"spbc_weight": -0.1}):
        with pytest.raises(UserError):
            Ignore.make_config(bad)
