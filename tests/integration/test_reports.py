"""The reporting layer on fake result folders with known numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest

from benchmark.core.errors import UserError
from benchmark.core.run_folder import RunFolder
from reports.build import build_report
from reports.collect import collect_runs, scan_runs
from reports.plots import plot_map_vs_ratio
from reports.run_rows import ReportWarning, select_epoch
from reports.summary import summarise
from reports.tables import (
    latex_escape,
    latex_leaderboard,
    leaderboard,
    markdown_leaderboard,
    mask_check,
)
from tests.conftest import mask_sha, run_name, spec_json

METHODS = ("partial_bce", "hst")
RATIOS = (0.1, 0.5, 0.9)
SEEDS = (0, 1)
UNFINISHED = run_name("hst", 0.1, 2)     # the results fixture's unfinished run
BROKEN = run_name("hst", 0.1, 3)         # and its broken one (spec.json is not JSON)


def headline(method: str, ratio: float, seed: int) -> float:
    """test/mAP at the val-selected epoch; hst wins at 10% and 50%, partial_bce at 90%."""
    bonus = {"partial_bce": 0.0, "hst": 5.0 if ratio < 0.9 else -5.0}[method]
    return 50.0 + 30.0 * ratio + bonus + 2.0 * seed


def eval_line(epoch: int, val: float, test: float) -> dict:
    return {"kind": "eval", "epoch": epoch, "val/mAP": val, "test/mAP": test,
            "test/CF1": test - 10, "test/OF1": test - 8, "test/CP": 1.0, "test/CR": 2.0,
            "test/OP": 3.0, "test/OR": 4.0, "test/mAP_hidden": test / 2}


def run_lines(v: float) -> list[dict]:
    """Four epochs: val picks epoch 2 (v), oracle epoch 3 (v + 3), last epoch 4 (v + 1)."""
    return [{"kind": "train", "epoch": 1, "loss": 0.7}, eval_line(1, 40.0, v - 10),
            eval_line(2, 60.0, v), eval_line(3, 55.0, v + 3), eval_line(4, 50.0, v + 1)]


def write_run(out: Path, run_id: str, spec: dict, lines: list, done: bool = True) -> Path:
    folder = out / run_id
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps(spec_json(run_id=run_id, **spec)))
    text = [line if isinstance(line, str) else json.dumps(line) for line in lines]
    (folder / "metrics.jsonl").write_text("\n".join(text) + "\n")
    if done:
        RunFolder(out, run_id).finish()      # the real marker: the sha256 of metrics.jsonl
    return folder


def make_spec(method: str, ratio: float, seed: int, sha: str | None = None) -> dict:
    return {"dataset": "synthetic", "protocol": "frozen", "method": method, "ratio": ratio,
            "seed": seed, "mask_protocol": "random", "profile": "default", "preset": None,
            "mask_sha256": sha or mask_sha(ratio, seed), "unknown_key": [1, 2]}


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    """2 methods x 3 ratios x 2 seeds, one resumed run, one corrupt line, 1 unfinished, 1 broken."""
    out = tmp_path / "grid"
    summary = {"kind": "summary", "train_seconds": 12.5, "peak_memory_mb": 456.0}
    for method in METHODS:
        for ratio in RATIOS:
            for seed in SEEDS:
                lines = run_lines(headline(method, ratio, seed)) + [summary]
                if (method, ratio, seed) == ("partial_bce", 0.1, 1):
                    # A stale evaluation of epoch 2 before a resume: the later line must win.
                    lines.insert(2, eval_line(2, 99.0, 10.0))
                if (method, ratio, seed) == ("hst", 0.9, 1):
                    lines.insert(2, '{"kind": "eval", "epoch": 9, "val/mAP": ')
                write_run(out, run_name(method, ratio, seed), make_spec(method, ratio, seed), lines)
    write_run(out, UNFINISHED, make_spec("hst", 0.1, 2), run_lines(90.0)[:2], done=False)
    broken = write_run(out, BROKEN, make_spec("hst", 0.1, 3), run_lines(90.0))
    (broken / "spec.json").write_text("{not json")
    return out


def test_collect_selection_rules_pick_the_right_epochs(results: Path) -> None:
    with pytest.warns(ReportWarning):
        df = collect_runs(results)
    assert len(df) == 12 * 3
    run = df[df["run_id"] == run_name("hst", 0.5, 0)].set_index("selection")
    v = headline("hst", 0.5, 0)
    assert run.loc["val", "epoch"] == 2 and run.loc["val", "mAP"] == v
    assert run.loc["oracle", "epoch"] == 3 and run.loc["oracle", "mAP"] == v + 3
    assert run.loc["last", "epoch"] == 4 and run.loc["last", "mAP"] == v + 1
    assert run.loc["val", "CF1"] == v - 10 and run.loc["val", "val_mAP"] == 60.0
    assert run.loc["val", "mAP_hidden"] == v / 2  # extra test/* metric, prefix removed
    assert run.loc["val", "train_seconds"] == 12.5 and run.loc["val", "peak_memory_mb"] == 456.0
    assert run.loc["val", "mask_sha256"] == mask_sha(0.5, 0)


def test_duplicated_epoch_last_line_wins(results: Path) -> None:
    with pytest.warns(ReportWarning):
        df = collect_runs(results)
    run = df[df["run_id"] == run_name("partial_bce", 0.1, 1)].set_index("selection")
    assert run.loc["val", "epoch"] == 2 and run.loc["val", "val_mAP"] == 60.0
    assert run.loc["val", "mAP"] == headline("partial_bce", 0.1, 1)


def test_unfinished_broken_and_corrupt_lines_are_counted(results: Path) -> None:
    notes = results / "notes"                          # not named like a run: not a run at all
    notes.mkdir()
    (notes / "spec.json").write_text("{not json")
    with pytest.warns(ReportWarning) as record:
        found = scan_runs(results)
    messages = [str(w.message) for w in record]
    corrupt = run_name("hst", 0.9, 1)
    assert any(f"{corrupt}/metrics.jsonl line 3: malformed" in m for m in messages)
    assert len(found.finished) == 12
    assert found.unfinished == [UNFINISHED]
    assert list(found.broken) == [BROKEN] and "spec.json" in found.broken[BROKEN]
    assert not any("notes" in m for m in messages)
    assert found.bad_lines == 1
    assert corrupt in set(found.frame["run_id"])  # the corrupt line drops, not the run


def test_val_ties_pick_the_earliest_epoch() -> None:
    evals = {3: {"val/mAP": 60.0, "test/mAP": 1.0}, 1: {"val/mAP": 60.0, "test/mAP": 2.0},
             2: {"val/mAP": float("nan"), "test/mAP": 2.0}}
    assert select_epoch(evals, "val") == 1
    assert select_epoch(evals, "oracle") == 1
    assert select_epoch(evals, "last") == 3
    assert select_epoch({1: {"test/mAP": 5.0}}, "val") is None


@pytest.mark.parametrize("lines, reason", [
    ([{"kind": "train", "epoch": 1}], "no evaluation line"),
    (["", "[1, 2]"], "no evaluation line"),
    # An evaluation line whose epoch is not a positive int makes the run broken (it is not skipped).
    (["", "[1, 2]", {"kind": "eval", "epoch": "x"}], "line 3: eval epoch 'x' is not a positive integer"),
])
def test_finished_run_without_evaluations_is_broken(tmp_path: Path, lines, reason) -> None:
    bad, good = run_name("hst", 0.1, 0), run_name("hst", 0.1, 1)
    write_run(tmp_path, bad, make_spec("hst", 0.1, 0), lines)
    write_run(tmp_path, good, make_spec("hst", 0.1, 1), run_lines(70.0))
    with pytest.warns(ReportWarning):
        found = scan_runs(tmp_path)
    assert found.finished == [good] and reason in found.broken[bad]


def test_run_edited_after_it_finished_and_an_old_empty_marker_are_broken(tmp_path):
    edited = write_run(tmp_path, run_name("hst", 0.1, 0), make_spec("hst", 0.1, 0), run_lines(70.0))
    with open(edited / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(eval_line(5, 99.0, 99.0)) + "\n")
    old = write_run(tmp_path, run_name("hst", 0.1, 1), make_spec("hst", 0.1, 1), run_lines(70.0))
    (old / "done").write_text("")                       # a marker of an older version: no checksum, not trusted
    good = write_run(tmp_path, run_name("hst", 0.1, 2), make_spec("hst", 0.1, 2), run_lines(70.0))
    with pytest.warns(ReportWarning):
        found = scan_runs(tmp_path)
    assert found.finished == [good.name]
    assert found.broken == {
        edited.name: "metrics.jsonl changed after the run finished",
        old.name: "its done marker holds no checksum of metrics.jsonl (emptied, or written by an older version)"}


def test_summary_mean_std_and_avg_are_right(results: Path) -> None:
    with pytest.warns(ReportWarning):
        df = collect_runs(results)
    s = summarise(df, "val", "mAP").set_index(["method", "ratio"])
    assert s.loc[("partial_bce", 0.1), "mean"] == pytest.approx(54.0)
    assert s.loc[("partial_bce", 0.1), "std"] == pytest.approx(math.sqrt(2))
    assert s.loc[("partial_bce", 0.1), "n_seeds"] == 2
    assert s.loc[("hst", "avg"), "mean"] == pytest.approx((59 + 71 + 73) / 3)
    assert s.loc[("hst", "avg"), "std"] == pytest.approx(math.sqrt(2))
    oracle = summarise(df, "oracle", "mAP").set_index(["method", "ratio"])
    assert oracle.loc[("hst", 0.5), "mean"] == pytest.approx(71.0 + 3)


def test_leaderboard_cells_order_and_single_seed(results: Path) -> None:
    with pytest.warns(ReportWarning):
        df = collect_runs(results)
    table = leaderboard(df).droplevel([0, 1, 2, 3])
    assert list(table.columns) == ["10%", "50%", "90%", "Avg."]
    assert list(table.index) == ["partial_bce", "hst"]  # baseline first by default
    assert table.loc["partial_bce", "10%"] == "54.0 ± 1.4"
    assert table.loc["partial_bce", "Avg."] == "66.0 ± 1.4"
    assert table.loc["hst", "Avg."] == "67.7 ± 1.4"
    ordered = leaderboard(df, method_order=["hst", "partial_bce"]).droplevel([0, 1, 2, 3])
    assert list(ordered.index) == ["hst", "partial_bce"]
    single = leaderboard(df[df["seed"] == 0]).droplevel([0, 1, 2, 3])
    assert single.loc["hst", "50%"] == "70.0"


def test_avg_is_left_out_for_a_method_missing_a_ratio(results: Path) -> None:
    with pytest.warns(ReportWarning):
        df = collect_runs(results)
    df = df[~((df["method"] == "hst") & (df["ratio"] == 0.9))]
    table = leaderboard(df).droplevel([0, 1, 2, 3])
    assert table.loc["hst", "90%"] == "–" and table.loc["hst", "Avg."] == "–"
    assert table.loc["partial_bce", "Avg."] == "66.0 ± 1.4"


def test_markdown_has_header_bold_and_selection_table(results: Path) -> None:
    with pytest.warns(ReportWarning):
        df = collect_runs(results)
    md = markdown_leaderboard(df)
    assert "## synthetic · frozen · mask random · profile default" in md
    assert "selection: `val`" in md and "metric: test mAP (%)" in md and "seeds: 2" in md
    assert "masks: identical across methods" in md
    assert "**59.0 ± 1.4**" in md and "**78.0 ± 1.4**" in md  # best per column
    assert "**67.7 ± 1.4**" in md and "| 66.0 ± 1.4" in md
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()
            if line.startswith("| hst") and "oracle" in line]
    assert rows == [["hst", "oracle", "62.0", "74.0", "76.0", "70.7"]]


def test_mask_check_reports_differing_cells(tmp_path: Path) -> None:
    for method, sha in (("partial_bce", "aaaaaaaa11"), ("hst", "bbbbbbbb22")):
        write_run(tmp_path, run_name(method, 0.1, 0), make_spec(method, 0.1, 0, sha=sha), run_lines(70.0))
    df = collect_runs(tmp_path)
    text = mask_check(df)
    assert text.startswith("WARNING: masks differ")
    assert "10% seed 0" in text and "aaaaaaaa" in text and "bbbbbbbb" in text
    assert "WARNING: masks differ" in markdown_leaderboard(df)
    assert mask_check(df[df["method"] == "hst"]) == "masks: identical across methods"


def test_latex_is_escaped(results: Path) -> None:
    assert latex_escape("a_b 10% $x & #1 {y}") == r"a\_b 10\% \$x \& \#1 \{y\}"
    with pytest.warns(ReportWarning):
        df = collect_runs(results)
    tex = latex_leaderboard(df)
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"\begin{tabular}{lcccc}" in tex
    assert r"Method & 10\% & 50\% & 90\% & Avg. \\" in tex
    assert r"partial\_bce & 54.0 $\pm$ 1.4" in tex
    assert r"\textbf{78.0 $\pm$ 1.4}" in tex
    assert "partial_bce" not in tex.replace(r"partial\_bce", "")
    # runs that record the name papers print are shown under it, escaped like any string from a folder
    named = latex_leaderboard(df.assign(method_display=df["method"].map({"partial_bce": "Partial-BCE <&>"})))
    assert r"Partial-BCE \textless{}\&\textgreater{} & 54.0 $\pm$ 1.4" in named
    assert r"partial\_bce &" not in named and r"hst & " in named          # no recorded name: the key
    # beside the val table: the means under every selection rule, as leaderboard.md has them
    assert r"Method & Selection & 10\% & 50\% & 90\% & Avg. \\" in tex
    cells = [line.split(" & ") for line in tex.splitlines() if line.startswith(r"partial\_bce & ")]
    rules = [c[1] for c in cells if c[1] in ("val", "last", "oracle")]
    assert rules == ["val", "last", "oracle"], rules
    assert tex.count(r"\begin{table}") == 2 * tex.count(r"\begin{tabular}{lc")


def assert_png(path: Path, min_bytes: int = 5000) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > min_bytes
    height, width, _ = matplotlib.image.imread(path).shape
    assert height > 200 and width > 200


def test_plot_is_a_png_also_for_one_seed_and_one_ratio(results: Path, tmp_path: Path) -> None:
    with pytest.warns(ReportWarning):
        df = collect_runs(results)
    assert_png(plot_map_vs_ratio(df, tmp_path / "all.png"))
    one = df[(df["seed"] == 0) & (df["ratio"] == 0.5)]
    assert_png(plot_map_vs_ratio(one, tmp_path / "one.png", selection="oracle"))
    with pytest.raises(ValueError, match="selection"):
        plot_map_vs_ratio(df, tmp_path / "x.png", selection="best")


def test_build_report_writes_everything(results: Path) -> None:
    with pytest.warns(ReportWarning):
        summary = build_report(results)
    assert (summary["finished"], summary["unfinished"], summary["broken"]) == (12, 1, 1)
    assert summary["bad_lines"] == 1 and BROKEN in summary["broken_runs"]
    names = {p.name for p in summary["paths"].values()}
    assert names == {"runs.csv", "leaderboard.md", "leaderboard.tex", "leaderboard.csv", "statistics.md",
                     "map_vs_ratio.png", "difference_heatmap.png", "cd_diagram.png", "cost.png", "index.html"}
    assert_png(results / "map_vs_ratio.png")
    assert len(pd.read_csv(results / "runs.csv")) == 36
    board = pd.read_csv(results / "leaderboard.csv")
    avg = board[(board["ratio"] == "avg") & (board["method"] == "hst")
                & (board["selection"] == "val") & (board["metric"] == "mAP")]
    assert avg["mean"].item() == pytest.approx(68.0 - 1 / 3) and avg["n_seeds"].item() == 2
    assert set(board["selection"]) == {"val", "last", "oracle"}


def test_no_finished_runs_raises_user_error_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no finished runs"):
        build_report(tmp_path)
    unfinished = write_run(tmp_path, run_name("hst", 0.1, 0), make_spec("hst", 0.1, 0), run_lines(70.0),
                           done=False)
    notes = write_run(tmp_path, "notes", make_spec("hst", 0.1, 1), run_lines(70.0))  # not named like a run
    with pytest.raises(UserError, match=r"run the benchmark first .* \(1 unfinished, 0 broken\)"):
        build_report(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([unfinished.name, notes.name])
    with pytest.raises(UserError, match="does not exist"):
        build_report(tmp_path / "missing")


# ------------------------------------------------------------------ identity: paths, executions, versions
def _identity_run(out: Path, seed: int, test: float, data_root: str, threads: int = 1) -> Path:
    """A finished run whose spec.json is what the engine writes for a real-data RunSpec, in a folder
    named by its run id (the data root is fingerprinted, so two roots give one run id; threads do not)."""
    from dataclasses import replace

    from benchmark.config.run_spec import profile_spec

    spec = replace(profile_spec("partial_bce", "default", 0.5, seed), dataset="voc2007", data_root=data_root,
                   preset="hcp", inputs=(("data", "same-labels"),), threads=threads)
    record = {**spec.to_dict(), "run_id": spec.run_id, "identity": spec.identity(),
              "mask_sha256": mask_sha(0.5, seed)}
    folder = out / spec.run_id
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps(record))
    (folder / "metrics.jsonl").write_text(json.dumps(eval_line(1, 60.0, test)) + "\n")
    RunFolder(out, spec.run_id).finish()
    return folder


def test_two_machines_with_the_data_at_different_paths_merge_into_one_row(tmp_path: Path) -> None:
    """README's merge: --seeds 0 on one machine, --seeds 1 on another, the dataset at two paths."""
    _identity_run(tmp_path / "a", seed=0, test=70.0, data_root="/mnt/a/VOCdevkit")
    _identity_run(tmp_path / "b", seed=1, test=72.0, data_root="/scratch/b/voc")
    frame = scan_runs([tmp_path / "a", tmp_path / "b"]).frame
    assert set(frame["variant"]) == {"partial_bce:hcp"}
    summary = summarise(frame)
    assert set(summary["method"]) == {"partial_bce:hcp"}
    assert summary[summary["ratio"] == 0.5]["n_seeds"].tolist() == [2]
    assert summary[summary["ratio"] == 0.5]["mean"].item() == pytest.approx(71.0)


