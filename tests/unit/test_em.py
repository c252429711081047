"""EM and EM+APL (Zhou et al.): fixtures X1-X5 of specs/methods_wave3.md on the project's functions,
the suite switches (P38-P42), the per-dataset values against the recipe file, and the APL round of the
method (epoch-end pass, tables, diagnostics, state dict)."""
from __future__ import annotations

import json

import pytest
import torch

from benchmark.contract.method import Batch, TaskSpec, TrainContext
from methods.em import (
    DATASET_VALUES,
    EM,
    EMAPL,
    GUESS,
    EMAPLConfig,
    EMConfig,
    dataset_values,
)
from methods.modules import em, spml

# X1, X2 shared logits
Z = [[2.0, 0.0, -1.0], [0.0, 1.0, -3.0]]
TOL = 5e-8


def _loss(terms: dict) -> torch.Tensor:
    return sum(spml.mean_matrix(m) for m in terms.values())


def _fixture_loss(labels, alpha, beta=0.0, reading="negative"):
    z = torch.tensor(Z, requires_grad=True)
    targets, observed, selected, soft = em.ack_labels(torch.tensor(labels))
    terms = em.em_terms(torch.sigmoid(z), targets, observed, alpha, selected, soft, beta, reading)
    return z, terms


def test_ack_labels_converts_the_official_encoding():
    targets, observed, selected, soft = em.ack_labels(torch.tensor([[1.0, 0.0, -0.25, -1.0, -0.0]]))
    assert targets.tolist() == [[1, 0, 0, 0, 0]]
    assert observed.tolist() == [[True, False, False, True, False]]
    assert selected.tolist() == [[False, False, True, False, False]]   # -0.0 stays unknown (P41)
    assert soft.tolist() == [[0, 0, 0.25, 0, 0]]


def test_x1_em_loss_value_and_gradient():
    z, terms = _fixture_loss([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], alpha=0.2)
    assert set(terms) == {"pos", "em"}
    matrix = terms["pos"] + terms["em"]
    expected = torch.tensor([[0.1269167, -0.1386254, -0.1164366], [-0.1386254, 0.3132480, -0.0381690]])
    assert torch.allclose(matrix, expected, atol=TOL)
    # the one official matrix reduced in the official order gives the official float32 value exactly
    assert spml.mean_matrix(matrix).item() == pytest.approx(1.3847016e-3, abs=5e-11)
    loss = _loss(terms)      # two terms summed: float32 rounding differs by ~4e-9 (exact value 1.3846963e-3)
    assert loss.item() == pytest.approx(1.3847016e-3, abs=1e-8)
    loss.backward()
    grad = torch.tensor([[-0.0198669, 0.0, -0.0065537], [0.0, -0.0448230, -0.0045177]])
    assert torch.allclose(z.grad, grad, atol=TOL)
    assert z.grad[0, 1] == 0 and z.grad[1, 0] == 0          # an unknown at logit 0 has no gradient


def test_x2_em_apl_official_reading_of_minus_one():
    z, terms = _fixture_loss([[1.0, 0.0, -0.1], [0.0, 1.0, -1.0]], alpha=0.2, beta=0.9, reading="soft_positive")
    assert set(terms) == {"pos", "em", "apl"}
    assert terms["apl"][0, 2].item() == pytest.approx(0.3719210, abs=TOL)
    assert terms["apl"][1, 2].item() == pytest.approx(2.7435389, abs=TOL)    # -1 read as s = 1 (P40)
    loss = _loss(terms)
    assert loss.item() == pytest.approx(0.5463956, abs=TOL)
    loss.backward()
    assert z.grad[0, 2].item() == pytest.approx(0.0253411, abs=TOL)
    assert z.grad[1, 2].item() == pytest.approx(-0.1428560, abs=TOL)
    assert z.grad[0, 0].item() == pytest.approx(-0.0198669, abs=TOL)


def test_x2_suite_reading_makes_the_observed_negative_a_negative():
    z, terms = _fixture_loss([[1.0, 0.0, -0.1], [0.0, 1.0, -1.0]], alpha=0.2, beta=0.9)
    assert set(terms) == {"pos", "em", "apl", "neg"}
    assert terms["apl"][1, 2] == 0 and terms["apl"][0, 2].item() == pytest.approx(0.3719210, abs=TOL)
    assert terms["neg"][1, 2].item() == pytest.approx(0.0485769, abs=2e-7)   # nl(1 - 0.0474259); float32 1 - p
    _loss(terms).backward()
    assert z.grad[1, 2].item() == pytest.approx(0.0079042, abs=TOL)   # p (1 - p) / (1 - p + eps) / 6: towards 0 now


