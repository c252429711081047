"""Tests for benchmark/metrics.py: AP variants, mAP, threshold metrics and the MMEngine adapter."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from benchmark.engine.metrics import (
    MultiLabelMetric,
    ap_summary,
    average_precision,
    evaluate_multilabel,
    mean_ap,
    per_class_ap,
    threshold_metrics,
)

F9_SCORES = [0.9, 0.8, 0.7, 0.6, 0.5]
F9_LABELS = [0, 1, 1, 0, 1]
F9B_LOGITS = [[2.0, -1.0], [0.5, 0.2], [-0.3, 1.0]]
F9B_LABELS = [[1, 0], [0, 1], [1, 1]]


def _random_problem(seed: int, n: int = 60, c: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Continuous (tie-free) scores and labels with at least one positive per class."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < 0.3).astype(np.uint8)
    labels[0] = 1
    scores = rng.normal(size=(n, c)) + 1.5 * labels
    return scores, labels


def test_f9_interpolated_and_noninterpolated_ap() -> None:
    assert average_precision(F9_SCORES, F9_LABELS) == pytest.approx(0.6444444, abs=1e-6)
    assert average_precision(F9_SCORES, F9_LABELS, interpolated=False) == pytest.approx(
        0.5888889, abs=1e-6
    )


def test_f9b_threshold_metrics_all_075() -> None:
    got = threshold_metrics(F9B_LOGITS, F9B_LABELS)
    for key in ("OP", "OR", "CP", "CR", "OF1", "CF1"):
        assert got[key] == pytest.approx(0.75), key


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_noninterpolated_ap_matches_sklearn(seed: int) -> None:
    scores, labels = _random_problem(seed)
    ours = per_class_ap(scores, labels, interpolated=False)
    for c in range(labels.shape[1]):
        assert ours[c] == pytest.approx(average_precision_score(labels[:, c], scores[:, c]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interpolated_ap_at_least_noninterpolated(seed: int) -> None:
    scores, labels = _random_problem(seed)
    interp = per_class_ap(scores, labels)
    plain = per_class_ap(scores, labels, interpolated=False)
    assert np.all(interp >= plain - 1e-12)
    assert np.any(interp > plain)  # the envelope matters on random data


def test_ties_keep_original_order() -> None:
    assert average_precision([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    assert average_precision([0.5, 0.5], [1, 0]) == pytest.approx(1.0)


def test_ap_without_positive_is_nan() -> None:
    assert np.isnan(average_precision([0.3, 0.1], [0, 0]))


def test_ignored_entries_are_removed() -> None:
    scores, labels = _random_problem(5)
    ignore = np.zeros(labels.shape, dtype=bool)
    ignore[10:20, 2] = True
    ignore[3, :] = True
    base = evaluate_multilabel(scores, labels, ignore)
    flipped = labels.copy()
    flipped[ignore] = 1 - flipped[ignore]
    assert evaluate_multilabel(scores, flipped, ignore) == base
    # Same as dropping the entries by hand for one class.
    keep = ~ignore[:, 2]
    expected = average_precision(scores[keep, 2], labels[keep, 2])
    assert per_class_ap(scores, labels, ignore)[2] == pytest.approx(expected)


def test_class_with_all_positives_ignored_is_excluded_from_map() -> None:
    scores, labels = _random_problem(7, c=4)
    ignore = np.zeros(labels.shape, dtype=bool)
    ignore[:, 1] = labels[:, 1] == 1
    aps = per_class_ap(scores, labels, ignore)
    assert np.isnan(aps[1])
    expected = np.mean(aps[[0, 2, 3]])
    assert mean_ap(scores, labels, ignore) == pytest.approx(expected)
    summary = ap_summary(scores, labels, ignore)
    assert summary["num_classes_scored"] == 3
    assert summary["mAP"] == pytest.approx(100 * expected)


def test_map_nan_safe_with_empty_classes() -> None:
    scores = np.array([[1.0, 0.2, -1.0], [0.1, -0.5, 2.0], [-2.0, 0.3, 0.4]])
    labels = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = mean_ap(scores, labels)
        assert value == pytest.approx(np.nanmean(per_class_ap(scores, labels)))
        assert not np.isnan(value)
        assert np.isnan(mean_ap(scores, np.zeros_like(labels)))
        out = evaluate_multilabel(scores, np.zeros_like(labels))
    assert np.isnan(out["mAP"]) and out["num_classes_scored"] == 0
    assert out["CR"] == 0.0 and out["OR"] == 0.0


def test_cf1_is_not_mean_of_per_class_f1() -> None:
    # Class 0: P = 1, R = 0.5.  Class 1: P = 0.5, R = 1.  Per-class F1 = 2/3 each.
    scores = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [-1.0, -1.0]])
    labels = np.array([[1, 1], [1, 0], [0, 0], [0, 0]])
    got = threshold_metrics(scores, labels)
    assert got["CP"] == pytest.approx(0.75) and got["CR"] == pytest.approx(0.75)
    assert got["CF1"] == pytest.approx(0.75)
    assert got["CF1"] != pytest.approx(2 / 3)


def test_threshold_is_inclusive_and_configurable() -> None:
    scores = np.array([[0.0, -0.1]])
    labels = np.array([[1, 1]])
    assert threshold_metrics(scores, labels)["OR"] == pytest.approx(0.5)
    assert threshold_metrics(scores, labels, threshold=-0.1)["OR"] == pytest.approx(1.0)


def test_top3_restricts_predictions() -> None:
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, -1.0]])
    labels = np.array([[1, 0, 0, 1, 1], [0, 0, 0, 1, 0]])
    full = threshold_metrics(scores, labels)
    top3 = threshold_metrics(scores, labels, top_k=3)
    assert full["OP"] == pytest.approx(4 / 9) and full["OR"] == pytest.approx(1.0)
    # Top 3: row 0 predicts classes 0,1,2 (1 correct); row 1 predicts 3,2,1 (1 correct).
    assert top3["OP"] == pytest.approx(2 / 6) and top3["OR"] == pytest.approx(2 / 4)
    # An ignored entry takes no top-k slot: class 0 of row 0 ignored -> row 0 predicts 1,2,3.
    ignore = np.zeros(labels.shape, dtype=bool)
    ignore[0, 0] = True
    got = threshold_metrics(scores, labels, ignore, top_k=3)
    assert got["OP"] == pytest.approx(2 / 6) and got["OR"] == pytest.approx(2 / 3)


def test_evaluate_multilabel_percent_and_keys() -> None:
    scores, labels = _random_problem(11)
    out = evaluate_multilabel(torch.tensor(scores), torch.tensor(labels))
    assert set(out) == {
        "mAP", "mAP_noninterp", "CP", "CR", "CF1", "OP", "OR", "OF1",
        "CP_top3", "CR_top3", "CF1_top3", "OP_top3", "OR_top3", "OF1_top3",
        "num_classes_scored",
    }  # fmt: skip
    assert out["mAP"] == pytest.approx(100 * mean_ap(scores, labels))
    assert out["mAP_noninterp"] == pytest.approx(100 * mean_ap(scores, labels, None, False))
    assert out["OF1_top3"] == pytest.approx(100 * threshold_metrics(scores, labels, top_k=3)["OF1"])
    assert out["num_classes_scored"] == 7 and isinstance(out["num_classes_scored"], int)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="shape"):
        mean_ap(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="0 and 1"):
        mean_ap(np.zeros((2, 2)), np.array([[1, -1], [0, 1]]))
    with pytest.raises(ValueError, match="top_k"):
        threshold_metrics(np.zeros((2, 2)), np.zeros((2, 2)), top_k=0)


def _batches(seed: int) -> tuple[list[dict], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Three predict-step batches mixing val (0) and test (1) samples."""
    scores, labels = _random_problem(seed, n=48, c=6)
    rng = np.random.default_rng(seed + 100)
    mask = rng.random(labels.shape) < 0.7
    split = rng.integers(0, 2, size=48)
    batches = [
        {
            "logits": torch.tensor(scores[i : i + 16], dtype=torch.float32),
            "labels": torch.tensor(labels[i : i + 16], dtype=torch.uint8),
            "eval_mask": torch.tensor(mask[i : i + 16]),
            "split": torch.tensor(split[i : i + 16], dtype=torch.long),
        }
        for i in range(0, 48, 16)
    ]
    return batches, scores.astype(np.float32), labels, mask, split


