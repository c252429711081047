"""CLSL / CSL: fidelity fixtures F12 / F13 (spec section 12), building blocks, the EMA, the switches,
the official recipe, and an engine resume that carries the EMA."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.contract.method import Batch, TaskSpec, TrainContext
from benchmark.core.errors import UserError
from datasets.masks import from_clsl
from methods.clsl import CLSL, CLSLBaseline, CLSLConfig, CLSLTrainingConfig
from methods.modules.asl import asl_known, asl_mean, asl_per_entry
from methods.modules.clsl_blocks import recovered_targets, recovery_probabilities
from methods.modules.ema import WeightEMA
from methods.modules.position import sine_position_encoding

# F12 inputs (CLSL encoding: 1 known positive, 0 known negative, -1 unknown)
F12_Y = np.array([[1, 0, -1], [-1, 1, 0]])
F12_REFINED = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
F12_GLOBAL = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
OFFICIAL = {"recovery": "signed_max"}      # with the default known_reduction="sum"
SMALL = {"width": 16, "heads": 2, "ffn_dim": 32, "att_dim": 8}


def _f12_labels() -> tuple[torch.Tensor, torch.Tensor]:
    targets, observed = from_clsl(F12_Y)
    return torch.from_numpy(targets), torch.from_numpy(observed)


def _task(classes: int = 3, dim: int = 16, emb_dim: int = 7, num_train: int = 8, size=(2, 2)) -> TaskSpec:
    gen = torch.Generator().manual_seed(1)
    return TaskSpec(num_classes=classes, class_names=[f"c{i}" for i in range(classes)], num_train=num_train,
                    feature_dim=dim, feature_size=size, protocol="frozen",
                    label_embeddings=torch.randn(classes, emb_dim, generator=gen))


class _FixedLogits(nn.Module):
    """Stands in for the network: returns the fixture logits."""

    global_head = True

    def __init__(self, refined: torch.Tensor, glob: torch.Tensor) -> None:
        super().__init__()
        self.refined, self.glob = refined, glob

    def forward(self, fmap, with_global=False):
        return self.refined.clone().requires_grad_(True), self.glob.clone().requires_grad_(True)


def _fixture_method(**cfg) -> CLSL:
    method = CLSL(_task(), CLSLConfig(**SMALL, ema=False, **cfg))
    method.net = _FixedLogits(F12_REFINED, F12_GLOBAL)
    return method


def _f12_batch() -> Batch:
    targets, observed = _f12_labels()
    return Batch(torch.zeros(2, 16, 2, 2), targets, observed, torch.arange(2))


# ----------------------------------------------------------------------------- fidelity
def test_f12_recovered_targets_official():
    targets, observed = _f12_labels()
    soft = recovered_targets(F12_REFINED, targets, observed, "signed_max")
    expected = torch.tensor([[1.0, 0.0, 1 / (1 + math.exp(-1.0))], [0.5, 1.0, 0.0]])
    assert torch.allclose(soft, expected, atol=1e-6)


def test_f12_losses_with_official_switches():
    assert CLSLConfig().known_reduction == "sum" and CLSLConfig().loss_scale == 1000.0
    losses = _fixture_method(**OFFICIAL).compute_losses(_f12_batch(), TrainContext())
    assert losses["loss_known"].item() == pytest.approx(199.97702, rel=1e-5)
    assert losses["loss_recovered"].item() == pytest.approx(0.8 * 416.38434, rel=1e-5)
    assert sum(losses.values()).item() == pytest.approx(533.08447, rel=1e-5)


def test_f12_mean_switch_averages_the_known_term_c1():
    losses = _fixture_method(recovery="signed_max", known_reduction="mean").compute_losses(_f12_batch(), TrainContext())
    assert losses["loss_known"].item() == pytest.approx(199.97702 / 4, rel=1e-5)   # 4 known entries
    assert losses["loss_recovered"].item() == pytest.approx(0.8 * 416.38434, rel=1e-5)


def test_f12_default_recovery_equals_official_when_every_image_has_a_positive_logit():
    official = _fixture_method(**OFFICIAL).compute_losses(_f12_batch(), TrainContext())
    default = _fixture_method().compute_losses(_f12_batch(), TrainContext())
    assert {k: v.item() for k, v in default.items()} == {k: v.item() for k, v in official.items()}


def test_f13_sign_flip_official_and_fixed_default():
    logits = torch.tensor([[-1.0, -3.0]])
    official = recovery_probabilities(logits, "signed_max")
    assert torch.allclose(official, torch.tensor([[0.7310586, 0.9525741]]), atol=1e-6)
    default = recovery_probabilities(logits, CLSLConfig().recovery)
    assert torch.allclose(default, torch.sigmoid(torch.tensor([[-1.0, -3.0]])), atol=1e-7)   # |max| = 1
    assert (default < 0.5).all() and (official > 0.5).all()
    # both modes agree when the image has a positive logit
    mixed = torch.tensor([[2.0, -1.0, 0.5]])
    assert torch.equal(recovery_probabilities(mixed, "abs_max"), recovery_probabilities(mixed, "signed_max"))


def test_f13_default_method_recovers_negatives_for_an_all_negative_image():
    method = CLSL(_task(classes=2), CLSLConfig(**SMALL, ema=False))
    method.net = _FixedLogits(torch.tensor([[-1.0, -3.0]]), torch.zeros(1, 2))
    batch = Batch(torch.zeros(1, 16, 2, 2), torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.bool), torch.tensor([3]))
    method.on_train_epoch_start(TrainContext())
    method.compute_losses(batch, TrainContext())
    index, pseudo = method.recovered_labels()
    assert index.tolist() == [3] and not pseudo.any()
    assert method.on_train_epoch_end(TrainContext())["all_negative_images"] == 1.0


def test_asl_focal_weight_is_detached():
    z = torch.tensor([1.0], requires_grad=True)
    asl_per_entry(z, torch.tensor([0.0])).sum().backward()
    p = torch.sigmoid(torch.tensor(1.0)).item()
    assert z.grad.item() == pytest.approx(p * p ** 2, rel=1e-6)          # d/dz[-log(1-p)] * p^2
    z.grad = None
    asl_per_entry(z, torch.tensor([0.0]), detach_focal=False).sum().backward()
    assert z.grad.item() == pytest.approx(p ** 3 - math.log(1 - p) * 2 * p * p * (1 - p), rel=1e-6)


def test_asl_reductions_and_errors():
    targets, observed = _f12_labels()
    per = asl_per_entry(F12_REFINED, targets)
    assert asl_known(F12_REFINED, targets, observed, "sum").item() == pytest.approx(per[observed].sum().item())
    assert asl_known(F12_REFINED, targets, torch.zeros_like(observed), "mean").item() == 0.0
    assert asl_mean(F12_GLOBAL, targets).item() == pytest.approx(asl_per_entry(F12_GLOBAL, targets).mean().item())
    with pytest.raises(UserError, match="reduction"):
        asl_known(F12_REFINED, targets, observed, "max")


# ----------------------------------------------------------------------------- blocks
def test_sine_position_encoding_values():
    pe = sine_position_encoding(2, 3, 8)          # 4 channels per axis
    assert pe.shape == (6, 8)
    row1, col2 = 2 / 2 * 2 * math.pi, 3 / 3 * 2 * math.pi
    token = 1 * 3 + 2                               # row 1, column 2 (row-major)
    assert pe[token, 0].item() == pytest.approx(math.sin(row1), abs=1e-5)
    assert pe[token, 1].item() == pytest.approx(math.cos(row1), abs=1e-5)
    assert pe[token, 2].item() == pytest.approx(math.sin(row1 / 100.0), abs=1e-5)   # 10000 ** (2/4)
    assert pe[token, 4].item() == pytest.approx(math.sin(col2), abs=1e-5)
    assert torch.equal(pe[0:3, :4], pe[0:1, :4].expand(3, 4))   # row channels constant along a row
    with pytest.raises(UserError, match="divisible by 4"):
        sine_position_encoding(2, 2, 6)


@pytest.mark.parametrize("emb_dim", [7, 50, 384])
@pytest.mark.parametrize("srfl", [True, False])
def test_network_shapes_for_any_embedding_width(emb_dim, srfl):
    method = CLSL(_task(classes=5, dim=24, emb_dim=emb_dim, size=(3, 2)), CLSLConfig(**SMALL, srfl=srfl))
    refined, glob = method.net(torch.randn(4, 24, 3, 2), with_global=True)
    assert refined.shape == glob.shape == (4, 5)
    assert (method.net.proj.in_features, method.net.proj.out_features) == (24, 16)
    assert (method.net.srfl is None) != srfl


def test_width_none_uses_backbone_channels_without_projection():
    method = CLSL(_task(dim=16), CLSLConfig(**{**SMALL, "width": None}))
    assert isinstance(method.net.proj, nn.Identity)


def test_config_errors_are_user_errors():
    with pytest.raises(UserError, match="recovery"):
        CLSL(_task(), CLSLConfig(**SMALL, recovery="max"))
    with pytest.raises(UserError, match="known_reduction"):
        CLSL(_task(), CLSLConfig(**SMALL, known_reduction="median"))
    with pytest.raises(UserError, match="divisible"):
        CLSL(_task(), CLSLConfig(**{**SMALL, "width": 18}))
    task = _task()
    task.label_embeddings = None
    with pytest.raises(UserError, match="embeddings"):
        CLSL(task, CLSLConfig(**SMALL))


def test_ablation_switches_drop_the_recovered_term():
    torch.manual_seed(0)
    batch = Batch(torch.randn(4, 16, 2, 2), torch.ones(4, 3), torch.rand(4, 3) > 0.5, torch.arange(4))
    no_jls = CLSL(_task(), CLSLConfig(**SMALL, global_head=False))
    assert set(no_jls.compute_losses(batch, TrainContext())) == {"loss_known"}
    assert no_jls.recovered_labels() is None and no_jls.net.global_head is None
    baseline = CLSLBaseline(_task(), CLSLTrainingConfig())
    assert set(baseline.compute_losses(batch, TrainContext())) == {"loss_known"}
    assert CLSLBaseline.card.requires == frozenset() and not CLSLBaseline.card.default_grid
    assert CLSL.card.default_grid and "label_embeddings" in CLSL.card.requires


# ----------------------------------------------------------------------------- EMA
def test_weight_ema_blends_floats_and_copies_integers():
    live = nn.BatchNorm1d(2)
    ema = WeightEMA({"m": live}, decay=0.75)
    assert not any(p.requires_grad for p in ema.parameters())
    assert not ema.flush({"m": live})                     # nothing marked
    with torch.no_grad():
        live.weight.fill_(5.0)
        live.num_batches_tracked.fill_(7)
    ema.mark_step()
    assert ema.flush({"m": live}) and int(ema.updates) == 1
    assert torch.allclose(ema.shadow["m"].weight, torch.full((2,), 0.75 * 1.0 + 0.25 * 5.0))
    assert int(ema.shadow["m"].num_batches_tracked) == 7


def test_method_ema_tracks_every_optimizer_step_and_drives_eval_scores():
    torch.manual_seed(0)
    method = CLSL(_task(), CLSLConfig(**SMALL, ema_decay=0.5))
    live_params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.SGD(live_params, lr=0.1)
    reference = [p.detach().clone() for p in method.net.parameters()]
    batch = Batch(torch.randn(4, 16, 2, 2), torch.ones(4, 3), torch.rand(4, 3) > 0.3, torch.arange(4))
    for _ in range(3):                                    # the engine's order: losses, backward, step
        opt.zero_grad()
        sum(method.compute_losses(batch, TrainContext()).values()).backward()
        opt.step()
        reference = [0.5 * r + 0.5 * p.detach() for r, p in zip(reference, method.net.parameters())]
    method.on_train_epoch_end(TrainContext())             # folds in the last step
    for ref, avg in zip(reference, method.ema.shadow["net"].parameters()):
        assert torch.allclose(ref, avg, atol=1e-6)
    method.eval()
    with torch.no_grad():
        scores = method.predict_scores(batch.inputs)
        assert torch.equal(scores, method.ema.shadow["net"](batch.inputs)[0])
        assert not torch.allclose(scores, method.net(batch.inputs)[0])
    assert any(key.startswith("ema.shadow.net.") for key in method.state_dict())


def test_finetune_backbone_is_averaged_too():
    backbone = nn.Conv2d(3, 16, kernel_size=4, stride=4)
    method = CLSL(_task(), CLSLConfig(**SMALL, ema_decay=0.0), backbone=backbone)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    batch = Batch(torch.randn(2, 3, 8, 8), torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool), torch.arange(2))
    sum(method.compute_losses(batch, TrainContext()).values()).backward()
    opt.step()
    method.on_train_epoch_end(TrainContext())
    assert torch.equal(method.ema.shadow["backbone"].weight, backbone.weight)   # decay 0 = copy


# ----------------------------------------------------------------------------- recipe and engine
