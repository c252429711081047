"""Where the benchmark keeps generated data (synthetic images, masks, feature and embedding caches).

Default: ``<repo>/.cache``; override with the environment variable ``MLRPL_CACHE``.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]



def cache_root() -> Path:
    root = Path(os.environ.get("MLRPL_CACHE", REPO_ROOT / ".cache")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root



def cache_dir(*parts: str) -> Path:
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
