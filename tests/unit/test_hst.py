"""HST: fidelity numbers of spec section 12 (F4-F8, F14, F15-style shapes), schedule, recovery
diagnostics, backbone freezing and exact resume once prototypes exist (pitfall P9)."""
from __future__ import annotations

import pytest
import torch

from benchmark.contract.method import Batch, TaskSpec, TrainContext
from benchmark.core.errors import UserError
from datasets.side_info import cooccurrence_graph
from methods.hst import HST, HSTConfig, augmented_targets, clipped_scores
from methods.modules.contrastive import instance_contrastive_loss
from methods.modules.cooccurrence import CooccurrenceHead, intra_scores, pair_targets
from methods.modules.graph import ElementWiseLinear, GatedGNN
from methods.modules.losses import cooccurrence_asl, masked_bce
from methods.modules.prototypes import (
    PrototypeBank,
    is_refresh_epoch,
    prototype_loss,
    scaled_epoch,
)
from methods.modules.sarl import SARLTrunk
from methods.modules.semantic import SemanticDecoupling
from tests.conftest import toy_batches as _batches


def _labels(signed):
    """Project encoding (targets, observed) from an HCP {1, 0, -1} matrix."""
    y = torch.tensor(signed, dtype=torch.float32)
    return (y > 0).float(), y != 0


# --------------------------------------------------------------------------- fidelity (spec 12)
F4_PAIRS = torch.tensor([[0.0, 2.0, -2.0], [0.0, 2.0, -2.0]])
F4_TARGETS, F4_OBSERVED = _labels([[1, 0, 0], [1, 1, -1]])


def _f4_scores():
    return clipped_scores(intra_scores(F4_PAIRS, F4_TARGETS, F4_OBSERVED), 0.6)


def test_f4_intra_pseudo_labels():
    scores = _f4_scores()
    assert torch.allclose(scores, torch.tensor([[0.4, 0.0, 0.280797], [0.15, 0.15, 0.0]]), atol=1e-5)
    targets, observed, new = augmented_targets(F4_TARGETS, F4_OBSERVED, scores)
    signed = observed.float() * (2 * targets - 1)
    assert signed.tolist() == [[1, 0, 1], [1, 1, -1]]
    assert new.tolist() == [[False, False, True], [False, False, False]]


def test_f5_cooccurrence_asl():
    pairs = pair_targets(F4_TARGETS, F4_OBSERVED)
    assert pairs.tolist() == [[0, 0, 0], [1, 0, 0]]
    assert cooccurrence_asl(F4_PAIRS, pairs) == pytest.approx(0.4868172, abs=1e-5)


def test_f6_dtl_loss_uses_scores_as_logits():
    assert masked_bce(_f4_scores(), F4_TARGETS, F4_OBSERVED) == pytest.approx(0.6120192, abs=1e-5)


def _f7_bank():
    bank = PrototypeBank(num_classes=2, num_prototypes=2, dim=2)
    bank.prototypes.copy_(torch.tensor([[[1.0, 0.0], [0.6, 0.8]], [[0.0, 1.0], [0.0, -1.0]]]))
    bank.valid.fill_(True)
    bank.fitted.fill_(True)
    return bank


def test_f7_cross_image_scores_and_prototype_loss_signs():
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [-1.0, 0.0]]])
    sim = _f7_bank().similarity(feats)
    assert torch.allclose(sim, torch.tensor([[0.8, 0.0], [0.848528, 0.0]]), atol=1e-5)
    assert torch.allclose(clipped_scores(sim, 0.5), torch.tensor([[0.3, 0.0], [0.348528, 0.0]]), atol=1e-5)
    targets, observed = _labels([[1, -1], [0, 1]])
    assert prototype_loss(sim, targets, observed, "official") == pytest.approx(1.2, abs=1e-5)
    assert prototype_loss(sim, targets, observed, "paper") == pytest.approx(0.8, abs=1e-5)
    with pytest.raises(ValueError):
        prototype_loss(sim, targets, observed, "other")


def test_f8_instance_contrastive_loss():
    feats = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [1.0, -1.0]], [[1.0, 1.0], [-1.0, 0.0]]])
    targets, observed = _labels([[1, -1], [1, -1], [-1, 0]])
    assert instance_contrastive_loss(feats, targets, observed) == pytest.approx(1.3535534, abs=1e-5)


def test_instance_contrastive_loss_without_pos_pos_keeps_all_pairs_and_empty_is_zero():
    feats = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]])
    targets, observed = _labels([[1], [-1], [-1]])
    # pos-neg: 1+0, 1+cos45; neg-neg: 1+cos45 -> no subsampling without a pos-pos pair
    expected = (1.0 + 2 * (1 + 2 ** -0.5)) / 3
    assert instance_contrastive_loss(feats, targets, observed) == pytest.approx(expected, abs=1e-6)
    unknown = torch.zeros(3, 1, dtype=torch.bool)
    assert float(instance_contrastive_loss(feats, targets, unknown)) == 0.0


