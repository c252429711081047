"""Cole et al.'s single-positive losses (AN, AN-LS, WAN, EPR, ROLE): fixtures W1-W5 and W16 of
specs/methods_wave2.md, the random-protocol extension, ROLE's estimator (init pass, own optimizer
group without weight decay, rows outside the batch untouched) and exact resume."""
from __future__ import annotations

import pytest
import torch

from benchmark.contract.method import Batch, TaskSpec, TrainContext
from methods.modules import spml
from methods.role import ROLE, ROLEConfig
from methods.spml import EPR, WAN, ANLSConfig, EPRConfig, WANConfig

# W1-W5 shared inputs (1 = the observed positive, every other entry unknown), k = 1.5
LOGITS = torch.tensor([[1.0, -1.0, 2.0], [0.5, 0.0, -2.0]])
TARGETS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
OBSERVED = TARGETS > 0
PROBS = torch.sigmoid(LOGITS)
EST = torch.sigmoid(torch.tensor([[3.0, 0.0, -1.0], [0.5, 2.0, 1.0]]))
TOL = 5e-8   # half a unit of the fixtures' 7th decimal


def test_w1_to_w3_assume_negative_family():
    an = spml.mean_matrix(spml.assume_negative_matrix(PROBS, TARGETS, OBSERVED))
    an_ls = spml.mean_matrix(spml.assume_negative_matrix(PROBS, TARGETS, OBSERVED, ls_coef=0.1))
    wan = spml.mean_matrix(spml.weighted_an_matrix(PROBS, TARGETS, OBSERVED, unknown_weight=0.5))
    assert an.dtype == torch.float32
    assert an.item() == pytest.approx(0.7579057, abs=TOL)
    assert an_ls.item() == pytest.approx(0.7829050, abs=TOL)
    assert wan.item() == pytest.approx(0.4628174, abs=TOL)


def test_w4_epr_and_w5_role():
    reg = spml.expected_positive_reg(PROBS, 1.5)
    epr = spml.mean_matrix(spml.epr_matrix(PROBS, TARGETS, OBSERVED)) + reg
    assert reg.item() == pytest.approx(4.16564e-4, rel=2e-6)
    assert epr.item() == pytest.approx(0.1681457, abs=TOL)
    role_reg = spml.role_reg(PROBS, EST, 1.5)
    role = spml.mean_matrix(spml.role_matrix(PROBS, EST, TARGETS, OBSERVED)) + role_reg
    assert role_reg.item() == pytest.approx(0.0128973, rel=5e-6)
    assert role.item() == pytest.approx(1.0642244, abs=TOL)


def test_role_gradients_flow_to_each_side_through_the_other_detached():
    p = PROBS.clone().requires_grad_()
    q = EST.clone().requires_grad_()
    spml.mean_matrix(spml.role_matrix(p, q, TARGETS, OBSERVED)).backward()
    # p's gradient comes from its own terms only (q enters detached): 1/2 [-1(y=1)/(p+eps) - q/(p+eps) + (1-q)/(1-p+eps)] / (B C)
    eps = spml.LOG_EPS
    pos = OBSERVED.float()
    grad_p = 0.5 * (-pos / (PROBS + eps) - EST / (PROBS + eps) + (1 - EST) / (1 - PROBS + eps)) / 6
    assert torch.allclose(p.grad, grad_p, atol=1e-6)


def test_w16_role_init_constants_and_init_pass():
    assert spml.role_init_range(0.1) == pytest.approx(0.4054651, abs=TOL)
    assert spml.LOGIT_POS == pytest.approx(5.2933048, abs=TOL)
    task = _task(num_train=6, num_classes=4)
    torch.manual_seed(0)
    method = ROLE(task, ROLEConfig())
    q0 = spml.role_init_range(0.1)
    assert method.label_logits.abs().max() < q0
    targets = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]] * 2)
    observed = targets > 0
    observed[0, 3] = True                     # one observed negative (random protocol)
    batches = [Batch(torch.zeros(3, 8, 2, 2), targets[i:i + 3], observed[i:i + 3], torch.arange(i, i + 3))
               for i in (0, 3)]
    method.initialise_estimator(batches)
    theta = method.label_logits.detach()
    assert torch.allclose(theta[targets > 0], torch.tensor(5.2933048), atol=1e-6, rtol=0)
    assert theta[0, 3].item() == pytest.approx(-5.2933048, abs=1e-6)
    assert theta[~observed].abs().max() < q0
    assert torch.equal(method.observed_mask, observed) and bool(method.estimator_initialised)


