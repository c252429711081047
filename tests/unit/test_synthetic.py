"""Tests for datasets/synthetic.py: determinism, COCO round trip, label statistics, caching, CLI pieces."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import datasets.synthetic as synthetic
from benchmark.core.errors import UserError
from datasets.synthetic import (
    SCENES,
    class_table,
    generate_synthetic,
    load_synthetic,
    render_scene,
    save_sample_grid,
    scene_distributions,
    synthetic_params,
)

EXPECTED_NAMES = {"apple", "cup", "bottle", "bowl", "car", "bus", "sign", "bicycle", "tree", "dog", "flower",
                  "bird", "umbrella", "ball", "boat", "kite", "laptop", "phone", "book", "clock"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny set generated once into a temporary root."""
    return load_synthetic("tiny", seed=0, root=tmp_path_factory.mktemp("synthetic"))


def _image_bytes(splits, split: str) -> list[bytes]:
    return [p.read_bytes() for p in getattr(splits, split).image_paths]


def test_tiny_shape_and_class_names(tiny):
    assert (len(tiny.train), len(tiny.test)) == (160, 80)
    assert set(tiny.class_names) == EXPECTED_NAMES and len(tiny.class_names) == 20
    assert all(name.isalpha() and name.islower() for name in tiny.class_names)
    with Image.open(tiny.train.image_paths[0]) as img:
        assert img.size == (64, 64) and img.mode == "RGB"
    assert tiny.info["scenes"] == list(SCENES)
    assert set(tiny.train.info["scenes"]) <= set(SCENES)


def test_one_to_five_objects_per_image(tiny):
    for labelset in (tiny.train, tiny.test):
        counts = labelset.labels.sum(axis=1)
        assert counts.min() >= 1 and counts.max() <= 5
    ann = json.loads((Path(tiny.info["folder"]) / "annotations" / "instances_train.json").read_text())
    per_image = np.bincount([a["image_id"] for a in ann["annotations"]], minlength=161)[1:]
    assert per_image.min() >= 1 and per_image.max() <= 5
    assert all(a["iscrowd"] == 0 and a["area"] > 0 and a["bbox"][2] > 0 for a in ann["annotations"])
    assert [c["id"] for c in ann["categories"]] == list(range(1, 21))


def test_coco_labels_match_generator(tiny):
    params = tiny.info["params"]
    for split in ("train", "test"):
        labelset = getattr(tiny, split)
        for row in range(0, len(labelset), 7):
            expected = np.zeros(20, dtype=np.uint8)
            expected[sorted(render_scene(params, split, row).labels)] = 1
            np.testing.assert_array_equal(labelset.labels[row], expected)


def test_deterministic_images_and_labels(tiny, tmp_path):
    again = load_synthetic("tiny", seed=0, root=tmp_path)
    np.testing.assert_array_equal(again.train.labels, tiny.train.labels)
    assert _image_bytes(again, "train") == _image_bytes(tiny, "train")
    assert _image_bytes(again, "test") == _image_bytes(tiny, "test")
    other = synthetic_params("tiny", seed=1)
    other_labels = [render_scene(other, "train", i).labels for i in range(40)]
    assert other_labels != [set(np.flatnonzero(row)) for row in tiny.train.labels[:40]]
    with Image.open(tiny.train.image_paths[0]) as img:
        assert not np.array_equal(np.asarray(render_scene(other, "train", 0).image), np.asarray(img))


def test_scene_cooccurrence_has_high_lift(tiny):
    labels = np.concatenate([tiny.train.labels, tiny.test.labels]).astype(float)
    p = labels.mean(axis=0)
    joint = labels.T @ labels / len(labels)
    lift = joint / np.outer(p, p)
    np.fill_diagonal(lift, 0)
    assert lift.max() > 2.0
    apple, cup = tiny.class_names.index("apple"), tiny.class_names.index("cup")
    assert lift[apple, cup] > 1.5  # two kitchen classes


def test_long_tailed_frequency():
    params = synthetic_params("smoke")
    counts = np.zeros(20)
    for index in range(300):  # rendered small and not written: faster than a generation
        counts[sorted(render_scene({**params, "image_size": 32}, "train", index).labels)] += 1
    assert counts.max() / counts.min() > 5
    probs = scene_distributions(class_table(20))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_cache_is_reused(tiny, monkeypatch):
    folder = Path(tiny.info["folder"])
    stamp = (folder / "annotations" / "instances_train.json").stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(synthetic, "generate_synthetic", lambda *a: calls.append(a))
    again = load_synthetic("tiny", seed=0, root=folder.parent)
    assert calls == [] and again.info["folder"] == str(folder)
    assert (folder / "annotations" / "instances_train.json").stat().st_mtime_ns == stamp
    assert not [p for p in folder.parent.iterdir() if ".tmp-" in p.name]


def test_changed_params_give_new_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("MLRPL_CACHE", str(tmp_path))
    base = synthetic.dataset_dir(synthetic_params("tiny"))
    assert base.parent == tmp_path / "synthetic" and base.name.startswith("tiny-")
    assert synthetic.dataset_dir(synthetic_params("tiny", seed=3)) != base
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    assert synthetic.dataset_dir(synthetic_params("tiny")) != base


def test_incomplete_folder_is_refused(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(UserError, match="not a complete synthetic dataset"):
        generate_synthetic(tmp_path / "half", synthetic_params("tiny"))


def test_sample_grid_written(tiny, tmp_path):
    out = save_sample_grid(tiny, tmp_path / "grid.png", n=4)
    with Image.open(out) as img:
        assert img.size[0] > 100 and img.size[1] > 100
    assert out.stat().st_size > 5000


def test_unknown_size_is_a_user_error(capsys):
    with pytest.raises(UserError, match="tiny, smoke, default"):
        load_synthetic("huge")
    assert synthetic.main(["--size", "huge"]) == 2
    assert "unknown synthetic size" in capsys.readouterr().err
