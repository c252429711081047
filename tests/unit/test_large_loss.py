"""Large-loss rejection / correction (LL-R, LL-Ct, LL-Cp): fixtures W6, W7, W8, W10 of
specs/methods_wave2.md, the pitfall switches (P17 cp_mode, P18 cp_correct, P20 k_clamp), the
properties "only unknown entries are ever modified or corrected" and "k never exceeds the unknown
count", and exact resume once permanent corrections exist."""
from __future__ import annotations

import pytest
import torch

from benchmark.contract.method import Batch, TaskSpec, TrainContext
from methods.large_loss import LLR, LargeLossConfig, LLCp, LLCpConfig, LLCt
from methods.modules import large_loss as ll

# W6: label_vec [[1, 0, 0], [0, 0, 1]] (1 = observed positive, 0 = unobserved), delta 0.2, official epoch 2
W6_LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
W6_TARGETS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
W6_OBSERVED = W6_TARGETS > 0
TOL = 5e-8


def test_w6_losses_modified_and_correction_sets():
    rate = ll.clean_rate(1, 0.2)
    k = ll.num_modified(6, rate, 0.2, permanent=False)
    assert rate == pytest.approx(0.8) and k == 2
    assert ll.num_modified(6, rate, 0.2, permanent=True) == 2
    expected = {"LL-R": 0.5433775, "LL-Ct": 0.6304882, "LL-Cp": 0.6304882}
    for scheme, value in expected.items():
        sel = ll.large_loss(W6_LOGITS, W6_TARGETS, W6_OBSERVED, k, scheme)
        assert sel.loss.item() == pytest.approx(value, abs=TOL), scheme
        assert sel.modified.nonzero().tolist() == [[0, 2], [1, 1]]
        assert sel.corrected.nonzero().tolist() == [[0, 2], [1, 1]]              # BoostLU code (topk)
    strict = ll.large_loss(W6_LOGITS, W6_TARGETS, W6_OBSERVED, k, "LL-Cp", correct="strict")
    assert strict.corrected.nonzero().tolist() == [[1, 1]]                         # LL code (u > tau)
    assert ll.num_modified(6, ll.clean_rate(0, 0.2), 0.2, permanent=False) == 0    # first epoch
    first = ll.large_loss(W6_LOGITS, W6_TARGETS, W6_OBSERVED, 0, "LL-R")
    assert first.loss.item() == pytest.approx(1.2138216, abs=TOL) and not first.modified.any()


def test_w7_float_accumulation_of_the_clean_rate():
    assert 1 - ll.clean_rate(1, 0.002) == 0.0020000000000000018
    assert ll.num_modified(500, ll.clean_rate(1, 0.002), 0.002, permanent=False) == 2
    assert ll.num_modified(500, ll.clean_rate(2, 0.002), 0.002, permanent=False) == 3


def test_w10_degenerate_selection_and_the_k_clamp():
    logits = torch.tensor([[1.0, -1.0, 0.5]])
    targets = torch.tensor([[1.0, 0.0, 0.0]])
    observed = torch.tensor([[True, True, False]])                 # label_vec [[1, -1, 0]]
    k = ll.num_modified(3, ll.clean_rate(1, 0.5), 0.5, permanent=False)
    assert k == 2
    official_r = ll.large_loss(logits, targets, observed, k, "LL-R", k_clamp=False)
    official_ct = ll.large_loss(logits, targets, observed, k, "LL-Ct", k_clamp=False)
    assert official_r.loss.item() == 0.0 and official_r.modified.all()
    assert official_ct.loss.item() == pytest.approx(1.0335335, abs=TOL)
    clamped_r = ll.large_loss(logits, targets, observed, k, "LL-R")
    clamped_ct = ll.large_loss(logits, targets, observed, k, "LL-Ct")
    assert clamped_r.k == 1 and clamped_r.modified.tolist() == [[False, False, True]]
    assert clamped_r.loss.item() == pytest.approx(0.2088411, abs=TOL)
    assert clamped_ct.loss.item() == pytest.approx(0.3668668, abs=TOL)
    none = ll.large_loss(logits, targets, torch.ones(1, 3, dtype=torch.bool), k, "LL-Ct")
    assert none.k == 0 and not none.modified.any()


@pytest.mark.parametrize("scheme", ll.SCHEMES)
def test_only_unknown_entries_are_ever_modified_and_k_never_exceeds_them(scheme):
    gen = torch.Generator().manual_seed(0)
    for trial in range(200):
        b, c = 1 + trial % 5, 2 + trial % 7
        logits = torch.randn(b, c, generator=gen) * 3
        observed = torch.rand(b, c, generator=gen) < (trial % 10) / 9          # up to fully known
        targets = (torch.rand(b, c, generator=gen) < 0.4).float() * observed
        k = int(torch.randint(1, b * c + 1, (1,), generator=gen))
        for correct in ("topk", "strict"):
            sel = ll.large_loss(logits, targets, observed, k, scheme, correct=correct)
            assert sel.k <= int((~observed).sum())
            assert not (sel.modified & observed).any() and not (sel.corrected & observed).any()
            assert int(sel.modified.sum()) >= sel.k


def _task(num_train, num_classes, protocol="frozen", feature_dim=8):
    return TaskSpec(num_classes=num_classes, class_names=[f"c{i}" for i in range(num_classes)], num_train=num_train,
                    feature_dim=feature_dim, feature_size=(2, 2), protocol=protocol,
                    info={"mask_protocol": "single_positive"})


