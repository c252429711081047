"""SCPNet: fixtures Y3-Y6 of the official code (specs/methods_wave3_clip.md section 8) through the project's
functions, the suite's switches (P75 guard, random-protocol extension), the per-dataset table against the
recipe file, the four parameter groups, the per-group OneCycle peaks, the trainable CLIP trunk, the EMA and
the three-view pipeline."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from benchmark.contract.method import Batch, TaskSpec, TrainContext
from benchmark.core.registry import discover
from methods.modules import scp
from methods.scpnet import (
    GUESS,
    OFFICIAL,
    SUITE_TO_OFFICIAL,
    SCPNet,
    SCPNetConfig,
    dataset_values,
)

discover()


@pytest.fixture(scope="module")
def clip():
    from benchmark.engine.clip import tiny_clip

    return tiny_clip()


def _task(clip, num_classes=3, num_train=4, dataset="synthetic", protocol="frozen", mask_protocol="single_positive"):
    names = ["apple", "cup", "bottle", "bowl", "car", "bus"][:num_classes]
    return TaskSpec(num_classes=num_classes, class_names=names, num_train=num_train, feature_dim=128,
                    feature_size=(2, 2), protocol=protocol, clip=clip,
                    info={"dataset": dataset, "mask_protocol": mask_protocol})


# ----------------------------------------------------------------------------- fixtures Y3-Y6
def test_y3_relation_processing():
    raw = torch.tensor([[1, .8, .5], [.8, 1, .6], [.5, .6, 1]])
    gcn, relation = scp.process_relation(raw, sparse_topk=2, reweight_p=0.2, temperature=0.3)
    assert torch.allclose(gcn, torch.tensor([[0.8, 0.2, 0], [0.2, 0.8, 0], [0, 0.2, 0.8]]), atol=5e-8)
    a, b = 0.8807971, 0.1192029
    assert torch.allclose(relation, torch.tensor([[a, b, 0], [b, a, 0], [0, b, a]]), atol=5e-8)


def test_p75_sparse_topk_one_and_rows_without_mass_are_refused():
    raw = torch.tensor([[1, .8, .5], [.8, 1, .6], [.5, .6, 1]])
    with pytest.raises(ValueError, match="sparse_topk must be in"):
        scp.process_relation(raw, 1, 0.2, 0.3)
    with pytest.raises(ValueError, match="no positive off-diagonal mass"):
        scp.process_relation(torch.tensor([[1.0, -0.5], [-0.5, 1.0]]), 2, 0.2, 0.3)
    with pytest.raises(ValueError, match="sparse_topk must be >= 2"):
        SCPNetConfig(sparse_topk=1)
    # a row whose two largest entries are off the diagonal: A keeps 1 - rho there, R loses it (official)
    odd = torch.tensor([[0.5, .9, .8], [.9, 1, .6], [.8, .6, 1]])
    gcn, relation = scp.process_relation(odd, 2, 0.2, 0.3)
    assert gcn[0].tolist() == pytest.approx([0.8, 0.2 * .9 / 1.7, 0.2 * .8 / 1.7]) and relation[0, 0] == 0
    assert relation[0].sum().item() == pytest.approx(1.0)
    for bad, match in ((torch.ones(3, 2), "must be 3 x 3"), (torch.tensor([[1, .2, 0], [.3, 1, 0], [0, 0, 1]]),
                                                             "not symmetric"), (torch.full((3, 3), float("nan")), "NaN")):
        with pytest.raises(ValueError, match=match):
            scp.check_raw_relation(bad, 3)


def test_y4_splc_before_and_after_the_change_epoch():
    logits, targets = torch.tensor([[2.0, 0.9, -1.0]]), torch.tensor([[1.0, 0.0, 0.0]])
    unknown = torch.tensor([[False, True, True]])
    loss, used = scp.splc_loss(logits, targets, unknown, correct=False)
    assert loss.item() == pytest.approx(0.6726563, abs=5e-7) and used.tolist() == [[1, 0, 0]]
    loss, used = scp.splc_loss(logits, targets, unknown, correct=True)
    assert loss.item() == pytest.approx(0.0738196, abs=5e-7) and used.tolist() == [[1, 1, 0]]
    # random protocol: an observed negative is never corrected
    _, used = scp.splc_loss(logits, targets, torch.tensor([[False, False, True]]), correct=True)
    assert used.tolist() == [[1, 0, 0]]


def test_y5_consistency_loss_and_hard_labels():
    strong, weak = torch.tensor([[1.0, 0.0, -0.5]]), torch.tensor([[2.0, 0.5, -1.0]])
    positives = torch.tensor([[False, False, True]])
    relation = torch.tensor([[.8, .1, .1], [.1, .8, .1], [.1, .1, .8]])
    status = torch.full((3,), 1 / 3)
    probs = torch.sigmoid(weak)
    labels, mask = scp.hard_pseudo_labels(probs, status, positives, torch.zeros_like(positives), hard_k=2)
    assert labels.tolist() == [[True, True, True]] and mask.tolist() == [True]
    loss = scp.consistency_loss(strong, probs, labels, mask, relation, kl_lambda=1.0)
    assert loss.item() == pytest.approx(3.8499331, abs=5e-7)
    # random protocol: an observed negative leaves the hard labels
    negatives = torch.tensor([[False, True, False]])
    labels, _ = scp.hard_pseudo_labels(probs, status, positives, negatives, hard_k=2)
    assert labels.tolist() == [[True, False, True]]


def test_y6_classwise_status_and_the_memory_after_a_step(clip):
    rows = torch.tensor([[1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    status = scp.classwise_status(rows, hard_k=2)
    assert torch.allclose(status, torch.tensor([0.75, 1 / 3, 1 / 3]), atol=5e-8)
    assert scp.classwise_status(torch.zeros(4, 3, dtype=torch.bool), 2) is None
    method = SCPNet(_task(clip), SCPNetConfig(hard_k=2))
    method.selected.rows.copy_(rows)
    y = torch.tensor([[0.0, 0.0, 1.0]])
    batch = Batch(inputs=torch.zeros(1), targets=y, observed=y > 0, index=torch.tensor([3]))
    zeros = torch.zeros(1, 3)
    losses = method.losses_from_logits(zeros, torch.full((1, 3), -9.0), zeros, batch, TrainContext(epoch=0))
    assert sum(losses.values()).item() == pytest.approx(1.0484419, abs=5e-7)
    assert torch.allclose(method.classwise_acc, torch.tensor([0.75, 1 / 3, 1 / 3]), atol=5e-8)
    assert method.selected.rows[3].tolist() == [False, False, True]
    assert method.selected.rows[:3].equal(rows[:3])
    index, pseudo = method.recovered_labels()
    assert index.tolist() == [3] and not pseudo.any()           # the observed positive is not "recovered"


def test_summed_losses_are_scaled_for_ddp(clip, monkeypatch):
    from benchmark.contract import collectives

    method = SCPNet(_task(clip), SCPNetConfig(hard_k=2))
    y = torch.tensor([[0.0, 0.0, 1.0]])
    batch = Batch(inputs=torch.zeros(1), targets=y, observed=y > 0, index=torch.tensor([3]))
    logits = torch.tensor([[0.3, -0.2, 1.0]])
    one = method.losses_from_logits(logits, logits, logits, batch, TrainContext())
    monkeypatch.setattr(collectives, "sum_scale", lambda: 2)
    two = method.losses_from_logits(logits, logits, logits, batch, TrainContext())
    assert set(one) == {"loss_splc", "loss_consistency"}
    for key in one:
        assert two[key].item() == pytest.approx(2 * one[key].item())


# ----------------------------------------------------------------------------- model pieces
def test_gcn_is_d_2d_2d_d_without_biases_and_residual():
    torch.manual_seed(0)
    gcn = scp.SemanticGCN(4)
    assert [tuple(w.shape) for w in gcn.weights] == [(4, 8), (8, 8), (8, 4)]
    assert all(w.abs().max() <= 1 / np.sqrt(w.shape[1]) for w in gcn.weights)
    text, adj = torch.randn(3, 4), torch.tensor([[.8, .2, 0], [.1, .8, .1], [0, .2, .8]])
    w1, w2, w3 = gcn.weights
    act = torch.nn.functional.leaky_relu
    expected = text + adj @ (act(adj @ (act(adj @ (text @ w1), 0.2) @ w2), 0.2) @ w3)
    assert torch.allclose(gcn(text, adj), expected, atol=1e-6)


def test_attention_pool_is_clips_at_its_grid_and_runs_on_small_maps(clip):
    from methods.modules.dense_clip import attention_pool

    pool = clip.visual.attnpool
    maps = torch.randn(2, 128, 7, 7)
    with torch.no_grad():
        assert torch.allclose(attention_pool(pool, maps), pool(maps), atol=1e-5)
        small = attention_pool(pool, torch.randn(2, 128, 2, 2))
    assert small.shape == (2, 16) and torch.isfinite(small).all()


def test_clip_text_prior_is_well_formed_and_a_file_prior_is_validated(clip, tmp_path):
    method = SCPNet(_task(clip, num_classes=6), SCPNetConfig(hard_k=2))
    gcn, relation = method.gcn_relation, method.relation
    assert torch.isfinite(gcn).all() and torch.isfinite(relation).all()
    assert torch.allclose(gcn.diagonal(), torch.full((6,), 0.8)) and torch.allclose(gcn.sum(1), torch.ones(6))
    assert torch.allclose(relation.sum(1), torch.ones(6)) and (relation >= 0).all()
    raw = np.array([[1, .8, .5], [.8, 1, .6], [.5, .6, 1]], dtype=np.float32)
    np.save(tmp_path / "rel.npy", raw)
    filed = SCPNet(_task(clip), SCPNetConfig(relation=f"file:{tmp_path / 'rel.npy'}", sparse_topk=2, temperature=0.3))
    assert torch.allclose(filed.relation[0], torch.tensor([0.8807971, 0.1192029, 0.0]), atol=5e-8)
    np.save(tmp_path / "bad.npy", np.ones((2, 2), dtype=np.float32))
    from benchmark.core.errors import UserError

    with pytest.raises(UserError, match="must be 3 x 3"):
        SCPNet(_task(clip), SCPNetConfig(relation=f"file:{tmp_path / 'bad.npy'}"))
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object))           # never unpickled
    with pytest.raises(UserError, match="relation=file:"):
        SCPNet(_task(clip), SCPNetConfig(relation=f"file:{tmp_path / 'pickled.npy'}"))
    with pytest.raises(ValueError, match="relation must be"):
        SCPNetConfig(relation="file:/no/such/file.npy")


def test_prompt_starts_as_the_words_a_photo_of_a(clip):
    from methods.modules.prompts import tokenize

    method = SCPNet(_task(clip), SCPNetConfig(hard_k=2))
    ctx = method.head.prompts.ctx
    words = clip.token_embedding(tokenize(["a photo of a"]))[0, 1:5]
    assert ctx.shape == (4, 128) and torch.equal(ctx, words)
    assert method.head.prompts.token_ids[0, :9].tolist() == [49406, 320, 1125, 539, 320, 3055, 269, 49407, 0]


# ----------------------------------------------------------------------------- per-dataset values, recipe
def test_dataset_values_follow_the_official_configs_and_the_guess_elsewhere():
    assert dataset_values("voc2007", 20) == dataset_values("voc2012", 20) == OFFICIAL["voc"]
    assert dataset_values("nuswide", 81)["scale"] == "clip" and dataset_values("cub", 312)["hard_k"] == 31
    guess = dataset_values("synthetic", 20)
    assert guess == {**GUESS, "sparse_topk": 20} and dataset_values("vg200", 1)["hard_k"] == 1
    assert OFFICIAL["coco"]["gcn_lr_mult"] * 3e-5 == pytest.approx(1e-5)
    assert OFFICIAL["voc"]["ema_decay"] == pytest.approx(np.exp(np.log(0.82) / 45), rel=1e-12)


def test_recipe_file_and_module_table_agree_for_every_dataset():
    from benchmark.config.recipes import RECIPE_DIR, resolve

    data = json.loads((RECIPE_DIR / "scpnet.json").read_text())
    assert {e["dataset"] for e in data["entries"]} - {"*"} == set(SUITE_TO_OFFICIAL)
    for dataset in SUITE_TO_OFFICIAL:
        recipe = resolve("scpnet", dataset, "official")
        values = dataset_values(dataset, 1000)
        assert {k: recipe.config[k] for k in values} == values
        assert recipe.info["ema_decay"] == values["ema_decay"]
        assert recipe.info["lr_multipliers"]["gcn"] == values["gcn_lr_mult"]
        assert (recipe.train.backbone, recipe.train.precision, recipe.train.schedule) == ("clip:RN50", "fp16", "onecycle")
        cfg = SCPNet.make_config(recipe.config)
        assert dataclasses.asdict(cfg)["hard_k"] == values["hard_k"]
    coco = resolve("scpnet", "coco2014", "official")
    assert (coco.train.lr, coco.train.epochs, coco.train.schedule_epochs, coco.train.batch_size) == (3e-5, 60, 80, 128)
    assert coco.sources["config.hard_k"] == "jameslahm/SCPNet@d56341a:configs/scpnet+coco.yaml:13"
    assert resolve("scpnet", "cub", "official").train.batch_size == 96
    nus = resolve("scpnet", "nuswide", "official")                 # no total_epochs in its config (P71)
    assert nus.train.schedule_epochs == nus.train.epochs == 60 and "P71" in nus.notes["schedule_epochs"]
    assert "P73" in coco.notes["betas"] and "P72" in coco.notes["schedule_epochs"]
    assert resolve("scpnet", "voc2007", "official").inherited and resolve("scpnet", "voc2012", "official").inherited is None


# ----------------------------------------------------------------------------- optimisation
def test_four_parameter_groups_and_per_group_onecycle_peaks(clip):
    from mmengine.optim import OptimWrapper
    from mmengine.optim.scheduler import OneCycleLR

    from benchmark.engine.clip import ClipTrunk
    from benchmark.engine.runner import build_schedulers

    task = _task(clip, protocol="finetune")
    method = SCPNet(task, SCPNetConfig(hard_k=2, scale="clip", gcn_lr_mult=5.0),
                    backbone=ClipTrunk(clip, "clip:tiny-RN", trainable=True))
    groups = method.param_groups(1e-4, 1e-4)
    names = {id(p): n for n, p in method.named_parameters()}
    named = [sorted(names[id(p)] for p in g["params"]) for g in groups]
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(1e-4, 0.0), (1e-4, 1e-4), (5e-4, 1e-4)]
    assert all(n.endswith(".bias") or n.startswith(("backbone.", "head.pool.")) for n in named[0])
    assert "head.prompts.ctx" in named[1] and "head.logit_scale" in named[1]          # 2-D and 0-dim decay (P74)
    assert any(n.startswith("backbone.") for n in named[1]) and named[2] == [f"head.gcn.weights.{i}" for i in range(3)]
    assert not any(n.startswith("text.") for g in named for n in g)
    optimizer = OptimWrapper(torch.optim.Adam(groups, lr=1e-4))      # several groups: MMEngine adds a base-lr one
    spec = type("S", (), {"train": type("T", (), dict(warmup_epochs=0, schedule="onecycle", lr=1e-4, pct_start=0.2,
                                                      div_factor=25.0, final_div_factor=1e4, schedule_epochs=None,
                                                      epochs=10))()})()
    (config,) = build_schedulers(spec, [g["lr"] for g in optimizer.param_groups])
    assert config["eta_max"] == [1e-4, 1e-4, 5e-4, 1e-4]
    assert build_schedulers(spec, [1e-4, 1e-4])[0]["eta_max"] == 1e-4       # one rate: the scalar as before
    config = {k: v for k, v in config.items() if k not in ("type", "convert_to_iter_based")}
    scheduler = OneCycleLR.build_iter_from_epoch(optimizer, epoch_length=1, **config)
    peaks = [0.0, 0.0, 0.0]
    for _ in range(10):
        peaks = [max(p, g["lr"]) for p, g in zip(peaks, optimizer.optimizer.param_groups)]
        optimizer.step()
        scheduler.step()
    assert peaks == pytest.approx([1e-4, 1e-4, 5e-4])


def test_trainable_trunk_is_a_copy_in_train_mode_and_the_frozen_one_is_unchanged(clip):
    from benchmark.engine.clip import ClipTrunk

    trunk = ClipTrunk(clip, "clip:tiny-RN", trainable=True).train()
    assert trunk.training and all(p.requires_grad for p in trunk.parameters())
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    with torch.no_grad():
        for p in trunk.parameters():
            p.add_(1.0)
    trunk(torch.randn(2, 3, 64, 64))                                       # BN statistics move in train mode
    assert all(torch.equal(v, clip.state_dict()[k]) for k, v in before.items())
    frozen = ClipTrunk(clip, "clip:tiny-RN").train()
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert frozen.stem[0] is clip.visual.conv1 and trunk.stem[0] is not clip.visual.conv1


def test_three_views_train_in_one_forward_and_the_ema_evaluates(clip):
    from benchmark.engine.clip import ClipTrunk

    torch.manual_seed(0)
    method = SCPNet(_task(clip, num_train=8, protocol="finetune"), SCPNetConfig(hard_k=2, ema_eval=True, ema_decay=0.5),
                    backbone=ClipTrunk(clip, "clip:tiny-RN", trainable=True))
    views = torch.randn(4, 3, 3, 64, 64)
    targets = torch.zeros(4, 3)
    targets[torch.arange(4), torch.arange(4) % 3] = 1
    batch = Batch(inputs=views, targets=targets, observed=targets > 0, index=torch.arange(4))
    method.train()
    optimizer = torch.optim.Adam(method.param_groups(1e-2, 0.0))
    for _ in range(2):
        losses = method.compute_losses(batch, TrainContext())
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert method.head.pool.q_proj.weight.grad is not None and method.backbone.stem[0].weight.grad is not None
    assert method.selected.rows[:4].any(dim=1).all() and not method.selected.rows[4:].any()
    method.on_train_epoch_end(TrainContext())
    method.eval()
    images = views[:, 0]
    with torch.no_grad():
        ema, live = method.predict_scores(images), method._logits(method.head, method.features(images))
    assert ema.shape == (4, 3) and not torch.allclose(ema, live)
    with pytest.raises(ValueError, match="3 views"):
        method.train().compute_losses(dataclasses.replace(batch, inputs=views[:, :2]), TrainContext())


def test_scpnet_pipeline_gives_two_weak_views_and_a_strong_one():
    from PIL import Image

    from benchmark.engine.seeding import seed_everything
    from benchmark.engine.transforms import (
        FixMatchRandAugment,
        SCPNetViews,
        training_pipeline,
    )

    transform = training_pipeline("scpnet", 32, (0.5,) * 3, (0.25,) * 3)
    assert isinstance(transform, SCPNetViews) and SCPNet.augmentation(SCPNetConfig()) == "scpnet"
    names = [type(t).__name__ for t in transform.strong.transforms]
    assert names == ["FixMatchRandAugment", "RandomHorizontalFlip", "RandomResizedCrop", "ToTensor", "Normalize"]
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    seed_everything(0)
    out = transform(image)
    assert out.shape == (3, 3, 32, 32) and torch.isfinite(out).all()
    assert not torch.equal(out[0], out[1]) and not torch.equal(out[1], out[2])
    seed_everything(3)
    strong = FixMatchRandAugment(3, 5)(image)
    assert strong.size == image.size and strong.mode == "RGB"


def test_cli_plans_scpnet_on_the_tiny_clip_trunk_in_both_protocols():
    from benchmark.cli.parser import run_parser
    from benchmark.cli.plan import grid_runs

    for profile, protocol in (("smoke", "frozen"), ("default", "finetune")):
        argv = ["--profile", profile, "--ratios", "0.5", "--embeddings", "random", "--methods", "scpnet",
                "--protocol", protocol, "--mask-protocol", "single_positive"]
        (run,) = grid_runs(run_parser().parse_args(argv))[0]
        assert (run.backbone, run.clip_arch, run.clip_weights, run.protocol) == ("clip:tiny-RN", "tiny-RN", None,
                                                                                  protocol)
