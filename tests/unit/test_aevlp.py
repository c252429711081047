"""AEVLP (GPR loss + DAMP pseudo-labels) and VLPL: fixtures Y3, Y7-Y10 of specs/methods_wave3_clip.md on
the project's functions, the suite switches (P85, P88, P92), the per-dataset values against the recipe
files, and the methods on a tiny random CLIP with hand-made view features (pseudo-labels, losses,
recovered labels, seeded GCN and flip draws)."""
from __future__ import annotations

import json

import pytest
import torch

from benchmark.contract.method import Batch, TaskSpec, TrainContext
from benchmark.core.errors import UserError
from methods import aevlp as ae
from methods import vlpl as vl
from methods.modules import damp, robust, spml

COCO = ae.OFFICIAL["coco"]


# ----------------------------------------------------------------------------- fixtures Y7-Y10, Y3


@pytest.mark.parametrize("epoch, expected", [(1, (0, -2, 0.5375, 1.8125)), (4, (3.75, -4.25, 0.65, 1.25)),
                                             (8, (8.75, -7.25, 0.8, 0.5))])
def test_y7_schedule_is_the_gr_schedule_with_linear_init_0(epoch, expected):
    sched = robust.kv_schedule(COCO["beta"], COCO["alpha"], epoch, 8)
    assert (sched.w, sched.b, sched.mu, sched.sigma) == pytest.approx(expected, abs=5e-8)
    method = ae.AEVLP(_task(info={"dataset": "coco2014"}), ae.AEVLPConfig())
    assert method.schedule(TrainContext(epoch=epoch - 1, max_epochs=8)) == sched       # an 8-epoch run: official


def test_schedule_epochs_rescales_short_runs_to_the_official_axis():
    method = ae.AEVLP(_task(info={"dataset": "coco2014"}), ae.AEVLPConfig())
    # epoch 2 of 4 sits at official epoch 4 of 8 (Y7); the last epoch at the official last epoch
    assert method.schedule(TrainContext(epoch=1, max_epochs=4)) == robust.kv_schedule(COCO["beta"], COCO["alpha"], 4, 8)
    assert method.schedule(TrainContext(epoch=3, max_epochs=4)).w == pytest.approx(8.75)
    plain = ae.AEVLP(_task(info={"dataset": "coco2014"}), ae.AEVLPConfig(schedule_epochs=0))
    assert plain.schedule(TrainContext(epoch=3, max_epochs=4)).w == pytest.approx(7.5)      # 10 x 3 / 4


def _y8(observed_negatives="bce"):
    z = torch.tensor([[2.0, -1.0, 0.5, 0.0]], requires_grad=True)
    probs = torch.sigmoid(z)
    sched = robust.kv_schedule(COCO["beta"], COCO["alpha"], 4, 8)
    k, v = robust.k_function(probs.detach(), sched.w, sched.b), robust.v_function(probs.detach(), sched.mu, sched.sigma)
    matrix = damp.gpr_matrix(probs, torch.tensor([[1.0, 0, 0, 0]]), torch.tensor([[True, False, False, False]]),
                             torch.tensor([[False, False, True, False]]), k, v, 0.01, 1.0, COCO["lam"], 0.9,
                             observed_negatives=observed_negatives)
    return z, probs, v, matrix


def test_y8_gpr_loss():
    z, probs, _, matrix = _y8()
    loss = matrix.mean() + COCO["reg"] * spml.expected_positive_reg(probs, 2.9)
    assert loss.item() == pytest.approx(0.2988836, abs=5e-8)
    # P92: the pseudo-label's weight is 1 - clamp(V, 1 - lam1, 1 - lam2); V(0.6225) = 0.998 -> 1 - 0.5
    p = probs[0, 2].item()
    assert matrix[0, 2].item() == pytest.approx(0.5 * (0.9 * -torch.log(torch.tensor(p + 1e-7)).item()
                                                       + 0.1 * -torch.log(torch.tensor(1 - p + 1e-7)).item()), rel=1e-6)
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad[0, 0] < 0


