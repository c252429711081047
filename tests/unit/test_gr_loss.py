"""GR Loss (Chen et al., IJCAI 2024): fixtures X6-X8 of specs/methods_wave3.md (loss, gradient and
schedule of the official code), the observed-negative extension (P48), the NaN-safe powers (P49),
the method's use of ctx.epoch, its diagnostics, config checks and parameter groups."""
from __future__ import annotations

import math

import pytest
import torch

from benchmark.contract.method import Batch, TaskSpec, TrainContext
from benchmark.core.errors import UserError
from methods.gr_loss import GRLoss, GRLossConfig
from methods.modules import robust

BETA, ALPHA = (0.0, 2.0, -2.0, -2.0), (0.5, 2.0, 0.8, 0.5)
LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, -3.0]])
LABEL_VEC = torch.tensor([[1, 0, 0], [0, 1, -1]])          # GRL encoding: (1, 2) is an observed negative
TOL = 5e-8                                                  # half a unit of the fixtures' 7th decimal

X8 = [(0.0, -2.0, 0.5375, 1.8125), (0.25, -2.0, 0.575, 1.625), (0.5, -2.0, 0.6125, 1.4375), (0.75, -2.0, 0.65, 1.25),
      (1.0, -2.0, 0.6875, 1.0625), (1.25, -2.0, 0.7250000000000001, 0.875), (1.5, -2.0, 0.7625000000000001, 0.6875),
      (1.75, -2.0, 0.8, 0.5)]


def _loss(epoch, logits=LOGITS, label_vec=LABEL_VEC, q2=0.01, q3=1.0, observed_negatives="ignore", nan_safe=True):
    """(loss, gradient w.r.t. the logits, K, V, matrix) at the official 1-based epoch of 8."""
    z = logits.clone().requires_grad_()
    sched = robust.kv_schedule(BETA, ALPHA, epoch, 8)
    probs = torch.sigmoid(z)
    k = robust.k_function(probs.detach(), sched.w, sched.b)
    v = robust.v_function(probs.detach(), sched.mu, sched.sigma)
    targets, observed = robust.from_official(label_vec)
    matrix = robust.gr_loss_matrix(probs, targets, observed, k, v, q2, q3, robust.LOG_EPS, observed_negatives,
                                   nan_safe)
    loss = matrix.mean()
    loss.backward()
    return loss, z.grad, k, v, matrix.detach()


def _close(got, want, tol=TOL):
    assert torch.allclose(got.double(), torch.tensor(want, dtype=torch.float64), atol=tol, rtol=0), got


def test_x8_schedule_in_double_precision_with_the_asymmetric_step_rules():
    got = [robust.kv_schedule(BETA, ALPHA, e, 8) for e in range(1, 9)]
    assert [(s.w, s.b, s.mu, s.sigma) for s in got] == X8       # exact: the official float operations (P47)
    assert got[5].mu == 0.7250000000000001 and got[-1].w == 1.75   # w never reaches w_T = 2
    # AEVLP's COCO schedule (Y7) is the same function with its own beta
    coco = [robust.kv_schedule((0, 10, -2, -8), ALPHA, e, 8) for e in (1, 4, 8)]
    assert [(s.w, s.b, s.mu, s.sigma) for s in coco] == [(0, -2, 0.5375, 1.8125), (3.75, -4.25, 0.65, 1.25),
                                                          (8.75, -7.25, 0.8, 0.5)]
    # the step rules are parameters: without the lag, w reaches w_T at the last epoch
    assert robust.kv_schedule(BETA, ALPHA, 8, 8, k_lag=0).w == 2.0
    assert robust.kv_schedule(BETA, ALPHA, 1, 8, v_lag=1).mu == 0.5


def test_schedule_holds_start_values_during_linear_init_and_refuses_linear_init_of_all_epochs():
    held = [robust.kv_schedule(BETA, ALPHA, e, 8, linear_init=2) for e in (1, 2)]
    assert all((s.w, s.b, s.mu, s.sigma) == (0.0, -2.0, 0.5, 2.0) for s in held)
    third = robust.kv_schedule(BETA, ALPHA, 3, 8, linear_init=2)
    assert (third.w, third.mu) == (0.0, 0.5 + 0.30000000000000004 / 6)
    assert robust.kv_schedule(BETA, ALPHA, 8, 8, linear_init=2).mu == 0.8
    with pytest.raises(ValueError, match="linear_init < max_epochs"):
        robust.kv_schedule(BETA, ALPHA, 1, 8, linear_init=8)


def test_from_official_encoding():
    targets, observed = robust.from_official(LABEL_VEC)
    assert targets.tolist() == [[1, 0, 0], [0, 1, 0]]
    assert observed.tolist() == [[True, False, False], [False, True, True]]


