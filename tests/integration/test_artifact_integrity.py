"""Cache artifacts are verified by content: the frozen feature maps, the synthetic dataset folder, the
mask files and the label-embedding caches each carry the sha256 of their bytes in a manifest written
after them. A corrupted file of the right size, a truncated one or one without a manifest (a kill
between the data and its manifest) is rebuilt, with one warning naming it, or refused; never used."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.core.errors import UserError
from tests.conftest import smoke_spec


@pytest.fixture
def private_cache(monkeypatch, tmp_path):
    """A cache folder of this test alone, and no dataset or feature maps memoised from another cache."""
    from benchmark.engine import prepared_run

    cache = tmp_path / "cache"
    monkeypatch.setenv("MLRPL_CACHE", str(cache))
    memos = (prepared_run.load_dataset, prepared_run._features, prepared_run._feature_file)
    for memo in memos:
        memo.cache_clear()
    yield cache
    for memo in memos:
        memo.cache_clear()


def _flip(path: Path, offset: int, count: int = 64) -> None:
    """Corrupt ``count`` bytes at ``offset`` in place: same size, same modification time."""
    st = path.stat()
    raw = bytearray(path.read_bytes())
    raw[offset:offset + count] = bytes(b ^ 0xFF for b in raw[offset:offset + count])
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size


def _truncate(path: Path, keep: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(keep)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ----------------------------------------------------------------------------- feature cache
@pytest.fixture
def two_images(private_cache, tmp_path):
    from datasets.base import LabelSet
    from tests.integration.test_real_datasets import write_jpeg

    paths = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    for i, path in enumerate(paths):
        write_jpeg(path, i + 1)
    return LabelSet("integrity", ["x"], [1, 2], paths, np.array([[1], [0]]))


def _features(labelset):
    from benchmark.engine.features import cached_features, feature_cache_path

    return cached_features(labelset, "tf_efficientnet_lite0", "packaged", 64), \
        feature_cache_path(labelset, "tf_efficientnet_lite0", "packaged", 64)


@pytest.mark.parametrize("damage,phrase", [
    ("flip", "failed its checksum"),
    ("truncate", "is truncated"),
    ("no_manifest", "has no valid manifest"),
    ("garbage_manifest", "has no valid manifest"),
])
def test_bad_feature_cache_is_rebuilt_with_the_file_named(two_images, caplog, damage, phrase):
    first, path = _features(two_images)
    manifest = json.loads(path.with_suffix(".json").read_text())
    original = path.read_bytes()
    assert manifest["sha256"] == __import__("hashlib").sha256(original).hexdigest()
    assert manifest["size"] == len(original) and manifest["shape"] == list(first.shape)
    if damage == "flip":
        _flip(path, len(original) // 2)                      # the data region, well past the header
    elif damage == "truncate":
        _truncate(path, len(original) - 1000)
    elif damage == "no_manifest":                            # a kill between the data and its manifest
        path.with_suffix(".json").unlink()
    else:
        path.with_suffix(".json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="benchmark.engine.features"):
        again, _ = _features(two_images)
    lines = _warnings(caplog)
    assert len(lines) == 1 and str(path) in lines[0] and phrase in lines[0] and "rebuilding it" in lines[0]
    assert torch.equal(again, first)                         # the maps of the images, not of the bad bytes
    assert path.read_bytes() == original                     # extracted again: the same bytes
    assert json.loads(path.with_suffix(".json").read_text())["sha256"] == manifest["sha256"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="benchmark.engine.features"):
        assert torch.equal(_features(two_images)[0], first)
    assert _warnings(caplog) == []


def test_verification_is_memoised_but_sees_an_edit_in_place(two_images, monkeypatch, caplog):
    """A second load does not hash the file again; an edit that keeps size and mtime is still seen
    (the memo key holds the inode's ctime, which os.utime cannot set back)."""
    import benchmark.core.digests as digests

    first, path = _features(two_images)
    hashed = []
    real = digests.hashlib.sha256

    class Counting:
        @staticmethod
        def sha256(*args):
            hashed.append(1)
            return real(*args)

    monkeypatch.setattr(digests, "hashlib", Counting)
    digests._VERIFIED.clear()
    _features(two_images)
    _features(two_images)
    assert len(hashed) == 1
    _flip(path, len(path.read_bytes()) - 200)
    with caplog.at_level(logging.WARNING, logger="benchmark.engine.features"):
        assert torch.equal(_features(two_images)[0], first)
    assert any("failed its checksum" in line for line in _warnings(caplog))


def test_parent_of_a_grid_verifies_before_its_workers(two_images, caplog):
    """ensure_feature_cache (what a parallel grid's parent calls) rebuilds a bad file itself."""
    from benchmark.engine.features import ensure_feature_cache, feature_cache_ok

    _, path = _features(two_images)
    good = path.read_bytes()
    _flip(path, len(good) // 2)
    with caplog.at_level(logging.WARNING, logger="benchmark.engine.features"):
        assert ensure_feature_cache(two_images, "tf_efficientnet_lite0", "packaged", 64) == path
    assert path.read_bytes() == good and feature_cache_ok(path, rows=2)
    assert sum("failed its checksum" in line and str(path) in line for line in _warnings(caplog)) == 1


@pytest.mark.slow
def test_run_after_a_corrupted_feature_cache_gives_the_same_numbers(private_cache, tmp_path, caplog):
    from benchmark.core.registry import discover
    from benchmark.engine import prepared_run
    from benchmark.engine.lifecycle import run_one

    discover()
    spec = smoke_spec(epochs=1)
    assert spec.protocol == "frozen"
    before = run_one(spec, tmp_path / "before", say=lambda line: None)
    caches = sorted((private_cache / "features").glob("*-train-*.npy"))
    assert len(caches) == 1
    path, original = caches[0], caches[0].read_bytes()
    _flip(path, len(original) // 2, count=4096)
    for memo in (prepared_run.load_dataset, prepared_run._features, prepared_run._feature_file):
        memo.cache_clear()
    with caplog.at_level(logging.WARNING, logger="benchmark.engine.features"):
        after = run_one(spec, tmp_path / "after", say=lambda line: None)
    assert any(str(path) in line and "failed its checksum; rebuilding it" in line for line in _warnings(caplog))
    assert path.read_bytes() == original

    def numbers(folder):
        return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in folder.records()
                if r["kind"] in ("eval", "train")]

    assert numbers(after) == numbers(before) and numbers(before)
    assert after.path.name == before.path.name


# ----------------------------------------------------------------------------- synthetic dataset
@pytest.fixture
def tiny_root(private_cache, tmp_path):
    from datasets.synthetic import load_synthetic

    root = tmp_path / "synthetic"
    splits = load_synthetic("tiny", root=root)
    return root, Path(splits.info["folder"]), splits


def _stamps(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.stat().st_ino)
            for p in folder.rglob("*") if p.is_file() and p.name != "checksums.json"}


@pytest.mark.parametrize("damage,phrase", [
    ("flip_image", "images/train/000007.jpg failed its checksum"),
    ("truncate_image", "images/test/000003.jpg is truncated"),
    ("flip_annotations", "annotations/instances_train.json failed its checksum"),
    ("delete_image", "images/train/000011.jpg is missing"),
    ("no_manifest", "has no valid checksum manifest"),
])
def test_bad_synthetic_dataset_is_repaired(tiny_root, caplog, damage, phrase):
    from datasets.synthetic import dataset_problem, load_synthetic, synthetic_params

    root, folder, splits = tiny_root
    good = {rel: (folder / rel).read_bytes() for rel in _stamps(folder)}
    stamps = _stamps(folder)
    touched = {"flip_image": "images/train/000007.jpg", "truncate_image": "images/test/000003.jpg",
               "flip_annotations": "annotations/instances_train.json", "delete_image": "images/train/000011.jpg",
               "no_manifest": None}[damage]
    if damage.startswith("flip"):
        _flip(folder / touched, 40)
    elif damage == "truncate_image":
        _truncate(folder / touched, 100)
    elif damage == "delete_image":
        (folder / touched).unlink()
    else:                                                       # an older cache, or a kill before the manifest
        (folder / "checksums.json").unlink()
    with caplog.at_level(logging.WARNING, logger="datasets.synthetic"):
        again = load_synthetic("tiny", root=root)
    lines = _warnings(caplog)
    assert len(lines) == 1 and str(folder) in lines[0] and phrase in lines[0] and "rebuilding it" in lines[0]
    assert {rel: (folder / rel).read_bytes() for rel in good} == good
    assert dataset_problem(folder, synthetic_params("tiny")) is None
    assert np.array_equal(again.train.labels, splits.train.labels)
    after = _stamps(folder)
    # files that matched are kept as they were (their feature caches stay valid); only the bad one is new
    assert {rel for rel in stamps if after[rel] != stamps.get(rel)} == ({touched} if touched else set())
    assert not [p for p in root.iterdir() if p.name.startswith(".")]       # no temporary folder left


def test_synthetic_generation_failure_leaves_no_temporary_folder(private_cache, tmp_path, monkeypatch):
    import datasets.synthetic as synthetic

    def boom(jobs):
        raise RuntimeError("killed mid-generation")

    monkeypatch.setattr(synthetic, "_run_jobs", boom)
    with pytest.raises(RuntimeError, match="mid-generation"):
        synthetic.load_synthetic("tiny", root=tmp_path / "gen")
    assert list((tmp_path / "gen").iterdir()) == []


# ----------------------------------------------------------------------------- masks
@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "unreadable"])
def test_bad_mask_file_is_refused_with_its_name(tiny_root, damage):
    from datasets.masks import get_mask

    _, _, splits = tiny_root
    mask = get_mask(splits.train, "random", 0.5, 0)
    if damage == "flip":
        _flip(mask.path, mask.path.stat().st_size - 64, 32)
    elif damage == "truncate":
        _truncate(mask.path, 200)
    elif damage == "empty":
        _truncate(mask.path, 0)
    else:
        if os.geteuid() == 0:
            pytest.skip("root reads any file")
        mask.path.chmod(0)
    with pytest.raises(UserError) as exc:
        get_mask(splits.train, "random", 0.5, 0)
    line = str(exc.value)
    assert "\n" not in line and str(mask.path) in line and "delete it and its manifest" in line