def test_f14_graph_feeds_ggnn_in_and_out_matrices():
    targets, observed = _labels([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    adj, empty = cooccurrence_graph(targets.numpy(), observed.numpy())
    expected = torch.tensor([[1, 2 / 3, 1 / 3], [1, 1, 1 / 2], [1, 1, 1]])
    assert torch.allclose(torch.from_numpy(adj), expected, atol=1e-6) and list(empty) == []
    ggnn = GatedGNN(2, torch.from_numpy(adj))
    nodes = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    messages = ggnn.aggregate(nodes)[0]   # node 0: [sum_j A_0j h_j ; sum_j A_j0 h_j]
    assert torch.allclose(messages[0], torch.tensor([1 + 1 / 3, 2 / 3 + 1 / 3, 2.0, 2.0]), atol=1e-6)


# --------------------------------------------------------------------------- building blocks
def test_shapes_in_the_spirit_of_f15():
    c, e = 5, 7
    trunk = SARLTrunk(16, torch.randn(c, e), torch.eye(c), feature_dim=8, hidden_dim=4, output_dim=6, pool=2)
    maps = torch.randn(2, 16, 8, 8)
    feats, weighted = trunk.class_features(maps, with_maps=True)
    assert trunk.feature_map(maps).shape == (2, 8, 4, 4)
    assert feats.shape == (2, c, 8) and weighted.shape == (2, 4, 4, c, 8)
    assert torch.allclose(weighted.sum(dim=(1, 2)), feats, atol=1e-5)
    assert trunk.head.ggnn(feats).shape == (2, c, 8)
    assert trunk(maps)[0].shape == (2, c)
    assert CooccurrenceHead(c, 8, 4, 6)(feats).shape == (2, c * (c - 1) // 2)


def test_semantic_attention_fold_equals_the_literal_formula():
    torch.manual_seed(0)
    block = SemanticDecoupling(feature_dim=6, embed_dim=5, hidden_dim=4)
    fmap, emb = torch.randn(2, 6, 3, 3), torch.randn(3, 5)
    pixels = fmap.flatten(2).transpose(1, 2)
    gated = torch.tanh(block.img_proj(pixels).unsqueeze(2) * block.word_proj(emb))
    literal = torch.softmax(block.score(block.fuse(gated)).squeeze(-1), dim=1)          # [B, L, C]
    assert torch.allclose(block.attention(fmap, emb).flatten(2).transpose(1, 2), literal, atol=1e-6)


def test_cooccurrence_head_reordering_equals_the_literal_formula():
    torch.manual_seed(0)
    head = CooccurrenceHead(num_classes=4, dim=6, hidden_dim=3, output_dim=5)
    feats = torch.randn(2, 4, 6)
    g = head.reduce(feats)
    pairs = torch.cat([g[:, [0, 0, 0, 1, 1, 2]], g[:, [1, 2, 3, 2, 3, 3]]], dim=-1)   # (0,1), (0,2), ... order
    literal = head.classifier(head.out(torch.relu(head.mix(pairs))))
    assert torch.allclose(head(feats), literal, atol=1e-6)


def test_element_wise_classifier_init_range():
    layer = ElementWiseLinear(50, 1024)
    assert layer.weight.abs().max() <= 1 / 32 and layer.bias.abs().max() <= 1 / 32
    assert layer.weight.abs().max() > 0.03


def test_prototype_bank_is_seeded_and_guards_small_classes():
    torch.manual_seed(0)
    feats = torch.randn(40, 4)
    classes = torch.tensor([0] * 37 + [1] * 3)
    first, second = PrototypeBank(3, 5, 4), PrototypeBank(3, 5, 4)
    first.fit(classes, feats, seed=3)
    second.fit(classes, feats, seed=3)
    assert torch.equal(first.prototypes, second.prototypes) and first.ready
    assert first.valid.tolist() == [True, True, False]
    assert torch.allclose(first.prototypes[1, :3], feats[37:]) and torch.allclose(first.prototypes[1, 3], feats[37])
    assert first.similarity(torch.randn(2, 3, 4))[:, 2].abs().sum() == 0


# --------------------------------------------------------------------------- schedule
def test_schedule_scales_with_run_length():
    def refreshes(max_epochs, recompute=True):
        start, step = scaled_epoch(5, 20, max_epochs), scaled_epoch(5, 20, max_epochs)
        return [e for e in range(max_epochs) if is_refresh_epoch(e, start, step, recompute)]

    assert refreshes(20) == [5, 10, 15]
    assert refreshes(20, recompute=False) == [5]
    assert refreshes(12) == [3, 6, 9]
    assert refreshes(3) == [1, 2]
    assert scaled_epoch(5, 0, 12) == 5


# --------------------------------------------------------------------------- the method
def _task(c=4, n=12, protocol="frozen", dim=8, size=(2, 2)):
    return TaskSpec(num_classes=c, class_names=[f"c{i}" for i in range(c)], num_train=n, feature_dim=dim,
                    feature_size=size, protocol=protocol, label_embeddings=torch.randn(c, 6),
                    label_graph=torch.eye(c))


SMALL = dict(feature_dim=8, hidden_dim=4, output_dim=8, pool=1, num_prototypes=2, kmeans_n_init=1)


def test_loss_terms_switch_on_at_the_pseudo_label_epoch_and_reach_the_margins():
    torch.manual_seed(0)
    method = HST(_task(), HSTConfig(**SMALL)).train()
    batches = _batches()
    ctx = TrainContext(epoch=0, max_epochs=20, iters_per_epoch=2, iterate_train=lambda: iter(batches))
    method.on_train_epoch_start(ctx)
    assert set(method.compute_losses(batches[0], ctx)) == {"loss_bce", "loss_cooc", "loss_instance"}
    assert method.recovered_labels() is None and not method.bank.ready
    ctx.epoch = 5
    method.on_train_epoch_start(ctx)
    assert method.bank.ready and method.bank.valid[0]
    losses = method.compute_losses(batches[0], ctx)
    assert set(losses) == {"loss_bce", "loss_cooc", "loss_instance", "loss_bce_intra", "loss_bce_inter",
                           "loss_dtl_intra", "loss_dtl_inter", "loss_proto"}
    sum(losses.values()).backward()
    assert method.m_intra.grad is not None and torch.isfinite(method.m_intra.grad)


def test_recovered_labels_are_unknown_entries_of_the_last_epoch():
    torch.manual_seed(0)
    method = HST(_task(), HSTConfig(**SMALL, recovery="intra")).train()
    batches = _batches()
    ctx = TrainContext(epoch=5, max_epochs=20, iters_per_epoch=2, iterate_train=lambda: iter(batches))
    method.on_train_epoch_start(ctx)
    with torch.no_grad():
        method.m_intra.fill_(-1.0)     # every score s >= 0 clears m = -1 -> every unknown entry recovered
    method.compute_losses(batches[1], ctx)
    index, pseudo = method.recovered_labels()
    assert index.tolist() == list(range(6, 12))
    assert torch.equal(pseudo, ~batches[1].observed)
    diag = method.on_train_epoch_end(ctx)
    assert diag["pseudo_intra"] == float((~batches[1].observed).sum()) and diag["m_intra"] == -1.0
    method.on_train_epoch_start(ctx)
    assert method.recovered_labels() is None


def test_config_errors_are_user_errors():
    with pytest.raises(UserError, match="prototype_sign"):
        HST(_task(), HSTConfig(**SMALL, prototype_sign="plus"))
    with pytest.raises(UserError, match="pool"):
        HST(_task(size=(1, 1)), HSTConfig(**{**SMALL, "pool": 2}))


def test_finetune_resnet_freezes_stem_to_layer3_with_eval_batchnorm():
    import timm

    from benchmark.engine.backbones import Backbone

    model = timm.create_model("resnet10t", pretrained=False, num_classes=0, global_pool="")
    method = HST(_task(protocol="finetune", dim=512), HSTConfig(**SMALL), backbone=Backbone(model, "resnet10t"))
    method.train()
    assert not any(p.requires_grad for p in model.layer3.parameters())
    assert not any(p.requires_grad for p in model.conv1.parameters())
    assert all(p.requires_grad for p in model.layer4.parameters())
    assert not model.layer1.training and not model.bn1.training and model.layer4.training
    before = model.layer3[0].bn1.running_mean.clone()
    images = torch.randn(4, 3, 64, 64)
    batch = Batch(images, torch.ones(4, 4), torch.ones(4, 4, dtype=torch.bool), torch.arange(4))
    method.compute_losses(batch, TrainContext(max_epochs=20))
    assert torch.equal(model.layer3[0].bn1.running_mean, before)


def test_ddp_batchnorm_conversion_keeps_the_frozen_stem_in_eval_mode():
    """Under DDP the engine replaces BatchNorm layers (benchmark.engine.ddp_model.convert_sync_batchnorm); the
    frozen ResNet stem, bn1 included, must stay frozen and in eval mode after it."""
    import timm

    from benchmark.engine import ddp_model
    from benchmark.engine.backbones import Backbone

    model = timm.create_model("resnet10t", pretrained=False, num_classes=0, global_pool="")
    method = HST(_task(protocol="finetune", dim=512), HSTConfig(**SMALL), backbone=Backbone(model, "resnet10t"))
    ddp_model.convert_sync_batchnorm(method)
    method.train()
    assert isinstance(model.bn1, ddp_model.SyncBatchNorm) and isinstance(model.layer4[0].bn1, ddp_model.SyncBatchNorm)
    assert not model.bn1.training and not model.layer3[0].bn1.training and model.layer4[0].bn1.training
    assert not any(p.requires_grad for p in model.bn1.parameters())
    before = model.bn1.running_mean.clone()
    batch = Batch(torch.randn(4, 3, 64, 64), torch.ones(4, 4), torch.ones(4, 4, dtype=torch.bool), torch.arange(4))
    method.compute_losses(batch, TrainContext(max_epochs=20))
    assert torch.equal(model.bn1.running_mean, before)