def test_runs_differing_only_in_execution_are_one_row_when_they_agree(tmp_path: Path) -> None:
    _identity_run(tmp_path / "a", seed=0, test=70.0, data_root="/a", threads=1)
    _identity_run(tmp_path / "b", seed=0, test=70.01, data_root="/b", threads=2)     # same cell, agrees
    _identity_run(tmp_path / "b", seed=1, test=71.0, data_root="/b", threads=2)
    frame = scan_runs([tmp_path / "a", tmp_path / "b"]).frame
    val = frame[frame["selection"] == "val"]
    assert set(val["variant"]) == {"partial_bce:hcp"}
    assert sorted(val["seed"]) == [0, 1]                                  # the doubled seed counts once
    assert set(val["execution"]) == {"cpu, 1 thread; cpu, 2 threads"}
    assert val[val["seed"] == 0]["mAP"].item() == 70.0                    # the first execution's copy


def test_runs_differing_only_in_execution_split_when_they_disagree(tmp_path: Path) -> None:
    _identity_run(tmp_path / "a", seed=0, test=70.0, data_root="/a", threads=1)
    _identity_run(tmp_path / "b", seed=0, test=73.3, data_root="/b", threads=2)
    frame = scan_runs([tmp_path / "a", tmp_path / "b"]).frame
    assert set(frame["variant"]) == {"partial_bce:hcp [cpu, 1 thread]", "partial_bce:hcp [cpu, 2 threads]"}


