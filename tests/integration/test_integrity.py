"""What a run or grid folder holds is checked by content and never obeyed: a finished run is trusted
only with its checksums, a checkpoint is data (never code) and only the one inside its run folder,
links planted in a folder are never followed, the report replaces only the suite's own files and is
published as a whole, and a full disk ends a grid with one line and no temporary file."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from benchmark.cli.main import main
from benchmark.core import published
from benchmark.core.errors import UserError
from benchmark.core.files import DiskFull, UnsafePath, atomic_write_text
from benchmark.core.registry import discover
from benchmark.core.run_folder import RunFolder
from benchmark.engine import checkpoints
from benchmark.engine.lifecycle import run_one
from tests.conftest import copy_run, records_by_epoch, smoke_spec

discover()

SMOKE = ["--profile", "smoke", "--methods", "partial_bce", "--ratios", "0.5", "--epochs", "1", "--embeddings", "random"]


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.name or "staging" in p.name]


# ------------------------------------------------------------------------------- finished runs
def test_an_emptied_done_marker_with_edited_metrics_is_retrained(trained, tmp_path):
    spec = smoke_spec("partial_bce", epochs=2)
    folder = copy_run(trained(spec), tmp_path)
    before = records_by_epoch(folder, "eval")
    lines = (folder.path / "metrics.jsonl").read_text().replace('"test/mAP": ', '"test/mAP": 1').splitlines()
    (folder.path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (folder.path / "done").write_text("")
    assert folder.done and "no checksum" in folder.verify()
    said = []
    run_one(spec, tmp_path, say=said.append)
    assert said and "retraining" in said[0]
    assert folder.finished and records_by_epoch(folder, "eval") == before       # the true numbers are back


def test_a_finished_run_with_a_truncated_spec_is_retrained(trained, tmp_path):
    spec = smoke_spec("partial_bce", epochs=2)
    folder = copy_run(trained(spec), tmp_path)
    text = (folder.path / "spec.json").read_text()
    (folder.path / "spec.json").write_text(text[: len(text) // 2])
    assert folder.verify() == "spec.json changed after the run finished"
    marker = json.loads((folder.path / "done").read_text())
    del marker["spec_sha256"]                                   # a marker of the previous version
    (folder.path / "done").write_text(json.dumps(marker))
    assert folder.verify() == "spec.json is missing or unreadable"
    said = []
    run_one(spec, tmp_path, say=said.append)
    assert said and "spec.json" in said[0] and folder.finished
    assert json.loads((folder.path / "spec.json").read_text())["run_id"] == spec.run_id


def test_a_copied_folder_under_another_run_id_is_not_that_run(trained, tmp_path):
    spec = smoke_spec("partial_bce", epochs=2)
    folder = trained(spec)
    other = smoke_spec("partial_bce", epochs=2, seed=1)
    import shutil

    shutil.copytree(folder.path, tmp_path / other.run_id)
    assert "names another run" in RunFolder(tmp_path, other.run_id).verify()


# ------------------------------------------------------------------------------- checkpoints
class _Payload:
    """Unpickling this runs a shell command: what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _unfinished_with_checkpoint(tmp_path: Path, spec, payload) -> RunFolder:
    folder = RunFolder(tmp_path, spec.run_id)
    folder.work_dir.mkdir(parents=True)
    (folder.path / "spec.json").write_text(json.dumps({"run_id": spec.run_id}))
    torch.save({"meta": {"epoch": 1}, "state_dict": {}, "evil": payload}, folder.work_dir / "epoch_1.pth")
    (folder.work_dir / "last_checkpoint").write_text("epoch_1.pth")
    return folder


def test_a_pickle_checkpoint_never_runs_its_code(tmp_path):
    marker = tmp_path / "pwned"
    spec = smoke_spec("partial_bce", epochs=1)
    folder = _unfinished_with_checkpoint(tmp_path / "grid", spec, _Payload(marker))
    ckpt = folder.last_checkpoint()
    assert ckpt is not None and "posix.system" in checkpoints.unsafe_reason(ckpt)
    with pytest.raises(checkpoints.UnsafeCheckpoint, match="was not loaded"):
        checkpoints.load(ckpt)
    said = []
    run_one(spec, tmp_path / "grid", say=said.append)               # the engine's own resume path
    assert not marker.exists()
    assert said and "starting the run afresh" in said[0] and folder.finished


