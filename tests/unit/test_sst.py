"""SST (wave-2 spec section 7): fixtures W13-W15 on the project's functions, the threshold schedule,
the loss terms switching on at E_g, label recovery and exact resume once the memory exists."""
from __future__ import annotations

import pytest
import torch

from benchmark.contract.method import TaskSpec, TrainContext
from methods.modules.feature_memory import PositiveFeatureMemory
from methods.sst import (
    SST,
    SSTConfig,
    inter_pseudo_labels,
    intra_pseudo_labels,
    sst_theta,
)
from tests.conftest import toy_batches as _batches


def _labels(signed):
    """HCP encoding {1, -1, 0} -> (targets, observed)."""
    y = torch.tensor(signed, dtype=torch.float32)
    return (y == 1).float(), y != 0


def _pseudo_signed(pseudo, signed):
    """Augmented labels in the HCP encoding (known unchanged, pseudo-positives 1)."""
    y = torch.tensor(signed)
    return torch.where(pseudo, torch.ones_like(y), y).tolist()


# --------------------------------------------------------------------------- W13
@pytest.mark.parametrize("theta, expected", [(0.95, [[1, 1, 0], [1, 0, -1]]), (0.925, [[1, 1, 1], [1, 0, -1]])])
def test_w13_intra_pseudo_labels(theta, expected):
    signed = [[1, 0, 0], [1, 0, -1]]
    targets, observed = _labels(signed)
    pair_logits = torch.tensor([[4.0, 2.9, 0.0], [2.0, -1.0, 5.0]])
    assert _pseudo_signed(intra_pseudo_labels(pair_logits, targets, observed, theta), signed) == expected


# --------------------------------------------------------------------------- W14
def _w14_memory():
    memory = PositiveFeatureMemory(2, 3, 2)
    memory.memory.copy_(torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.0, 0.0]], [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]]))
    memory.count.copy_(torch.tensor([2, 3]))
    return memory


@pytest.mark.parametrize("mean, d10, expected", [("official", 0.5657, [[1, 1], [0, 0]]),
                                                 ("filled", 0.8485, [[1, 1], [1, 0]])])
def test_w14_inter_pseudo_labels_official_and_filled_mean_p33(mean, d10, expected):
    signed = [[1, 0], [0, 0]]
    _, observed = _labels(signed)
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [-1.0, 0.0]]])
    similarity = _w14_memory().similarity(feats, mean)
    assert similarity[0, 1].item() == pytest.approx(1.0, abs=1e-6)
    assert similarity[1, 0].item() == pytest.approx(d10, abs=5e-5)
    assert similarity[1, 1].item() == pytest.approx(0.0, abs=1e-6)
    assert _pseudo_signed(inter_pseudo_labels(similarity, observed, 0.75), signed) == expected


# --------------------------------------------------------------------------- W15
def test_w15_memory_update_order():
    memory = PositiveFeatureMemory(2, 3, 2)
    t1, o1 = _labels([[1, 0], [1, 1]])
    memory.update(torch.tensor([[[1.0, 1], [2, 2]], [[3, 3], [4, 4]]]), o1 & (t1 > 0))
    assert memory.memory[0].tolist() == [[1, 1], [3, 3], [0, 0]]
    assert memory.memory[1].tolist() == [[4, 4], [0, 0], [0, 0]]
    assert memory.count.tolist() == [2, 1]
    t2, o2 = _labels([[-1, 1], [1, 1]])
    memory.update(torch.tensor([[[5.0, 5], [6, 6]], [[7, 7], [8, 8]]]), o2 & (t2 > 0))
    assert memory.memory[0].tolist() == [[7, 7], [1, 1], [3, 3]]
    assert memory.memory[1].tolist() == [[6, 6], [8, 8], [4, 4]]
    assert memory.count.tolist() == [3, 3]


def test_memory_keeps_the_first_k_of_a_large_batch():
    memory = PositiveFeatureMemory(1, 2, 1)
    memory.update(torch.arange(4.0).view(4, 1, 1), torch.ones(4, 1, dtype=torch.bool))
    assert memory.memory[0].flatten().tolist() == [0.0, 1.0] and memory.count.tolist() == [2]


# --------------------------------------------------------------------------- schedule
def test_theta_schedule_official_and_rescaled():
    unscaled = SSTConfig(schedule_epochs=0)
    thetas = [sst_theta(e, 5, unscaled, 20) for e in range(20)]
    assert thetas[:6] == [0.95] * 6 and thetas[6] == pytest.approx(0.925)
    assert thetas[12] == pytest.approx(0.775) and thetas[13:] == [0.75] * 7
    scaled = SSTConfig()
    assert [round(sst_theta(e, 2, scaled, 9), 4) for e in range(9)] == \
        [0.95, 0.95, 0.95, 0.8944, 0.8389, 0.7833, 0.75, 0.75, 0.75]


# --------------------------------------------------------------------------- the method
SMALL = dict(feature_dim=8, hidden_dim=4, output_dim=8, pool=1, memory_size=5)


def _task(c=4, n=12):
    return TaskSpec(num_classes=c, class_names=[f"c{i}" for i in range(c)], num_train=n, feature_dim=8,
                    feature_size=(2, 2), protocol="frozen", label_embeddings=torch.randn(c, 6),
                    label_graph=torch.eye(c))


def test_loss_terms_switch_on_at_the_pseudo_label_epoch_and_memory_fills():
    torch.manual_seed(0)
    method = SST(_task(), SSTConfig(**SMALL)).train()
    batches = _batches()
    ctx = TrainContext(epoch=0, max_epochs=20, iters_per_epoch=2)
    method.on_train_epoch_start(ctx)
    assert set(method.compute_losses(batches[0], ctx)) == {"loss_bce", "loss_cooc", "loss_instance"}
    assert method.recovered_labels() is None
    assert method.memory.count[0].item() == 5                # class 0 is a known positive of every row
    assert "memory.memory" in method.state_dict() and "memory.count" in method.state_dict()
    ctx.epoch = 5
    losses = method.compute_losses(batches[1], ctx)
    assert set(losses) == {"loss_bce", "loss_cooc", "loss_instance", "loss_bce_intra", "loss_bce_inter"}
    sum(losses.values()).backward()
    index, pseudo = method.recovered_labels()
    assert index.tolist() == list(range(6, 12)) and not (pseudo & batches[1].observed).any()
    diag = method.on_train_epoch_end(ctx)
    assert diag["theta"] == 0.95 and diag["pseudo_union"] == float(pseudo.sum())


def test_pseudo_labels_enter_the_augmented_bce():
    torch.manual_seed(0)
    method = SST(_task(), SSTConfig(**SMALL, theta_start=0.0, theta_floor=0.0)).train()
    batch = _batches()[0]
    ctx = TrainContext(epoch=5, max_epochs=20, iters_per_epoch=2)
    method.on_train_epoch_start(ctx)
    from methods.modules.losses import masked_bce

    logits = method.trunk(batch.inputs)[0]
    losses = method.compute_losses(batch, ctx)
    everything = torch.ones_like(batch.observed)              # theta 0: every unknown entry is intra-positive
    expected = masked_bce(logits, torch.where(batch.observed, batch.targets, torch.ones_like(batch.targets)), everything)
    assert losses["loss_bce_intra"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_config_value_errors():
    for kwargs, field in (({"memory_mean": "all"}, "memory_mean"), ({"theta_start": 1.0}, "theta"),
                          ({"recovery": "both"}, "recovery"), ({"memory_size": 0}, "memory_size")):
        with pytest.raises(ValueError, match=field):
            SSTConfig(**kwargs)
