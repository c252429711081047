"""ASL and CSL (wave-2 spec sections 5 and 6): fixtures W11 / W12, the unknown-label rule, the
selective weights and their pitfall switches, the class prior (file, observed, temporary model)
and exact resume once the prior exists."""
from __future__ import annotations

import pytest
import torch

from benchmark.contract.method import Batch, TaskSpec, TrainContext
from methods.asl import ASL, ASLConfig, resolve_unknown
from methods.csl import CSL, CSLConfig
from methods.modules.asl import asl_per_entry, partial_asl_per_entry
from methods.modules.selective import (
    likelihood_topk,
    prior_ignore_mask,
    read_prior_csv,
    selective_weights,
)

# --------------------------------------------------------------------------- W11 (ASL)
W11_LOGITS = [[2.0, -1.0], [0.5, -3.0]]
W11_TARGETS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
W11 = dict(gamma_pos=0.0, gamma_neg=4.0, clip=0.05, eps=1e-8)


@pytest.mark.parametrize("detach, grad", [(True, 0.0590304), (False, 0.2088737)])
def test_w11_asl_value_and_the_two_official_gradients(detach, grad):
    logits = torch.tensor(W11_LOGITS, requires_grad=True)
    loss = asl_per_entry(logits, W11_TARGETS, detach_focal=detach, **W11).sum()
    assert loss.item() == pytest.approx(3.2673361, abs=5e-7)
    loss.backward()
    assert logits.grad[1, 0].item() == pytest.approx(grad, abs=5e-7)


def test_focal_weight_grad_mode_is_scoped_p23():
    with torch.no_grad():
        asl_per_entry(torch.tensor(W11_LOGITS), W11_TARGETS, **W11)
        partial_asl_per_entry(torch.tensor(W11_LOGITS), W11_TARGETS, torch.ones(2, 2, dtype=torch.bool))
        assert not torch.is_grad_enabled()


def _task(c=4, n=8, dim=3, protocol="random", names=None):
    return TaskSpec(num_classes=c, class_names=names or [f"c{i}" for i in range(c)], num_train=n, feature_dim=dim,
                    feature_size=(1, 1), protocol="frozen", info={"mask_protocol": protocol})


def test_asl_unknown_rule_and_method_loss():
    assert resolve_unknown("auto", "random") == "ignore" and resolve_unknown("auto", "random_clsl") == "ignore"
    assert resolve_unknown("auto", "single_positive") == "negative"
    assert resolve_unknown("negative", "random") == "negative"
    logits = torch.tensor(W11_LOGITS)
    observed = torch.tensor([[True, False], [True, True]])
    batch = Batch(torch.zeros(2, 3, 1, 1), W11_TARGETS * observed, observed, torch.arange(2))
    per = asl_per_entry(logits, W11_TARGETS * observed, **W11)
    for protocol, expected in (("random", per[observed].sum()), ("single_positive", per.sum())):
        method = ASL(_task(c=2, protocol=protocol), ASLConfig())
        method.predict_scores = lambda inputs: logits          # fixed logits: the loss alone is tested
        assert method.compute_losses(batch, TrainContext())["loss_asl"].item() == pytest.approx(expected.item())
    method = ASL(_task(c=2), ASLConfig(reduction="mean", unknown="negative"))
    method.predict_scores = lambda inputs: logits
    assert method.compute_losses(batch, TrainContext())["loss_asl"].item() == pytest.approx(per.sum().item() / 4)


def test_config_value_errors():
    for cls, kwargs, field in ((ASLConfig, {"unknown": "drop"}, "unknown"), (ASLConfig, {"reduction": "max"}, "reduction"),
                               (CSLConfig, {"mode": "select"}, "mode"), (CSLConfig, {"topk_scope": "all"}, "topk_scope"),
                               (CSLConfig, {"prior": "file:/no/such/prior.csv"}, "prior"),
                               (CSLConfig, {"prior": "guess"}, "prior")):
        with pytest.raises(ValueError, match=field):
            cls(**kwargs)


# --------------------------------------------------------------------------- W12 (CSL)
W12_LOGITS = torch.tensor([[2.0, -1.0, 0.5, -3.0], [1.5, 0.2, -0.7, -2.0]])
W12_CSL = torch.tensor([[1, -1, -1, 0], [-1, -1, 1, -1]])          # CSL encoding: -1 = un-annotated
W12_TARGETS, W12_OBSERVED = (W12_CSL == 1).float(), W12_CSL != -1
W12_PRIOR = torch.tensor([0.1, 0.6, 0.2, 0.1])
W12_CFG = dict(gamma_pos=0.0, gamma_neg=1.0, gamma_unann=4.0, clip=0.0, likelihood_topk=1, prior_threshold=0.5,
               prior="observed")


def _w12_method(**kw):
    method = CSL(_task(), CSLConfig(**{**W12_CFG, **kw}))
    method.class_prior.copy_(W12_PRIOR)
    method.prior_ready.fill_(True)
    return method


