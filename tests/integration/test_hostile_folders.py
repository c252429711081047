"""Results folders from other people are untrusted input: a report of one good run beside one hostile
run (names that are markup, formulas or TeX; wrong types; symbolic links; unrelated folders) completes,
lists the hostile run as broken with a reason (or draws its name as plain text), and no output file
holds a live payload."""
from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import os
import re
import shutil
import signal
from pathlib import Path

import markupsafe
import pytest

from benchmark.core.escape import (
    CSV_FORMULA_START,
    csv_cell,
    latex,
    markdown_heading,
    markdown_text,
)
from reports.build import build_report
from reports.run_rows import BrokenRun, ReportWarning, read_run, read_spec
from tests.conftest import spec_json

GOOD = "partial_bce__synthetic__frozen__p0.5__s0__0123456789"
HOSTILE = "hostile__synthetic__frozen__p0.5__s0__abcdef0123"
SECRET = "TOPSECRET-4242-do-not-leak"


def eval_line(epoch: int, val: float, test: float) -> dict:
    return {"kind": "eval", "epoch": epoch, "val/mAP": val, "val/num_classes_scored": 4, "test/mAP": test,
            "test/CF1": test - 10, "test/OF1": test - 8, "test/CP": 1.0, "test/CR": 2.0, "test/OP": 3.0,
            "test/OR": 4.0, "test/num_classes_scored": 4}


def lines_for(test: float) -> list[dict]:
    return [eval_line(1, 50.0, test - 5), eval_line(2, 60.0, test),
            {"kind": "summary", "train_seconds": 3.5, "peak_memory_mb": 120.0, "epochs": 2}]


def spec_record(run_id: str, **fields) -> dict:
    base = {"dataset": "synthetic", "protocol": "frozen", "method": "partial_bce", "ratio": 0.5, "seed": 0,
            "mask_protocol": "random", "profile": "default", "preset": None, "mask_sha256": "ab" * 32}
    return spec_json(run_id=run_id, **{**base, **fields})


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_run(out: Path, run_id: str, spec: dict | None = None, lines: list | None = None, done: bool = True,
              raw_spec: str | None = None) -> Path:
    """A run folder as the engine leaves it: spec.json, metrics.jsonl and (finished) the done marker
    with the sha256 of both files."""
    folder = out / run_id
    folder.mkdir(parents=True)
    spec_bytes = (raw_spec if raw_spec is not None else json.dumps(spec or spec_record(run_id))).encode()
    metrics = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                      for line in (lines if lines is not None else lines_for(70.0))).encode()
    (folder / "spec.json").write_bytes(spec_bytes)
    (folder / "metrics.jsonl").write_bytes(metrics)
    if done:
        marker = {"metrics_sha256": sha256(metrics), "spec_sha256": sha256(spec_bytes)}
        (folder / "done").write_text(json.dumps(marker) + "\n")
    return folder


def good_grid(tmp_path: Path) -> Path:
    out = tmp_path / "grid"
    write_run(out, GOOD, lines=lines_for(70.0))
    return out


def outputs(out: Path) -> dict[str, str]:
    """Every text file of the report."""
    names = ("leaderboard.md", "statistics.md", "leaderboard.tex", "runs.csv", "leaderboard.csv", "index.html")
    texts = {name: (out / name).read_text() for name in names}
    assert all(texts.values())
    return texts


def every_file_bytes(root: Path) -> bytes:
    """The bytes of every regular file the report may have written under ``root``: everything but the
    run folders themselves (links not followed)."""
    blob = b""
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in (GOOD, HOSTILE)]
        for name in files:
            path = Path(dirpath) / name
            if not path.is_symlink():
                blob += path.read_bytes()
    return blob


def rendered(markdown: str) -> str:
    """The Markdown as HTML by the most permissive renderer: raw HTML allowed, every link target
    accepted (a renderer that does not filter ``javascript:``)."""
    markdown_it = pytest.importorskip("markdown_it")
    md = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table")
    md.validateLink = lambda url: True
    return md.render(markdown)


