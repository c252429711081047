"""Grid files (--grid FILE.yaml, --write-grid FILE.yaml): an experiment written by one command is
re-run exactly by another; a bad file is one line, exit 2, before anything is written."""
from __future__ import annotations

import pytest

from benchmark.cli.grid_file import (
    expand_grid_argument,
    read_grid_file,
    write_grid_file,
)
from benchmark.cli.main import main
from benchmark.cli.parser import run_parser
from benchmark.core.errors import UserError

FLAGS = ["--profile", "smoke", "--methods", "partial_bce", "hst", "--ratios", "0.2,0.6", "--seeds", "0", "1",
         "--epochs", "2", "--set", "hst.instance_weight=0.5", "--threads", "1"]


def _run_ids(argv, out):
    from benchmark.cli.plan import build_runs
    from benchmark.core.registry import discover

    args = run_parser().parse_args(expand_grid_argument(argv))
    discover(tuple(args.plugins))
    runs, _, _ = build_runs(args, out)
    return sorted(r.run_id for r in runs)


def test_a_written_grid_file_plans_the_same_runs_and_flags_win_over_it(tmp_path):
    args = run_parser().parse_args(FLAGS)
    path = write_grid_file(tmp_path / "exp.yaml", args)
    text = path.read_text()
    assert "methods: [partial_bce, hst]" in text and "hst.instance_weight: 0.5" in text and "out" not in text.split("\n", 1)[1]
    same = _run_ids(FLAGS, tmp_path / "out")
    assert len(same) == 8
    assert _run_ids(["--grid", str(path)], tmp_path / "out") == same
    # a flag given beside the file wins: one seed instead of two, the rest from the file
    one_seed = _run_ids(["--grid", str(path), "--seeds", "1"], tmp_path / "out")
    assert len(one_seed) == 4 and set(one_seed) < set(same)


def test_write_grid_records_the_planned_thread_count(tmp_path, capsys):
    out, grid = tmp_path / "out", tmp_path / "exp.yml"
    code = main(["--profile", "smoke", "--methods", "partial_bce", "--ratios", "0.5", "--epochs", "1",
                 "--no-report", "--out", str(out), "--write-grid", str(grid)])
    assert code == 0
    assert "threads: " in grid.read_text()
    assert f"grid file: {grid}" in capsys.readouterr().out
    assert main(["--grid", str(grid), "--out", str(out), "--no-report"]) == 0
    assert "0 trained, 1 already done" in capsys.readouterr().out       # the same run id: nothing retrained


@pytest.mark.parametrize("content, words", [
    ("- partial_bce\n- hst\n", "must be a mapping"),
    ("methods: [partial_bce\n", "not valid YAML at line"),
    ("method: [an]\n", "unknown key 'method'; valid keys: methods"),
    ("out: results/x\n", "unknown key 'out'"),
    ("seeds: [{a: 1}]\n", "seeds must be a number or a string, not dict"),
    ("ratios: --help\n", "starting with '-'"),
    ("set: [a, b]\n", "set must be a mapping"),
    ("methods: []\n", "empty list"),
    ("", "must be a mapping"),
])
def test_a_bad_grid_file_is_one_line_exit_2_and_writes_nothing(content, words, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(UserError, match="grid file|grid"):
        read_grid_file(path)
    out = tmp_path / "out"
    assert main(["--grid", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not out.exists()


def test_grid_flag_problems_are_one_line(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("profile: smoke\n")
    cases = [(["--grid"], "--grid needs a file"),
             (["--grid", str(tmp_path / "a.yaml"), "--grid", str(tmp_path / "a.yaml")], "given twice"),
             (["--grid", str(tmp_path / "missing.yaml")], "not found"),
             (["--profile", "smoke", "--write-grid", str(tmp_path / "exp.txt")], "name the file .yaml")]
    for argv, words in cases:
        assert main([*argv, "--out", str(tmp_path / "out")]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], (argv, err)
    assert not (tmp_path / "out").exists()
