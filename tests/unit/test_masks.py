"""Partial-label protocols, mask files and official encodings (datasets/masks.py)."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from benchmark.core.errors import UserError
from datasets.base import LabelSet
from datasets.masks import (
    PROTOCOLS,
    check_fraction,
    draw_random,
    draw_random_clsl,
    draw_single_positive,
    from_clsl,
    from_hcp,
    get_mask,
    load_mask,
    read_hcp_partial_file,
    to_clsl,
    to_hcp,
)

P_GRID = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
# Spec 12, F1/F2: known (positive + negative) counts on VOC2007 trainval shape (5011 x 20).
F1_KNOWN = [10108, 20200, 30163, 40067, 50163, 60284, 70128, 80132, 90174]
F2_KNOWN = [10049, 19917, 29907, 39912, 50013, 60073, 70224, 80313, 90210]


def make_labelset(n: int = 60, c: int = 7, seed: int = 1, name: str = "toy", density: float = 0.3) -> LabelSet:
    labels = (np.random.RandomState(seed).random_sample((n, c)) < density).astype(np.uint8)
    return LabelSet(name=name, class_names=[f"class{j}" for j in range(c)], image_ids=list(range(100, 100 + n)),
                    image_paths=[Path(f"img{i}.jpg") for i in range(n)], labels=labels)


def official_hcp_uniforms(shape: tuple[int, int]) -> np.ndarray:
    """The HCP generator as written in its code (global numpy state, restored afterwards)."""
    state = np.random.get_state()
    try:
        np.random.seed(0)
        return np.random.random(shape)
    finally:
        np.random.set_state(state)


def assert_one_line_error(exc_info, *fragments: str) -> None:
    msg = str(exc_info.value)
    assert "\n" not in msg
    for frag in fragments:
        assert frag in msg, msg


# ----------------------------------------------------------------------------- protocols
def test_f1_first_draws_of_seed_0():
    # draws for seed 0: 0.5488135, 0.71518937, 0.60276338, 0.54488318, 0.4236548
    labels = np.zeros((1, 5), dtype=np.uint8)
    assert draw_random(labels, 0.5, 0).tolist() == [[False, False, False, False, True]]
    assert draw_random(labels, 0.546, 0).tolist() == [[False, False, False, True, True]]
    assert draw_random(labels, 0.549, 0).tolist() == [[True, False, False, True, True]]
    assert draw_random(labels, 0.6028, 0).tolist() == [[True, False, True, True, True]]
    assert draw_random(labels, 0.7152, 0).tolist() == [[True, True, True, True, True]]


def test_f1_voc_shape_counts_match_official_generator():
    labels = np.zeros((5011, 20), dtype=np.uint8)
    official = official_hcp_uniforms((5011, 20))
    for p, known in zip(P_GRID, F1_KNOWN):
        mask = draw_random(labels, p, 0)
        assert np.array_equal(mask, official < p)
        assert int(mask.sum()) == known
    at_01 = draw_random(labels, 0.1, 0)
    assert np.nonzero(at_01[0])[0].tolist() == [14, 15, 16]
    assert int((~at_01.any(axis=1)).sum()) == 533


def test_f2_clsl_generator_counts():
    labels = np.zeros((5011, 20), dtype=np.uint8)
    counts = [int(draw_random_clsl(labels, p, 0).sum()) for p in P_GRID]
    assert counts == F2_KNOWN
    assert np.nonzero(draw_random_clsl(labels, 0.1, 0)[0])[0].tolist() == [2, 12]


@pytest.mark.parametrize("protocol", ["random", "random_clsl"])
def test_random_masks_nested_over_p_and_seed_dependent(protocol):
    labels = np.zeros((300, 20), dtype=np.uint8)
    draw = PROTOCOLS[protocol].draw
    masks = [draw(labels, p, 3) for p in P_GRID]
    for small, large in zip(masks, masks[1:]):
        assert not (small & ~large).any()
        assert large.sum() > small.sum()
    assert not np.array_equal(draw(labels, 0.5, 3), draw(labels, 0.5, 4))
    assert draw(labels, 1.0, 3).all()


def test_fraction_guard_within_tolerance_and_raises_on_violation():
    labels = np.zeros((2000, 50), dtype=np.uint8)
    for p in P_GRID:
        mask = draw_random(labels, p, 11)
        tol = 5 * np.sqrt(p * (1 - p) / mask.size) + 1e-3
        assert abs(mask.mean() - p) <= tol
        check_fraction(mask, p, "test")  # does not raise
    doctored = draw_random(labels, 0.2, 11)
    with pytest.raises(UserError) as exc:
        check_fraction(doctored, 0.1, "doctored")
    assert_one_line_error(exc, "doctored", "observed fraction")


def test_single_positive_one_true_positive_per_image(tmp_path):
    ls = make_labelset(n=200, c=10, density=0.2)
    ls.labels[:5] = 0  # images without any positive
    mask = get_mask(ls, "single_positive", None, 0, mask_dir=tmp_path)
    per_image = mask.observed.sum(axis=1)
    has_pos = ls.labels.any(axis=1)
    assert (per_image[has_pos] == 1).all() and (per_image[~has_pos] == 0).all()
    assert (ls.labels[mask.observed] == 1).all()
    assert mask.manifest["p"] is None and mask.path.name.startswith("single_positive_seed0_")
    again = get_mask(ls, "single_positive", 0.3, 0, mask_dir=tmp_path)  # p is ignored
    assert again.path == mask.path and again.sha256 == mask.sha256


def test_single_positive_is_uniform_among_positives():
    labels = np.zeros((4000, 6), dtype=np.uint8)
    labels[:, [0, 2, 3, 5]] = 1
    counts = draw_single_positive(labels, None, 5).sum(axis=0)
    assert counts[[1, 4]].tolist() == [0, 0]
    sd = np.sqrt(4000 * 0.25 * 0.75)
    assert np.all(np.abs(counts[[0, 2, 3, 5]] - 1000) < 5 * sd)


# ----------------------------------------------------------------------------- files
def test_file_round_trip_and_manifest_counts(tmp_path):
    ls = make_labelset()
    first = get_mask(ls, "random", 0.4, 0, mask_dir=tmp_path)
    stamp = first.path.stat().st_mtime_ns
    second = get_mask(ls, "random", 0.4, 0, mask_dir=tmp_path)
    assert second.path.stat().st_mtime_ns == stamp  # loaded, not rewritten
    assert np.array_equal(first.observed, second.observed) and first.sha256 == second.sha256
    assert first.observed.dtype == bool and first.observed.shape == ls.labels.shape
    assert np.array_equal(first.observed, official_hcp_uniforms(ls.labels.shape) < 0.4)
    man = json.loads(first.path.with_suffix(".json").read_text())
    assert man["sha256"] == hashlib.sha256(first.path.read_bytes()).hexdigest() == first.sha256
    assert (man["protocol"], man["p"], man["seed"], man["shape"]) == ("random", 0.4, 0, [60, 7])
    assert man["fingerprint"] == ls.fingerprint() and man["image_ids"] == ls.image_ids
    assert man["class_names"] == ls.class_names and "RandomState" in man["generator"]
    obs, lab = first.observed, ls.labels
    counts = man["counts"]
    assert counts["known_positives"] == int((obs & (lab == 1)).sum())
    assert counts["known_negatives"] == int((obs & (lab == 0)).sum())
    assert counts["known_positives_per_class"] == (obs & (lab == 1)).sum(axis=0).tolist()
    assert counts["known_negatives_per_class"] == (obs & (lab == 0)).sum(axis=0).tolist()
    assert counts["observed_fraction"] == pytest.approx(obs.mean())
    assert counts["known_positives"] + counts["known_negatives"] == int(obs.sum())


def test_p_is_canonicalised_to_six_decimals(tmp_path):
    ls = make_labelset()
    a = get_mask(ls, "random", 0.1 + 0.2, 0, mask_dir=tmp_path)
    b = get_mask(ls, "random", 0.3, 0, mask_dir=tmp_path)
    assert a.path == b.path and a.manifest["p"] == 0.3


def test_modified_npy_or_manifest_sha_is_rejected(tmp_path):
    ls = make_labelset()
    mask = get_mask(ls, "random", 0.5, 0, mask_dir=tmp_path)
    raw = bytearray(mask.path.read_bytes())
    raw[-1] ^= 0xFF
    mask.path.write_bytes(bytes(raw))
    with pytest.raises(UserError) as exc:
        get_mask(ls, "random", 0.5, 0, mask_dir=tmp_path)
    assert_one_line_error(exc, "was modified (sha256 mismatch)", str(mask.path))

    other = get_mask(ls, "random", 0.6, 0, mask_dir=tmp_path)
    man_path = other.path.with_suffix(".json")
    man = json.loads(man_path.read_text())
    man["sha256"] = "0" * 64
    man_path.write_text(json.dumps(man))
    with pytest.raises(UserError) as exc:
        load_mask(other.path, ls)
    assert_one_line_error(exc, "sha256 mismatch")


def test_edited_manifest_counts_are_rejected(tmp_path):
    ls = make_labelset()
    mask = get_mask(ls, "random", 0.5, 0, mask_dir=tmp_path)
    man_path = mask.path.with_suffix(".json")
    man = json.loads(man_path.read_text())
    man["counts"]["known_positives"] += 1
    man_path.write_text(json.dumps(man))
    with pytest.raises(UserError) as exc:
        load_mask(mask.path, ls)
    assert_one_line_error(exc, "disagrees with its mask file", "counts")


def test_mask_for_other_dataset_is_rejected(tmp_path):
    ls = make_labelset()
    mask = get_mask(ls, "random", 0.5, 0, mask_dir=tmp_path)
    other_labels = make_labelset(seed=2)
    with pytest.raises(UserError) as exc:
        load_mask(mask.path, other_labels)
    assert_one_line_error(exc, "other labels", "fingerprint")
    reordered = ls.subset(np.arange(len(ls))[::-1], "toy")
    with pytest.raises(UserError) as exc:
        load_mask(mask.path, reordered)
    assert_one_line_error(exc, "image-id order", "position 0")
    renamed = LabelSet("toy", [f"c{j}" for j in range(7)], ls.image_ids, ls.image_paths, ls.labels)
    with pytest.raises(UserError) as exc:
        load_mask(mask.path, renamed)
    assert_one_line_error(exc, "class order")
    with pytest.raises(UserError):
        mask.known_targets(other_labels)
    # get_mask keys files by fingerprint: other labels get their own file
    assert get_mask(other_labels, "random", 0.5, 0, mask_dir=tmp_path).path != mask.path


@pytest.mark.parametrize("protocol,p,seed,fragment", [
    ("random", 0, 0, "(0, 1]"), ("random", 1.5, 0, "(0, 1]"), ("random", None, 0, "(0, 1]"),
    ("random", -0.1, 0, "(0, 1]"), ("foo", 0.5, 0, "random, random_clsl, single_positive"),
    ("random", 0.5, -1, "seed"), ("random", 0.5, 1.5, "seed"),
])
def test_bad_arguments_raise_user_error(tmp_path, protocol, p, seed, fragment):
    with pytest.raises(UserError) as exc:
        get_mask(make_labelset(), protocol, p, seed, mask_dir=tmp_path)
    assert_one_line_error(exc, fragment)
    assert not list(tmp_path.iterdir())


def test_p_one_observes_everything(tmp_path):
    mask = get_mask(make_labelset(), "random", 1, 0, mask_dir=tmp_path)
    assert mask.observed.all() and mask.manifest["counts"]["observed_fraction"] == 1.0


def test_class_without_known_positive_is_reported(tmp_path, caplog):
    ls = make_labelset(n=80, c=5)
    hidden = draw_random(ls.labels, 0.3, 0)
    ls.labels[:, 3] = ~hidden[:, 3]  # class 3: positives only where the label is unknown
    with caplog.at_level(logging.WARNING, logger="datasets.masks"):
        mask = get_mask(ls, "random", 0.3, 0, mask_dir=tmp_path)
    assert mask.manifest["counts"]["classes_without_known_positive"] == ["class3"]
    assert mask.manifest["counts"]["known_positives_per_class"][3] == 0
    assert len(mask.warnings) == 1 and "class3" in mask.warnings[0]
    assert "class3" in caplog.text


def test_missing_manifest_regenerates_and_missing_npy_is_an_error(tmp_path):
    ls = make_labelset()
    mask = get_mask(ls, "random", 0.2, 0, mask_dir=tmp_path)
    mask.path.with_suffix(".json").unlink()
    assert get_mask(ls, "random", 0.2, 0, mask_dir=tmp_path).sha256 == mask.sha256
    mask.path.unlink()
    with pytest.raises(UserError) as exc:
        get_mask(ls, "random", 0.2, 0, mask_dir=tmp_path)
    assert_one_line_error(exc, "is missing")


def test_default_mask_dir_is_in_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLRPL_CACHE", str(tmp_path))
    mask = get_mask(make_labelset(name="toyset"), "random", 0.5, 0)
    assert mask.path.parent == tmp_path / "masks" / "toyset"


def test_known_targets_hide_unknown_labels(tmp_path):
    ls = make_labelset()
    mask = get_mask(ls, "random", 0.5, 0, mask_dir=tmp_path)
    targets = mask.known_targets(ls)
    assert targets.dtype == np.float32
    assert np.array_equal(targets[mask.observed], ls.labels[mask.observed])
    assert not targets[~mask.observed].any()


# ----------------------------------------------------------------------------- encodings
def test_hcp_and_clsl_conversions_round_trip():
    labels = np.array([[1, 0, 1], [0, 1, 0]], dtype=np.uint8)
    observed = np.array([[True, True, False], [False, True, True]])
    hcp = to_hcp(labels, observed)
    assert hcp.dtype == np.int8 and hcp.tolist() == [[1, -1, 0], [0, 1, -1]]
    clsl = to_clsl(labels, observed)
    assert clsl.dtype == np.int8 and clsl.tolist() == [[1, 0, -1], [-1, 1, 0]]
    for decoded in (from_hcp(hcp), from_clsl(clsl)):
        targets, obs = decoded
        assert targets.dtype == np.float32 and np.array_equal(obs, observed)
        assert targets.tolist() == [[1, 0, 0], [0, 1, 0]]
        assert np.array_equal(to_hcp(targets.astype(np.uint8), obs), hcp)
    with pytest.raises(UserError):
        from_hcp(np.array([[2, 0]]))
    with pytest.raises(UserError):
        from_clsl(np.array([[0, -2]]))


@pytest.mark.parametrize("sep", [",", " ", "\t"])
def test_read_hcp_partial_file(tmp_path, sep):
    ls = make_labelset(n=30, c=4)
    observed = draw_random(ls.labels, 0.5, 0)
    y = to_hcp(ls.labels, observed)
    path = tmp_path / "train_proportion_0.5.txt"
    path.write_text("\n".join(sep.join(str(v) for v in row) for row in y) + "\n")
    assert np.array_equal(read_hcp_partial_file(path, ls), observed)

    i, j = np.argwhere(y == 1)[0]
    y_bad = y.copy()
    y_bad[i, j] = -1
    path.write_text("\n".join(sep.join(str(v) for v in row) for row in y_bad) + "\n")
    with pytest.raises(UserError) as exc:
        read_hcp_partial_file(path, ls)
    assert_one_line_error(exc, f"row {i + 1}", ls.class_names[j], "says -1")


def test_read_hcp_partial_file_rejects_bad_shapes_and_values(tmp_path):
    ls = make_labelset(n=3, c=2)
    path = tmp_path / "partial.txt"
    path.write_text("1,0\n0,0\n")
    with pytest.raises(UserError) as exc:
        read_hcp_partial_file(path, ls)
    assert_one_line_error(exc, "2 rows", "3 images")
    path.write_text("0,0\n0,0,0\n0,0\n")
    with pytest.raises(UserError) as exc:
        read_hcp_partial_file(path, ls)
    assert_one_line_error(exc, "row 2", "3 values")
    path.write_text("0,0\n0,5\n0,0\n")
    with pytest.raises(UserError):
        read_hcp_partial_file(path, ls)
    path.write_text("0,0\n0,x\n0,0\n")
    with pytest.raises(UserError):
        read_hcp_partial_file(path, ls)