def _single_positive_batches(num_train, num_classes, batch_size, seed=0):
    gen = torch.Generator().manual_seed(seed)
    targets = torch.zeros(num_train, num_classes)
    targets[torch.arange(num_train), torch.randint(0, num_classes, (num_train,), generator=gen)] = 1.0
    inputs = torch.randn(num_train, 8, 2, 2, generator=gen)
    return [Batch(inputs[i:i + batch_size], targets[i:i + batch_size], targets[i:i + batch_size] > 0,
                  torch.arange(i, i + batch_size)) for i in range(0, num_train, batch_size)]


def _corrections(cfg, epochs=3):
    """W8's loop: 3 epochs of 3 batches of 4 x 6; returns the number of labels written back."""
    torch.manual_seed(0)
    method = LLCp(_task(12, 6), cfg)
    batches = _single_positive_batches(12, 6, 4)
    for epoch in range(epochs):
        ctx = TrainContext(epoch=epoch, max_epochs=epochs)
        method.on_train_epoch_start(ctx)
        for batch in batches:
            method.compute_losses(batch, ctx)
    return int(method.corrected.rows.sum())


def test_w8_permanent_correction_counts():
    official = dict(schedule_epochs=0)
    assert _corrections(LLCpConfig(delta_rel=2.0, cp_correct="strict", **official)) == 0   # LL first release, k = 1
    assert _corrections(LLCpConfig(delta_rel=2.0, **official)) == 6                         # BoostLU code
    assert _corrections(LLCpConfig(delta_rel=2.0, cp_mode="as_shipped", **official)) == 0  # LL HEAD (P17)
    assert _corrections(LLCpConfig(delta_rel=5.0, cp_correct="strict", **official)) == 6
    assert _corrections(LLCpConfig(delta_rel=5.0, **official)) == 12


def test_as_shipped_ll_cp_is_ll_ct_and_corrections_become_observed_positives():
    batches = _single_positive_batches(12, 6, 4)
    ctx = TrainContext(epoch=3, max_epochs=10)
    torch.manual_seed(0)
    shipped = LLCp(_task(12, 6), LLCpConfig(cp_mode="as_shipped", delta_rel=5.0))
    torch.manual_seed(0)
    ct = LLCt(_task(12, 6), LargeLossConfig(delta_rel=5.0))
    for batch in batches:
        assert torch.equal(shipped.compute_losses(batch, ctx)["loss_ll"], ct.compute_losses(batch, ctx)["loss_ll"])
    torch.manual_seed(0)
    cp = LLCp(_task(12, 6), LLCpConfig(delta_rel=5.0))
    cp.compute_losses(batches[0], ctx)
    fixed = cp.corrected[batches[0].index]
    assert fixed.any() and not (fixed & batches[0].observed).any()
    # a corrected entry is an observed positive from then on: never selected again, loss = BCE(x, 1)
    again = ll.large_loss(cp.predict_scores(batches[0].inputs), torch.where(fixed, 1.0, batches[0].targets),
                          batches[0].observed | fixed, 3, "LL-Cp")
    assert not (again.modified & fixed).any()


def test_permanent_corrections_never_touch_observed_labels_under_the_random_protocol():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    n, c = 16, 5
    observed = torch.rand(n, c, generator=gen) < 0.9                     # p = 0.9: few unknowns per batch
    targets = (torch.rand(n, c, generator=gen) < 0.3).float() * observed
    inputs = torch.randn(n, 8, 2, 2, generator=gen)
    method = LLCp(_task(n, c), LLCpConfig(delta_rel=40.0, schedule_epochs=0))
    for epoch in range(4):
        ctx = TrainContext(epoch=epoch, max_epochs=4)
        for i in range(0, n, 4):
            idx = torch.arange(i, i + 4)
            method.compute_losses(Batch(inputs[idx], targets[idx], observed[idx], idx), ctx)
            assert int(method.last_k) <= int((~observed[idx]).sum())
    assert method.corrected.rows.any() and not (method.corrected.rows & observed).any()


def test_schedule_scaling_and_finetune_head_lr():
    method = LLR(_task(8, 4), LargeLossConfig())
    assert method.delta(TrainContext(max_epochs=10)) == 0.005
    assert method.delta(TrainContext(max_epochs=5)) == pytest.approx(0.01)
    assert LLR(_task(8, 4), LargeLossConfig(schedule_epochs=0)).delta(TrainContext(max_epochs=5)) == 0.005
    assert LLCt(_task(8, 4), LargeLossConfig()).delta(TrainContext(max_epochs=10)) == 0.002
    assert method.param_groups(1e-3, 1e-4) is None                      # frozen: the head is everything
    backbone = torch.nn.Conv2d(3, 8, 1)
    tuned = LLR(_task(8, 4, protocol="finetune"), LargeLossConfig(), backbone=backbone)
    groups = tuned.param_groups(1e-3, 1e-4)
    assert groups[0]["params"] == list(backbone.parameters()) and groups[1]["lr"] == pytest.approx(1e-2)
    assert len(groups[1]["params"]) == 2


@pytest.mark.parametrize("kwargs, field", [({"delta_rel": -1.0}, "delta_rel"), ({"schedule_epochs": -1}, "schedule_epochs"),
                                           ({"cp_mode": "is"}, "cp_mode"), ({"cp_correct": "all"}, "cp_correct")])
def test_config_checks_raise_value_errors(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LLCpConfig(**kwargs)