def test_a_run_of_an_older_spec_version_is_broken_never_merged(tmp_path: Path) -> None:
    new = _identity_run(tmp_path, seed=0, test=70.0, data_root="/a")
    old = _identity_run(tmp_path, seed=1, test=10.0, data_root="/a")
    record = json.loads((old / "spec.json").read_text())
    record["spec_version"] = 1
    (old / "spec.json").write_text(json.dumps(record))
    RunFolder(tmp_path, old.name).finish()
    with pytest.warns(ReportWarning, match="spec version 1"):
        found = scan_runs(tmp_path)
    assert "spec version 1" in found.broken[old.name] and "retrain" in found.broken[old.name]
    assert set(found.frame["run_id"]) == {json.loads((new / "spec.json").read_text())["run_id"]}


def test_statistics_rank_table_is_sorted_by_rank_and_latex_counts_seeds(results: Path) -> None:
    """hst wins two of the three proportions, so it heads the rank table although partial_bce comes
    first in the method order; the LaTeX caption counts the seeds in words that fit the number."""
    with pytest.warns(ReportWarning):
        build_report(results)
    stats = (results / "statistics.md").read_text()
    table = stats[stats.index("## Average rank"):]
    assert table.index("| hst") < table.index("| partial_bce")
    tex = (results / "leaderboard.tex").read_text()
    assert "std over 2 seeds." in tex and "over 1 seeds" not in tex