def test_gpr_lambda_order_and_observed_negative_switch():
    probs = torch.tensor([[0.3, 0.7]])
    v = torch.tensor([[0.9, 0.1]])
    pseudo = torch.tensor([[True, True]])
    none = torch.zeros(1, 2, dtype=torch.bool)
    # lam1 < lam2: max then min gives the constant 1 - lam2 whatever V is (P92)
    out = damp.gpr_matrix(probs, torch.zeros(1, 2), none, pseudo, v, v, 0.01, 1.0, (0.2, 0.8), 1.0)
    assert out[0].tolist() == pytest.approx((0.8 * -torch.log(probs[0] + 1e-7)).tolist(), rel=1e-6)
    neg = torch.tensor([[True, True]])
    bce = damp.gpr_matrix(probs, torch.zeros(1, 2), neg, pseudo, v, v, 0.01, 1.0, (0.7, 0.5), 0.9)
    official = damp.gpr_matrix(probs, torch.zeros(1, 2), neg, pseudo, v, v, 0.01, 1.0, (0.7, 0.5), 0.9, 1e-7, "official")
    assert bce[0].tolist() == pytest.approx((-torch.log(1 - probs[0] + 1e-7)).tolist(), rel=1e-6)   # observed wins
    assert official[0].tolist() == pytest.approx((v[0] * bce[0]).tolist(), rel=1e-6)
    with pytest.raises(ValueError, match="observed_negatives"):
        damp.gpr_matrix(probs, torch.zeros(1, 2), neg, pseudo, v, v, 0.01, 1.0, (0.7, 0.5), 0.9, 1e-7, "ignore")


def test_y9_damp_pseudo_labels_and_the_discarded_accumulation():
    cos = torch.tensor([[[0.30, 0.25, 0.28, 0.10], [0.26, 0.31, 0.27, 0.12]]])
    scores = torch.softmax(cos / 0.01, dim=-1)
    pseudo = damp.damp_pseudo_labels(scores, torch.tensor([[True, False, False, False]]), 0.3, 0.3, 2, 0.25)
    assert pseudo.int().tolist() == [[1, 1, 0, 0]]                       # the observed positive too (as official)
    assert damp.accumulated(pseudo, torch.tensor([[0, 0, 0, 1]])).int().tolist() == [[1, 1, 0, 1]]
    # view_scores: features against the unit class axes give these cosines
    assert torch.allclose(damp.view_scores(cos, torch.eye(4), 0.01), scores)


def test_damp_uses_the_weakest_tile_when_no_tile_beats_eta_and_negative_ratio_removes():
    # global scores [0.5, 0.3, 0.2]; two tiles; eta_b = min(0.5, 0.4) = 0.4
    glob = torch.tensor([0.5, 0.3, 0.2])
    tiles = torch.tensor([[0.45, 0.1, 0.45], [0.05, 0.9, 0.05]])
    scores = torch.cat([glob[None], tiles])[None]
    pos = torch.tensor([[True, False, False]])
    # class 0: alpha 0.45 > 0.4 -> (0.5 + 0.45) / 2; class 2: alpha 0.45 > 0.4 -> 0.325; class 1: 0.6
    pseudo = damp.damp_pseudo_labels(scores, pos, 0.4, 0.33, 3, 0.0)
    assert pseudo.int().tolist() == [[1, 1, 0]]
    capped = damp.damp_pseudo_labels(scores, pos, 0.46, 0.33, 3, 0.0)   # class 0: alpha 0.45 <= 0.46 -> beta 0.05
    assert capped.int().tolist() == [[0, 1, 0]]
    # the lowest (glob + mean) / 2 of 3 classes: class 2 (0.225); floor(0.34 * 3) = 1 entry set back to none
    assert damp.damp_pseudo_labels(scores, pos, 0.4, 0.0, 3, 0.34).int().tolist() == [[1, 1, 0]]


