"""BoostLU: the CAM head of fixture W9 (specs/methods_wave2.md), its gradient, alpha = 1 = the LL head,
and the large-loss schemes behind ``boostlu.scheme``."""
from __future__ import annotations

import pytest
import torch

from benchmark.contract.method import Batch, TaskSpec, TrainContext
from methods.boostlu import BoostLU, BoostLUConfig, CamHead


def _w9_head(alpha=5.0):
    head = CamHead(1, 2, alpha)
    with torch.no_grad():
        head.cam.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        head.cam.bias.zero_()
    return head


def test_w9_boosted_cam_logits():
    maps = torch.tensor([[1.0, -2.0], [3.0, -4.0]]).view(1, 1, 2, 2)
    assert _w9_head()(maps).tolist() == [[3.5, 6.5]]


def test_gradient_is_alpha_on_positive_activations_and_one_elsewhere():
    maps = torch.tensor([[1.0, -2.0], [3.0, -4.0]]).view(1, 1, 2, 2).requires_grad_()
    _w9_head()(maps)[0, 0].backward()          # class 0: weight +1, CAM = the map: alpha / 4 where it is > 0
    assert maps.grad.view(2, 2).tolist() == [[5 / 4, 1 / 4], [5 / 4, 1 / 4]]
    maps.grad = None
    _w9_head()(maps)[0, 1].backward()          # class 1: weight -1, CAM = -map, > 0 where the map is < 0
    assert maps.grad.view(2, 2).tolist() == [[-1 / 4, -5 / 4], [-1 / 4, -5 / 4]]


def test_alpha_one_is_global_average_pooling_plus_linear():
    head = CamHead(8, 3, alpha=1.0)
    maps = torch.randn(4, 8, 3, 3)
    linear = maps.mean(dim=(2, 3)) @ head.cam.weight.view(3, 8).T + head.cam.bias
    assert torch.allclose(head(maps), linear, atol=1e-6)


def _task():
    return TaskSpec(num_classes=5, class_names=[f"c{i}" for i in range(5)], num_train=8, feature_dim=8,
                    feature_size=(2, 2), protocol="frozen", info={"mask_protocol": "single_positive"})


@pytest.mark.parametrize("scheme", ["LL-R", "LL-Ct", "LL-Cp"])
def test_schemes_run_and_only_ll_cp_writes_back(scheme):
    torch.manual_seed(0)
    method = BoostLU(_task(), BoostLUConfig(scheme=scheme, delta_rel=20.0, schedule_epochs=0))
    assert method.scheme == scheme and method.delta(TrainContext()) == pytest.approx(0.2)
    targets = torch.eye(5)[[0, 1, 2, 3, 4, 0, 1, 2]]
    batch = Batch(torch.randn(8, 8, 2, 2), targets, targets > 0, torch.arange(8))
    losses = method.compute_losses(batch, TrainContext(epoch=1, max_epochs=3))
    assert set(losses) == {"loss_ll"} and torch.isfinite(losses["loss_ll"])
    assert int(method.last_k) == 8                   # ceil(40 x 0.2)
    assert bool(method.corrected.rows.any()) == (scheme == "LL-Cp")
    assert not (method.modified_epoch.rows & batch.observed).any()


def test_default_scheme_delta_and_config_checks():
    cfg = BoostLUConfig()
    assert cfg.scheme == "LL-R" and cfg.alpha == 5.0
    assert BoostLU(_task(), cfg).delta(TrainContext(max_epochs=10)) == 0.005
    assert BoostLU(_task(), BoostLUConfig(scheme="LL-Cp")).delta(TrainContext(max_epochs=10)) == 0.001
    with pytest.raises(ValueError, match="scheme"):
        BoostLUConfig(scheme="LL-X")
    with pytest.raises(ValueError, match="alpha"):
        BoostLUConfig(alpha=0.0)