@pytest.mark.parametrize("scope", ["image", "batch"])
def test_w12_selective_weights_and_loss(scope):
    method = _w12_method(topk_scope=scope)
    loss, by_prior, by_likelihood = method.csl_loss(W12_LOGITS, W12_TARGETS, W12_OBSERVED)
    assert loss.item() == pytest.approx(1.2324440, abs=5e-7)
    assert by_prior.tolist() == [[False, True, False, False], [False, True, False, False]]
    assert by_likelihood.nonzero().tolist() == [[0, 2], [1, 0]]
    weights = (~(by_prior | by_likelihood)).int()
    assert weights.tolist() == [[1, 0, 0, 1], [0, 0, 1, 1]]


@pytest.mark.parametrize("mode, value", [("negative", 2.2134440), ("ignore", 1.2324184)])
def test_w12_negative_and_ignore_modes(mode, value):
    loss = _w12_method(mode=mode).csl_loss(W12_LOGITS, W12_TARGETS, W12_OBSERVED)[0]
    assert loss.item() == pytest.approx(value, abs=5e-7)


def test_ignore_normalize_classes_weights_annotated_entries_p32():
    per = partial_asl_per_entry(W12_LOGITS, W12_TARGETS, W12_OBSERVED, 0.0, 1.0, 4.0)
    expected = (per[0, [0, 3]].sum() * (1 / 3 + 1) + per[1, 2] * (1 / 2 + 1)).item()
    loss = _w12_method(mode="ignore_normalize_classes").csl_loss(W12_LOGITS, W12_TARGETS, W12_OBSERVED)[0]
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_negative_mode_with_equal_gammas_is_asl_with_unknowns_negative():
    targets = W12_TARGETS * W12_OBSERVED
    partial = partial_asl_per_entry(W12_LOGITS, targets, W12_OBSERVED, 0.0, 4.0, 4.0, clip=0.05)
    assert torch.allclose(partial, asl_per_entry(W12_LOGITS, targets, 0.0, 4.0, 0.05, 1e-8))


def test_topk_scope_per_image_vs_per_batch_p32():
    logits = torch.tensor([[3.0, 2.0, 1.0], [-1.0, -2.0, -3.0]])
    observed = torch.zeros(2, 3, dtype=torch.bool)
    p_neg = 1 - torch.sigmoid(logits)
    assert likelihood_topk(p_neg, observed, 1, "image").nonzero().tolist() == [[0, 0], [1, 0]]
    assert likelihood_topk(p_neg, observed, 1, "batch").nonzero().tolist() == [[0, 0], [0, 1]]
    tied = likelihood_topk(torch.ones(1, 4), observed[:1, :1].expand(1, 4).clone(), 2, "batch")
    assert tied.nonzero().tolist() == [[0, 0], [0, 1]]          # stable: ties go to the earlier entry


def test_zero_threshold_applies_the_prior_unless_official_p32():
    prior = torch.tensor([0.0, 0.2, float("nan")])
    assert prior_ignore_mask(prior, 0.0).tolist() == [False, True, False]
    assert prior_ignore_mask(prior, 0.0, zero_disables=True) is None
    weights, by_prior, _ = selective_weights(torch.ones(1, 3), torch.zeros(1, 3, dtype=torch.bool),
                                             prior_ignore_mask(prior, 0.0), 0)
    assert weights.tolist() == [[1.0, 0.0, 1.0]] and by_prior.sum() == 1


# --------------------------------------------------------------------------- prior files (P31)
def _write(path, lines):
    path.write_text("\n".join(["Classes,avg_pred", *lines]) + "\n")
    return path


def test_prior_file_validation_p31(tmp_path):
    names = ["a", "b", "c"]
    good = _write(tmp_path / "good.csv", ["a,0.1", "b,0.7", "c,0.3"])
    assert read_prior_csv(good, names).tolist() == pytest.approx([0.1, 0.7, 0.3])
    stray = _write(tmp_path / "stray.csv", ["a,0.1", "b,0.7", "c,0.3", "1542867"])
    with pytest.raises(ValueError, match="stray.csv has 4 rows"):
        read_prior_csv(stray, names)
    swapped = _write(tmp_path / "swapped.csv", ["b,0.1", "a,0.7", "c,0.3"])
    with pytest.raises(ValueError, match="row 1 is class 'b'"):
        read_prior_csv(swapped, names)
    assert read_prior_csv(stray, names, validate=False).tolist() == pytest.approx([0.1, 0.7, 0.3])
    short = read_prior_csv(_write(tmp_path / "short.csv", ["a,0.1", "b,x"]), names, validate=False)
    assert short[0].item() == pytest.approx(0.1) and short[1:].isnan().all()
    method = CSL(_task(c=3, names=names), CSLConfig(prior=f"file:{good}"))
    assert bool(method.prior_ready) and method.class_prior.tolist() == pytest.approx([0.1, 0.7, 0.3])
    with pytest.raises(ValueError, match="stray.csv"):
        CSL(_task(c=3, names=names), CSLConfig(prior=f"file:{stray}"))