def test_y10_vlpl_em_pl_loss():
    probs = torch.sigmoid(torch.tensor([[1.0, -0.5, 0.2]]))
    y, obs, pseudo = torch.tensor([[1.0, 0, 0]]), torch.tensor([[True, False, False]]), torch.tensor([[False, True, False]])
    terms = damp.em_pl_terms(probs, y, obs, pseudo, 0.1, 0.7)
    assert set(terms) == {"pos", "em", "apl"}
    assert sum(spml.mean_matrix(m) for m in terms.values()).item() == pytest.approx(0.2970896, abs=5e-8)
    assert set(damp.em_pl_terms(probs, y, obs, None, 0.1, 0.7)) == {"pos", "em"}          # warm-up: EM alone
    assert damp.vlpl_pseudo_labels(torch.tensor([[[0.31, 0.3, 0.39]]]), 0.3).tolist() == [[True, False, True]]


def test_y3_gcn_relation_and_its_guards():
    sim = torch.tensor([[1, .8, .5], [.8, 1, .6], [.5, .6, 1]])
    expected = torch.tensor([[0.8, 0.2, 0], [0.2, 0.8, 0], [0, 0.2, 0.8]])
    assert torch.allclose(damp.gcn_relation(sim, 2, 0.2), expected, atol=5e-8)
    with pytest.raises(ValueError, match="P75"):
        damp.gcn_relation(sim, 1, 0.2)
    lonely = damp.gcn_relation(torch.tensor([[1.0, -0.5], [-0.5, 1.0]]), 2, 0.2)     # no positive neighbour: no NaN
    assert lonely.tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_random_gcn_shape_bounds_and_seed():
    text, adj = torch.randn(5, 8), torch.eye(5)
    a = damp.random_gcn(text, adj, torch.Generator().manual_seed(3))
    assert a.shape == (5, 8) and torch.equal(a, damp.random_gcn(text, adj, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, damp.random_gcn(text, adj, torch.Generator().manual_seed(4)))
    assert torch.equal(damp.random_gcn(text, torch.zeros(5, 5)), torch.zeros(5, 8))


# ----------------------------------------------------------------------------- per-dataset values and recipes


def test_dataset_values_follow_the_official_tables_and_the_guess_elsewhere():
    assert ae.dataset_values("voc2007") == ae.dataset_values("voc2012") == ae.OFFICIAL["pascal"]
    assert ae.dataset_values("cub")["grid_size"] == 5 and ae.dataset_values("cub")["top_k"] == 32
    assert ae.dataset_values("synthetic") == ae.dataset_values("vg200") == ae.GUESS == COCO
    assert vl.dataset_values("voc2007") == {"alpha": 0.2, "prompt": "{}"} and vl.dataset_values("cub")["alpha"] == 0.01
    assert ae.AEVLP.clip_view_rule(ae.AEVLPConfig(), "cub") == {"grid": 5, "pre_resize": None, "norm": "imagenet",
                                                               "flips": False}
    assert vl.VLPL.clip_view_rule(vl.VLPLConfig(clip_flips=True), "coco2014")["flips"] is True


@pytest.mark.parametrize("method, module, file, repo", [("aevlp", ae, "aevlp.json", "Fsoft-AIC/AEVLP@0bad82a"),
                                                        ("vlpl", vl, "vlpl.json", "mvrl/VLPL@ed09b59")])
def test_recipe_file_and_module_table_agree_for_every_dataset(method, module, file, repo):
    from benchmark.config.recipes import RECIPE_DIR, resolve

    data = json.loads((RECIPE_DIR / file).read_text())
    datasets = {e["dataset"] for e in data["entries"]} - {"*"}
    assert datasets == set(module.DATASET_VALUES) == {"voc2007", "voc2012", "coco2014", "nuswide", "cub"}
    for dataset in datasets:
        recipe = resolve(method, dataset, "official")
        plain = {k: list(x) if isinstance(x, tuple) else x for k, x in module.dataset_values(dataset).items()}
        assert {k: recipe.config[k] for k in plain} == plain
        assert all(recipe.sources[f"config.{k}"].startswith(repo) for k in plain)
        assert (recipe.train.backbone, recipe.train.image_size, recipe.train.optimizer) == ("resnet50", 448, "Adam")
        module.__dict__[method.upper()].make_config(recipe.config)          # every recipe value is a valid config
    assert resolve(method, "voc2007", "official").inherited and resolve(method, "voc2012", "official").inherited is None


def test_recipe_training_values():
    from benchmark.config.recipes import resolve
    from benchmark.config.run_spec import cpu_clip_arch, official_clip_arch

    assert [resolve("aevlp", d, "official").train.batch_size for d in ("voc2012", "coco2014", "nuswide", "cub")] == \
        [8, 16, 16, 8]
    assert resolve("aevlp", "cub", "official").train.epochs == 10 and resolve("vlpl", "cub", "official").train.lr == 1e-4
    assert resolve("aevlp", "coco2014", "official").config["expected_num_pos"] == 2.9
    assert (official_clip_arch("aevlp"), official_clip_arch("vlpl"), official_clip_arch("dualcoop")) == \
        ("ViT-B-16", "ViT-L-14-336", "RN101")
    assert (cpu_clip_arch("aevlp"), cpu_clip_arch("vlpl"), cpu_clip_arch("dualcoop")) == ("tiny-ViT", "tiny-ViT", "tiny-RN")


@pytest.mark.parametrize("bad", [{"beta": (0, 1, 2)}, {"alpha": (0.5, 0.0, 0.8, 0.5)}, {"sparse_topk": 1},
                                 {"gcn": "learned"}, {"prompt": "a photo"}, {"negative_ratio": 1.5}, {"top_k": 0}])
def test_aevlp_config_refuses_bad_values(bad):
    with pytest.raises(UserError):
        ae.AEVLP.make_config(bad)


# ----------------------------------------------------------------------------- the methods on a tiny CLIP

_CLIP = {}


def _task(num_train=12, num_classes=4, info=None, views=None):
    from benchmark.engine.clip import tiny_clip

    if "vit" not in _CLIP:
        _CLIP["vit"] = tiny_clip(arch="tiny-ViT")
    clip = _CLIP["vit"]
    return TaskSpec(num_classes=num_classes, class_names=["cat", "dog", "traffic_light", "car", "tree"][:num_classes],
                    num_train=num_train, feature_dim=8, feature_size=(2, 2), protocol="frozen",
                    info={"mask_protocol": "random", "dataset": "synthetic", "expected_num_pos": 1.5, "privileged": [],
                          **(info or {})}, clip=clip, clip_views=views)


def _views(n=12, v=5, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, v, d, generator=g)
    return (x / x.norm(dim=-1, keepdim=True)).half()


def _batch(rows, c=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    observed = torch.rand(len(rows), c, generator=g) < 0.4
    targets = ((torch.rand(len(rows), c, generator=g) < 0.5) & observed).float()
    return Batch(inputs=torch.randn(len(rows), 8, 2, 2, generator=g), targets=targets, observed=observed,
                 index=torch.tensor(rows))


def test_aevlp_text_features_gcn_is_seeded_and_switchable():
    torch.manual_seed(0)
    a = ae.AEVLP(_task(), ae.AEVLPConfig())
    torch.manual_seed(0)
    b = ae.AEVLP(_task(), ae.AEVLPConfig())
    torch.manual_seed(1)
    c = ae.AEVLP(_task(), ae.AEVLPConfig())
    plain = ae.AEVLP(_task(), ae.AEVLPConfig(gcn="none"))
    text = ae.unit(ae.class_text_features(_task().clip, _task().class_names, "a photo of a {}."))
    assert torch.equal(plain.text_features, text)
    assert torch.equal(a.text_features, b.text_features) and not torch.equal(a.text_features, c.text_features)
    assert not torch.allclose(a.text_features, text) and torch.allclose(a.text_features.norm(dim=1), torch.ones(4))
    assert "text_features" in a.state_dict() and not any(k.startswith("views") for k in a.state_dict())


def test_aevlp_pseudo_labels_losses_and_recovered_labels():
    views = _views()
    method = ae.AEVLP(_task(views=views), ae.AEVLPConfig(grid_size=2, threshold=0.0, top_k=2, negative_ratio=0.0))
    batch = _batch([3, 7, 1, 0])
    ctx = TrainContext(epoch=0, max_epochs=2)
    scores = damp.view_scores(views[batch.index].float(), method.text_features, 0.01)
    expected = damp.damp_pseudo_labels(scores, batch.observed & (batch.targets > 0.5), 0.3, 0.0, 2, 0.0)
    pseudo = method.pseudo_labels(batch, ctx)
    assert torch.equal(pseudo, expected & ~batch.observed) and not (pseudo & batch.observed).any()
    assert int(pseudo.sum()) > 0
    losses = method.compute_losses(batch, ctx)
    assert set(losses) == {"loss_gpr", "loss_epr"}
    probs = torch.sigmoid(method.predict_scores(batch.inputs))
    sched = method.schedule(ctx)
    matrix = damp.gpr_matrix(probs, batch.targets, batch.observed, pseudo, robust.k_function(probs, sched.w, sched.b),
                             robust.v_function(probs, sched.mu, sched.sigma), 0.01, 1.0, COCO["lam"], 0.9)
    assert losses["loss_gpr"].item() == pytest.approx(matrix.mean().item(), rel=1e-6)
    assert losses["loss_epr"].item() == pytest.approx(0.001 * spml.expected_positive_reg(probs, 1.5).item(), rel=1e-5)
    rows, labels = method.recovered_labels()
    assert rows.tolist() == [0, 1, 3, 7] and torch.equal(labels, pseudo[[3, 2, 0, 1]])
    assert method.on_train_epoch_end(ctx)["pseudo_labels"] == float(pseudo.sum())
    method.on_train_epoch_start(ctx)
    assert method.recovered_labels() is None


def test_aevlp_flip_draws_are_seeded_per_step():
    views = _views(v=2 * 5)
    method = ae.AEVLP(_task(views=views), ae.AEVLPConfig(grid_size=2, clip_flips=True))
    batch = _batch([0, 1, 2, 3, 4, 5])
    first = method.batch_scores(batch, TrainContext(epoch=1, iter_in_epoch=3, seed=7), 0.01)
    again = method.batch_scores(batch, TrainContext(epoch=1, iter_in_epoch=3, seed=7), 0.01)
    other = method.batch_scores(batch, TrainContext(epoch=1, iter_in_epoch=4, seed=7), 0.01)
    assert first.shape == (6, 5, 4) and torch.equal(first, again) and not torch.equal(first, other)
    plain = damp.view_scores(views[batch.index, :5].float(), method.text_features, 0.01)
    mirror = damp.view_scores(views[batch.index, 5:].float(), method.text_features, 0.01)
    picked = (first == mirror).all(-1)
    assert torch.equal(first[~picked], plain[~picked]) and 0 < int(picked.sum()) < 30


def test_methods_without_a_view_cache_train_without_pseudo_labels():
    batch = _batch([0, 1])
    for method in (ae.AEVLP(_task()), vl.VLPL(_task())):
        assert not method.pseudo_labels(batch, TrainContext()).any()
        assert all(torch.isfinite(v) for v in method.compute_losses(batch, TrainContext()).values())
    with pytest.raises(UserError, match="CLIP"):
        ae.AEVLP(TaskSpec(4, ["a", "b", "c", "d"], 4, 8, (2, 2), "frozen"))


def test_vlpl_pseudo_labels_warm_up_and_one_parameter_group():
    views = _views(v=1)
    method = vl.VLPL(_task(views=views, info={"dataset": "coco2014"}), vl.VLPLConfig(threshold=0.2))
    assert method.alpha == 0.1
    batch = _batch([2, 5, 9])
    scores = damp.view_scores(views[batch.index].float(), method.text_features, 0.01)
    pseudo = method.pseudo_labels(batch, TrainContext())
    assert torch.equal(pseudo, (scores[:, 0] > 0.2) & ~batch.observed) and pseudo.any()
    losses = method.compute_losses(batch, TrainContext(epoch=0))
    assert {"loss_pos", "loss_em", "loss_pl"} <= set(losses) <= {"loss_pos", "loss_em", "loss_pl", "loss_neg"}
    warm = vl.VLPL(_task(views=views), vl.VLPLConfig(threshold=0.2, warmup_epoch=1))
    assert "loss_pl" not in warm.compute_losses(batch, TrainContext(epoch=0))
    assert "loss_pl" in warm.compute_losses(batch, TrainContext(epoch=1))
    assert method.param_groups(1e-5, 0.0) is None                    # head_lr_mult 1: one group (main_clip.py)
