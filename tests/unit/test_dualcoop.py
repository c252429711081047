"""DualCoOp (methods/dualcoop.py): fixtures Y1 (two-prompt ASL), Y2 (region aggregation) and Y11
(prompt token ids) by the project's functions, the prompt assembly, the method on a tiny random CLIP
(only the context vectors train, scores, unknown-label rule, text features once per evaluation
pass), its config checks and its recipe."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from benchmark.core.registry import discover
from methods.dualcoop import DualCoOp, DualCoOpConfig, pair_asl, region_logits
from methods.modules.prompts import ContextPrompts

discover()


@pytest.fixture(scope="module")
def clip():
    from benchmark.engine.clip import tiny_clip

    return tiny_clip()


def _task(clip, protocol="random", names=("aeroplane", "traffic_light", "tv_monitor")):
    from benchmark.cli.plugin_checks import toy_task

    task = toy_task(len(names))
    info = {**task.info, "mask_protocol": protocol}
    pool = getattr(clip.visual, "attnpool", None)
    return dataclasses.replace(task, class_names=list(names), clip=clip, info=info, feature_size=(2, 2),
                               feature_dim=pool.v_proj.in_features if pool is not None else 128)


def _batch(task, seed=0):
    from benchmark.contract.method import Batch

    gen = torch.Generator().manual_seed(seed)
    maps = torch.randn(4, task.feature_dim, 2, 2, generator=gen)
    observed = torch.rand(4, task.num_classes, generator=gen) > 0.4
    targets = (torch.rand(4, task.num_classes, generator=gen) > 0.5).float() * observed
    return Batch(maps, targets, observed, torch.arange(4))


def test_y1_pair_asl_sums_the_known_entries():
    logits = torch.tensor([[[0.5, -1.0, 2.0], [1.5, 0.0, -1.0]]])       # [:, 0] negative, [:, 1] positive
    targets = torch.tensor([[1.0, 0.0, 0.0]])
    known = torch.tensor([[True, True, False]])                          # official target -1 = unknown
    assert pair_asl(logits, targets, known).item() == pytest.approx(0.6143020, abs=5e-8)
    # by hand: -log(s(1)) (1 - s(1)) for the positive, -log(q) (1 - q)^2 with q = 1 - s(1) + 0.05 for the
    # negative (the spec's hand split "0.084244 + 0.530058" has a digit slip; its total, Y1, is right)
    p, q = 1 / (1 + math.exp(-1.0)), 1 - 1 / (1 + math.exp(-1.0)) + 0.05
    positive, negative = -math.log(p) * (1 - p), -math.log(q) * (1 - q) ** 2
    assert pair_asl(logits, targets, torch.tensor([[True, False, False]])).item() == pytest.approx(positive, abs=2e-7)
    assert pair_asl(logits, targets, torch.tensor([[False, True, False]])).item() == pytest.approx(negative, abs=2e-7)
    # counted as a negative the third entry (p = s(-3)) is clipped to q = 1: no loss; as a positive it costs
    # -log(s(-3)) (1 - s(-3))
    everything = torch.ones_like(known)
    assert pair_asl(logits, targets, everything).item() == pytest.approx(0.6143020, abs=5e-8)
    p3 = 1 / (1 + math.exp(3.0))
    assert pair_asl(logits, torch.tensor([[1.0, 0.0, 1.0]]), everything).item() == pytest.approx(
        0.6143020 - math.log(p3) * (1 - p3), abs=5e-7)


def test_y2_region_aggregation():
    tokens = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]]).transpose(1, 2)   # official [B, D, L] -> [B, L, D]
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])                                # C = 1: negative, positive
    logits = region_logits(tokens, text)
    assert logits.shape == (1, 2, 1)
    assert logits[0, 0, 0].item() == pytest.approx(0.2014689, abs=5e-7)
    assert logits[0, 1, 0].item() == pytest.approx(99.9165497, abs=5e-5)


def test_y11_prompts_hold_the_official_token_ids_and_the_learned_context(clip):
    prompts = ContextPrompts(clip, ["tv_monitor"], n_ctx=4)
    assert prompts.token_ids[0, :9].tolist() == [49406, 343, 343, 343, 343, 1583, 10198, 269, 49407]
    embedded = prompts()
    assert embedded.shape == (1, 77, clip.token_embedding.weight.shape[1])
    assert torch.equal(embedded[0, 1:5], prompts.ctx)
    with torch.no_grad():
        fixed = clip.token_embedding(prompts.token_ids)
    assert torch.equal(embedded[0, :1], fixed[0, :1]) and torch.equal(embedded[0, 5:], fixed[0, 5:])
    assert 0.015 < prompts.ctx.std().item() < 0.025                        # N(0, 0.02^2)


def test_class_specific_and_word_initialised_contexts(clip):
    csc = ContextPrompts(clip, ["cat", "dog"], n_ctx=3, csc=True)
    assert csc.ctx.shape == (2, 3, 128) and torch.equal(csc()[1, 1:4], csc.ctx[1])
    words = ContextPrompts(clip, ["cat", "dog"], n_ctx=16, init_words="a_photo of")
    assert words.n_ctx == 3 and words.token_ids[0, :7].tolist() == [49406, 320, 1125, 539, 2368, 269, 49407]
    with torch.no_grad():
        assert torch.equal(words.ctx, clip.token_embedding(words.token_ids)[0, 1:4])


def test_only_the_context_vectors_train_and_receive_gradients(clip):
    method = DualCoOp(_task(clip))
    trainable = sorted(n for n, p in method.named_parameters() if p.requires_grad)
    assert trainable == ["prompts_neg.ctx", "prompts_pos.ctx"]
    assert [p for g in method.param_groups(0.002, 5e-4) for p in g["params"]] == [method.prompts_pos.ctx,
                                                                                    method.prompts_neg.ctx]
    loss = method.compute_losses(_batch(method.task), method.ctx)["loss_asl_pair"]
    loss.backward()
    assert method.prompts_pos.ctx.grad.abs().sum() > 0 and method.prompts_neg.ctx.grad.abs().sum() > 0


def test_scores_are_the_two_prompt_softmax_logit(clip):
    method = DualCoOp(_task(clip)).eval()
    maps = _batch(method.task).inputs
    with torch.no_grad():
        logits = method.pair_logits(maps)
        scores = method.predict_scores(maps)
    assert logits.shape == (4, 2, 3) and scores.shape == (4, 3)
    assert torch.allclose(torch.sigmoid(scores), torch.softmax(logits, dim=1)[:, 1], atol=1e-6)


@pytest.mark.parametrize("protocol, rule", [("random", "ignore"), ("single_positive", "negative")])
def test_unknown_labels_are_ignored_under_random_and_negatives_under_single_positive(clip, protocol, rule):
    method = DualCoOp(_task(clip, protocol), DualCoOpConfig(loss_w=0.5))
    assert method.unknown == rule
    batch = _batch(method.task)
    with torch.no_grad():
        logits = method.pair_logits(batch.inputs)
        got = method.compute_losses(batch, method.ctx)["loss_asl_pair"]
    counted = batch.observed if rule == "ignore" else torch.ones_like(batch.observed)
    assert got.item() == pytest.approx(0.5 * pair_asl(logits, batch.targets, counted).item(), rel=1e-6)


def test_text_features_are_computed_once_per_state_of_the_prompts(clip):
    method = DualCoOp(_task(clip)).eval()
    with torch.no_grad():
        first = method.text_features()
        assert method.text_features() is first                        # the same evaluation pass
        method.prompts_pos.ctx.add_(0.1)                               # an optimizer step
        second = method.text_features()
    assert second is not first and not torch.equal(second, first)
    assert method.text_features().grad_fn is not None                # training: recomputed with gradients


def test_state_dict_round_trip_and_a_vit_clip_is_refused(clip):
    from benchmark.core.errors import UserError
    from benchmark.engine.clip import tiny_clip

    method = DualCoOp(_task(clip))
    clone = DualCoOp(_task(clip))
    clone.load_state_dict(method.state_dict())
    maps = _batch(method.task).inputs
    with torch.no_grad():
        assert torch.equal(clone.eval().predict_scores(maps), method.eval().predict_scores(maps))
    with pytest.raises(UserError, match="P69"):
        DualCoOp(_task(tiny_clip(0, "tiny-ViT")))
    with pytest.raises(UserError, match="TaskSpec.clip"):
        DualCoOp(dataclasses.replace(_task(clip), clip=None))


@pytest.mark.parametrize("values, word", [({"n_ctx_pos": 0}, "n_ctx"), ({"prompt_init": ("a", "")}, "prompt_init"),
                                          ({"loss_w": 0.0}, "loss_w"), ({"clip": 1.0}, "clip"),
                                          ({"logit_factors": (20.0,)}, "logit_factors"), ({"unknown": "x"}, "unknown")])
def test_config_refuses_values_that_cannot_work(values, word):
    from benchmark.core.errors import UserError

    with pytest.raises(UserError, match=word):
        DualCoOp.make_config(values)


def test_recipe_is_the_official_one_with_sources():
    from benchmark.config.recipes import resolve

    coco, voc = resolve("dualcoop", "coco2014", "official"), resolve("dualcoop", "voc2007", "official")
    train = coco.train
    assert (train.backbone, train.image_size, train.optimizer, train.momentum, train.weight_decay, train.epochs,
            train.batch_size, train.precision) == ("clip:RN101", 448, "SGD", 0.9, 5e-4, 50, 32, "fp16")
    assert (train.lr, voc.train.lr) == (0.002, 0.001)
    assert (train.schedule, train.warmup_epochs, train.schedule_epochs) == ("cosine", 1, 51)
    assert coco.sources["lr"] == "sunxm2357/DualCoOp@49e71d7:README.md:66"
    assert coco.sources["batch_size"] == "sunxm2357/DualCoOp@49e71d7:configs/models/rn101_ep50.yaml:3"
    assert resolve("dualcoop", "coco2014", "paper").train == train           # the CLIP trunk is kept
    assert coco.info["selection"].startswith("best test-split mAP")            # recorded, not applied (P66)