# X3-X5: N = 5, C = 2, rho = 0.5, T = 10, T_w = 8, loader batches [0, 1, 2] and [3, 4]
X3_LABELS = [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
X3_LOGITS = [[3.0, -1.0], [0.5, 2.0], [-2.0, 0.0], [1.0, -3.0], [0.0, 1.0]]
X3_BLOCKS = torch.tensor([0, 0, 0, 1, 1])


def _x3(num_batches=2, single_batch="label", order="stable", rounds=2, logits=X3_LOGITS, blocks=X3_BLOCKS):
    _, observed, selected, _ = em.ack_labels(torch.tensor(X3_LABELS))
    probs = torch.sigmoid(torch.tensor(logits))
    unknown = (~observed).sum(0)
    new = em.apl_round(probs, observed, selected, unknown, 0.5, rounds, num_batches, single_batch, order, blocks)
    return new, torch.where(new, -probs, torch.tensor(X3_LABELS))


@pytest.mark.parametrize("order", em.TIE_ORDERS)
def test_x3_apl_round_picks_the_lowest_unknowns_per_class(order):
    assert em.apl_quota(torch.tensor([4, 4]), 0.5, 2).tolist() == [1, 1]
    new, labels = _x3(order=order)
    assert new.nonzero().tolist() == [[2, 0], [3, 1]]
    expected = torch.tensor([[1, 0], [0, 1], [-0.1192029, 0], [0, -0.0474259], [0, 0]])
    assert torch.allclose(labels, expected, atol=TOL)


def test_x4_single_batch_official_assigns_nothing_suite_labels():
    new, _ = _x3(num_batches=1, single_batch="official", blocks=torch.zeros(5, dtype=torch.long))
    assert not new.any()                                               # P38: labels unchanged
    new, _ = _x3(num_batches=1, single_batch="label", blocks=torch.zeros(5, dtype=torch.long))
    assert new.nonzero().tolist() == [[2, 0], [3, 1]]


def test_x5_t_equal_warmup_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="warm-up epoch before the last epoch"):
        _x3(rounds=0)                                                   # official: OverflowError (P39)
    assert em.apl_quota(torch.tensor([4, 5, 100]), 0.9, 5).tolist() == [0, 0, 18]   # U_c <= 5 get none


def test_ties_stable_by_row_official_by_reverse_stacked_batches():
    logits = [[3.0, 1.0], [0.5, 2.0], [-2.0, -3.0], [-2.0, -3.0], [0.0, 1.0]]   # rows 2 and 3 tie in both classes
    stable, _ = _x3(logits=logits, order="stable")
    official, _ = _x3(logits=logits, order="official")
    assert stable.nonzero().tolist() == [[2, 0], [2, 1]]               # lower training row wins
    assert official.nonzero().tolist() == [[3, 0], [3, 1]]             # the newer batch is stacked first (P42)


def test_a_selected_prediction_of_zero_takes_its_slot_and_stays_unknown():
    probs = torch.tensor([[0.0], [0.1], [0.2]])
    observed = torch.zeros(3, 1, dtype=torch.bool)
    new = em.apl_round(probs, observed, observed.clone(), torch.tensor([3]), 1.0, 3, 2)   # quota 1
    assert not new.any()                                               # P41: -0.0 == 0
    new = em.apl_round(probs, observed, observed.clone(), torch.tensor([3]), 1.0, 1, 2)   # quota 3
    assert new[:, 0].tolist() == [False, True, True]


# ----------------------------------------------------------------------------- per-dataset values and recipe


def test_dataset_values_follow_the_official_table_and_the_guess_elsewhere():
    assert dataset_values("voc2007") == dataset_values("voc2012") == {"alpha": 0.2, "beta": 0.02, "warmup_epoch": 5}
    assert dataset_values("coco2014") == {"alpha": 0.1, "beta": 0.9, "warmup_epoch": 5}
    assert dataset_values("nuswide") == {"alpha": 0.1, "beta": 0.2, "warmup_epoch": 4}
    assert dataset_values("cub") == {"alpha": 0.01, "beta": 0.4, "warmup_epoch": 3}
    assert dataset_values("synthetic") == dataset_values("vg200") == dataset_values(None) == GUESS
    method = EMAPL(_task(info={"dataset": "nuswide"}), EMAPLConfig(beta=0.5))
    assert (method.alpha, method.beta, method.warmup_epoch) == (0.1, 0.5, 4)
    assert EM(_task(info={"dataset": "cub"})).alpha == 0.01


