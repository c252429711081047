"""Content digests (a stable hash of a JSON-able object, a file's sha256) and atomic writes (a
reader never sees a half-written file).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def stable_hash(obj, length: int = 12) -> str:
    """A short, stable hex digest of a JSON-serialisable object (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]



def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()



def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that a reader never sees a half-written version (write, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)



def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