def test_the_suites_own_checkpoints_load_with_the_allow_list(trained, tmp_path):
    spec = smoke_spec("clsl", epochs=1)
    folder = run_one(spec, tmp_path, keep_checkpoints=True)
    ckpt = next(folder.work_dir.glob("epoch_*.pth"))
    assert checkpoints.unsafe_reason(ckpt) is None
    state = checkpoints.load(ckpt)
    assert state["meta"]["epoch"] == 1 and any(k.startswith("method.") for k in state["state_dict"])


def test_only_a_checkpoint_inside_the_run_folder_is_used(tmp_path):
    spec = smoke_spec("partial_bce", epochs=1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    torch.save({"x": torch.zeros(1)}, elsewhere / "epoch_1.pth")
    folder = RunFolder(tmp_path / "grid", spec.run_id)
    folder.work_dir.mkdir(parents=True)
    (folder.work_dir / "last_checkpoint").write_text(str(elsewhere / "epoch_1.pth"))   # a path out
    assert folder.last_checkpoint() is None
    (folder.work_dir / "epoch_1.pth").symlink_to(elsewhere / "epoch_1.pth")             # a link out
    (folder.work_dir / "last_checkpoint").write_text("epoch_1.pth")
    assert folder.last_checkpoint() is None
    (folder.work_dir / "last_checkpoint").write_text("../../../elsewhere/epoch_1.pth")
    assert folder.last_checkpoint() is None
    with pytest.raises(FileNotFoundError, match="symbolic link"):
        checkpoints.load(folder.work_dir / "epoch_1.pth")
    run_one(spec, tmp_path / "grid", say=lambda line: None)
    assert folder.finished and (elsewhere / "epoch_1.pth").is_file()          # untouched


# ------------------------------------------------------------------------------- planted links
def test_a_lock_file_linked_to_another_file_is_refused_and_never_truncated(tmp_path, capsys):
    spec = smoke_spec("partial_bce", epochs=1)
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    locks = tmp_path / "grid" / ".locks"
    locks.mkdir(parents=True)
    (locks / f"{spec.run_id}.lock").symlink_to(victim)
    with pytest.raises(UnsafePath, match="symbolic link"):
        with RunFolder(tmp_path / "grid", spec.run_id).claim():
            pass
    assert victim.read_text() == "keep me\n"
    assert RunFolder(tmp_path / "grid", spec.run_id).owner() is None       # nor read through the link


def test_links_at_temporary_names_are_never_written_through(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    out = tmp_path / "out"
    out.mkdir()
    for pid in range(os.getpid() - 5, os.getpid() + 5):            # the names of the previous version
        (out / f".runs.csv.tmp{pid}").symlink_to(victim)
    atomic_write_text(out / "runs.csv", "a,b\n")
    assert victim.read_text() == "keep me\n" and (out / "runs.csv").read_text() == "a,b\n"
    (out / "link.csv").symlink_to(victim)
    atomic_write_text(out / "link.csv", "replaced\n")               # the link is replaced, not its target
    assert victim.read_text() == "keep me\n" and not (out / "link.csv").is_symlink()


# ------------------------------------------------------------------------------- the report
def _grid(out: Path) -> None:
    assert main([*SMOKE, "--out", str(out)]) == 0


def test_a_kill_while_publishing_leaves_a_report_that_the_next_call_completes(tmp_path, monkeypatch):
    out = tmp_path / "grid"
    _grid(out)
    from reports.build import build_report

    real, calls = os.replace, []

    def dying_replace(src, dst):
        if Path(src).parent.name.startswith(published.STAGING_PREFIX) and Path(dst).parent == out:   # publishing
            calls.append(dst)
            if len(calls) == 3:
                raise KeyboardInterrupt                     # a kill after two files moved
        return real(src, dst)

    monkeypatch.setattr(published.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        build_report(out, html=True)
    monkeypatch.setattr(published.os, "replace", real)
    assert (out / published.JOURNAL).is_file() and len(calls) == 3
    published.recover(out)                                  # what the next report or grid does first
    files = published.manifest(out)
    assert not (out / published.JOURNAL).exists() and not _temporaries(out)
    from benchmark.core.files import sha256_file

    assert files and all(sha256_file(out / name) == sha for name, sha in files.items())   # one report


def test_a_killed_build_leaves_the_old_report_and_no_staging_folder(tmp_path, monkeypatch):
    out = tmp_path / "grid"
    _grid(out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    import reports.build as build

    monkeypatch.setattr(build, "plot_map_vs_ratio", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        build.build_report(out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not _temporaries(out)


# ------------------------------------------------------------------------------- full disk
def _no_space(fd):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_ends_the_grid_with_one_line_and_no_temporary_file(tmp_path, capsys, monkeypatch):
    import benchmark.core.files as files

    monkeypatch.setattr(files.os, "fsync", _no_space)
    out = tmp_path / "grid"
    code = main([*SMOKE, "--out", str(out)])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error: ")
           or "Traceback" in line]
    assert code == 2 and len(err) == 1 and "no space left" in err[0] and str(out) in err[0], err
    assert not _temporaries(out)


def test_a_full_disk_while_reporting_keeps_the_old_report_whole(tmp_path, capsys, monkeypatch):
    out = tmp_path / "grid"
    _grid(out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    import benchmark.core.files as files

    monkeypatch.setattr(files.os, "fsync", _no_space)
    capsys.readouterr()
    assert main(["report", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left" in err[0]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not _temporaries(out)


def test_disk_full_names_the_folder_and_the_size():
    from benchmark.core.files import disk_full

    error = disk_full(Path("/tmp"), 3 * 2**20, "features.npy")
    assert isinstance(error, DiskFull) and isinstance(error, UserError)
    assert "/tmp" in str(error) and "3.0 MB" in str(error) and "features.npy" in str(error)


# ------------------------------------------------------------------------------- exit codes


@pytest.mark.slow
def test_exit_codes_say_how_the_grid_ended(tmp_path, capsys, monkeypatch):
    import benchmark.engine.lifecycle as lifecycle

    real = lifecycle._train_and_evaluate

    def crash_at_30(spec, *args, **kwargs):             # a bug that hits one cell (a plugin passes the contract)
        if spec.ratio == 0.3:
            raise RuntimeError("deliberate failure")
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(lifecycle, "_train_and_evaluate", crash_at_30)
    base = ["--profile", "smoke", "--epochs", "1", "--embeddings", "random", "--jobs", "1", "--methods", "partial_bce"]
    assert main([*base, "--ratios", "0.5", "--out", str(tmp_path / "ok")]) == 0
    capsys.readouterr()
    assert main([*base, "--ratios", "0.3", "--out", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    assert "report: not written, no run of this grid has finished" in err and "run the benchmark first" not in err
    assert main([*base, "--ratios", "0.3,0.5", "--out", str(tmp_path / "some")]) == 1
    assert (tmp_path / "some" / "leaderboard.md").is_file()        # the finished run is reported
    assert main([*base, "--lr", "-1", "--out", str(tmp_path / "input")]) == 2

    import benchmark.cli.main as cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("benchmark.launch.grid.run_grid", interrupted)
    assert cli.main([*base, "--ratios", "0.5", "--out", str(tmp_path / "int")]) == 130


def test_a_run_folder_planted_as_a_link_is_never_trained_through(tmp_path):
    spec = smoke_spec("partial_bce", epochs=1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "error.txt").write_text("someone's file\n")
    (elsewhere / "spec.json").write_text("{}")
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / spec.run_id).symlink_to(elsewhere)
    said = []
    folder = run_one(spec, tmp_path / "grid", say=said.append)
    assert said and "symbolic link" in said[0]
    assert folder.finished and not folder.path.is_symlink()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["error.txt", "spec.json"]
    assert (elsewhere / "error.txt").read_text() == "someone's file\n"


# ------------------------------------------------------------------------------- corrupted run files
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.conftest import fuzz_examples  # noqa: E402

CORRUPTIONS = ("truncate", "zero", "flip", "reorder", "retype", "append")


def _corrupt(data: bytes, how: str, draw) -> bytes:
    if how == "truncate":
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    if how == "zero":
        start = draw(st.integers(0, len(data) - 1))
        return data[:start] + b"\0" * draw(st.integers(1, 16)) + data[start + 16:]
    if how == "flip":
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            buf[draw(st.integers(0, len(buf) - 1))] ^= 1 << draw(st.integers(0, 7))
        return bytes(buf)
    if how == "reorder":
        lines = data.splitlines(keepends=True)
        return b"".join(draw(st.permutations(lines)))
    if how == "retype":
        try:
            value = json.loads(data.splitlines()[0])
        except ValueError:
            return data + b"x"
        if isinstance(value, dict) and value:
            key = draw(st.sampled_from(sorted(value)))
            value[key] = draw(st.one_of(st.none(), st.text(max_size=3), st.integers(), st.lists(st.integers(),
                                                                                                   max_size=2)))
        rest = b"".join(data.splitlines(keepends=True)[1:])
        return json.dumps(value).encode() + b"\n" + rest
    return data + draw(st.binary(min_size=1, max_size=32))


@settings(max_examples=fuzz_examples(15))
@given(data=st.data())
def test_a_corrupted_file_of_a_finished_run_is_never_trusted(data, trained, tmp_path):
    """Any corruption of spec.json, metrics.jsonl or done: the run is not finished (a grid retrains
    it) unless the bytes still say the same thing, and the report lists it as broken without failing."""
    from reports.build import build_report

    spec = smoke_spec("partial_bce", epochs=2)
    import tempfile

    out = Path(tempfile.mkdtemp(dir=tmp_path))
    folder = copy_run(trained(spec), out)
    name = data.draw(st.sampled_from(["spec.json", "metrics.jsonl", "done"]))
    how = data.draw(st.sampled_from(CORRUPTIONS))
    path = folder.path / name
    before = path.read_bytes()
    after = _corrupt(before, how, data.draw)
    path.write_bytes(after)
    same = after == before or (name == "done" and _same_json(before, after))
    assert (folder.verify() is None) == same, (name, how)
    try:
        summary = build_report(out)
    except UserError as exc:
        assert not same and "no finished runs" in str(exc)
    else:
        assert same and summary["finished"] == 1


def _same_json(a: bytes, b: bytes) -> bool:
    try:
        return json.loads(a) == json.loads(b)
    except ValueError:
        return False


def test_a_cli_planned_run_resumes_from_its_checkpoint_not_from_scratch(tmp_path):
    """A run whose id fixes its thread count (every run the command line plans) resumes from the
    checkpoint its folder names; it is not silently retrained from the first epoch."""
    spec = smoke_spec("partial_bce", epochs=2, threads=1)
    folder = run_one(spec, tmp_path, keep_checkpoints=True)
    before = records_by_epoch(folder, "eval")
    (folder.path / "done").unlink()                         # killed after its last checkpoint
    assert folder.last_checkpoint() is not None
    run_one(spec, tmp_path)
    record = json.loads((folder.path / "spec.json").read_text())
    assert folder.finished and len(record.get("resumed", [])) == 1
    assert len(folder.records("train")) == 2 and records_by_epoch(folder, "eval") == before


def test_a_merged_report_of_an_older_version_is_adopted_and_a_foreign_one_refused(tmp_path):
    out = tmp_path / "grid"
    _grid(out)
    merged = tmp_path / "merged"
    merged.mkdir()
    for name in ("runs.csv", "index.html", "leaderboard.md"):
        (merged / name).write_bytes((out / name).read_bytes())     # a report written before manifests existed
    published.check_targets(merged)                                  # adopted: the suite's own files
    (merged / "runs.csv").write_text("name,score\nmine,1\n")
    with pytest.raises(UserError, match="not written by this suite"):
        published.check_targets(merged)


def test_status_prints_a_hostile_folder_as_text(tmp_path):
    from benchmark.core.run_status import format_status, grid_status

    run_id = "x__synthetic__frozen__p0.5__s0__0123456789"
    (tmp_path / run_id).mkdir()
    (tmp_path / run_id / "spec.json").write_text(json.dumps({"method": "\x1b[31mred\nx", "dataset": "d", "ratio": 0.5,
                                                             "seed": 0, "epochs": "many"}))
    (tmp_path / run_id / "error.txt").write_text("boom \x1b[2J\nsecond line")
    (tmp_path / "notes").mkdir()
    text = format_status(grid_status(tmp_path), tmp_path)
    assert "\x1b" not in text and "1 runs" in text and "failed" in text and "second line" not in text


def test_the_method_order_of_a_report_does_not_depend_on_the_last_command(tmp_path):
    out = tmp_path / "grid"
    base = ["--profile", "smoke", "--ratios", "0.5", "--epochs", "1", "--embeddings", "random", "--out", str(out)]
    assert main([*base, "--methods", "asl", "partial_bce"]) == 0
    first = (out / "leaderboard.md").read_text()
    assert first.index("| partial_bce") < first.index("| asl")          # the baseline first
    assert main([*base, "--methods", "asl"]) == 0                        # reuses the run, rewrites the report
    assert (out / "leaderboard.md").read_text() == first