def test_recipe_file_and_module_table_agree_for_every_dataset():
    from benchmark.config.recipes import RECIPE_DIR, resolve

    data = json.loads((RECIPE_DIR / "ack.json").read_text())
    datasets = {e["dataset"] for e in data["entries"]} - {"*"}
    assert datasets == set(DATASET_VALUES) == {"voc2007", "voc2012", "coco2014", "nuswide", "cub"}
    for dataset in datasets:
        values = dataset_values(dataset)
        apl = resolve("em_apl", dataset, "official")
        assert {k: apl.config[k] for k in values} == values and apl.config["neg_proportion"] == 0.9
        assert resolve("em", dataset, "official").config["alpha"] == values["alpha"]
        assert "beta" not in resolve("em", dataset, "official").config
        assert apl.sources["config.alpha"].startswith("Correr-Zhou/SPML-AckTheUnknown@ae1ccaf:main.py:")
    assert resolve("em_apl", "voc2007", "official").inherited and resolve("em_apl", "voc2012", "official").inherited is None
    assert (resolve("em", "cub", "official").train.lr, resolve("em", "coco2014", "official").train.batch_size) == (1e-4, 16)
    switches = resolve("em_apl", "coco2014", "official").info["official_switches"]
    for name, value in switches.items():                   # each switch back is a valid value of the config
        assert getattr(EMAPLConfig(**{name: value}), name) == value


# ----------------------------------------------------------------------------- the methods


def _task(num_train=12, num_classes=4, info=None):
    return TaskSpec(num_classes=num_classes, class_names=[f"c{i}" for i in range(num_classes)], num_train=num_train,
                    feature_dim=8, feature_size=(2, 2), protocol="frozen", info={"dataset": "synthetic", **(info or {})})