def pipe_cells(line: str) -> int:
    """The cells of a Markdown table row: ``|`` not escaped by a backslash split them."""
    return len(re.findall(r"(?<!\\)(?:\\\\)*\|", line)) - 1


def assert_tables_keep_their_columns(markdown: str) -> None:
    block: list[int] = []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            block.append(pipe_cells(line))
        elif block:
            assert len(set(block)) == 1, (block, markdown)
            block = []


def csv_cells(text: str) -> list[str]:
    return [cell for row in csv.reader(io.StringIO(text, newline="")) for cell in row]


def assert_no_csv_formula(text: str) -> None:
    for cell in csv_cells(text):
        if cell.startswith(CSV_FORMULA_START):
            float(cell)                     # only a number may start with - or +


def assert_safe(out: Path, payload: str, summary: dict) -> None:
    """The report counts both runs and shows the payload as text in every format."""
    assert summary["finished"] == 2 and summary["broken_runs"] == {}
    texts = outputs(out)
    for name in ("leaderboard.md", "statistics.md"):
        md = texts[name]
        assert markdown_text(payload) in md, name
        assert_tables_keep_their_columns(md)
        page = rendered(md)
        assert "<script" not in page and "<a " not in page and "<img" not in page, name
        assert payload in html.unescape(page), name                      # shown as the text it is
    tex = texts["leaderboard.tex"]
    assert latex(payload) in tex and "\\input" not in tex
    for name in ("runs.csv", "leaderboard.csv"):
        assert_no_csv_formula(texts[name])
    assert csv_cell(payload) in csv_cells(texts["runs.csv"])           # the name, apostrophe-quoted when needed
    page = texts["index.html"]
    assert str(markupsafe.escape(payload)) in page
    assert "<script>alert" not in page and 'href="javascript' not in page.lower()
    if set(payload) & set("<>&\""):
        assert payload not in page
    for png in ("map_vs_ratio.png", "difference_heatmap.png", "cd_diagram.png", "cost.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"                # drawn: the name never parsed as math


PAYLOADS = ["<script>alert(1)</script>", "a|b", "[x](javascript:alert(1))", '=HYPERLINK("http://evil")',
            "\\input{/etc/passwd}", "100% & $\\x$"]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_hostile_method_name_is_text_in_every_output(tmp_path, payload):
    out = good_grid(tmp_path)
    write_run(out, HOSTILE.replace("hostile", "other"), spec_record(HOSTILE.replace("hostile", "other"),
                                                                  method=payload), lines_for(75.0))
    assert_safe(out, payload, build_report(out))


@pytest.mark.parametrize("payload", PAYLOADS[:4] + PAYLOADS[5:])
def test_a_hostile_dataset_name_is_text_in_every_output(tmp_path, payload):
    out = good_grid(tmp_path)
    other = HOSTILE.replace("hostile", "other")
    write_run(out, other, spec_record(other, dataset=payload), lines_for(75.0))
    write_run(out, other.replace("s0", "s1"), spec_record(other.replace("s0", "s1"), dataset=payload,
                                                          method="hst"), lines_for(78.0))
    summary = build_report(out)
    assert summary["finished"] == 3 and summary["broken_runs"] == {}
    texts = outputs(out)
    md = texts["leaderboard.md"]
    assert f"## {markdown_heading(payload)} · frozen · mask random" in md
    assert_tables_keep_their_columns(md)
    page = rendered(md)
    assert "<script" not in page and "<a " not in page
    assert latex(payload) in texts["leaderboard.tex"] and "\\input" not in texts["leaderboard.tex"]
    assert csv_cell(payload) in csv_cells(texts["runs.csv"]) and csv_cell(payload) in csv_cells(texts["leaderboard.csv"])
    for name in ("runs.csv", "leaderboard.csv"):
        assert_no_csv_formula(texts[name])
    assert str(markupsafe.escape(payload)) in texts["index.html"] and "<script>alert" not in texts["index.html"]


def test_an_input_payload_as_dataset_never_runs_in_latex(tmp_path):
    out = good_grid(tmp_path)
    write_run(out, HOSTILE, spec_record(HOSTILE, dataset="\\input{/etc/passwd}"), lines_for(75.0))
    build_report(out)
    tex = (out / "leaderboard.tex").read_text()
    assert "\\input" not in tex and "on \\textbackslash{}input\\{/etc/passwd\\}, frozen protocol" in tex
    caption = next(line for line in tex.splitlines() if "textbackslash{}input" in line)
    assert caption.startswith("\\caption{") and caption.endswith("(the mean).}")   # the group stays closed


def broken_reason(out: Path) -> str:
    with pytest.warns(ReportWarning):
        summary = build_report(out)
    assert summary["finished"] == 1 and list(summary["broken_runs"]) == [HOSTILE], summary["broken_runs"]
    reason = summary["broken_runs"][HOSTILE]
    assert "\n" not in reason and len(reason) < 400
    texts = outputs(out)
    assert "<script>alert" not in texts["index.html"]
    assert_no_csv_formula(texts["runs.csv"])
    return reason


def test_a_newline_in_a_name_makes_the_run_broken(tmp_path):
    out = good_grid(tmp_path)
    write_run(out, HOSTILE, spec_record(HOSTILE, method="line one\n## line two"))
    reason = broken_reason(out)
    assert reason.startswith("spec.json method 'line one\\n## line two'") and "single printable line" in reason
    assert "line two" not in (out / "leaderboard.md").read_text()


@pytest.mark.parametrize("field, value, expected", [
    ("seed", "abc", "spec.json seed 'abc' is not an integer in [0, 2**32)"),
    ("ratio", 5.0, "spec.json ratio 5.0 is not a number in (0, 1]"),
    ("method", ["a", "b"], "spec.json method ['a', 'b'] is a list, not a string"),
])
def test_a_spec_field_of_the_wrong_type_makes_the_run_broken(tmp_path, field, value, expected):
    out = good_grid(tmp_path)
    spec = spec_record(HOSTILE)
    spec[field] = value
    write_run(out, HOSTILE, spec)
    assert broken_reason(out) == expected


def test_a_string_map_makes_the_run_broken(tmp_path):
    out = good_grid(tmp_path)
    lines = lines_for(75.0)
    lines[1] = {**lines[1], "test/mAP": "=1+1"}
    write_run(out, HOSTILE, spec_record(HOSTILE, method="hst"), lines)
    assert broken_reason(out) == "metrics.jsonl line 2: 'test/mAP' '=1+1' is not a number in [0, 100] or null"
    assert "=1+1" not in (out / "runs.csv").read_text()


# The other malformed values, read by read_run itself (no report needed: the reason is the same).
@pytest.mark.parametrize("field, value, expected", [
    ("seed", True, "spec.json seed True is not an integer in [0, 2**32)"),
    ("seed", 2 ** 32, "spec.json seed 4294967296 is not an integer"),
    ("seed", -1, "spec.json seed -1 is not an integer"),
    ("ratio", "0.5", "spec.json ratio '0.5' is not a number in (0, 1]"),
    ("ratio", 0.0, "spec.json ratio 0.0 is not a number"),
    ("ratio", float("nan"), "spec.json ratio nan is not a number"),
    ("method", "", "spec.json method '' is empty"),
    ("method", "m" * 300, "spec.json method 'mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm... is longer than 100 characters"),
    ("dataset", "a\x1b[31mred", "spec.json dataset 'a\\x1b[31mred' is not a single printable line"),
    ("profile", "a\u2028b", "spec.json profile 'a\\u2028b' is not a single printable line"),
    ("preset", 3, "spec.json preset 3 is a int, not a string"),
    ("mask_sha256", "not-hex", "spec.json mask_sha256 'not-hex' is not a hex digest"),
    ("privileged", "abc", "spec.json privileged 'abc' is not a record of names"),
    ("privileged", [1], "spec.json privileged [1] is not a record of names"),
    ("spec_version", "2" * 100, f"written under spec version '{'2' * 36}..., this code reads 2 (an unknown version)"),
    ("identity", [], "spec.json has no identity record"),
])
def test_read_run_names_the_bad_spec_field_and_value(tmp_path, field, value, expected):
    spec = spec_record(HOSTILE)
    spec[field] = value
    folder = write_run(tmp_path, HOSTILE, spec)
    with pytest.raises(BrokenRun) as caught:
        read_run(folder)
    assert str(caught.value).startswith(expected) and "\n" not in str(caught.value)


@pytest.mark.parametrize("raw, expected", [
    (b"[1, 2]", "spec.json is not a JSON object"),
    (b"[" * 100_000, "cannot read spec.json (RecursionError"),
    (b'{"method": "x"', "cannot read spec.json (JSONDecodeError"),
    (b'{"method": "\xff"}', "cannot read spec.json (UnicodeDecodeError"),
])
def test_read_run_refuses_a_spec_that_is_no_object(tmp_path, raw, expected):
    folder = write_run(tmp_path, HOSTILE, spec_record(HOSTILE))
    (folder / "spec.json").write_bytes(raw)
    with pytest.raises(BrokenRun, match=re.escape(expected)):
        read_run(folder)


@pytest.mark.parametrize("line, change, expected", [
    (1, {"test/mAP": True}, "metrics.jsonl line 2: 'test/mAP' True is not a number in [0, 100] or null"),
    (1, {"val/mAP": 150.0}, "metrics.jsonl line 2: 'val/mAP' 150.0 is not a number in [0, 100]"),
    (1, {"test/CF1": -0.5}, "metrics.jsonl line 2: 'test/CF1' -0.5 is not a number in [0, 100]"),
    (1, {"test/mAP": float("inf")}, "metrics.jsonl line 2: 'test/mAP' inf is not a number"),
    (1, {"test/num_classes_scored": 2.5}, "metrics.jsonl line 2: 'test/num_classes_scored' 2.5 is not an integer"),
    (1, {"epoch": 0}, "metrics.jsonl line 2: eval epoch 0 is not a positive integer"),
    (1, {"epoch": "2"}, "metrics.jsonl line 2: eval epoch '2' is not a positive integer"),
    (1, {"epoch": 1.5}, "metrics.jsonl line 2: eval epoch 1.5 is not a positive integer"),
    (1, {"test/=HYPERLINK(1)": 5.0}, "metrics.jsonl line 2: metric name 'test/=HYPERLINK(1)' is not a plain name"),
    (2, {"train_seconds": -1.0}, "metrics.jsonl line 3: 'train_seconds' -1.0 is not a finite number >= 0 or null"),
    (2, {"peak_memory_mb": "lots"}, "metrics.jsonl line 3: 'peak_memory_mb' 'lots' is not a finite number >= 0"),
])
def test_read_run_names_the_bad_metric_and_value(tmp_path, line, change, expected):
    lines = lines_for(75.0)
    lines[line] = {**lines[line], **change}
    folder = write_run(tmp_path, HOSTILE, spec_record(HOSTILE), lines)
    with pytest.raises(BrokenRun) as caught:
        read_run(folder)
    assert str(caught.value).startswith(expected)


def test_null_count_and_cut_lines_are_fine(tmp_path):
    lines = lines_for(75.0)
    lines[0] = {**lines[0], "test/CF1": None, "test/num_classes_scored": 312}      # a count may pass 100
    lines[2] = {**lines[2], "train_seconds": None}
    folder = write_run(tmp_path, HOSTILE, spec_record(HOSTILE), [*lines, '{"kind": "eval", "epo'])
    with pytest.warns(ReportWarning, match="line 4: malformed"):
        rows, bad = read_run(folder)
    assert bad == 1 and {r["selection"]: r["mAP"] for r in rows} == {"val": 75.0, "last": 75.0, "oracle": 75.0}
    assert rows[0]["train_seconds"] is None


RENAMED = re.compile(r"spec\.json (run_id '.*' differs from the folder name|names another run)")


def test_a_renamed_copy_of_a_run_is_broken(tmp_path):
    out = good_grid(tmp_path)
    shutil.copytree(out / GOOD, out / HOSTILE)
    assert RENAMED.match(broken_reason(out))


def test_a_run_id_that_is_not_the_folder_name_is_broken_also_for_a_failed_run(tmp_path):
    out = good_grid(tmp_path)
    folder = write_run(out, HOSTILE, {**spec_record(HOSTILE), "run_id": GOOD})
    expected = f"spec.json run_id '{GOOD[:36]}... differs from the folder name '{HOSTILE}'"
    with pytest.raises(BrokenRun, match=re.escape(expected)):
        read_spec(folder)
    (folder / "done").unlink()
    (folder / "error.txt").write_text("boom\n")
    summary = build_report(out)
    assert summary["failed"] == 0 and summary["unfinished"] == 1      # its spec is not trusted: no cell


def test_a_symlinked_error_txt_is_never_read(tmp_path):
    out = good_grid(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET + "\n")
    folder = write_run(out, HOSTILE, spec_record(HOSTILE, method="hst"), lines_for(75.0)[:1], done=False)
    (folder / "error.txt").symlink_to(secret)
    assert broken_reason(out) == "error.txt is a symbolic link (not followed)"
    assert SECRET.encode() not in every_file_bytes(out)


@pytest.mark.parametrize("name", ["spec.json", "metrics.jsonl", "done"])
def test_a_symlinked_run_file_is_never_followed(tmp_path, name):
    out = good_grid(tmp_path)
    folder = write_run(out, HOSTILE, spec_record(HOSTILE, method=SECRET), lines_for(75.0))
    target = tmp_path / f"elsewhere-{name}"
    (folder / name).rename(target)
    (folder / name).symlink_to(target)
    assert broken_reason(out) == f"{name} is a symbolic link (not followed)"
    assert SECRET.encode() not in every_file_bytes(out)


def test_a_symlinked_run_folder_is_never_followed(tmp_path):
    out = good_grid(tmp_path)
    elsewhere = write_run(tmp_path / "elsewhere", HOSTILE, spec_record(HOSTILE, method=SECRET), lines_for(75.0))
    (out / HOSTILE).symlink_to(elsewhere, target_is_directory=True)
    assert broken_reason(out) == "the run folder is a symbolic link (not followed)"
    assert SECRET.encode() not in every_file_bytes(out)


def test_a_fifo_run_file_is_broken_never_opened(tmp_path):
    out = good_grid(tmp_path)
    folder = write_run(out, HOSTILE, spec_record(HOSTILE, method="hst"), lines_for(75.0))
    (folder / "metrics.jsonl").unlink()
    os.mkfifo(folder / "metrics.jsonl")
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the report blocked on a FIFO"))
    signal.alarm(30)
    try:
        assert broken_reason(out) == "metrics.jsonl is not a regular file"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_folders_that_are_not_runs_are_not_listed(tmp_path):
    out = good_grid(tmp_path)
    notes = out / "notes"
    notes.mkdir()
    (notes / "spec.json").write_text("{}")
    (notes / "todo.txt").write_text("compare with the paper")
    (out / "cache" / "torch").mkdir(parents=True)
    (out / "x__y__z__p0.5__s0__0123456789").mkdir()               # named like a run, holds no run file
    summary = build_report(out)
    assert (summary["finished"], summary["unfinished"], summary["broken"], summary["failed"]) == (1, 0, 0, 0)
    page = (out / "index.html").read_text()
    assert "notes" not in page and "cache" not in page and "Runs not counted" not in page


def test_the_first_line_of_a_plain_error_txt_is_limited_data(tmp_path):
    out = good_grid(tmp_path)
    folder = write_run(out, HOSTILE, spec_record(HOSTILE, method="hst"), lines_for(75.0)[:1], done=False)
    (folder / "error.txt").write_text("<script>alert(1)</script> =cmd|' /C calc'!A0 " + "x" * 1000 + "\nsecond line\n")
    summary = build_report(out)
    assert summary["failed"] == 1 and summary["broken_runs"] == {}
    texts = outputs(out)
    note = next(line for line in texts["leaderboard.md"].splitlines() if line.startswith("† failed"))
    assert "&lt;script&gt;" in note and "<script" not in note and "second line" not in note
    assert len(note) < 450 and note.endswith("...")
    assert "<script>alert" not in texts["index.html"] and "&lt;script&gt;alert(1)" in texts["index.html"]
    assert "\\textless{}script\\textgreater{}" in texts["leaderboard.tex"]

