"""Where a run came from: the git commit, package versions, device and host recorded in spec.json.
"""
from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata

import torch

from benchmark.core.cache import REPO_ROOT
from benchmark.core.errors import UserError


@functools.lru_cache(maxsize=1)
def environment_record() -> dict:
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        sha = proc.stdout.strip() if proc.returncode == 0 else None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                    capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        sha, dirty = None, None
    versions = {}
    for pkg in ("torch", "torchvision", "timm", "mmengine", "numpy", "scikit-learn"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})"
    return {"git_sha": sha, "git_dirty": dirty, "versions": versions, "device_name": device,
            "python": platform.python_version(), "host": platform.node()}


def recipe_record(spec) -> dict:
    """The run's recipe as spec.json stores it: the resolved recipe of (method, dataset, profile) with
    every value's source, the values flags changed (``overridden``: field -> the value trained with),
    and what the run trained with."""
    from benchmark.config.recipes import resolve

    try:
        recipe = resolve(spec.method, spec.dataset, spec.profile).to_json()
    except UserError as exc:          # a run built outside the CLI (tests, the API) without a recipe entry
        recipe = {"unresolved": f"{type(exc).__name__}: {exc}"}
    trained = spec.train.to_dict()
    recipe["overridden"] = {name: trained.get(name) for name in spec.recipe_overrides}
    recipe["trained"] = trained
    return recipe
