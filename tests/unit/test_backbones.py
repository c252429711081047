"""Backbones: offline packaged weights, local weight files, errors, normalisation."""
from __future__ import annotations

import socket

import pytest
import timm
import torch

from benchmark.core.errors import UserError
from benchmark.engine.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    backbone_fingerprint,
    build_backbone,
    imagenet_normalization,
)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def lite0_pair():
    torch.manual_seed(0)
    random_init = build_backbone("tf_efficientnet_lite0", None).eval()
    packaged = build_backbone("tf_efficientnet_lite0", "packaged").eval()
    return random_init, packaged


def test_packaged_weights_load_offline_and_change_output(no_network, lite0_pair):
    random_init, _ = lite0_pair
    packaged = build_backbone("tf_efficientnet_lite0", "packaged").eval()  # under the network block
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = random_init(x), packaged(x)
    assert a.shape == b.shape == (2, 1280, 3, 3)
    assert (a - b).abs().mean() > 1e-2
    stem_bn = packaged.model.bn1.running_var
    assert not torch.allclose(stem_bn, torch.ones_like(stem_bn))  # real statistics, not init


def test_lite0_feature_shape_stride_and_channels(lite0_pair):
    _, packaged = lite0_pair
    with torch.no_grad():
        out = packaged(torch.zeros(1, 3, 128, 128))
    assert tuple(out.shape) == (1, 1280, 4, 4)
    assert packaged.out_channels == 1280 and packaged.stride == 32


def test_lite0_normalization_is_half_half(lite0_pair):
    _, packaged = lite0_pair
    assert imagenet_normalization(packaged) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert imagenet_normalization(torch.nn.Linear(2, 2)) == (IMAGENET_MEAN, IMAGENET_STD)
    assert imagenet_normalization(build_backbone("resnet10t", None)) == (IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize("wrap", ["raw", "state_dict", "model"])
def test_local_weights_file_with_classifier_keys_loads(tmp_path, wrap):
    source = timm.create_model("resnet10t", pretrained=False, num_classes=7)
    state = source.state_dict()
    assert "fc.weight" in state
    path = tmp_path / "w.pth"
    torch.save(state if wrap == "raw" else {wrap: state, "epoch": 3}, path)
    backbone = build_backbone("resnet10t", path)
    loaded = backbone.model.state_dict()
    assert "fc.weight" not in loaded
    assert torch.equal(loaded["conv1.0.weight"], state["conv1.0.weight"])
    assert torch.equal(loaded["layer4.0.bn2.running_var"], state["layer4.0.bn2.running_var"])


def test_local_weights_file_with_missing_keys_lists_them(tmp_path):
    state = timm.create_model("resnet10t", pretrained=False).state_dict()
    del state["layer4.0.conv1.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(UserError, match=r"missing 1 keys \(layer4\.0\.conv1\.weight\)"):
        build_backbone("resnet10t", path)


def test_weights_for_another_architecture_is_user_error(tmp_path):
    path = tmp_path / "lite0.pth"
    torch.save(timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict(), path)
    with pytest.raises(UserError, match="check --backbone"):
        build_backbone("resnet10t", path)


def test_missing_file_and_bad_names_are_user_errors(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(UserError, match="nope.pth not found"):
        build_backbone("resnet10t", missing)
    with pytest.raises(UserError, match="unknown backbone 'resnet_does_not_exist'"):
        build_backbone("resnet_does_not_exist", None)
    with pytest.raises(UserError, match="tf_efficientnet_lite0 weights only"):
        build_backbone("resnet10t", "packaged")
    with pytest.raises(UserError, match="not found"):
        backbone_fingerprint("resnet10t", missing)


def test_fingerprint_tracks_weights_content(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(3)}, path)
    first = backbone_fingerprint("resnet10t", path)
    torch.save({"a": torch.ones(3)}, path)
    second = backbone_fingerprint("resnet10t", path)
    assert first.startswith("resnet10t:sha256:") and first != second
    assert backbone_fingerprint("tf_efficientnet_lite0", "packaged") == "tf_efficientnet_lite0:packaged"
    assert backbone_fingerprint("resnet10t", None) == "resnet10t:random"


def test_feature_cache_is_bound_to_the_image_files(tmp_path):
    """Same ids and labels, another image at the same path (a re-encoded copy): no stale features."""
    import os

    import numpy as np

    from benchmark.engine.features import cached_features
    from datasets.base import LabelSet
    from tests.integration.test_real_datasets import write_jpeg

    paths = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    for i, path in enumerate(paths):
        write_jpeg(path, i + 1)
    labels = LabelSet("cache-check", ["x"], [1, 2], paths, np.array([[1], [0]]))
    first = cached_features(labels, "tf_efficientnet_lite0", "packaged", 64)
    assert torch.equal(cached_features(labels, "tf_efficientnet_lite0", "packaged", 64), first)
    write_jpeg(paths[0], 7)
    os.utime(paths[0], ns=(os.stat(paths[0]).st_atime_ns, os.stat(paths[0]).st_mtime_ns + 10**9))
    second = cached_features(labels, "tf_efficientnet_lite0", "packaged", 64)
    assert not torch.equal(second[0], first[0]) and torch.equal(second[1], first[1])


def test_ddp_batchnorm_conversion_computes_what_the_backbone_computed():
    """timm's BatchNormAct2d is a BatchNorm2d with an activation: converted for DDP it keeps the
    activation, so in one process the converted backbone gives the same outputs in train and eval mode."""
    import copy

    import timm
    import torch

    from benchmark.engine import ddp_model

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0, global_pool="")
    converted = ddp_model.convert_sync_batchnorm(copy.deepcopy(model))
    kinds = {type(m).__name__ for m in converted.modules()}
    assert "SyncBatchNormAct" in kinds and "BatchNormAct2d" not in kinds
    images = torch.randn(2, 3, 64, 64)
    for mode in (False, True):
        model.train(mode)
        converted.train(mode)
        assert torch.equal(model(images), converted(images)), f"train={mode}"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), converted.state_dict().values()))