def test_x6_loss_and_gradient_at_epoch_1():
    loss, grad, k, v, matrix = _loss(1)
    assert loss.dtype == torch.float32
    _close(k, [[0.1192029] * 3] * 2)
    _close(v, [[0.9822227, 0.9997860, 0.9890828], [0.9997860, 0.9943141, 0.9641058]])
    _close(matrix, [[0.1269279, 0.5226263, 0.3881198], [0.5226263, 0.3132615, 0.0]])
    assert loss.item() == pytest.approx(0.3122603, abs=TOL)
    _close(grad, [[-0.0198672, 0.0268292, 0.0143694], [0.0268292, -0.0448236, 0.0]])


def test_x7_loss_and_gradient_at_epoch_8():
    loss, grad, k, v, matrix = _loss(8)
    _close(k, [[0.3873168, 0.2450850, 0.1780885], [0.2450850, 0.3272504, 0.1281960]])
    _close(v, [[0.9870285, 0.8352702, 0.5689024], [0.8352702, 0.9905392, 0.3221507]])
    _close(matrix[[0, 0, 1], [1, 2, 0]], [0.4566844, 0.2579367, 0.4566844])
    assert loss.item() == pytest.approx(0.2685825, abs=TOL)
    _close(grad, [[-0.0198672, 0.0093317, 0.0031387], [0.0093317, -0.0448236, 0.0]])


@pytest.mark.parametrize("mode, entry, loss, grad", [
    ("bce", 0.0485872, 0.3203582, 0.0079043),        # -log(1 - p + 1e-7), p = sigmoid(-3)
    ("robust", 0.0474259, 0.3201646, 0.0075294),     # l2(p; q3 = 1) = p
    ("ignore", 0.0, 0.3122603, 0.0)])                # official: 0, counted in the mean (P48)
def test_observed_negative_modes(mode, entry, loss, grad):
    got, g, _, _, matrix = _loss(1, observed_negatives=mode)
    assert matrix[1, 2].item() == pytest.approx(entry, abs=TOL)
    assert got.item() == pytest.approx(loss, abs=1e-7)       # hand-derived from X6's rounded entries
    assert g[1, 2].item() == pytest.approx(grad, abs=TOL)
    _close(matrix[0], [0.1269279, 0.5226263, 0.3881198])   # the other entries are X6's


@pytest.mark.parametrize("logit, label, q3", [(-100.0, 0, 1.0),    # p == 0 at an unknown: p^q2 (P49)
                                              (100.0, 0, 0.5),     # p == 1 at an unknown: (1 - p)^q3, q3 < 1
                                              (100.0, -1, 0.5)])   # p == 1 at an observed negative, "robust"
def test_nan_safe_keeps_the_values_and_zeroes_the_singular_gradient(logit, label, q3):
    logits = torch.tensor([[2.0, logit]])
    label_vec = torch.tensor([[1, label]])
    official, g_official, *_ = _loss(4, logits, label_vec, q3=q3, observed_negatives="robust", nan_safe=False)
    safe, g_safe, *_ = _loss(4, logits, label_vec, q3=q3, observed_negatives="robust", nan_safe=True)
    assert math.isfinite(official.item()) and official.item() == safe.item()
    assert torch.isnan(g_official[0, 1]) and not torch.isnan(g_official[0, 0])
    assert torch.isfinite(g_safe).all() and g_safe[0, 1] == 0 and g_safe[0, 0] == g_official[0, 0]


def test_safe_pow_is_the_plain_power_away_from_zero():
    x = torch.tensor([0.0, 1e-30, 0.3, 1.0], requires_grad=True)
    y = x.detach().clone().requires_grad_()
    robust.safe_pow(x, 0.01).sum().backward()
    torch.pow(y, 0.01).sum().backward()
    assert torch.equal(robust.safe_pow(x, 0.01), torch.pow(y, 0.01))
    assert x.grad[0] == 0 and torch.isinf(y.grad[0]) and torch.equal(x.grad[1:], y.grad[1:])


# ----------------------------------------------------------------------------- the method


def _task(protocol="frozen", num_classes=3):
    return TaskSpec(num_classes=num_classes, class_names=[f"c{i}" for i in range(num_classes)], num_train=2,
                    feature_dim=3, feature_size=(2, 2), protocol=protocol, info={"mask_protocol": "random"})


def _identity_head_method(**cfg) -> GRLoss:
    """A method whose logits are the pooled input features (head = identity), so inputs give LOGITS."""
    method = GRLoss(_task(), GRLossConfig(**cfg))
    with torch.no_grad():
        method.head.weight.copy_(torch.eye(3))
        method.head.bias.zero_()
    return method


