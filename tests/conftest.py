"""Shared test setup: offline, a per-session cache folder, the smoke-sized synthetic data."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory):
    """One cache folder per test session (synthetic images, masks, features, embeddings),
    unless MLRPL_CACHE is set by the caller (CI reuses one across the suite)."""
    if "MLRPL_CACHE" not in os.environ:
        os.environ["MLRPL_CACHE"] = str(tmp_path_factory.mktemp("mlrpl_cache"))
    yield Path(os.environ["MLRPL_CACHE"])


@pytest.fixture(scope="session")
def registry():
    from benchmark.core.registry import discover

    discover()
    from benchmark.core.registry import METHODS

    return METHODS


@pytest.fixture
def forget_plugins():
    """Methods registered from --plugins folders during a test are dropped again afterwards."""
    from benchmark.core.registry import METHODS, discover

    discover()
    before = dict(METHODS.module_dict)
    yield
    METHODS.module_dict.clear()
    METHODS.module_dict.update(before)
    for name in [m for m in sys.modules if m.startswith("mlrpl_plugin_")]:
        del sys.modules[name]


def toy_batches(n: int = 12, c: int = 4, seed: int = 0):
    """Two seeded batches of [6, 8, 2, 2] feature maps; class 0 is a known positive in every row."""
    import torch

    from benchmark.contract.method import Batch

    gen = torch.Generator().manual_seed(seed)
    targets = (torch.rand(n, c, generator=gen) > 0.5).float()
    observed = torch.rand(n, c, generator=gen) > 0.4
    observed[:, 0] = True
    targets[:, 0] = 1.0
    inputs = torch.randn(n, 8, 2, 2, generator=gen)
    return [Batch(inputs[i:i + 6], targets[i:i + 6] * observed[i:i + 6], observed[i:i + 6], torch.arange(i, i + 6))
            for i in (0, 6)]


def smoke_spec(method: str = "partial_bce", ratio: float = 0.5, seed: int = 0, epochs: int = 2, **kw):
    """A smoke-profile RunSpec (tiny synthetic set, 64 px, frozen packaged EfficientNet-Lite0)."""
    from benchmark.config.profiles import get_profile
    from benchmark.config.run_spec import RunSpec

    prof = get_profile("smoke")
    fields = dict(method=method, dataset="synthetic", ratio=ratio, seed=seed, profile="smoke", epochs=epochs,
                  batch_size=prof.batch_size, lr=prof.lr, weight_decay=prof.weight_decay, image_size=prof.image_size,
                  dataset_size=prof.dataset_size, lr_step=None, embeddings="random")
    fields.update(kw)
    return RunSpec(**fields)


def records_by_epoch(folder, kind: str) -> dict:
    """The last record of each epoch (wall-clock fields dropped), as a resumed run logs it."""
    return {r["epoch"]: {k: v for k, v in r.items() if k != "epoch_seconds"} for r in folder.records(kind)}


def cut_and_resume(spec, tmp_path, cut_after: int, before_resume=None):
    """Run ``spec`` whole, and again interrupted after epoch ``cut_after`` then resumed from its
    checkpoint; returns (whole, resumed) run folders. ``before_resume(folder)`` may inspect the cut."""
    from benchmark.core.run_folder import RunFolder
    from benchmark.engine.lifecycle import run_one

    whole = run_one(spec, tmp_path / "whole")

    class Stop(Exception):
        pass

    def stop(epoch, max_epochs, val_map):
        if epoch == cut_after:
            raise Stop

    with pytest.raises(Stop):
        run_one(spec, tmp_path / "cut", progress=stop)
    cut = RunFolder(tmp_path / "cut", spec.run_id)
    assert not cut.done and cut.last_checkpoint() is not None
    if before_resume is not None:
        before_resume(cut)
    return whole, run_one(spec, tmp_path / "cut")
