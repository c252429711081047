"""Verified cache files: the checksum helpers every cache of the suite uses (the frozen feature
maps, the synthetic dataset folder, the label-embedding caches and the masks).

A data file is written atomically with the sha256 and size of its bytes computed on the way
(:func:`write_digested`), then its JSON manifest beside it (:func:`write_manifest`), so a kill
between the two leaves a data file without a manifest, which the reader treats as absent. A reader
gets the bytes only when they match the manifest (:func:`verified_content`, :func:`verified_file`).
Verifications are memoised per process by the file's (path, size, mtime, inode, ctime), so a grid
hashes a file once per process, not once per run.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from benchmark.core.files import atomic_write_text, atomic_writer

_VERIFIED: dict[tuple, str] = {}   # stat key of a file -> the sha256 its content was found to have
_CHUNK = 1 << 22


def manifest_path(path: Path | str) -> Path:
    """The JSON manifest beside a cache file: ``x.npy`` -> ``x.json``."""
    return Path(path).with_suffix(".json")


def _stat_key(path: Path, st: os.stat_result) -> tuple:
    # ctime cannot be set back by a user (os.utime sets mtime only): an edit in place always shows
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


class _HashingWriter:
    """A write-only file wrapper that hashes and counts the bytes going through it."""

    def __init__(self, fh):
        self.fh, self.digest, self.size = fh, hashlib.sha256(), 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self.size += view.nbytes
        return self.fh.write(view)

    def flush(self) -> None:
        self.fh.flush()


def write_digested(path: Path, write: Callable, expected_size: float | None = None) -> dict:
    """Write ``path`` atomically with ``write(fh)`` (e.g. ``lambda fh: np.save(fh, a)``) and return
    ``{"size", "sha256"}`` of the bytes written, computed on the way (the file is not read back)."""
    with atomic_writer(path, "wb", expected_size=expected_size) as fh:
        tee = _HashingWriter(fh)
        write(tee)
    return {"size": tee.size, "sha256": tee.digest.hexdigest()}


def write_manifest(path: Path, manifest: dict) -> None:
    """The manifest of ``path``, written atomically: call it AFTER the data file is in place."""
    atomic_write_text(manifest_path(path), json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def read_manifest(path: Path) -> dict | None:
    """The manifest of cache file ``path``; None when it is missing, unreadable or has no sha256."""
    try:
        manifest = json.loads(manifest_path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("sha256"), str):
        return None
    if "size" in manifest and not isinstance(manifest["size"], int):
        return None
    return manifest


def _size_problem(actual: int, expected) -> str:
    if expected is None or actual == expected:
        return ""
    if actual < expected:
        return f"is truncated ({actual} of the {expected} bytes its manifest records)"
    return f"has {actual} bytes, its manifest records {expected}"


def verified_content(path: Path, manifest: dict | None) -> tuple[bytearray | None, str]:
    """``(content, "")`` when ``path`` holds exactly the bytes ``manifest`` records (sha256, and size
    when recorded), else ``(None, why)`` with ``why`` a phrase that follows the file's name ("failed
    its checksum", "is truncated (...)", "has no manifest ...", "is unreadable (...)"). The bytes
    returned are the ones hashed (read once: nothing can change between the check and the use)."""
    path = Path(path)
    if manifest is None:
        return None, f"has no manifest {manifest_path(path).name} (written by an older version, or cut short)"
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            problem = _size_problem(st.st_size, manifest.get("size"))
            if problem:
                return None, problem
            content = bytearray(st.st_size)
            view, got = memoryview(content), 0
            while got < len(content):
                n = fh.readinto(view[got:])
                if not n:
                    break
                got += n
            if got != len(content) or _stat_key(path, os.fstat(fh.fileno())) != _stat_key(path, st):
                return None, "changed while it was read"
    except FileNotFoundError:
        return None, "is missing"
    except OSError as exc:
        return None, f"is unreadable ({exc.strerror or exc})"
    key = _stat_key(path, st)
    if _VERIFIED.get(key) != manifest["sha256"]:
        if hashlib.sha256(content).hexdigest() != manifest["sha256"]:
            return None, "failed its checksum"
        _VERIFIED[key] = manifest["sha256"]
    return content, ""


def verified_file(path: Path, sha256: str, size: int | None = None) -> str:
    """``""`` when ``path`` has this sha256 (and size), else why not (see :func:`verified_content`);
    hashed in chunks, nothing kept in memory."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            problem = _size_problem(st.st_size, size)
            if problem:
                return problem
            key = _stat_key(path, st)
            if _VERIFIED.get(key) == sha256:
                return ""
            digest = hashlib.sha256()
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(chunk)
    except FileNotFoundError:
        return "is missing"
    except OSError as exc:
        return f"is unreadable ({exc.strerror or exc})"
    if digest.hexdigest() != sha256:
        return "failed its checksum"
    _VERIFIED[key] = sha256
    return ""


def npy_header(fh) -> tuple[tuple, np.dtype, bool]:
    """(shape, dtype, fortran order) of the ``.npy`` header at ``fh``'s position (left after it).
    Raises ValueError for an unknown format version or an object array (never unpickled)."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise ValueError(f".npy format version {version} is not supported")
    if dtype.hasobject:
        raise ValueError("it holds Python objects, never unpickled")
    return tuple(shape), dtype, fortran


def npy_from_buffer(content: bytearray) -> np.ndarray:
    """The array of ``.npy`` bytes, without copying them (the array is a view of ``content``).
    Raises ValueError for anything but a complete, non-object ``.npy`` array."""
    head = io.BytesIO(bytes(memoryview(content)[:70_000]))
    shape, dtype, fortran = npy_header(head)
    count, offset = int(np.prod(shape, dtype=np.int64)), head.tell()
    if offset + count * dtype.itemsize != len(content):
        raise ValueError(f"{len(content) - offset} data bytes for an array of shape {list(shape)} {dtype}")
    array = np.frombuffer(content, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)