def _batch():
    targets, observed = robust.from_official(LABEL_VEC)
    return Batch(LOGITS[:, :, None, None].expand(2, 3, 2, 2).clone(), targets, observed, torch.arange(2))


def test_method_reads_the_schedule_from_ctx_epoch_and_logs_the_epochs_k_and_v():
    method = _identity_head_method(observed_negatives="ignore")
    for epoch, want in ((0, 0.3122603), (7, 0.2685825)):      # X6 and X7: 0-based ctx.epoch of 8
        ctx = TrainContext(epoch=epoch, max_epochs=8)
        method.on_train_epoch_start(ctx)
        losses = method.compute_losses(_batch(), ctx)
        assert set(losses) == {"loss_gr"} and losses["loss_gr"].item() == pytest.approx(want, abs=TOL)
        method.compute_losses(_batch(), ctx)                  # two steps: the means stay the epoch's means
        diag = method.on_train_epoch_end(ctx)
        assert (diag["w"], diag["b"], diag["mu"], diag["sigma"]) == X8[epoch]
    # epoch 8's K and V at the three unknown entries (0, 1), (0, 2), (1, 0) (X7)
    assert diag["mean_k_unknown"] == pytest.approx((0.2450850 * 2 + 0.1780885) / 3, abs=1e-7)
    assert diag["mean_v_unknown"] == pytest.approx((0.8352702 * 2 + 0.5689024) / 3, abs=1e-7)
    assert diag["backbone_held"] == 0.0 and method.recovered_labels() is None
    method.on_train_epoch_start(TrainContext(epoch=0, max_epochs=8))
    assert not method.kv_sums.any()


def test_method_loss_is_float32_under_bf16_autocast_and_default_trains_observed_negatives():
    method = _identity_head_method()
    ctx = TrainContext(epoch=0, max_epochs=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = method.compute_losses(_batch(), ctx)["loss_gr"]
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(0.3203582, abs=TOL)   # "bce" default: X6 + -log(1 - p) at (1, 2)


def test_linear_init_holds_the_backbone_and_shifts_the_schedule():
    backbone = torch.nn.Conv2d(3, 3, 1)
    method = GRLoss(_task("finetune"), GRLossConfig(linear_init=1), backbone=backbone)
    batch = Batch(torch.randn(2, 3, 2, 2), *robust.from_official(LABEL_VEC), torch.arange(2))
    for epoch, held in ((0, True), (1, False)):
        ctx = TrainContext(epoch=epoch, max_epochs=3)
        method.zero_grad(set_to_none=True)
        method.compute_losses(batch, ctx)["loss_gr"].backward()
        assert (backbone.weight.grad is None) == held and method.head.weight.grad is not None
        assert method.on_train_epoch_end(ctx)["backbone_held"] == float(held)
    # 1-based epoch 2 of 3 after one held epoch: w at its start, mu one of two steps along
    diag = method.on_train_epoch_end(TrainContext(epoch=1, max_epochs=3))
    assert (diag["w"], diag["mu"]) == (0.0, 0.5 + 0.30000000000000004 / 2)
    with pytest.raises(UserError, match="linear_init"):
        method.compute_losses(batch, TrainContext(epoch=0, max_epochs=1))


def test_param_groups_put_the_head_at_ten_times_the_lr_in_finetune_only():
    assert GRLoss(_task(), GRLossConfig()).param_groups(1e-5, 0.0) is None
    backbone = torch.nn.Conv2d(3, 3, 1)
    tuned = GRLoss(_task("finetune"), GRLossConfig(), backbone=backbone)
    groups = tuned.param_groups(1e-5, 0.0)
    assert groups[0]["params"] == list(backbone.parameters()) and groups[1]["lr"] == pytest.approx(1e-4)
    assert {id(p) for p in groups[1]["params"]} == {id(tuned.head.weight), id(tuned.head.bias)}


def test_config_defaults_come_from_the_official_config_and_bad_values_are_refused():
    cfg = GRLoss.make_config({"beta": [0, 10, -2, -8]})
    assert cfg.beta == (0.0, 10.0, -2.0, -8.0) and cfg.alpha == ALPHA
    assert (cfg.q2, cfg.q3, cfg.log_eps, cfg.linear_init, cfg.head_lr_mult) == (0.01, 1.0, 1e-7, 0, 10.0)
    assert (cfg.observed_negatives, cfg.nan_safe) == ("bce", True)
    for bad in ({"beta": [0, 2, -2]}, {"alpha": [0.5, 0.0, 0.8, 0.5]}, {"q2": 0.0}, {"linear_init": -1},
                {"observed_negatives": "negative"}, {"beta": [0, 2, -2, float("nan")]}):
        with pytest.raises(UserError):
            GRLoss.make_config(bad)
