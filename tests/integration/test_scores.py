"""Per-image test scores (``scores.npz``) and ``report --recompute``: every finished run keeps the test
scores of its selected epochs, sealed by its done marker; the check re-derives every metric from them
and the dataset's labels, names each disagreement, treats a damaged scores file as a broken run and
writes nothing; a kill between the last evaluation and ``done`` resumes to the same file."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmark.cli.main import main
from benchmark.core.files import sha256_file
from benchmark.core.registry import discover
from benchmark.core.run_folder import RunFolder
from benchmark.core.scores import (
    SCORES_FILE,
    epoch_score_files,
    keep_selected,
    read_scores,
    write_epoch_scores,
)
from benchmark.core.selection import select_epoch
from benchmark.engine import lifecycle
from benchmark.engine.lifecycle import run_one
from benchmark.engine.metrics import evaluate_with_class_ap
from benchmark.engine.prepared_run import load_dataset
from reports.collect import scan_runs
from tests.conftest import copy_run, smoke_spec

discover()

SPECS = (smoke_spec("partial_bce", epochs=2), smoke_spec("an", ratio=0.3, epochs=3))


def _grid(trained, out: Path) -> list[RunFolder]:
    """The smoke grid's finished runs, copied into ``out``."""
    return [copy_run(trained(spec), out) for spec in SPECS]


def _evals(folder: RunFolder) -> dict[int, dict]:
    return {r["epoch"]: r for r in folder.records("eval")}


def _test_split(folder: RunFolder):
    spec = folder.spec_record()
    return load_dataset(spec["dataset"], spec["dataset_size"], spec["data_root"], spec["preset"]).test


def _reseal(folder: RunFolder) -> None:
    """Write the done marker again over the folder's current files: a run whose files are consistent
    with its marker but whose numbers are wrong (a metric bug, or a forged folder)."""
    folder.finish(keep_checkpoints=True)


def _recompute(out: Path, capsys) -> tuple[int, list[str]]:
    code = main(["report", "--recompute", "--out", str(out)])
    return code, capsys.readouterr().out.strip().splitlines()


def _tree(root: Path) -> dict[str, tuple]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


# ------------------------------------------------------------------------------- what a run keeps
def test_a_finished_run_keeps_the_test_scores_of_its_selected_epochs(trained):
    folder = trained(SPECS[1])
    test, evals = _test_split(folder), _evals(folder)
    stored = read_scores(folder.path / SCORES_FILE)
    selection = {rule: select_epoch(evals, rule) for rule in ("val", "last", "oracle")}
    assert stored.selection == selection and stored.epochs == sorted(set(selection.values()))
    assert stored.image_ids == [str(i) for i in test.image_ids] and stored.class_names == list(test.class_names)
    assert stored.scores.dtype == np.float32 and stored.scores.shape == (len(stored.epochs), 80, 20)
    for epoch in stored.epochs:                 # the scores are the ones the evaluation scored: exact
        metrics, class_ap = evaluate_with_class_ap(stored.matrix(epoch), test.labels, test.ignore)
        assert metrics["mAP"] == evals[epoch]["test/mAP"] and metrics["CF1"] == evals[epoch]["test/CF1"]
        np.testing.assert_allclose(stored.class_ap(epoch), class_ap, atol=1e-5)
    marker = json.loads((folder.path / "done").read_text())
    assert marker["scores_sha256"] == sha256_file(folder.path / SCORES_FILE)
    assert not epoch_score_files(folder.work_dir)            # the per-epoch temporaries are gone


def test_keep_selected_stores_each_selected_epoch_once(tmp_path):
    run = tmp_path / "run"
    for epoch in (1, 2, 3):
        write_epoch_scores(run / "work", epoch, np.full((4, 2), epoch, np.float32), np.array([10.0 * epoch, np.nan]))
    evals = {1: {"val/mAP": 9.0, "test/mAP": 1.0}, 2: {"val/mAP": 5.0, "test/mAP": 7.0},
             3: {"val/mAP": 9.0, "test/mAP": 2.0}}
    assert keep_selected(run, evals, ["a", "b", "c", 4], ["x", "y"]) == {"epochs": [1, 2, 3], "missing": []}
    stored = read_scores(run / SCORES_FILE)
    assert stored.selection == {"val": 1, "last": 3, "oracle": 2} and stored.image_ids == ["a", "b", "c", "4"]
    assert [float(stored.matrix(e)[0, 0]) for e in stored.epochs] == [1.0, 2.0, 3.0]
    assert stored.class_ap(2)[0] == 20.0 and np.isnan(stored.class_ap(2)[1])
    evals[2]["test/mAP"], evals[3]["test/mAP"] = 0.5, 0.1          # every rule picks epoch 1 or 3
    evals[3]["val/mAP"] = 1.0
    (run / "work" / "test_scores_epoch_3.npz").unlink()          # evaluated before scores were kept
    assert keep_selected(run, evals, list("abcd"), ["x", "y"]) == {"epochs": [1], "missing": [3]}
    assert read_scores(run / SCORES_FILE).selection == {"val": 1, "oracle": 1}


