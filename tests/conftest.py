"""Shared test setup: offline, a per-session cache folder, the smoke-sized synthetic data."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# Property-based tests (hypothesis): no example database in the working tree, no deadline (a CPU under
# load is slow), a bounded example count so the suite stays in budget; `MLRPL_FUZZ_EXAMPLES=500 pytest -m
# fuzz` is the long fuzz run (README, Reliability).
try:
    from hypothesis import HealthCheck, settings

    FUZZ_EXAMPLES = int(os.environ.get("MLRPL_FUZZ_EXAMPLES", "0")) or None
    settings.register_profile("suite", database=None, deadline=None, derandomize=FUZZ_EXAMPLES is None,
                              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                              **({"max_examples": FUZZ_EXAMPLES} if FUZZ_EXAMPLES else {}))
    settings.load_profile("suite")
except ImportError:          # hypothesis is a test dependency; without it the fuzz tests are skipped
    FUZZ_EXAMPLES = None


def fuzz_examples(default: int) -> int:
    """The example count of a property test: ``default`` in the suite, MLRPL_FUZZ_EXAMPLES in a fuzz run."""
    return FUZZ_EXAMPLES or default


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory):
    """One cache folder per test session (synthetic images, masks, features, embeddings),
    unless MLRPL_CACHE is set by the caller (CI reuses one across the suite)."""
    if "MLRPL_CACHE" not in os.environ:
        os.environ["MLRPL_CACHE"] = str(tmp_path_factory.mktemp("mlrpl_cache"))
    yield Path(os.environ["MLRPL_CACHE"])


TIERS = ("unit", "integration", "e2e")

# One method per distinct path through the harness (benchmark.contract.collectives' conventions and the
# engine's hooks), the set the contract runs (tests/integration/test_contract.py) and the DDP grid
# (tests/e2e/test_ddp.py) train; every other method shares its path with one of these.
HARNESS_PATHS = {
    "an": "plain mean over every entry of the batch (the ranks' rows: nothing to reduce)",
    "partial_bce": "mean over the known entries: masked BCE's count normaliser (batch_normaliser)",
    "asl": "a sum over the batch (sum_scale)",
    "epr": "a non-linear function of a batch mean (batch_mean); expected_num_pos side information",
    "ll_ct": "top-k over the global batch's entries (large-loss selection); per-sample tables (set_rows); "
             "parameter groups",
    "role": "a per-sample learnable table of label estimates, filled by an epoch pass (gather_rows)",
    "csl": "per-image top-k and sum_scale; an epoch pass training the prior on gathered features; "
           "recovery tables and counts summed over the ranks (all_reduce)",
    "hst": "global-batch contrastive loss (global_batch); SARL trunk with BatchNorm (SyncBatchNorm under DDP); "
           "k-means prototypes from an epoch pass; label embeddings and graph; random pair draws in a step",
    "clsl": "the EMA model evaluated; its own optimizer/schedule recipe; BatchNorm1d in the fusion "
            "(SyncBatchNorm under DDP); dropout (random draws in a step); label embeddings",
}


def pytest_collection_modifyitems(config, items):
    """Each test carries the marker of its tier, named by its folder: ``unit`` (pure functions and
    single modules, no training run), ``integration`` (the engine, a tiny run or one CLI call),
    ``e2e`` (several processes: torchrun, submitit, kills, a browser). ``-m unit`` selects a tier;
    ``-m "not slow"`` is the developer tier (README, Quickstart)."""
    root = Path(__file__).resolve().parent
    for item in items:
        try:
            tier = Path(str(item.path)).resolve().relative_to(root).parts[0]
        except ValueError:
            continue
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
        if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
            item.add_marker(pytest.mark.fuzz)          # every property-based test: `-m fuzz` selects them
        if tier == "e2e":
            item.add_marker(pytest.mark.slow)     # several processes: out of the developer tier


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Finished smoke runs shared by the session: ``trained(spec, threads=None)`` trains ``spec`` the
    first time a test asks for it (``run_one`` in a session folder, ``threads`` torch threads; None =
    the process's count) and returns its :class:`RunFolder`, ``done`` written by the engine. The
    folder is shared: a test that changes a run (or writes a report next to it) works on
    :func:`copy_run` of it in its own ``tmp_path``."""
    root = tmp_path_factory.mktemp("trained")

    def get(spec, threads: int | None = None):
        from benchmark.core.registry import discover
        from benchmark.core.run_folder import RunFolder
        from benchmark.engine.lifecycle import run_one

        discover()
        out = root / f"threads-{threads}"
        folder = RunFolder(out, spec.run_id)
        if not folder.finished:
            folder = run_one(spec, out, threads=threads, say=lambda line: None)
        assert folder.finished
        return folder

    return get