def test_mask_without_manifest_is_drawn_again_with_the_same_bytes(tiny_root):
    from datasets.masks import get_mask

    _, _, splits = tiny_root
    mask = get_mask(splits.train, "random", 0.5, 0)
    raw = mask.path.read_bytes()
    mask.path.with_suffix(".json").unlink()                     # a kill between the data and its manifest
    again = get_mask(splits.train, "random", 0.5, 0)
    assert again.sha256 == mask.sha256 and again.path.read_bytes() == raw


def test_corrupted_mask_stops_a_run_with_one_line(private_cache, tmp_path, capsys):
    from benchmark.cli.main import main
    from benchmark.core.registry import discover
    from benchmark.engine.prepared_run import load_dataset
    from datasets.masks import get_mask

    discover()
    spec = smoke_spec(epochs=1)
    mask = get_mask(load_dataset(spec.dataset, spec.dataset_size, spec.data_root, spec.preset).train,
                    spec.mask_protocol, spec.ratio, spec.seed)
    _flip(mask.path, mask.path.stat().st_size - 100, 16)
    out = tmp_path / "grid"
    code = main(["--profile", "smoke", "--methods", "partial_bce", "--ratios", "0.5", "--epochs", "1",
                 "--embeddings", "random", "--out", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]   # progress bars aside
    assert code == 2 and len(err) == 1 and str(mask.path) in err[0] and "sha256" in err[0], err
    assert "delete it and its manifest" in err[0]


# ----------------------------------------------------------------------------- label-embedding cache
@pytest.mark.parametrize("damage,phrase", [("flip", "failed its checksum"), ("truncate", "is truncated"),
                                           ("no_manifest", "has no manifest")])
def test_bad_embedding_cache_is_recomputed(private_cache, caplog, damage, phrase):
    from datasets.side_info import embedding_cache_path, label_embeddings

    names = ["apple", "cup", "car"]
    first = label_embeddings(names, "random:32", dataset="toy")
    path = embedding_cache_path(names, "random:32", dataset="toy")
    raw = path.read_bytes()
    assert json.loads(path.with_suffix(".json").read_text())["size"] == len(raw)
    if damage == "flip":
        _flip(path, len(raw) - 40, 16)
    elif damage == "truncate":
        _truncate(path, len(raw) - 4)
    else:
        path.with_suffix(".json").unlink()
    with caplog.at_level(logging.WARNING, logger="datasets.side_info"):
        again = label_embeddings(names, "random:32", dataset="toy")
    lines = _warnings(caplog)
    assert len(lines) == 1 and str(path) in lines[0] and phrase in lines[0]
    np.testing.assert_array_equal(again, first)
    assert path.read_bytes() == raw


# ----------------------------------------------------------------------------- samples command
def test_samples_with_an_unwritable_extension_builds_nothing(private_cache, tmp_path, capsys):
    from benchmark.cli.main import main

    out = tmp_path / "out" / "grid.xyz"
    assert main(["samples", "--size", "tiny", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and ".xyz" in err[0]
    assert all(ext in err[0] for ext in (".png", ".pdf", ".svg", ".jpg"))
    assert not (tmp_path / "out").exists() and not (private_cache / "synthetic").exists()


def test_samples_names_the_images_drawn_and_the_file_written(private_cache, tmp_path, capsys, monkeypatch):
    from benchmark.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main(["samples", "--size", "tiny", "-n", "3", "--out", "sub/grid.svg"]) == 0
    written = (tmp_path / "sub" / "grid.svg").resolve()
    assert capsys.readouterr().out.strip() == f"saved 3 labelled images to {written}"
    assert written.read_text().lstrip().startswith("<?xml")
    assert [p.name for p in written.parent.iterdir()] == ["grid.svg"]          # no temporary file left


@pytest.mark.slow
def test_samples_says_how_many_images_it_really_drew(private_cache, tmp_path, capsys):
    from benchmark.cli.main import main

    out = tmp_path / "all.png"
    assert main(["samples", "--size", "tiny", "-n", "1000", "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line == f"saved 160 labelled images (asked for 1000; the tiny training split has 160) to {out}"
    assert out.stat().st_size > 10000