# --------------------------------------------------------------------------- prior estimation
def _batches(n=8, c=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    observed = torch.rand(n, c, generator=gen) > 0.5
    targets = (torch.rand(n, c, generator=gen) > 0.5).float() * observed
    inputs = torch.randn(n, 3, 1, 1, generator=gen)
    return [Batch(inputs[i:i + 4], targets[i:i + 4], observed[i:i + 4], torch.arange(i, i + 4)) for i in (0, 4)]


def test_observed_prior_is_the_observed_positive_rate():
    batches = _batches()
    method = CSL(_task(), CSLConfig(prior="observed"))
    method.on_train_epoch_start(TrainContext(iterate_train=lambda: iter(batches)))
    observed = torch.cat([b.observed for b in batches]).float()
    targets = torch.cat([b.targets for b in batches])
    assert torch.allclose(method.class_prior, targets.sum(0) / observed.sum(0).clamp_min(1))


def test_temporary_model_prior_is_seeded_and_leaves_the_global_rng_alone():
    batches = _batches()
    ctx = TrainContext(max_epochs=3, iters_per_epoch=2, seed=4, iterate_train=lambda: iter(batches))
    priors = []
    for _ in range(2):
        torch.manual_seed(0)
        method = CSL(_task(), CSLConfig())
        state = torch.get_rng_state()
        method.on_train_epoch_start(ctx)
        assert torch.equal(torch.get_rng_state(), state)
        assert bool(method.prior_ready) and method.prior_count.item() == 3 * 8    # 3 epochs x 2 batches of 4
        priors.append(method.class_prior.clone())
    assert torch.equal(priors[0], priors[1]) and ((priors[0] > 0) & (priors[0] < 1)).all()
    method.on_train_epoch_start(ctx)                     # ready: not re-estimated in later epochs
    assert method.prior_count.item() == 24


def test_recovered_labels_are_the_likelihood_ignored_entries():
    batches = _batches()
    method = CSL(_task(), CSLConfig(prior="none", likelihood_topk=1))
    method.on_train_epoch_start(TrainContext())
    assert method.recovered_labels() is None
    method.compute_losses(batches[1], TrainContext())
    index, pseudo = method.recovered_labels()
    assert index.tolist() == [4, 5, 6, 7]
    assert not (pseudo & batches[1].observed).any()
    assert pseudo.sum(1).tolist() == [min(1, int((~o).sum())) for o in batches[1].observed]
    diag = method.on_train_epoch_end(TrainContext())
    assert diag["ignored_likelihood"] == float(pseudo.sum()) and diag["ignored_prior"] == 0.0
    assert CSL(_task(), CSLConfig(mode="ignore")).recovered_labels() is None


# --------------------------------------------------------------------------- the official running prior
LN3, LN9 = float(torch.log(torch.tensor(3.0))), float(torch.log(torch.tensor(9.0)))


def test_running_prior_is_the_mean_over_every_row_seen_and_the_validation_mean():
    """Hand-computed (the spec has no prior fixture): sigmoid(0) = 0.5, sigmoid(ln 3) = 0.75,
    sigmoid(-ln 3) = 0.25, sigmoid(ln 9) = 0.9."""
    from methods.modules.selective import running_prior

    first = torch.tensor([[0.0, LN3], [LN3, -LN3]], requires_grad=True)
    prior, state = running_prior(first)
    assert prior.tolist() == pytest.approx([0.625, 0.5], abs=1e-7) and not prior.requires_grad
    prior, state = running_prior(torch.tensor([[-LN3, 0.0]]), state)
    # the mean over the 3 rows, not the mean of the two batch means ([0.4375, 0.5])
    assert prior.tolist() == pytest.approx([0.5, 0.5], abs=1e-7) and prior.dtype == torch.float32
    assert state[1].item() == 3 and state[0].dtype == torch.float64
    val, val_state = running_prior(torch.tensor([[LN9, -LN9], [0.0, LN3]]))     # the validation stream: its own state
    assert val.tolist() == pytest.approx([0.7, 0.425], abs=1e-7) and val_state[1].item() == 2
    assert running_prior(torch.tensor([[-LN3, 0.0]]), state)[0].tolist() == pytest.approx([0.4375, 0.5], abs=1e-7)
    assert running_prior(torch.zeros(0, 2))[0].tolist() == [0.0, 0.0]


def test_temporary_model_prior_is_the_running_prior_of_its_training_logits(monkeypatch):
    import methods.csl as csl_module
    from methods.modules.selective import running_prior

    seen, outputs = [], []

    def spy(logits, state=None):
        seen.append(logits.detach().clone())
        outputs.append(running_prior(logits, state))
        return outputs[-1]

    monkeypatch.setattr(csl_module, "running_prior", spy)
    batches = _batches()
    method = CSL(_task(), CSLConfig())
    method.on_train_epoch_start(TrainContext(max_epochs=3, iters_per_epoch=2, seed=4, iterate_train=lambda: iter(batches)))
    assert len(seen) == 3 * 2                           # every iteration of the temporary model, first ones included
    assert torch.equal(method.class_prior, outputs[-1][0]) and method.prior_count.item() == 24
    assert torch.allclose(method.class_prior, torch.sigmoid(torch.cat(seen)).mean(0), atol=1e-7, rtol=0)