def test_adapter_splits_val_and_test() -> None:
    batches, scores, labels, mask, split = _batches(3)
    metric = MultiLabelMetric()
    for batch in batches:
        metric.process({}, [batch])
    got = metric.evaluate(size=48)
    assert metric.results == []  # evaluate() resets the buffer
    val, test = split == 0, split == 1
    expected_val = ap_summary(scores[val], labels[val], ~mask[val])
    expected_test = evaluate_multilabel(scores[test], labels[test], ~mask[test])
    assert {k for k in got if k.startswith("val/")} == {f"val/{k}" for k in expected_val}
    assert {k for k in got if k.startswith("test/")} == {f"test/{k}" for k in expected_test}
    for key, value in expected_val.items():
        assert got[f"val/{key}"] == pytest.approx(value)
    for key, value in expected_test.items():
        assert got[f"test/{key}"] == pytest.approx(value)
    assert got["test/mAP"] == pytest.approx(100 * mean_ap(scores[test], labels[test], ~mask[test]))
    assert 1.0 < got["test/mAP"] <= 100.0


def test_adapter_custom_split_names_and_absent_split() -> None:
    batches, scores, labels, mask, _ = _batches(4)
    metric = MultiLabelMetric(splits=("holdout", "eval"), full_splits=("eval",))
    for batch in batches:
        batch["split"] = torch.ones_like(batch["split"])
        metric.process({}, [batch])
    got = metric.compute_metrics(metric.results)
    assert all(k.startswith("eval/") for k in got) and "eval/CF1_top3" in got
    assert got["eval/mAP"] == pytest.approx(100 * mean_ap(scores, labels, ~mask))


def test_adapter_rejects_unknown_split_code() -> None:
    batches, *_ = _batches(5)
    batches[0]["split"][0] = 2
    metric = MultiLabelMetric()
    metric.process({}, batches[:1])
    with pytest.raises(ValueError, match="split codes"):
        metric.compute_metrics(metric.results)