def test_random_protocol_extension_gives_observed_negatives_full_weight():
    observed = OBSERVED.clone()
    observed[0, 1] = True                     # an observed negative at (0, 1)
    nl_neg = spml.neg_log(1 - PROBS[0, 1])
    an = spml.assume_negative_matrix(PROBS, TARGETS, observed)
    assert torch.equal(an, spml.assume_negative_matrix(PROBS, TARGETS, OBSERVED))   # AN unchanged
    wan = spml.weighted_an_matrix(PROBS, TARGETS, observed, 0.5)
    assert wan[0, 1] == nl_neg and wan[0, 2] == 0.5 * spml.neg_log(1 - PROBS[0, 2])
    assert spml.weighted_an_matrix(PROBS, TARGETS, observed, 0.5, observed_negatives=False)[0, 1] == 0.5 * nl_neg
    epr = spml.epr_matrix(PROBS, TARGETS, observed)
    assert epr[0, 1] == nl_neg and epr[0, 2] == 0 and epr[1, 0] == 0
    assert spml.epr_matrix(PROBS, TARGETS, observed, observed_negatives=False)[0, 1] == 0
    role = spml.role_matrix(PROBS, EST, TARGETS, observed) - spml.role_matrix(PROBS, EST, TARGETS, OBSERVED)
    expected = 0.5 * (nl_neg + spml.neg_log(1 - EST[0, 1]))
    assert role[0, 1].item() == pytest.approx(expected.item(), abs=1e-6) and role.abs().sum() == role[0, 1].abs()


def _task(num_train=16, num_classes=5, feature_dim=8, info=None, protocol="frozen"):
    return TaskSpec(num_classes=num_classes, class_names=[f"c{i}" for i in range(num_classes)], num_train=num_train,
                    feature_dim=feature_dim, feature_size=(2, 2), protocol=protocol, info=dict(info or {}))


def test_methods_use_the_harness_k_and_wan_default_gamma():
    task = _task(info={"expected_num_pos": 2.5, "mask_protocol": "single_positive"})
    batch = Batch(torch.randn(4, 8, 2, 2), torch.eye(5)[:4], torch.eye(5)[:4] > 0, torch.arange(4))
    epr = EPR(task, EPRConfig())
    assert epr.expected_num_pos(batch) == 2.5
    assert EPR(task, EPRConfig(expected_num_pos=1.0)).expected_num_pos(batch) == 1.0
    losses = epr.compute_losses(batch, TrainContext())
    assert set(losses) == {"loss_obs", "loss_epr"}
    probs = torch.sigmoid(epr.predict_scores(batch.inputs))
    assert losses["loss_epr"].item() == pytest.approx(spml.expected_positive_reg(probs, 2.5).item())
    torch.manual_seed(0)
    wan = WAN(task, WANConfig())
    torch.manual_seed(0)
    wan_quarter = WAN(task, WANConfig(unknown_weight=0.25))
    ctx = TrainContext()
    assert torch.equal(wan.compute_losses(batch, ctx)["loss_an"], wan_quarter.compute_losses(batch, ctx)["loss_an"])


@pytest.mark.parametrize("cfg, field", [(lambda: ANLSConfig(ls_coef=0.7), "ls_coef"),
                                        (lambda: WANConfig(unknown_weight=-1.0), "unknown_weight"),
                                        (lambda: EPRConfig(expected_num_pos=0.0), "expected_num_pos"),
                                        (lambda: ROLEConfig(estimator_lr_mult=0.0), "estimator_lr_mult")])
def test_config_checks_raise_value_errors(cfg, field):
    with pytest.raises(ValueError, match=field):
        cfg()


def test_role_estimator_has_its_own_group_and_moves_only_batch_rows():
    task = _task(num_train=20, info={"expected_num_pos": 1.5})
    torch.manual_seed(0)
    method = ROLE(task, ROLEConfig())
    groups = method.param_groups(lr=1e-3, weight_decay=1e-4)
    assert groups[1]["params"] == [method.label_logits]
    assert groups[1]["lr"] == pytest.approx(1e-2) and groups[1]["weight_decay"] == 0.0
    assert all(p is not method.label_logits for p in groups[0]["params"])
    optimizer = torch.optim.Adam(groups, lr=1e-3, weight_decay=1e-4)
    before = method.label_logits.detach().clone()
    index = torch.tensor([3, 7, 11, 19])
    targets = torch.eye(5)[:4]
    batch = Batch(torch.randn(4, 8, 2, 2), targets, targets > 0, index)
    sum(method.compute_losses(batch, TrainContext()).values()).backward()
    optimizer.step()
    after = method.label_logits.detach()
    others = torch.ones(20, dtype=torch.bool)
    others[index] = False
    assert torch.equal(after[others], before[others])
    assert (after[index] != before[index]).all()