# ------------------------------------------------------------------------------- report --recompute
def test_recompute_agrees_with_every_run_of_a_smoke_grid_and_writes_nothing(trained, tmp_path, capsys):
    grid, older = tmp_path / "grid", tmp_path / "older"
    _grid(trained, grid)
    old = copy_run(trained(SPECS[0]), older)                     # the same run as an older version left it
    (old.path / SCORES_FILE).unlink()
    marker = json.loads((old.path / "done").read_text())
    (old.path / "done").write_text(json.dumps({k: v for k, v in marker.items() if k != "scores_sha256"}))
    before = _tree(tmp_path)
    code = main(["report", "--recompute", "--out", str(grid), str(grid), str(older)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0, lines
    assert lines[0] == f"run {older}/{old.path.name}: no scores (older run)"
    assert lines[-1].startswith("recompute: 2 runs recomputed from stored scores: 2 agree, 0 disagree; "
                                "1 with no scores (older runs). Largest difference: 0 in the metrics")
    assert _tree(tmp_path) == before                             # nothing written, not even a report


def test_a_hand_edited_metric_is_a_mismatch_naming_the_run(trained, tmp_path, capsys):
    folder = _grid(trained, tmp_path)[1]
    epoch = read_scores(folder.path / SCORES_FILE).epochs[0]
    stored = _evals(folder)[epoch]["test/CF1"]
    lines = (folder.path / "metrics.jsonl").read_text().splitlines()
    edited = [json.dumps({**r, "test/CF1": 12.5}) if r.get("kind") == "eval" and r["epoch"] == epoch else line
              for line, r in ((line, json.loads(line)) for line in lines)]
    (folder.path / "metrics.jsonl").write_text("\n".join(edited) + "\n")
    code, out = _recompute(tmp_path, capsys)                      # the marker no longer matches: broken
    assert code == 1 and f"run {folder.path.name}: broken: metrics.jsonl changed after the run finished" in out
    _reseal(folder)                                               # consistent files, a wrong number
    code, out = _recompute(tmp_path, capsys)
    assert code == 1
    rules = ", ".join(r for r, e in read_scores(folder.path / SCORES_FILE).selection.items() if e == epoch)
    assert f"run {folder.path.name}: epoch {epoch} ({rules}): test/CF1 stored 12.500000, recomputed {stored:.6f} " \
           f"(differs by {abs(stored - 12.5):.3g})" in out
    assert "1 agree, 1 disagree" in out[-1] and sum(folder.path.name in line for line in out) == 1


@pytest.mark.parametrize("damage", ["truncate", "replace", "delete", "link"])
def test_a_damaged_scores_file_makes_the_run_broken(damage, trained, tmp_path, capsys):
    good, folder = _grid(trained, tmp_path)
    path = folder.path / SCORES_FILE
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "replace":                                     # a valid scores file of another run
        shutil.copy(good.path / SCORES_FILE, path)
    elif damage == "delete":
        path.unlink()
    else:
        path.unlink()
        path.symlink_to(good.path / SCORES_FILE)
    why = {"truncate": "scores.npz changed after the run finished", "replace": "scores.npz changed after the run "
           "finished", "delete": "scores.npz is missing", "link": "scores.npz is a symbolic link"}[damage]
    assert folder.done and not folder.finished and why in folder.verify()     # a grid retrains it
    found = scan_runs(tmp_path)
    assert found.finished == [good.path.name] and why in found.broken[folder.path.name]
    code, out = _recompute(tmp_path, capsys)
    assert code == 1 and any(line.startswith(f"run {folder.path.name}: broken: ") and why in line for line in out)


MALFORMED = {        # member -> (its replacement given the stored epoch count k, the reason the report gives)
    "image_ids": (lambda k: np.array([{"a": 1}] * 80, dtype=object), "member image_ids: it holds Python objects"),
    "scores": (lambda k: np.zeros((k + 1, 80, 20), np.float32),
               "member scores has shape [{k1}, 80, 20], not [{k}, 80, 20]"),
    "per_class_ap": (lambda k: np.full((k, 20), 250.0, np.float32),
                     "member per_class_ap holds a value outside [0, 100]"),
    "format": (lambda k: np.int64(7), "member format is not 1"),
}


@pytest.mark.parametrize("member", sorted(MALFORMED))
def test_a_malformed_scores_file_under_a_matching_marker_is_broken_with_the_member_named(
        member, trained, tmp_path, capsys):
    """A scores file consistent with its done marker (a forged folder) is still checked member by member:
    the report lists the run as broken, never unpickles, and the check says so."""
    folder = copy_run(trained(SPECS[1]), tmp_path)
    with np.load(folder.path / SCORES_FILE) as data:
        arrays = dict(data)
    k = len(arrays["epochs"])
    make, why = MALFORMED[member]
    why = why.format(k=k, k1=k + 1)
    np.savez(folder.path / SCORES_FILE, **{**arrays, member: make(k)})
    _reseal(folder)
    assert folder.finished
    assert why in scan_runs(tmp_path).broken[folder.path.name]
    code, out = _recompute(tmp_path, capsys)
    assert code == 1 and why in out[0] and out[0].startswith(f"run {folder.path.name}: broken: scores.npz ")


def test_a_scores_file_added_to_an_older_run_is_not_trusted(trained, tmp_path):
    folder = copy_run(trained(SPECS[0]), tmp_path)
    marker = json.loads((folder.path / "done").read_text())
    (folder.path / "done").write_text(json.dumps({k: v for k, v in marker.items() if k != "scores_sha256"}))
    assert folder.verify() == "scores.npz was added after the run finished (its done marker holds no checksum of it)"


# ------------------------------------------------------------------------------- kills
class Killed(Exception):
    pass


def _kill(*_, **__):
    raise Killed


@pytest.mark.parametrize("when", ["before_scores", "before_done", "mid_training"])
def test_a_kill_before_done_resumes_to_the_same_scores_file(when, trained, tmp_path, monkeypatch):
    spec = SPECS[0]
    whole = read_scores(trained(spec).path / SCORES_FILE)
    folder = RunFolder(tmp_path, spec.run_id)
    with monkeypatch.context() as patch, pytest.raises(Killed):
        if when == "before_scores":          # after the last evaluation and its checkpoint
            patch.setattr(lifecycle, "keep_selected", _kill)
            run_one(spec, tmp_path)
        elif when == "before_done":          # scores.npz written, done not yet
            patch.setattr(RunFolder, "finish", _kill)
            run_one(spec, tmp_path)
        else:
            run_one(spec, tmp_path, progress=lambda epoch, *_: _kill() if epoch == 1 else None)
    assert not folder.done and folder.last_checkpoint() is not None and epoch_score_files(folder.work_dir)
    assert (folder.path / SCORES_FILE).exists() == (when == "before_done")
    run_one(spec, tmp_path)
    assert folder.finished and not epoch_score_files(folder.work_dir)
    again = read_scores(folder.path / SCORES_FILE)
    assert again.selection == whole.selection and np.array_equal(again.scores, whole.scores)


# ------------------------------------------------------------------------------- forged files, fuzzed
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.conftest import fuzz_examples  # noqa: E402


@settings(max_examples=fuzz_examples(20))
@given(data=st.data())
def test_any_damage_to_a_sealed_scores_file_is_a_broken_run_or_the_same_numbers(data, trained, tmp_path):
    """Bytes of scores.npz flipped, zeroed, cut or appended, the done marker sealed over them: the report
    and the check either read a valid file or list the run as broken; neither raises."""
    import tempfile

    from reports.recompute import check_run

    out = Path(tempfile.mkdtemp(dir=tmp_path))
    folder = copy_run(trained(SPECS[0]), out)
    path = folder.path / SCORES_FILE
    raw = bytearray(path.read_bytes())
    how = data.draw(st.sampled_from(["flip", "zero", "cut", "append"]))
    at = data.draw(st.integers(0, len(raw) - 1))
    if how == "flip":
        raw[at] ^= 1 << data.draw(st.integers(0, 7))
    elif how == "zero":
        raw[at:at + 16] = bytes(len(raw[at:at + 16]))
    elif how == "cut":
        del raw[at:]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=32))
    path.write_bytes(bytes(raw))
    _reseal(folder)
    found = scan_runs(out)
    check = check_run(folder.path, folder.path.name, _test_split_of, evaluate_with_class_ap)
    if folder.path.name in found.broken:
        assert found.broken[folder.path.name].startswith("scores.npz ")
    assert check.status in ("agree", "mismatch", "broken")
    if check.status == "broken":
        assert check.lines[0].startswith("broken: scores.npz ")


def _test_split_of(spec: dict):
    return load_dataset(spec["dataset"], spec["dataset_size"], spec["data_root"], spec["preset"]).test
