"""The CLIP view features of the pseudo-label methods (aevlp, vlpl): the views of one image (whole image,
row-major tiles without the remainder pixels, flipped copies, VLPL's pre-resize), the rule checks, the
encoder on the tiny random ViT CLIP, and the content-verified cache (built once, read back, rebuilt when
corrupt, keyed by its identity)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from benchmark.core.errors import UserError
from benchmark.engine import clip_scores
from benchmark.engine.backbones import IMAGENET_MEAN, IMAGENET_STD
from datasets import side_info


def _image(width=5, height=4) -> Image.Image:
    values = np.arange(width * height * 3, dtype=np.uint8).reshape(height, width, 3) * 4
    return Image.fromarray(values, "RGB")


def _plain(view: torch.Tensor) -> torch.Tensor:
    return TF.normalize(view, IMAGENET_MEAN, IMAGENET_STD)


def test_tiles_are_row_major_floor_sized_and_flipped_copies_follow():
    img = _image()                                  # 5 x 4: tiles of 2 x 2, the fifth column in no tile (P90)
    rule = clip_scores.check_rule({"grid": 2, "flips": True})
    views = clip_scores.image_views(img, rule, 2)
    assert views.shape == (10, 3, 2, 2) and clip_scores.num_views(rule) == 10
    boxes = [(0, 0, 2, 2), (2, 0, 4, 2), (0, 2, 2, 4), (2, 2, 4, 4)]
    for i, box in enumerate(boxes, start=1):
        assert torch.allclose(views[i], _plain(TF.to_tensor(img.crop(box))), atol=1e-6)
    assert torch.allclose(views[0], _plain(TF.to_tensor(img.resize((2, 2), Image.BILINEAR))), atol=1e-6)
    assert torch.equal(views[5:], torch.flip(views[:5], dims=[-1]))
    clip_norm = clip_scores.image_views(img, clip_scores.check_rule({"grid": 2, "norm": "clip"}), 2)
    assert clip_norm.shape == (5, 3, 2, 2) and not torch.allclose(clip_norm, views[:5])


def test_pre_resize_resizes_the_float_image_like_vlpl():
    img = _image(12, 9)
    views = clip_scores.image_views(img, clip_scores.check_rule({"grid": 0, "pre_resize": 8}), 4)
    expected = TF.resize(TF.to_tensor(TF.resize(img, [8, 8])), [4, 4], antialias=True)
    assert views.shape == (1, 3, 4, 4) and torch.allclose(views[0], _plain(expected), atol=1e-6)


@pytest.mark.parametrize("rule", [{"grid": -1}, {"grid": 2.0}, {"norm": "none"}, {"flips": 1}, {"pre_resize": 0},
                                  {"tiles": 4}, None])
def test_bad_rules_are_refused(rule):
    with pytest.raises(UserError, match="aevlp"):
        clip_scores.check_rule(rule, "aevlp")


def test_encoder_gives_unit_features_of_each_view(tmp_path):
    from benchmark.engine.clip import tiny_clip

    clip = tiny_clip(arch="tiny-ViT")
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        _image(20 + i, 17).save(paths[-1])
    rule = clip_scores.check_rule({"grid": 2})
    feats = clip_scores.encode_views(paths, clip, rule, "cpu", views_per_batch=10)
    assert feats.shape == (3, 5, 16) and feats.dtype == np.float16
    with torch.no_grad():
        direct = clip.encode_image(clip_scores.image_views(Image.open(paths[1]).convert("RGB"), rule, 16))
    direct = direct / direct.norm(dim=-1, keepdim=True)
    assert np.allclose(feats[1], direct.numpy(), atol=2e-3)
    assert np.allclose(np.linalg.norm(feats.astype(np.float32), axis=-1), 1.0, atol=2e-3)


def test_cache_is_built_once_read_back_verified_and_rebuilt_when_corrupt(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(side_info, "cache_dir", lambda *parts: tmp_path.joinpath(*parts))
    (tmp_path / "clip_views").mkdir()
    calls = []

    def encode(paths):
        calls.append(len(paths))
        return np.arange(len(paths) * 2 * 3, dtype=np.float32).reshape(len(paths), 2, 3) / 10

    identity = {"clip": "tiny-ViT:random:0:abc", "rule": {"grid": 1}, "images": "f00"}
    first = side_info.clip_view_features(["a", "b"], encode, identity, "set")
    again = side_info.clip_view_features(["a", "b"], encode, identity, "set")
    assert calls == [2] and first.dtype == np.float16 and np.array_equal(first, again)
    path = side_info.clip_views_cache_path({**identity, "count": 2}, "set")
    assert path.is_file() and path.with_suffix(".json").is_file()
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING):
        rebuilt = side_info.clip_view_features(["a", "b"], encode, identity, "set")
    assert calls == [2, 2] and np.array_equal(rebuilt, first) and "failed its checksum" in caplog.text
    side_info.clip_view_features(["a", "b"], encode, {**identity, "rule": {"grid": 2}}, "set")   # another identity
    assert calls == [2, 2, 2] and len(list((tmp_path / "clip_views").glob("*.npy"))) == 2
    with pytest.raises(ValueError, match="expected"):
        side_info.clip_view_features(["a"], lambda paths: np.zeros((2, 3)), identity, "set")