def copy_run(folder, out_dir):
    """A copy of a finished run folder under ``out_dir`` (same run id), as a RunFolder."""
    from benchmark.core.run_folder import RunFolder

    shutil.copytree(folder.path, Path(out_dir) / folder.path.name)
    return RunFolder(out_dir, folder.path.name)


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


def smoke_spec(method: str = "partial_bce", ratio: float = 0.5, seed: int = 0, epochs: int = 2, train=None, **kw):
    """A smoke-profile RunSpec (tiny synthetic set, 64 px, frozen packaged EfficientNet-Lite0);
    ``train`` changes recipe values (e.g. ``{"schedule": "step", "step_size": 1}``), as do keyword
    arguments named like a recipe field (``batch_size=16``)."""
    from benchmark.config.run_spec import profile_spec
    from benchmark.config.train_recipe import TRAIN_FIELDS

    train = {"epochs": epochs, **(train or {}), **{k: kw.pop(k) for k in list(kw) if k in TRAIN_FIELDS}}
    return profile_spec(method, "smoke", ratio, seed, train=train, embeddings=kw.pop("embeddings", "random"), **kw)


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


def initial_state(spec) -> dict:
    """A method's state before training, built as the engine builds it (same task, same seed): what
    a resume test compares the trained state with, to see which tensors training changed."""
    import torch

    from benchmark.core.registry import get_method
    from benchmark.engine.prepared_run import PreparedRun
    from benchmark.engine.seeding import seed_everything

    cls = get_method(spec.method)
    prep = PreparedRun(spec, torch.device("cpu"))
    task = prep.task_spec(cls.card.requires)
    seed_everything(spec.seed)
    method = cls(task, cls.make_config(dict(spec.method_config), profile=spec.profile), backbone=prep.backbone)
    return {k: v.clone() for k, v in method.state_dict().items()}


def spec_json(**fields) -> dict:
    """A spec.json record as this code writes it (spec version, identity), for report tests that fake
    result folders: the identity holds the fields that are not provenance."""
    from benchmark.config.run_spec import SPEC_VERSION

    provenance = {"run_id", "mask_sha256", "git_sha", "git_dirty", "trunk_baseline", "unknown_key", "privileged",
                  "resolved_config", "recipe"}
    identity = {k: v for k, v in fields.items() if k not in provenance}
    return {"spec_version": SPEC_VERSION, "identity": {**identity, "spec_version": SPEC_VERSION}, **fields}


def run_name(method: str, ratio: float, seed: int, dataset: str = "synthetic", protocol: str = "frozen",
             tag: str = "") -> str:
    """A run-id-like folder name for a faked run (``RUN_ID``: method, dataset, protocol, ratio tag,
    seed, 10 hex digits), the digest a hash of the other parts (and ``tag``, to make a second run of
    one cell): the same arguments always give the same name, as one RunSpec gives one run id."""
    import hashlib

    digest = hashlib.sha256(f"{method}|{dataset}|{protocol}|{ratio}|{seed}|{tag}".encode()).hexdigest()[:10]
    return f"{method}__{dataset}__{protocol}__p{ratio:g}__s{seed}__{digest}"


def mask_sha(ratio: float, seed: int) -> str:
    """A mask sha256 (64 hex digits) for a faked run: the same for every method at one (ratio, seed)."""
    import hashlib

    return hashlib.sha256(f"{ratio}-{seed}".encode()).hexdigest()
