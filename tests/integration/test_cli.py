"""The command line as a user meets it: errors, a smoke grid, skip-on-rerun, SIGKILL and resume."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
SMOKE = ["--profile", "smoke", "--methods", "partial_bce", "--embeddings", "random"]


def cli(*args, timeout=300, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "run_benchmark.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


def test_list_names_methods_and_datasets():
    out = cli("--list")
    assert out.returncode == 0, out.stderr
    assert "partial_bce" in out.stdout and "synthetic" in out.stdout


# A few of the catalogue's cases (tests/integration/test_bad_input.py, in-process) as real processes:
# one per stage that refuses (registry, parser checks, file inputs).
@pytest.mark.parametrize("args, words", [
    (["--methods", "nope"], "unknown method 'nope'"),
    (["--ratios", "0.9:0.1"], "--ratios '0.9:0.1' is malformed"),
    (["--backbone-weights", "/no/such/weights.pth"], "/no/such/weights.pth not found"),
])
def test_bad_input_is_one_line_error(args, words, tmp_path):
    out_dir = tmp_path / "res"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("precious")
    out = cli(*SMOKE, *args, "--out", str(out_dir))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], out.stderr
    assert "Traceback" not in out.stderr
    assert (out_dir / "keep.txt").read_text() == "precious"


def test_report_on_missing_folder_is_an_error(tmp_path):
    out = cli("report", "--out", str(tmp_path / "nothing"))
    assert out.returncode == 2 and "does not exist" in out.stderr
    assert f"report --out {tmp_path / 'nothing'} RESULTS_DIR" in out.stderr     # the way to a new folder
    assert not (tmp_path / "nothing").exists()


def _grid(out_dir, **kw):
    return cli(*SMOKE, "--ratios", "0.2,0.6,1.0", "--epochs", "2", "--out", str(out_dir), **kw)


@pytest.fixture(scope="module")
def reference_grid(tmp_path_factory):
    """The smoke grid of _grid run once for the module: (its folder, the completed process)."""
    out = tmp_path_factory.mktemp("reference_grid")
    return out, _grid(out)


@pytest.mark.slow
def test_smoke_grid_writes_reports_and_rerun_changes_nothing(reference_grid, tmp_path):
    first_out, out = reference_grid
    assert out.returncode == 0, out.stderr[-2000:]
    # stderr is a pipe here: plain progress lines, no bar redraws or terminal escapes in the log
    assert "\r" not in out.stderr and "\x1b" not in out.stderr, out.stderr[-500:]
    assert "grid: 3/3 runs done (100 %)" in out.stderr, out.stderr[-1500:]
    shutil.copytree(first_out, tmp_path, dirs_exist_ok=True)     # reruns go to a copy: the fixture stays as made
    for name in ("runs.csv", "leaderboard.md", "leaderboard.tex", "leaderboard.csv", "map_vs_ratio.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert set(runs["selection"]) == {"val", "last", "oracle"}
    assert sorted(runs["ratio"].unique()) == [0.2, 0.6, 1.0]
    metrics = {p: p.read_bytes() for p in tmp_path.glob("*/metrics.jsonl")}
    start = time.perf_counter()
    again = _grid(tmp_path)
    assert again.returncode == 0
    assert "0 trained, 3 already done" in again.stdout
    assert {p: p.read_bytes() for p in tmp_path.glob("*/metrics.jsonl")} == metrics
    assert time.perf_counter() - start < 60


@pytest.mark.slow
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_sigkill_mid_grid_then_resume_gives_each_cell_once(reference_grid, tmp_path, jobs):
    """Killed (with its worker processes) after the first finished run (one at a time) or as soon as a
    run logs (two at a time), the grid resumes and every cell equals an uninterrupted grid's."""
    reference, first = reference_grid
    assert first.returncode == 0
    cut = tmp_path / "cut"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "run_benchmark.py", *SMOKE, "--ratios", "0.2,0.6,1.0", "--epochs", "2",
                             "--jobs", jobs, "--out", str(cut)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    pattern = "*/done" if jobs == "1" else "*/metrics.jsonl"     # two at a time: as soon as a run logs
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list(cut.glob(pattern)):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(cut.glob(pattern)) and len(list(cut.glob("*/done"))) < 3
    assert _grid(cut).returncode == 0
    ref = pd.read_csv(reference / "runs.csv").sort_values(["ratio", "selection"]).reset_index(drop=True)
    got = pd.read_csv(cut / "runs.csv").sort_values(["ratio", "selection"]).reset_index(drop=True)
    assert len(got) == len(ref) == 9
    assert not got.duplicated(["method", "ratio", "seed", "selection"]).any()
    cols = ["mAP", "CF1", "OF1", "CP", "CR", "OP", "OR", "epoch", "mask_sha256"]
    pd.testing.assert_frame_equal(got[cols], ref[cols])


def test_report_with_reported_numbers_on_a_real_dataset(tmp_path):
    import json

    from benchmark.core.run_folder import RunFolder
    from tests.conftest import spec_json

    run_id = "hst__voc2007__finetune__p0.1__s0__0123456789"
    run = tmp_path / run_id
    run.mkdir()
    (run / "spec.json").write_text(json.dumps(spec_json(dataset="voc2007", protocol="finetune", method="hst",
                                                        ratio=0.1, seed=0, mask_protocol="random", run_id=run_id,
                                                        profile="paper", mask_sha256="ab")))
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "eval", "epoch": 1, "val/mAP": 80.0, "test/mAP": 85.0})
                                       + "\n")
    RunFolder(tmp_path, run_id).finish()
    out = cli("report", "--out", str(tmp_path), "--reported")
    assert out.returncode == 0, out.stderr
    board = (tmp_path / "leaderboard.md").read_text()
    assert "Reported in the papers" in board and "90.9" in board  # HST's VOC 2007 Avg. mAP (spec 9.1)
