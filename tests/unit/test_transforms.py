"""Training augmentations: the CLSL pipeline (spec 8.5: resize, flip, cutout, RandAugment pair) and
the Method.augmentation name that picks it (CLSL) or the HCP multi-scale crop (everyone else)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.core.errors import UserError
from benchmark.engine.seeding import seed_everything
from benchmark.engine.transforms import (
    MultiScaleCrop,
    PairRandAugment,
    RandomColourCutout,
    clsl_train_transform,
    training_pipeline,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _photo(width: int = 80, height: int = 60, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_clsl_pipeline_gives_a_normalised_float_tensor_of_the_run_size():
    transform = clsl_train_transform(64, MEAN, STD)
    names = [type(t).__name__ for t in transform.transforms]
    assert names == ["Resize", "RandomHorizontalFlip", "RandomColourCutout", "PairRandAugment", "ToTensor",
                     "Normalize"]
    for seed in range(5):
        seed_everything(seed)
        out = transform(_photo(seed=seed))
        assert out.shape == (3, 64, 64) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_cutout_paints_one_half_side_square_of_one_colour():
    side, base = 64, (7, 7, 7)
    half = int(0.5 * side + 0.5) // 2              # the code's corners centre -/+ 16, both painted
    cutout, unclipped = RandomColourCutout(0.5), 0
    for seed in range(40):
        random.seed(seed)
        out = np.asarray(cutout(Image.new("RGB", (side, side), base)))
        changed = (out != base).any(axis=2)
        ys, xs = np.nonzero(changed)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        assert changed[y0:y1, x0:x1].all() and changed.sum() == (y1 - y0) * (x1 - x0)   # one filled box
        assert len(np.unique(out[changed], axis=0)) == 1                                 # of one colour
        assert max(y1 - y0, x1 - x0) <= 2 * half + 1
        if min(y0, x0) > 0 and max(y1, x1) < side:
            unclipped += 1
            assert (y1 - y0, x1 - x0) == (2 * half + 1, 2 * half + 1)                   # 33 px at 64
    assert unclipped >= 5
    random.seed(0)
    image = Image.new("RGB", (side, side), base)
    cutout(image)
    assert image.getpixel((0, 0)) == base and len(image.getcolors()) == 1            # input untouched


def test_rand_augment_draws_a_pair_of_ops_each_applied_with_half_probability(monkeypatch):
    augment = PairRandAugment()
    assert len(augment.ops) == 15 and "Cutout" in augment.ops and "Identity" not in augment.ops
    random.seed(0)
    pairs = [augment.draw() for _ in range(3000)]
    assert {op for pair in pairs for op, _ in pair} == set(augment.ops)
    assert {level for pair in pairs for _, level in pair} == set(range(1, 10))
    applied = []
    monkeypatch.setattr(PairRandAugment, "apply", staticmethod(lambda img, op, level: applied.append(op) or img))
    random.seed(1)
    for _ in range(2000):
        augment(_photo(8, 8))
    assert 1800 < len(applied) < 2200                     # 2 ops x p = 0.5 per image


def test_rand_augment_ops_keep_size_and_mode_and_change_the_image():
    image = Image.fromarray(np.asarray(_photo(40, 30)) // 2 + 40)      # low contrast: AutoContrast acts
    for op in PairRandAugment.ops:
        random.seed(3)
        out = PairRandAugment.apply(image, op, 9)
        assert out.size == image.size and out.mode == "RGB"
        assert not np.array_equal(np.asarray(out), np.asarray(image)), op


def test_clsl_pipeline_is_deterministic_under_a_fixed_seed():
    transform = clsl_train_transform(48, MEAN, STD)
    image = _photo()
    runs = []
    for seed in (11, 11, 12):
        seed_everything(seed)
        runs.append(torch.stack([transform(image) for _ in range(4)]))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_clsl_returns_its_pipeline_and_partial_bce_the_hcp_crop(registry):
    from benchmark.core.registry import get_method

    clsl, baseline, pbce = (get_method(n) for n in ("clsl", "clsl_baseline", "partial_bce"))
    for cls in (clsl, baseline):
        name = cls.augmentation(cls.make_config({}, profile="smoke"))
        assert name == "clsl"
        steps = training_pipeline(name, 64, MEAN, STD).transforms
        assert any(isinstance(t, PairRandAugment) for t in steps)
        assert cls.augmentation(cls.make_config({"augment": "hcp"})) == "hcp"
        with pytest.raises(UserError, match="augment 'autoaugment' is unknown"):
            cls.augmentation(cls.make_config({"augment": "autoaugment"}))
    assert pbce.augmentation(pbce.make_config({})) == "hcp"
    assert any(isinstance(t, MultiScaleCrop) for t in training_pipeline("hcp", 64, MEAN, STD).transforms)
    with pytest.raises(UserError, match="augmentation 'mixup' is unknown"):
        training_pipeline("mixup", 64, MEAN, STD)


@pytest.mark.parametrize("method, overrides, expected", [
    ("clsl", (), PairRandAugment),
    ("clsl", (("augment", "hcp"),), MultiScaleCrop),
    ("partial_bce", (), MultiScaleCrop),
])
def test_finetune_training_source_uses_the_method_transform(registry, method, overrides, expected):
    from benchmark.engine.prepared_run import PreparedRun
    from tests.conftest import smoke_spec

    prep = PreparedRun(smoke_spec(method=method, protocol="finetune", method_config=overrides), torch.device("cpu"))
    assert any(isinstance(t, expected) for t in prep.train_source.transform.transforms)
    assert not any(isinstance(t, (PairRandAugment, MultiScaleCrop)) for t in prep.pass_source.transform.transforms)
    batch = prep.train_set().__getitems__([0, 1])
    assert batch["inputs"].shape == (2, 3, 64, 64)


# ----------------------------------------------------------------------------- IGNORE's two views (wave 3)
def test_weak_strong_pipeline_stacks_the_spml_view_and_a_randaugment_view():
    from torchvision.transforms import RandAugment

    from benchmark.engine.transforms import WeakStrongViews, spml_train_transform

    transform = training_pipeline("weak_strong", 48, MEAN, STD)
    assert isinstance(transform, WeakStrongViews)
    strong = [type(t).__name__ for t in transform.strong.transforms]
    assert strong == ["RandAugment", "Resize", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    augment = transform.strong.transforms[0]
    assert isinstance(augment, RandAugment) and (augment.num_ops, augment.magnitude) == (3, 5)
    assert [type(t).__name__ for t in transform.weak.transforms] == strong[1:]
    image = _photo()
    for seed in range(4):
        seed_everything(seed)
        out = transform(image)
        assert out.shape == (2, 3, 48, 48) and out.dtype == torch.float32 and torch.isfinite(out).all()
        seed_everything(seed)
        assert torch.equal(out[0], spml_train_transform(48, MEAN, STD)(image))   # view 0: the weak pipeline
        assert not torch.equal(out[0], out[1])


def test_weak_and_strong_views_draw_their_flips_independently():
    from benchmark.engine.transforms import WeakStrongViews

    transform = WeakStrongViews(32, MEAN, STD, num_ops=0)           # no RandAugment op: only the flips differ
    image, same, mirrored = _photo(), 0, 0
    for seed in range(40):
        seed_everything(seed)
        weak, strong = transform(image)
        same += bool(torch.equal(weak, strong))
        mirrored += bool(torch.equal(weak, strong.flip(-1)))
    assert same + mirrored == 40 and 10 <= same <= 30


def test_ignore_finetune_batches_hold_two_views_and_epoch_passes_one(registry):
    from benchmark.engine.prepared_run import PreparedRun
    from tests.conftest import smoke_spec

    prep = PreparedRun(smoke_spec(method="ignore", protocol="finetune"), torch.device("cpu"))
    assert prep.train_set().__getitems__([0, 1])["inputs"].shape == (2, 2, 3, 64, 64)
    assert prep.train_set(augmented=False).__getitems__([0, 1])["inputs"].shape == (2, 3, 64, 64)
