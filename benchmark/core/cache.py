"""Where the benchmark keeps generated data (synthetic images, masks, feature and embedding caches).

Default: ``<repo>/.cache``; override with the environment variable ``MLRPL_CACHE`` (a folder; set
and empty is refused, not read as the working directory).
"""
from __future__ import annotations

import os
from pathlib import Path

from benchmark.core.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_path() -> Path:
    """The cache folder as configured (not created)."""
    value = os.environ.get("MLRPL_CACHE")
    if value is None:
        return REPO_ROOT / ".cache"
    if not value.strip():
        raise UserError("MLRPL_CACHE is set but empty; unset it (the cache goes to <repo>/.cache) or give a folder")
    return Path(value).expanduser()


def cache_root() -> Path:
    root = cache_path()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"MLRPL_CACHE {root} is a file (or a dangling link), not a folder; give a folder") from None
    return root


def cache_dir(*parts: str) -> Path:
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
