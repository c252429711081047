"""Reliability: workers die with their grid, one owner per run folder (concurrent grids), resume with
the thread count a run started with, broken finished runs and unreadable checkpoints retrained,
NaN losses stop a run, configurations never averaged as seeds, changed inputs are new runs, and
evaluation labels never reach method code."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.core.errors import UserError
from benchmark.core.registry import discover
from benchmark.core.run_folder import RunBusy, RunFolder
from benchmark.engine.lifecycle import run_one
from tests.conftest import records_by_epoch, smoke_spec

discover()
REPO = Path(__file__).resolve().parents[2]
SMOKE = ["--profile", "smoke", "--embeddings", "random"]


def _cli(*args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "run_benchmark.py", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# ------------------------------------------------------------------------------------------ processes
@pytest.mark.slow
def test_sigkill_of_the_parent_takes_its_workers_along(tmp_path):
    proc = _cli(*SMOKE, "--methods", "partial_bce", "dsrb", "--ratios", "0.2,0.6", "--epochs", "3", "--jobs", "2",
                "--out", str(tmp_path))
    deadline = time.time() + 240
    workers: set[int] = set()
    while time.time() < deadline and proc.poll() is None and not list(tmp_path.glob("*/metrics.jsonl")):
        workers |= _descendants(proc.pid)
        time.sleep(0.05)
    workers |= _descendants(proc.pid)
    assert proc.poll() is None and workers, "the grid should be training in worker processes"
    os.kill(proc.pid, signal.SIGKILL)          # the parent alone: no process-group kill
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)]


def test_resume_uses_the_thread_count_the_run_started_with(tmp_path):
    import torch

    spec = smoke_spec("hst", epochs=3)
    whole = run_one(spec, tmp_path / "whole", threads=1)

    class Stop(Exception):
        pass

    def stop(epoch, max_epochs, val_map):
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        run_one(spec, tmp_path / "cut", progress=stop, threads=1)
    before = torch.get_num_threads()
    resumed = run_one(spec, tmp_path / "cut", threads=2)          # e.g. a grid with one run left
    assert torch.get_num_threads() == before
    assert resumed.spec_record()["torch_threads"] == 1
    assert records_by_epoch(resumed, "eval") == records_by_epoch(whole, "eval")


# ------------------------------------------------------------------------------------- run ownership
def test_a_run_folder_has_one_owner(tmp_path):
    spec = smoke_spec("partial_bce")
    folder = RunFolder(tmp_path, spec.run_id)
    with folder.claim():
        assert folder.owner() is not None and str(os.getpid()) in folder.owner()
        probe = subprocess.run([sys.executable, "-c", (
            "import sys; sys.path.insert(0, '.');"
            "from benchmark.core.run_folder import RunFolder, RunBusy\n"
            f"try:\n with RunFolder({str(tmp_path)!r}, {spec.run_id!r}).claim(): print('got it')\n"
            "except RunBusy as e: print('busy', e)")], cwd=REPO, capture_output=True, text=True)
        assert probe.stdout.startswith("busy being trained by pid"), probe.stdout + probe.stderr
    assert folder.owner() is None
    with folder.claim():                      # released: free again
        pass


@pytest.mark.slow
def test_two_grids_on_one_folder_train_each_cell_once(tmp_path):
    out = tmp_path / "out"
    grids = [_cli(*SMOKE, "--methods", "partial_bce", "--ratios", "0.2,0.4,0.6,0.8", "--epochs", "2", "--jobs", "1",
                  "--out", str(out)),
             _cli(*SMOKE, "--methods", "partial_bce", "--ratios", "0.2,0.4,0.6,0.8", "--epochs", "2", "--jobs", "1",
                  "--out", str(out)),
             _cli(*SMOKE, "--methods", "partial_bce", "--set", "loss=hcp", "--ratios", "0.4,0.8", "--epochs", "2",
                  "--jobs", "1", "--out", str(out))]
    outputs = [g.communicate(timeout=400) for g in grids]
    assert all(g.returncode == 0 for g in grids), [o[1][-2000:] for o in outputs]
    trained = sum(int(o[0].split("grid: ")[1].split(" trained")[0]) for o in outputs)
    assert trained == 6                                           # 4 + 2 cells, each trained by one process
    for metrics in out.glob("*/metrics.jsonl"):
        lines = [json.loads(line) for line in metrics.read_text().splitlines()]   # every line well formed
        assert [r["epoch"] for r in lines if r["kind"] == "eval"] == [1, 2], metrics
        assert not (metrics.parent / "error.txt").exists()
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs[runs["selection"] == "val"]) == 6             # the report written last is complete


@pytest.mark.slow
def test_a_method_named_twice_is_trained_once(tmp_path):
    proc = _cli(*SMOKE, "--methods", "partial_bce", "partial_bce", "--ratios", "0.5", "--epochs", "1",
                "--jobs", "2", "--out", str(tmp_path))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    assert "grid: 1 trained" in stdout and len(list(tmp_path.glob("*/done"))) == 1


# ---------------------------------------------------------------------------- broken or stale results
def test_finished_run_with_broken_records_is_retrained(tmp_path):
    spec = smoke_spec("partial_bce")
    folder = run_one(spec, tmp_path)
    good = records_by_epoch(folder, "eval")
    lines = (folder.path / "metrics.jsonl").read_text().splitlines()
    garbled = [line if '"kind": "eval", "epoch": 1' not in line and '"epoch": 1, "kind": "eval"' not in line
               else line[:20] for line in lines]
    (folder.path / "metrics.jsonl").write_text("\n".join(garbled) + "\n")
    assert folder.done and folder.verify() == "metrics.jsonl changed after the run finished"
    said = []
    again = run_one(spec, tmp_path, say=said.append)
    assert len(said) == 1 and "retraining" in said[0]
    assert again.verify() is None and records_by_epoch(again, "eval") == good
    (again.path / "metrics.jsonl").unlink()
    assert again.verify() == "metrics.jsonl is missing"


def test_unreadable_checkpoint_means_a_fresh_start(tmp_path):
    spec = smoke_spec("partial_bce", epochs=3)
    whole = run_one(spec, tmp_path / "whole")

    class Stop(Exception):
        pass

    def stop(epoch, max_epochs, val_map):
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        run_one(spec, tmp_path / "cut", progress=stop)
    folder = RunFolder(tmp_path / "cut", spec.run_id)
    ckpt = folder.last_checkpoint()
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])       # a write cut by a full disk
    said = []
    resumed = run_one(spec, tmp_path / "cut", say=said.append)
    assert len(said) == 1 and "unreadable" in said[0]
    assert records_by_epoch(resumed, "eval") == records_by_epoch(whole, "eval")
    assert not list(folder.work_dir.glob(".*.tmp"))


def test_configurations_are_never_averaged_as_seeds(tmp_path):
    from reports.build import build_report

    for epochs in (1, 2):
        run_one(smoke_spec("partial_bce", epochs=epochs), tmp_path)
    build_report(tmp_path)
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(runs["variant"].unique()) == ["partial_bce [epochs=1]", "partial_bce [epochs=2]"]
    summary = pd.read_csv(tmp_path / "leaderboard.csv")
    assert (summary["n_seeds"] == 1).all()
    board = (tmp_path / "leaderboard.md").read_text()
    assert "partial_bce [epochs=1]" in board and "partial_bce [epochs=2]" in board


def test_changed_inputs_are_new_runs_and_irrelevant_options_are_not(tmp_path):
    from benchmark.cli.parser import run_parser
    from benchmark.cli.plan import build_runs

    emb = tmp_path / "emb.npy"
    np.save(emb, np.ones((20, 8), dtype=np.float32))

    def ids(*extra):
        args = run_parser().parse_args([*SMOKE, "--ratios", "0.5", "--out", str(tmp_path / "o"), *extra])
        runs, _, _ = build_runs(args, tmp_path / "o")
        return {r.method: r.run_id for r in runs}

    first = ids("--methods", "hst", "partial_bce", "--embeddings", f"file:{emb}")
    np.save(emb, np.full((20, 8), 2.0, dtype=np.float32))               # the file is edited
    second = ids("--methods", "hst", "partial_bce", "--embeddings", f"file:{emb}")
    assert first["hst"] != second["hst"]                                  # hst uses embeddings
    assert first["partial_bce"] == second["partial_bce"] == ids("--methods", "partial_bce")["partial_bce"]
    assert ids("--methods", "partial_bce", "--embeddings", "glove")["partial_bce"] == first["partial_bce"]
    with pytest.raises(UserError, match="--data-root is for the real datasets"):    # never silently ignored
        ids("--methods", "partial_bce", "--data-root", str(tmp_path))


# ----------------------------------------------------------------------------------- NaN and plugins
NAN_PLUGIN = '''
import torch
from torch import nn

from benchmark.contract.method import Method
from benchmark.core.registry import METHODS


@METHODS.register_module()
class GoesNaN(Method):
    name = "goes_nan"

    def __init__(self, task, cfg=None, backbone=None):
        super().__init__(task, cfg, backbone)
        self.head = nn.Linear(task.feature_dim, task.num_classes)

    def predict_scores(self, inputs):
        return self.head(self.features(inputs).mean(dim=(2, 3)))

    def compute_losses(self, batch, ctx):
        loss = self.predict_scores(batch.inputs).pow(2).mean()
        if ctx.epoch == 1 and ctx.iter_in_epoch == 2:
            loss = loss * float("nan")
        return {"loss_square": loss}
'''

PEEKING_PLUGIN = '''
from torch import nn

from benchmark.contract.method import Method
from benchmark.core.registry import METHODS

SEEN = []


@METHODS.register_module()
class Peeks(Method):
    """Tries to read evaluation labels: records every argument its entry points receive, and would
    answer with the labels if it ever got them."""

    name = "peeks"

    def __init__(self, task, cfg=None, backbone=None):
        super().__init__(task, cfg, backbone)
        self.head = nn.Linear(task.feature_dim, task.num_classes)

    def predict_scores(self, inputs, *args, **kwargs):
        SEEN.append(("predict_scores", type(inputs).__name__, len(args), sorted(kwargs)))
        if "labels" in kwargs:
            return kwargs["labels"].float() * 20 - 10
        return self.head(self.features(inputs).mean(dim=(2, 3)))

    def compute_losses(self, batch, ctx):
        import torch.nn.functional as F
        SEEN.append(("compute_losses", sorted(vars(batch))))
        return {"loss_bce": F.binary_cross_entropy_with_logits(self.head(batch.inputs.mean(dim=(2, 3))),
                                                               batch.targets)}

    def forward(self, *args, **kwargs):
        SEEN.append(("forward", len(args), sorted(kwargs)))
        if "labels" in kwargs:
            return [{"logits": kwargs["labels"].float() * 20 - 10}]
        return super().forward(*args)

    def val_step(self, data):
        SEEN.append(("val_step", sorted(data)))
        return [{"logits": data["labels"].float() * 20 - 10}]
'''

CHEATING_PLUGIN = '''
import torch.nn.functional as F
from torch import nn

from benchmark.contract.method import Method
from benchmark.core.registry import METHODS


@METHODS.register_module()
class Cheats(Method):
    """Reads the hidden training labels from the dataset object in its process."""

    name = "cheats"

    def __init__(self, task, cfg=None, backbone=None):
        super().__init__(task, cfg, backbone)
        import benchmark.engine.prepared_run as prepared
        self.truth = prepared.load_dataset("synthetic", "tiny").train.labels
        self.head = nn.Linear(task.feature_dim, task.num_classes)

    def predict_scores(self, inputs):
        return self.head(self.features(inputs).mean(dim=(2, 3)))

    def compute_losses(self, batch, ctx):
        import torch
        truth = torch.as_tensor(self.truth[batch.index.numpy() % len(self.truth)]).float()
        return {"loss_bce": F.binary_cross_entropy_with_logits(self.predict_scores(batch.inputs), truth)}
'''


def _plugin(tmp_path, name, body):
    folder = tmp_path / f"plugins_{name}"
    folder.mkdir()
    (folder / f"{name}.py").write_text(body)
    return folder


def test_nan_loss_stops_the_run_and_the_leaderboard_shows_it_failed(tmp_path, forget_plugins):
    from benchmark.launch.grid import run_grid
    from reports.build import build_report

    discover((str(_plugin(tmp_path, "goes_nan", NAN_PLUGIN)),))
    specs = [smoke_spec("goes_nan", epochs=3), smoke_spec("partial_bce", epochs=3)]
    outcome = run_grid(specs, tmp_path / "out", show_progress=False, jobs=1)
    assert len(outcome.finished) == 1 and len(outcome.failed) == 1
    line = outcome.failed[0][1]
    assert "goes_nan: loss term loss_square is nan at epoch 2, iteration 3" in line
    folder = RunFolder(tmp_path / "out", specs[0].run_id)
    assert len(folder.records("eval")) == 1                    # epoch 1 evaluated, epoch 2 stopped
    build_report(tmp_path / "out", method_order=["partial_bce", "goes_nan"])
    board = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "failed†" in board and "† failed" in board and "loss_square is nan" in board


def test_evaluation_never_hands_labels_to_method_code(tmp_path, forget_plugins):
    discover((str(_plugin(tmp_path, "peeks", PEEKING_PLUGIN)),))
    seen = sys.modules["mlrpl_plugin_peeks"].SEEN
    folder = run_one(smoke_spec("peeks", epochs=1), tmp_path / "out")
    calls = {entry[0] for entry in seen}
    assert calls == {"predict_scores", "compute_losses"}              # forward and val_step never called
    assert all(entry[1:] == ("Tensor", 0, []) for entry in seen if entry[0] == "predict_scores")
    assert all(entry[1] == ["index", "inputs", "observed", "targets"] for entry in seen if entry[0] == "compute_losses")
    assert folder.records("eval")[-1]["test/mAP"] < 99.0


def test_a_plugin_that_reads_hidden_labels_is_refused_before_its_first_run(tmp_path, forget_plugins, capsys):
    from benchmark.cli.main import main

    plugins = _plugin(tmp_path, "cheats", CHEATING_PLUGIN)
    code = main([*SMOKE, "--plugins", str(plugins), "--methods", "cheats", "--ratios", "0.5", "--epochs", "1",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "breaks the method contract" in err[0], err
    assert not (tmp_path / "out").exists()


def test_run_busy_is_reported_not_trained(tmp_path):
    from benchmark.launch.grid import run_grid

    spec = smoke_spec("partial_bce")
    with RunFolder(tmp_path, spec.run_id).claim():
        with pytest.raises(RunBusy):
            run_one(spec, tmp_path)
        outcome = run_grid([spec], tmp_path, show_progress=False, jobs=1)
    assert outcome.busy == [spec.run_id] and not outcome.finished


@pytest.mark.slow
def test_sigterm_stops_a_parallel_grid_at_once_and_leaves_no_worker(tmp_path):
    proc = _cli(*SMOKE, "--methods", "dsrb", "--ratios", "0.2,0.6", "--epochs", "3", "--jobs", "2",
                "--out", str(tmp_path))
    deadline = time.time() + 240
    workers: set[int] = set()
    while time.time() < deadline and proc.poll() is None and not list(tmp_path.glob("*/metrics.jsonl")):
        workers |= _descendants(proc.pid)
        time.sleep(0.05)
    workers |= _descendants(proc.pid)
    start = time.time()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in stderr
    assert time.time() - start < 30                      # did not wait for the runs to finish
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    left = [Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:120] for p in workers if _alive(p)]
    assert not left
    assert not list(tmp_path.glob("*/done"))
