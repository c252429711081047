"""One run on several processes: torchrun + MMEngine's DDP with the gloo backend on the CPU.

Two ranks train one method per distinct harness path (smoke profile) and are compared with one
process training the same global batch; every other method shares its path with one of them
(``tests.conftest.HARNESS_PATHS``):

- ``an``: plain mean over every entry (nothing to reduce);
- ``partial_bce``: masked count normaliser (``batch_normaliser``);
- ``asl``: a sum over the batch (``sum_scale``);
- ``epr``: a non-linear function of a batch mean (``batch_mean``);
- ``ll_ct``: top-k over the global batch's entries, per-sample tables (``set_rows``);
- ``role``: per-sample table filled by an epoch pass (each rank's share, ``gather_rows``);
- ``csl``: per-image top-k, ``sum_scale``, an epoch pass on gathered features, counts ``all_reduce``-d;
- ``hst``: global-batch contrastive loss (``global_batch``), the SARL trunk's SyncBatchNorm, k-means
  prototypes from an epoch pass; it draws random pairs inside a step.

Methods whose steps draw no random numbers must match one process exactly (every epoch's metrics
within 1e-6): the helpers of ``benchmark.contract.collectives`` make the global batch's losses,
normalisers, top-k selections, BatchNorm statistics and per-sample tables what one process computes.
Methods that draw random numbers inside a step (hst here; sst, sarb, dsrb and clsl too) draw them per
rank, so only a stated tolerance holds for them (README, "One run on several GPUs"). The helpers
themselves (every collective, SyncBatchNorm, the large-loss and CSL top-k, the blending partners and
the prototype banks of hst, sarb and dsrb) are checked value by value by ``ddp_driver.py helpers``;
CLSL's EMA and per-sample tables under a cut and resume by ``ddp_driver.py resume``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HARNESS_PATHS

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]

# Random draws inside a training step: CLSL's dropout, SARB/DSRB's in-batch blending partners, and
# the random pair subsample of the instance-contrastive loss (HST, SARB, SST).
RANDOM_STEP_METHODS = {"clsl", "sarb", "dsrb", "hst", "sst"}
DDP_METHODS = sorted(set(HARNESS_PATHS) - {"clsl"})     # clsl: covered by the helpers and the resume check
EXACT_TOL = 1e-6            # mAP points: the exact methods match one process at every epoch
RANDOM_TOL = 2.0            # mAP points on the smoke profile's 80 test images, last epoch


def _torchrun(*args, timeout=600, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, **kw)


def _ok(proc) -> None:
    assert proc.returncode == 0, (proc.stdout[-3000:] + proc.stderr[-6000:])


def _runs(folder: Path) -> dict:
    out = {}
    for spec_file in folder.glob("*/spec.json"):
        spec = json.loads(spec_file.read_text())
        records = [json.loads(line) for line in (spec_file.parent / "metrics.jsonl").read_text().splitlines()]
        out[spec["method"]] = (spec, records)
    return out


def test_dist_helpers_match_one_process_on_the_whole_batch():
    """Gathers, per-sample writes, the global-batch normaliser and mean, the global-batch contrastive
    loss, SyncBatchNorm and the large-loss top-k: values and (DDP-averaged) gradients at two ranks
    equal one process's on the whole batch."""
    proc = _torchrun("tests/e2e/ddp_driver.py", "helpers", timeout=300)
    _ok(proc)
    assert proc.stdout.count(": ok") == 2


