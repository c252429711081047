"""SARB and DSRB: fidelity F10 (instance blending) and F11 (peak quadrant), the P11 fix, the
location-sum shortcut against the literal map-level formulas, the schedule and exact resume once
prototypes exist."""
from __future__ import annotations

import pytest
import torch

from benchmark.contract.method import Batch, TaskSpec, TrainContext
from benchmark.core.errors import UserError
from methods.dsrb import DSRB, DSRBConfig
from methods.modules.blending import (
    QuadrantPrototypes,
    instance_blend,
    peak_quadrants,
    peak_scores,
    pick_unknown,
    prototype_blend,
)
from methods.modules.losses import masked_bce
from methods.modules.sarl import SARLTrunk
from methods.sarb import SARB, SARBConfig


def _labels(signed):
    """Project encoding (targets, observed) from an HCP {1, 0, -1} matrix."""
    y = torch.tensor(signed, dtype=torch.float32)
    return (y > 0).float(), y != 0


def _signed(targets, observed):
    return observed.float() * torch.where(targets > 0, targets, -torch.ones_like(targets))


# --------------------------------------------------------------------------- F10: instance blending
F10_TARGETS, F10_OBSERVED = _labels([[0, 1, -1], [1, 0, 1], [1, 1, 0]])


def test_f10_instance_blending_targets_and_loss():
    feats = torch.arange(18, dtype=torch.float32).reshape(3, 3, 2)
    alpha = torch.tensor(0.5, requires_grad=True)
    mixed, targets, observed, picked = instance_blend(feats, F10_TARGETS, F10_OBSERVED, alpha)
    assert picked.nonzero().tolist() == [[0, 0]]                  # kappa = alpha only at (0, 0)
    assert _signed(targets, observed).tolist() == [[0.5, 1, -1], [1, 0, 1], [1, 1, 0]]
    expected = feats.clone()
    expected[0, 0] = 0.5 * feats[0, 0] + 0.5 * feats[2, 0]          # partner of row 0 is row 2
    assert torch.allclose(mixed, expected)
    assert float(masked_bce(torch.zeros(3, 3), targets, observed).detach()) == pytest.approx(0.6931472, abs=1e-6)
    logits = torch.tensor([[1.0, -2.0, 0.3], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    loss = masked_bce(logits, targets, observed)
    assert float(loss.detach()) == pytest.approx(0.9381620, abs=1e-6)
    loss.backward()                       # alpha learns through the soft target: d/d alpha = x / 7
    assert float(alpha.grad) == pytest.approx(1.0 / 7, abs=1e-6)


def test_blend_weight_one_leaves_the_entry_unknown():
    _, targets, observed, picked = instance_blend(torch.zeros(3, 3, 2), F10_TARGETS, F10_OBSERVED,
                                                  torch.tensor(1.0))
    assert picked[0, 0] and not observed[0, 0]       # HCP drops a target of exactly 0


# --------------------------------------------------------------------------- F11: quadrants
@pytest.mark.parametrize("peak, quadrant", [((2, 5), 1), ((0, 0), 0), ((3, 2), 2), ((6, 6), 3), ((2, 3), 1)])
def test_f11_peak_quadrant_rule(peak, quadrant):
    scores = torch.rand(7, 7) * 0.1
    scores[peak] = 5.0
    assert int(peak_quadrants(scores)) == quadrant


def test_quadrant_from_row_and_column_maxima_and_first_index_ties():
    scores = torch.zeros(4, 4)
    scores[0, 3] = scores[3, 0] = 1.0      # row* = 0 (first max row), col* = 0 (first max column)
    assert int(peak_quadrants(scores)) == 0


def test_channel_sum_shortcut_equals_the_weighted_maps():
    torch.manual_seed(0)
    trunk = SARLTrunk(6, torch.randn(3, 5), torch.eye(3), feature_dim=4, hidden_dim=4, output_dim=4, pool=1)
    maps = torch.randn(2, 6, 5, 5)
    _, weighted = trunk.class_features(maps, with_maps=True)          # [B, h, w, C, D]
    fmap, attention = trunk.decouple(maps)
    literal = weighted.sum(dim=-1).permute(0, 3, 1, 2)                # [B, C, h, w]
    assert torch.allclose(peak_scores(fmap, attention), literal, atol=1e-5)


# --------------------------------------------------------------------------- P11
def test_p11_fixed_rule_never_overwrites_a_known_label():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        observed = torch.rand(8, 5, generator=gen) > 0.3
        observed[:3] = True                                           # images without an unknown label
        targets = (torch.rand(8, 5, generator=gen) > 0.5).float() * observed
        picked = pick_unknown(observed, ~observed, 1)
        _, new_t, new_o = prototype_blend(torch.randn(8, 5, 2), targets, observed, picked, torch.randn(5, 2),
                                          torch.tensor(0.5))
        assert torch.equal(new_t[observed], targets[observed]) and torch.equal(new_o[observed], observed[observed])
        assert not picked[:3].any() and (picked.sum(1)[3:] == (~observed[3:]).any(1).long()).all()


def test_p11_official_rule_reproduces_the_corruption():
    targets, observed = _labels([[-1, 1, -1], [1, 0, -1]])
    picked = pick_unknown(observed, ~observed, 1, rule="official")
    assert picked.tolist() == [[True, False, False], [False, True, False]]   # argmax of zeros -> class 0
    _, new_t, new_o = prototype_blend(torch.zeros(2, 3, 2), targets, observed, picked, torch.zeros(3, 2),
                                      torch.tensor(0.25))
    assert _signed(new_t, new_o)[0].tolist() == [0.75, 1, -1]         # the known -1 became 1 - beta


def test_top_k_picks_k_unknown_entries_at_most():
    observed = torch.tensor([[False, False, False, True], [True, True, False, True]])
    picked = pick_unknown(observed, ~observed, 2)
    assert picked.sum(1).tolist() == [2, 1] and not (picked & observed).any()


# --------------------------------------------------------------------------- quadrant prototypes
def test_quadrant_prototypes_cap_placeholder_fallback_and_empty_class():
    feats = torch.arange(1, 8, dtype=torch.float32).unsqueeze(1)   # rows 1..7, D = 1
    classes = torch.tensor([0, 0, 0, 0, 1, 1, 0])
    quadrants = torch.tensor([0, 0, 0, 1, 2, 2, 0])
    bank = QuadrantPrototypes(num_classes=3, dim=1, max_maps=2, placeholder=True)
    bank.fit(classes, quadrants, feats)
    # class 0: q0 keeps rows 1, 2 (cap 2) -> (1 + 2) / 3; q1 row 4 -> 4 / 2; q2, q3 empty -> mean(1, 2, 4)
    assert bank.prototypes[0, :, 0].tolist() == pytest.approx([1.0, 2.0, 7 / 3, 7 / 3])
    assert bank.prototypes[1, :, 0].tolist() == pytest.approx([11 / 2, 11 / 2, 11 / 3, 11 / 2])
    assert bank.valid.tolist() == [True, True, False] and bank.ready
    plain = QuadrantPrototypes(num_classes=3, dim=1, max_maps=2, placeholder=False)
    plain.fit(classes, quadrants, feats)
    assert plain.prototypes[0, :2, 0].tolist() == pytest.approx([1.5, 4.0])
    assert bank.lookup(torch.tensor([[1, 2, 0]]))[0, :, 0].tolist() == pytest.approx([2.0, 11 / 3, 0.0])


def test_location_sum_prototypes_and_blend_equal_the_literal_map_formulas():
    """The official code averages [h, w, D] maps per (class, quadrant) and blends maps before
    summing them over locations; ours does both on location sums. Same numbers."""
    torch.manual_seed(1)
    b, c, d, size = 6, 3, 4, 4
    trunk = SARLTrunk(5, torch.randn(c, 3), torch.eye(c), feature_dim=d, hidden_dim=4, output_dim=4, pool=1)
    maps_in = torch.randn(b, 5, size, size)
    feats, weighted = trunk.class_features(maps_in, with_maps=True)        # weighted [B, h, w, C, D]
    quadrants = peak_quadrants(weighted.sum(-1).permute(0, 3, 1, 2))
    rows = torch.ones(b, c, dtype=torch.bool).nonzero()                  # every entry a known positive
    bank = QuadrantPrototypes(c, d, max_maps=3)
    bank.fit(rows[:, 1], quadrants[rows[:, 0], rows[:, 1]], feats[rows[:, 0], rows[:, 1]])
    literal = torch.zeros(c, 4, size, size, d)
    for k in range(c):
        kept = {q: [weighted[i, :, :, k] for i in range(b) if quadrants[i, k] == q][:3] for q in range(4)}
        pooled = [m for q in range(4) for m in kept[q]]
        for q in range(4):
            stack = [torch.zeros(size, size, d)] + kept[q]                  # the code's zero placeholder
            literal[k, q] = torch.stack(stack).mean(0) if kept[q] else torch.stack(pooled).mean(0)
    assert torch.allclose(bank.prototypes, literal.sum(dim=(2, 3)), atol=1e-5)
    other = (quadrants + 1) % 4
    picked = torch.zeros(b, c, dtype=torch.bool)
    picked[:, 1] = True
    beta = torch.tensor(0.3)
    ours = prototype_blend(feats, torch.zeros(b, c), ~picked, picked, bank.lookup(other), beta)[0]
    proto_maps = literal[torch.arange(c).unsqueeze(0), other].permute(0, 2, 3, 1, 4)   # [B, h, w, C, D]
    mask = picked[:, None, None, :, None].float()
    blended_maps = mask * (beta * weighted + (1 - beta) * proto_maps) + (1 - mask) * weighted
    assert torch.allclose(ours, blended_maps.sum(dim=(1, 2)), atol=1e-5)


# --------------------------------------------------------------------------- the methods
def _task(c=4, n=12):
    return TaskSpec(num_classes=c, class_names=[f"c{i}" for i in range(c)], num_train=n, feature_dim=8,
                    feature_size=(2, 2), protocol="frozen", label_embeddings=torch.randn(c, 6),
                    label_graph=torch.eye(c))


SMALL = dict(feature_dim=8, hidden_dim=4, output_dim=8, pool=1)


def _batches(n=12, c=4):
    gen = torch.Generator().manual_seed(0)
    targets = (torch.rand(n, c, generator=gen) > 0.5).float()
    observed = torch.rand(n, c, generator=gen) > 0.4
    observed[:, 0], targets[:, 0] = True, 1.0
    observed[:2] = True                                   # two images without an unknown label
    inputs = torch.randn(n, 8, 2, 2, generator=gen)
    return [Batch(inputs[i:i + 6], targets[i:i + 6] * observed[i:i + 6], observed[i:i + 6], torch.arange(i, i + 6))
            for i in (0, 6)]


METHODS = [(SARB, SARBConfig, dict(num_prototypes=2, kmeans_n_init=1)), (DSRB, DSRBConfig, {})]


@pytest.mark.parametrize("cls, config, extra", METHODS)
def test_blending_switches_on_at_the_blend_epoch_and_trains_alpha_and_beta(cls, config, extra):
    torch.manual_seed(0)
    method = cls(_task(), config(**SMALL, **extra)).train()
    batches = _batches()
    ctx = TrainContext(epoch=0, max_epochs=20, iters_per_epoch=2, iterate_train=lambda: iter(batches))
    method.on_train_epoch_start(ctx)
    assert set(method.compute_losses(batches[0], ctx)) == {"loss_bce", "loss_instance"}
    assert not method.prototypes_ready
    ctx.epoch = 5
    with torch.no_grad():
        method.alpha.fill_(1.7)                            # clamped into [0, 1] by the next blending forward
    method.on_train_epoch_start(ctx)
    assert method.prototypes_ready
    losses = method.compute_losses(batches[0], ctx)
    assert set(losses) == {"loss_bce", "loss_instance", "loss_blend_instance", "loss_blend_prototype"}
    assert float(method.alpha.detach()) == 1.0
    sum(losses.values()).backward()
    assert method.beta.grad is not None and method.beta.grad != 0
    diag = method.on_train_epoch_end(ctx)
    valid = method.bank.valid if cls is SARB else method.quadrant_bank.valid
    with_candidate = (~batches[0].observed & valid).any(dim=1)
    assert not with_candidate.all()                        # the batch has fully labelled images
    assert diag["blended_prototype"] == float(with_candidate.sum()) and diag["blended_known"] == 0.0


@pytest.mark.parametrize("cls, config, extra", METHODS)
def test_official_pick_rule_overwrites_known_labels_of_fully_labelled_images(cls, config, extra):
    torch.manual_seed(0)
    method = cls(_task(), config(**SMALL, **extra, pick_rule="official")).train()
    batches = _batches()
    ctx = TrainContext(epoch=5, max_epochs=20, iters_per_epoch=2, iterate_train=lambda: iter(batches))
    method.on_train_epoch_start(ctx)
    method.compute_losses(batches[0], ctx)
    fully_labelled = batches[0].observed.all(dim=1).sum()
    assert fully_labelled > 0 and method.on_train_epoch_end(ctx)["blended_known"] == float(fully_labelled)
    with pytest.raises(UserError, match="pick_rule"):
        cls(_task(), config(**SMALL, **extra, pick_rule="any"))


def test_dsrb_blends_with_a_different_quadrant_than_the_entry_peak():
    torch.manual_seed(0)
    method = DSRB(_task(), DSRBConfig(**SMALL)).train()
    with torch.no_grad():
        method.quadrant_bank.prototypes.copy_(torch.arange(4.0).view(1, 4, 1).expand(4, 4, 8))
        method.quadrant_bank.valid.fill_(True)
        method.quadrant_bank.fitted.fill_(True)
    fmap, attention = method.trunk.decouple(torch.randn(64, 8, 2, 2))
    own = peak_quadrants(peak_scores(fmap, attention))
    observed = torch.zeros(64, 4, dtype=torch.bool)
    picked, prototypes = method.prototype_entries((fmap, attention), None, observed)
    chosen = prototypes[..., 0].long()
    assert (chosen != own).all() and set(chosen.flatten().tolist()) == {0, 1, 2, 3}
    assert (picked.sum(1) == 1).all()


@pytest.mark.parametrize("cls, config, extra", METHODS)
def test_finetune_protocol_on_images_with_a_frozen_resnet_trunk(cls, config, extra):
    """Images in, prototypes from image batches, blended losses backpropagate into layer4 only."""
    import timm

    from benchmark.engine.backbones import Backbone

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=0, global_pool="")
    task = TaskSpec(num_classes=4, class_names=list("abcd"), num_train=8, feature_dim=512, feature_size=(2, 2),
                    protocol="finetune", label_embeddings=torch.randn(4, 6), label_graph=torch.eye(4))
    method = cls(task, config(**SMALL, **extra), backbone=Backbone(model, "resnet10t")).train()
    targets, observed = _labels([[1, 0, -1, 0], [0, 1, 0, -1], [1, 1, 0, 0], [-1, 0, 1, 0]] * 2)
    batches = [Batch(torch.randn(4, 3, 64, 64), targets[i:i + 4], observed[i:i + 4], torch.arange(i, i + 4))
               for i in (0, 4)]
    ctx = TrainContext(epoch=5, max_epochs=20, iters_per_epoch=2, iterate_train=lambda: iter(batches))
    method.on_train_epoch_start(ctx)
    losses = method.compute_losses(batches[0], ctx)
    assert "loss_blend_prototype" in losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.layer3.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.layer4.parameters())