def _batches(n=12, c=4, negatives=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    targets = torch.zeros(n, c)
    targets[torch.arange(n), torch.arange(n) % c] = 1.0            # one observed positive per row
    observed = targets > 0
    if negatives:
        observed[torch.arange(n), (torch.arange(n) + 1) % c] = True                # and observed negatives
    inputs = torch.randn(n, 8, 2, 2, generator=gen)
    return [Batch(inputs[i:i + 6], targets[i:i + 6], observed[i:i + 6], torch.arange(i, i + 6)) for i in (0, 6)]


def _ctx(batches, epoch, max_epochs=4, iters=2):
    return TrainContext(epoch=epoch, max_epochs=max_epochs, iters_per_epoch=iters, iterate_train=lambda: iter(batches))


def test_config_value_errors():
    for bad in ({"alpha": -1.0}, {"observed_negatives": "soft_positive"}, {"log_eps": 0.0}):
        with pytest.raises(ValueError):
            EMConfig(**bad)
    for bad in ({"beta": -0.1}, {"neg_proportion": 0.0}, {"warmup_epoch": 0}, {"schedule_epochs": -1},
                {"last_round": "x"}, {"single_batch": "x"}, {"apl_tie_order": "x"}, {"observed_negatives": "assert"}):
        with pytest.raises(ValueError):
            EMAPLConfig(**bad)


def test_em_loss_terms_random_protocol_and_the_official_assert():
    batches = _batches(negatives=True)
    method = EM(_task())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = method.compute_losses(batches[0], TrainContext())
    assert set(losses) == {"loss_pos", "loss_em", "loss_neg"} and all(v.dtype == torch.float32 for v in losses.values())
    assert set(method.compute_losses(_batches()[0], TrainContext())) == {"loss_pos", "loss_em"}
    with pytest.raises(ValueError, match="observed negatives"):
        EM(_task(), EMConfig(observed_negatives="assert")).compute_losses(batches[0], TrainContext())


def test_apl_schedule_warmup_scaling_last_round_and_t_equal_warmup():
    method = EMAPL(_task())                                        # synthetic: T_w 5 of 10 epochs [GUESS]
    assert method.effective_warmup(TrainContext(max_epochs=3)) == 2     # round(1.5) half up
    assert method.effective_warmup(TrainContext(max_epochs=10)) == 5
    assert EMAPL(_task(), EMAPLConfig(schedule_epochs=0)).effective_warmup(TrainContext(max_epochs=3)) == 5
    batches = _batches()
    due = [method.apl_due(_ctx(batches, e, max_epochs=10)) for e in range(10)]
    assert due == [False] * 4 + [True] * 5 + [False]              # epochs 5..9 (1-based); not after the last
    run = EMAPL(_task(), EMAPLConfig(last_round="run"))
    assert run.apl_due(_ctx(batches, 9, max_epochs=10))
    flat = EMAPL(_task(), EMAPLConfig(warmup_epoch=10, schedule_epochs=0, last_round="run"))   # X5: T = T_w
    with pytest.warns(UserWarning, match="no APL round"):
        diag = flat.on_train_epoch_end(_ctx(batches, 9, max_epochs=10))
    assert diag["pseudo_labels"] == 0 and int(flat.apl_rounds) == 0


def test_apl_round_of_the_method_writes_tables_and_matches_the_pure_function():
    torch.manual_seed(0)
    batches = _batches()
    cfg = EMAPLConfig(warmup_epoch=2, schedule_epochs=0, beta=0.5)
    method = EMAPL(_task(), cfg)
    method.train()
    seen = []
    original = method.predict_scores
    method.predict_scores = lambda x: (seen.append(method.training), original(x))[1]
    assert method.on_train_epoch_end(_ctx(batches, 0))["pseudo_labels"] == 0      # before T_w
    assert "loss_apl" not in method.compute_losses(batches[0], TrainContext())
    seen.clear()
    diag = method.on_train_epoch_end(_ctx(batches, 1))                  # epoch 2 = T_w: round 1 of 2
    assert seen == [False, False] and method.training                # eval during the pass, train restored
    with torch.no_grad():
        probs = torch.sigmoid(torch.cat([original(b.inputs) for b in batches]))
    observed = torch.cat([b.observed for b in batches])
    expected = em.apl_round(probs, observed, torch.zeros_like(observed), (~observed).sum(0), 0.9, 2, 2)
    assert method.unknown_count.tolist() == [9, 9, 9, 9] and expected.sum() == 16     # floor(0.9 * 9 / 2) = 4 per class
    assert torch.equal(method.pl_selected.rows, expected)
    assert torch.equal(method.pl_value.rows, torch.where(expected, probs, torch.zeros_like(probs)))
    assert diag == {"pseudo_labels": 16.0, "pseudo_labels_round": 16.0, "apl_rounds": 1.0,
                    "pseudo_label_mean": pytest.approx(float(probs[expected].mean()), abs=1e-7)}
    losses = method.compute_losses(batches[0], TrainContext())
    assert set(losses) == {"loss_pos", "loss_em", "loss_apl"}
    fresh = EMAPL(_task(), cfg)
    fresh.load_state_dict(method.state_dict())                       # checkpoints carry the tables
    assert torch.equal(fresh.pl_selected.rows, expected) and int(fresh.apl_rounds) == 1
    second = method.on_train_epoch_end(_ctx(batches, 2))              # round 2: never re-selects
    assert second["pseudo_labels"] == 32.0 and second["pseudo_labels_round"] == 16.0
    assert torch.equal(method.pl_selected.rows[expected], torch.ones(16, dtype=torch.bool))
    assert torch.equal(method.pl_value.rows[expected], probs[expected])       # values fixed once assigned
    assert not (method.pl_selected.rows & observed).any()
    assert method.on_train_epoch_end(_ctx(batches, 3))["pseudo_labels_round"] == 0   # after the last epoch: skip
    assert method.recovered_labels() is None


def test_single_batch_switch_in_the_method():
    batches = _batches()
    cfg = dict(warmup_epoch=1, schedule_epochs=0)
    official = EMAPL(_task(), EMAPLConfig(single_batch="official", **cfg))
    assert official.on_train_epoch_end(_ctx(batches, 0, iters=1))["pseudo_labels"] == 0
    assert official.on_train_epoch_end(_ctx(batches, 1, iters=2))["pseudo_labels"] > 0
    assert EMAPL(_task(), EMAPLConfig(**cfg)).on_train_epoch_end(_ctx(batches, 0, iters=1))["pseudo_labels"] > 0


def test_random_protocol_negatives_are_never_candidates_and_soft_positive_switch():
    batches = _batches(negatives=True)
    method = EMAPL(_task(), EMAPLConfig(warmup_epoch=1, schedule_epochs=0))
    method.on_train_epoch_end(_ctx(batches, 0))
    observed = torch.cat([b.observed for b in batches])
    assert method.unknown_count.tolist() == [6, 6, 6, 6]
    assert not (method.pl_selected.rows & observed).any() and method.pl_selected.rows.sum() == 4 * 1   # floor(0.9*6/3)
    assert "loss_neg" in method.compute_losses(batches[0], TrainContext())
    official = EMAPL(_task(), EMAPLConfig(observed_negatives="soft_positive"))
    losses = official.compute_losses(batches[0], TrainContext())
    assert set(losses) == {"loss_pos", "loss_em", "loss_apl"}          # -1 read as a soft positive (P40)