@pytest.fixture(scope="module")
def two_grids(tmp_path_factory):
    """One method per harness path (DDP_METHODS), smoke profile, 50 %: under torchrun with two ranks and
    in one process with the same global batch (one torch thread each)."""
    base = tmp_path_factory.mktemp("ddp")
    common = ["--profile", "smoke", "--methods", *DDP_METHODS, "--ratios", "0.5", "--threads", "1", "--no-report"]
    ddp = _torchrun("run_benchmark.py", "--launcher", "pytorch", *common, "--out", base / "ddp")
    _ok(ddp)
    single = subprocess.run([sys.executable, "run_benchmark.py", *common, "--jobs", "2", "--out", base / "one"],
                            cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    _ok(single)
    return ddp, _runs(base / "ddp"), _runs(base / "one")


def test_each_harness_path_trains_on_two_ranks_like_one_process(two_grids, registry):
    proc, ddp, one = two_grids
    assert set(DDP_METHODS) <= set(registry.module_dict)
    assert set(ddp) == set(one) == set(DDP_METHODS), "every covered method ran in both grids"
    assert set(DDP_METHODS) - RANDOM_STEP_METHODS, "exact methods are compared"
    assert proc.stdout.count("grid:") == 1            # rank 0 speaks for the grid, once
    assert not (REPO / ".dist_test").exists(), "evaluation is gathered through the process group, not files"
    for method, (spec, records) in ddp.items():
        parallel = spec["parallel"]
        assert parallel["world_size"] == 2 and parallel["backend"] == "gloo"
        assert parallel["global_batch_size"] == one[method][0]["parallel"]["global_batch_size"] == spec["train"]["batch_size"]
        assert parallel["batch_size_per_rank"] * 2 == parallel["global_batch_size"]
        assert parallel["lr"] == spec["train"]["lr"] == one[method][0]["parallel"]["lr"]
        assert not [r for r in records if r["kind"] == "rank_check"], f"{method}: ranks hold different state"
        ours = {r["epoch"]: r for r in records if r["kind"] == "eval"}
        theirs = {r["epoch"]: r for r in one[method][1] if r["kind"] == "eval"}
        assert sorted(ours) == sorted(theirs) == [1, 2, 3]
        if method in RANDOM_STEP_METHODS:
            last = max(ours)
            gap = abs(ours[last]["test/mAP"] - theirs[last]["test/mAP"])
            assert gap <= RANDOM_TOL, f"{method}: test mAP {ours[last]['test/mAP']:.2f} vs {theirs[last]['test/mAP']:.2f}"
        else:
            for epoch in ours:
                for key in ("test/mAP", "val/mAP", "test/CF1", "test/OF1", "test/CP", "test/CR"):
                    assert abs(ours[epoch][key] - theirs[epoch][key]) <= EXACT_TOL, \
                        f"{method} epoch {epoch} {key}: {ours[epoch][key]} on two ranks, {theirs[epoch][key]} on one"


def test_recovery_diagnostics_count_every_ranks_rows(two_grids):
    """A method's recovered labels are gathered from both ranks before they are scored: the pseudo-
    positives of an exact method equal one process's."""
    _, ddp, one = two_grids
    checked = 0
    for method in ("ll_ct", "role", "csl"):
        ours = [r for r in ddp[method][1] if r["kind"] == "recovery"]
        theirs = [r for r in one[method][1] if r["kind"] == "recovery"]
        assert [r["epoch"] for r in ours] == [r["epoch"] for r in theirs]
        for a, b in zip(ours, theirs):
            assert a["pseudo_positives"] == b["pseudo_positives"], method
            checked += 1
    assert checked > 0


def test_a_cut_ddp_run_resumes_from_rank_zeros_checkpoint(tmp_path):
    """Per-sample tables and an EMA (CLSL) and a per-sample estimator parameter (ROLE): cut after
    epoch 1 on both ranks, resumed from the checkpoint rank 0 wrote, the records equal an
    uninterrupted two-rank run's."""
    proc = _torchrun("tests/e2e/ddp_driver.py", "resume", tmp_path, "clsl", "role", timeout=600)
    _ok(proc)


def test_a_batch_size_the_ranks_cannot_split_is_refused_before_training(tmp_path):
    proc = _torchrun("run_benchmark.py", "--launcher", "pytorch", "--profile", "smoke", "--methods", "partial_bce",
                     "--ratios", "0.5", "--batch-size", "33", "--out", tmp_path / "out", timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: batch size 33 does not split over 2 ranks; the batch size is the global one, so give "
                      "--batch-size a multiple of 2 (or use a number of ranks dividing it)"]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*/spec.json"))


def test_torchrun_without_the_pytorch_launcher_is_refused(tmp_path):
    proc = _torchrun("run_benchmark.py", "--profile", "smoke", "--methods", "partial_bce", "--ratios", "0.5",
                     "--out", tmp_path / "out", timeout=300)
    assert proc.returncode != 0
    assert "error: this process was started by torchrun: add --launcher pytorch" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_plugin_method_passes_its_contract_checks_and_trains_under_torchrun(tmp_path):
    """Rank 0 runs a plugin's contract checks (single-process work) before the ranks form their group.
    The plugin is the README's worked example, whose loss is a mean over the batch: it needs nothing
    from benchmark.contract.collectives (README, "Add a method")."""
    from tests.integration.test_readme import _block_after

    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "assume_negative.py").write_text(_block_after("## Add a method"))
    proc = _torchrun("run_benchmark.py", "--launcher", "pytorch", "--plugins", tmp_path / "plugins", "--profile",
                     "smoke", "--methods", "assume_negative", "--ratios", "0.5", "--threads", "1", "--no-report",
                     "--out", tmp_path / "out", timeout=300)
    _ok(proc)
    (spec, records), = _runs(tmp_path / "out").values()
    assert spec["parallel"]["world_size"] == 2 and not [r for r in records if r["kind"] == "rank_check"]
    assert [r["epoch"] for r in records if r["kind"] == "eval"] == [1, 2, 3]
