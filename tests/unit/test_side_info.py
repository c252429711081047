"""Label side information: embedding providers, their cache, and the co-occurrence graph."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmark.core.cache import REPO_ROOT
from benchmark.core.errors import UserError
from datasets import side_info
from datasets.side_info import (
    canonical_name,
    cooccurrence_graph,
    glove_lookup,
    label_embeddings,
)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLRPL_CACHE", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------------- graph


def test_graph_f14_fixture():
    targets = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=np.float32)
    graph, empty = cooccurrence_graph(targets, np.ones_like(targets, dtype=bool))
    expected = np.array([[1, 2 / 3, 1 / 3], [1, 1, 1 / 2], [1, 1, 1]], dtype=np.float32)
    np.testing.assert_allclose(graph, expected, rtol=1e-6)
    assert graph.dtype == np.float32 and empty == []


def test_graph_ignores_unobserved_positives():
    targets = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=np.float32)
    observed = np.ones_like(targets, dtype=bool)
    observed[0, 1] = False  # the hidden positive (0, 1) must not count
    graph, empty = cooccurrence_graph(targets, observed)
    # N_00 = 3, N_01 = 1 (image 2 only), N_11 = 1 -> A_01 = 1/3, A_10 = 1
    np.testing.assert_allclose(graph[0], [1, 1 / 3, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(graph[1], [1, 1, 1], rtol=1e-6)
    assert empty == []


def test_graph_empty_class_gets_finite_identity_row():
    targets = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 1]], dtype=np.float32)
    observed = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=bool)  # class 1's only positive is hidden
    graph, empty = cooccurrence_graph(targets, observed)
    assert empty == [1]
    assert np.isfinite(graph).all()
    np.testing.assert_array_equal(graph[1], [0, 1, 0])
    assert graph[0, 1] == 0 and graph[2, 1] == 0
    np.testing.assert_allclose(np.diag(graph), [1, 1, 1])


def test_graph_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="must both be"):
        cooccurrence_graph(np.zeros((2, 3)), np.ones((2, 4), dtype=bool))


# ----------------------------------------------------------------------------------- GloVe


def test_glove_similarity_and_shape():
    emb = label_embeddings(["cat", "dog", "truck"], "glove")
    assert emb.shape == (3, 50) and emb.dtype == np.float32
    assert _cos(emb[0], emb[1]) > _cos(emb[0], emb[2]) + 0.2


def test_glove_multiword_names_average_their_words():
    words = glove_lookup({"dining", "table", "potted", "plant"})
    emb = label_embeddings(["diningtable", "dining_table", "Potted-Plant"], "glove")
    np.testing.assert_allclose(emb[0], (words["dining"] + words["table"]) / 2, rtol=1e-6)
    np.testing.assert_allclose(emb[1], emb[0])
    np.testing.assert_allclose(emb[2], (words["potted"] + words["plant"]) / 2, rtol=1e-6)


def test_glove_keeps_known_hyphenated_words_whole():
    whole = glove_lookup({"t-shirt"})["t-shirt"]
    np.testing.assert_allclose(label_embeddings(["T-shirt"], "glove")[0], whole)


def test_glove_out_of_vocabulary_names_the_class_and_the_fix():
    with pytest.raises(UserError, match=r"'qzxqzxq'.*class 'big_qzxqzxq'.*--embeddings minilm"):
        label_embeddings(["cat", "big_qzxqzxq"], "glove")


def test_canonical_name_aliases():
    assert canonical_name("tvmonitor") == "tv monitor"
    assert canonical_name(" Traffic_Light ") == "traffic light"


# ----------------------------------------------------------------------------------- cache


def test_second_call_reads_the_cache(monkeypatch):
    first = label_embeddings(["cat", "dog"], "glove", dataset="voc2007")
    path = side_info.embedding_cache_path(["cat", "dog"], "glove", dataset="voc2007")
    assert path.is_file() and path.parent.name == "embeddings"

    def fail(*args, **kwargs):
        raise AssertionError("provider recomputed despite the cache")

    monkeypatch.setattr(side_info, "glove_embeddings", fail)
    np.testing.assert_array_equal(label_embeddings(["cat", "dog"], "glove", dataset="voc2007"), first)
    with pytest.raises(AssertionError, match="recomputed"):  # another dataset name is another key
        label_embeddings(["cat", "dog"], "glove", dataset="coco2014")


# ----------------------------------------------------------------------------------- random / file / errors


def test_random_is_seeded_and_sized():
    a = label_embeddings(["a", "b", "c"], "random", seed=3)
    assert a.shape == (3, 300) and a.dtype == np.float32
    np.testing.assert_array_equal(a, label_embeddings(["a", "b", "c"], "random", dataset="x", seed=3))
    assert not np.allclose(a, label_embeddings(["a", "b", "c"], "random", seed=4))
    assert label_embeddings(["a", "b"], "random:16").shape == (2, 16)


def test_file_provider(tmp_path):
    good = tmp_path / "bert.npy"
    np.save(good, np.arange(6, dtype=np.float64).reshape(2, 3))
    emb = label_embeddings(["a", "b"], f"file:{good}")
    assert emb.dtype == np.float32 and emb.tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(UserError, match=r"bert.npy has shape \[2, 3\], expected \[3, E\]"):
        label_embeddings(["a", "b", "c"], f"file:{good}")
    with pytest.raises(UserError, match=r"missing.npy not found.*\[2, E\]"):
        label_embeddings(["a", "b"], f"file:{tmp_path / 'missing.npy'}")


def test_unknown_provider_lists_valid_ones():
    valid = r"valid providers: glove, minilm, file:PATH.npy, random"
    with pytest.raises(UserError, match=rf"unknown embedding provider 'word2vec'; {valid}"):
        label_embeddings(["a"], "word2vec")
    with pytest.raises(UserError, match="positive integer"):
        label_embeddings(["a"], "random:-5")


# ----------------------------------------------------------------------------------- MiniLM from the repo root

_MINILM_SCRIPT = """
import json, socket, sys
def refuse(*args, **kwargs):
    raise RuntimeError("network access attempted")
socket.socket.connect = refuse
socket.create_connection = refuse
from datasets.side_info import label_embeddings
emb = label_embeddings(["cat", "dog", "truck", "diningtable"], "minilm", dataset="t")
ours = sys.modules["datasets"].__path__
print(json.dumps({"emb": emb.tolist(), "datasets_path": [str(p) for p in ours]}))
"""


@pytest.fixture(scope="module")
def minilm_from_repo_root(tmp_path_factory) -> dict:
    """Load MiniLM once, in a fresh interpreter started in the repo root (the shadowing pitfall)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", MLRPL_CACHE=str(tmp_path_factory.mktemp("cache")))
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-c", _MINILM_SCRIPT], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_minilm_loads_from_repo_root(minilm_from_repo_root):
    emb = np.array(minilm_from_repo_root["emb"], dtype=np.float32)
    assert emb.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    assert Path(minilm_from_repo_root["datasets_path"][0]).resolve() == (REPO_ROOT / "datasets").resolve()


def test_minilm_similarity(minilm_from_repo_root):
    cat, dog, truck, _ = np.array(minilm_from_repo_root["emb"])
    assert _cos(cat, dog) > _cos(cat, truck) + 0.1
