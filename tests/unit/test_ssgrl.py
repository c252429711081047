"""SSGRL: the same SARL trunk as HST / SARB / DSRB / SST on every profile, trained with the masked BCE only."""
from __future__ import annotations

import pytest
import torch

from benchmark.contract.method import Batch, TaskSpec, TrainContext
from methods.dsrb import DSRB
from methods.hst import HST
from methods.modules.losses import masked_bce
from methods.ssgrl import SSGRL, SSGRLConfig
from methods.sst import SST


def _task(c=5, dim=16, size=(4, 4)):
    return TaskSpec(num_classes=c, class_names=[f"c{i}" for i in range(c)], num_train=8, feature_dim=dim,
                    feature_size=size, protocol="frozen", label_embeddings=torch.randn(c, 6),
                    label_graph=torch.eye(c) * 0.5 + 0.5)


def _trunk_shapes(method):
    return {name: tuple(t.shape) for name, t in method.trunk.state_dict().items()}


@pytest.mark.parametrize("profile", [None, "smoke", "default"])
def test_same_trunk_as_hst_and_the_other_sarl_methods(profile):
    task = _task()
    ssgrl = SSGRL(task, SSGRL.make_config(profile=profile))
    shapes = _trunk_shapes(ssgrl)
    for cls in (HST, DSRB, SST):
        other = cls(task, cls.make_config(profile=profile))
        assert _trunk_shapes(other) == shapes, cls.name
        assert type(other.trunk) is type(ssgrl.trunk)
    # nothing but the trunk (and the identity backbone of the frozen protocol) has parameters
    assert {name.split(".")[0] for name, _ in ssgrl.named_parameters()} == {"trunk"}


def test_loss_is_exactly_the_masked_bce_of_the_trunk_logits():
    torch.manual_seed(0)
    method = SSGRL(_task(), SSGRLConfig(feature_dim=16, hidden_dim=8, output_dim=16, pool=1)).train()
    inputs = torch.randn(6, 16, 4, 4)
    observed = torch.rand(6, 5) > 0.5
    targets = (torch.rand(6, 5) > 0.5).float() * observed
    losses = method.compute_losses(Batch(inputs, targets, observed, torch.arange(6)), TrainContext())
    assert set(losses) == {"loss_bce"}
    method.eval()          # BN of the channel change: compare in eval mode, where both paths agree exactly
    eval_losses = method.compute_losses(Batch(inputs, targets, observed, torch.arange(6)), TrainContext())
    assert torch.equal(eval_losses["loss_bce"], masked_bce(method.predict_scores(inputs), targets, observed))
    assert method.recovered_labels() is None and method.on_train_epoch_end(TrainContext()) == {}


def test_config_value_errors():
    with pytest.raises(ValueError, match="feature_dim"):
        SSGRLConfig(feature_dim=0)