def test_role_predictions_ignore_the_estimator():
    method = ROLE(_task(), ROLEConfig())
    x = torch.randn(3, 8, 2, 2)
    before = method.predict_scores(x).detach()
    with torch.no_grad():
        method.label_logits.add_(10.0)
    assert torch.equal(method.predict_scores(x).detach(), before)


# --------------------------------------------------------------------------- ROLE linear_init (two stages)
def test_w16_hand_over_logits_from_estimated_labels():
    theta = spml.role_logits_from_estimates(torch.tensor([0.0, 1.0, 0.5]))
    assert theta.dtype == torch.float32
    assert theta.tolist() == pytest.approx([-11.5129, 11.5116, 0.0], abs=5e-5)


def _two_stage_role(linear_init_epochs=2):
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.BatchNorm2d(8))
    task = _task(num_train=8, info={"expected_num_pos": 1.5}, protocol="finetune")
    method = ROLE(task, ROLEConfig(stages="linear_init", linear_init_epochs=linear_init_epochs), backbone=backbone)
    targets = torch.eye(5)[torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])]
    batch = Batch(torch.randn(8, 3, 2, 2), targets, targets > 0, torch.arange(8))
    return method, backbone, batch


def _step(method, optimizer, batch):
    optimizer.zero_grad()
    sum(method.compute_losses(batch, TrainContext()).values()).backward()
    optimizer.step()


def test_role_linear_init_freezes_the_backbone_then_hands_theta_over_once():
    method, backbone, batch = _two_stage_role(linear_init_epochs=2)
    groups = method.param_groups(lr=1e-2, weight_decay=1e-4)
    optimizer = torch.optim.Adam(groups, lr=1e-2, weight_decay=1e-4)      # one optimizer for the run, as the engine
    assert all(any(p is q for q in groups[0]["params"]) for p in backbone.parameters())
    method.on_train_epoch_start(TrainContext(epoch=0, max_epochs=3, iterate_train=lambda: iter([batch])))
    method.train()
    assert int(method.training_stage) == 1 and method.head.training and not backbone.training
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()}
    head, theta = method.head.weight.detach().clone(), method.label_logits.detach().clone()
    for epoch in (0, 1):                     # stage 1: only the head and theta move
        method.on_train_epoch_start(TrainContext(epoch=epoch, max_epochs=3))
        method.train()
        _step(method, optimizer, batch)
    assert all(p.grad is None and p not in optimizer.state for p in backbone.parameters())
    assert all(torch.equal(frozen[k], v) for k, v in backbone.state_dict().items())      # weights and BN statistics
    assert not torch.equal(method.head.weight, head) and (method.label_logits != theta).all()
    before = method.label_logits.detach().clone()
    method.on_train_epoch_start(TrainContext(epoch=2, max_epochs=3))      # the boundary: theta re-set from sigmoid(theta)
    method.train()
    assert int(method.training_stage) == 2 and backbone.training
    assert torch.equal(method.label_logits.detach(), spml.role_logits_from_estimates(torch.sigmoid(before)))
    assert (method.label_logits.detach() - before).abs().max() < 1e-4     # carried over, not re-initialised
    _step(method, optimizer, batch)
    conv = backbone[0].weight
    assert conv.grad is not None and int(optimizer.state[conv]["step"]) == 1        # a fresh Adam state
    assert int(optimizer.state[method.head.weight]["step"]) == 3                      # carried (deviation)
    after = method.label_logits.detach().clone()
    method.on_train_epoch_start(TrainContext(epoch=3, max_epochs=4))      # later epochs: no second hand-over
    assert torch.equal(method.label_logits.detach(), after)


def test_role_stage_switch_checks_and_one_stage_state_keys():
    with pytest.raises(ValueError, match="stages"):
        ROLEConfig(stages="two")
    with pytest.raises(ValueError, match="linear_init_epochs"):
        ROLEConfig(stages="linear_init", linear_init_epochs=0)
    method, _, batch = _two_stage_role(linear_init_epochs=3)
    from benchmark.core.errors import UserError
    with pytest.raises(UserError, match="no end-to-end epoch"):
        method.on_train_epoch_start(TrainContext(epoch=0, max_epochs=3, iterate_train=lambda: iter([batch])))
    assert "training_stage" in method.state_dict()
    assert "training_stage" not in ROLE(_task(), ROLEConfig()).state_dict()   # one-stage checkpoints unchanged
