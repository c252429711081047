"""The published report: merging result folders, the static HTML page, and the page as a person sees
it in a real headless Chromium (skipped where no chromium binary is installed)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from benchmark.core.errors import UserError
from benchmark.core.run_folder import RunFolder
from reports.build import build_report
from tests.conftest import mask_sha, run_name, spec_json

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH; install it with "
                                   "`apt-get install -y chromium` (Debian) to run the browser test")


def cli(*args, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "run_benchmark.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def value(method: str, ratio: float, seed: int) -> float:
    return 50.0 + 20.0 * ratio + {"partial_bce": 0.0, "hst": 4.0, "ssgrl": 3.0}[method] + seed


def write_run(out: Path, method: str, ratio: float, seed: int, sha: str | None = None, test: float | None = None,
              done: bool = True, dataset: str = "synthetic", **spec) -> Path:
    """A finished run folder as a grid writes it (named like a run id, ``done`` holding the checksums)."""
    folder = out / run_name(method, ratio, seed, dataset=dataset)
    folder.mkdir(parents=True)
    v = value(method, ratio, seed) if test is None else test
    record = {"run_id": folder.name, "dataset": dataset, "protocol": "frozen", "method": method, "ratio": ratio,
              "seed": seed, "mask_protocol": "random", "profile": "smoke", "preset": None,
              "mask_sha256": sha or mask_sha(ratio, seed), "git_sha": "0123456789abcdef", "git_dirty": True,
              "trunk_baseline": "ssgrl" if method == "hst" else None, **spec}
    (folder / "spec.json").write_text(json.dumps(spec_json(**record)))
    lines = [{"kind": "eval", "epoch": 1, "val/mAP": 40.0, "test/mAP": v - 5},
             {"kind": "eval", "epoch": 2, "val/mAP": 60.0, "test/mAP": v},
             {"kind": "summary", "train_seconds": 7.5, "peak_memory_mb": 321.0}]
    if method == "hst":
        lines.insert(1, {"kind": "recovery", "epoch": 2, "precision": 80.0, "recall": 25.0})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if done:
        RunFolder(out, folder.name).finish()
    return folder


def grid(out: Path, seeds, methods=("partial_bce", "hst"), ratios=(0.1, 0.5)) -> Path:
    for method in methods:
        for ratio in ratios:
            for seed in seeds:
                write_run(out, method, ratio, seed)
    return out


class Tables(HTMLParser):
    """Tables of a page: id -> rows (the text of each cell) and the attributes of each cell."""

    def __init__(self, html: str):
        super().__init__()
        self.tables, self.attrs, self.images, self.elements = {}, {}, [], {}
        self._table = self._row = self._cell = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.elements[attrs["id"]] = (tag, attrs)
        if tag == "table":
            self._table = attrs.get("id")
            self.tables[self._table], self.attrs[self._table] = [], []
        elif tag == "tr" and self._table:
            self._row = ([], [])
        elif tag in ("td", "th") and self._row is not None:
            self._cell = [""]
            self._row[1].append(attrs)
        elif tag == "img":
            self.images.append(attrs)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row[0].append(" ".join(self._cell[0].split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._table].append(self._row[0])
            self.attrs[self._table].append(self._row[1])
            self._row = None
        elif tag == "table":
            self._table = None


# ---------------------------------------------------------------- merging


def test_merging_two_folders_gives_three_seed_cells(tmp_path):
    a, b, out = grid(tmp_path / "a", [0]), grid(tmp_path / "b", [1, 2]), tmp_path / "merged"
    result = cli("report", "--out", str(out), str(a), str(b))
    assert result.returncode == 0, result.stderr
    board = pd.read_csv(out / "leaderboard.csv")
    cells = board[(board["selection"] == "val") & (board["metric"] == "mAP") & (board["ratio"] != "avg")]
    assert len(cells) == 4 and set(cells["n_seeds"]) == {3}
    hst = cells[(cells["method"] == "hst") & (cells["ratio"].astype(float) == 0.5)].iloc[0]
    assert hst["mean"] == pytest.approx(value("hst", 0.5, 1))
    assert "seeds: 3" in (out / "leaderboard.md").read_text()
    assert (out / "index.html").is_file() and not list(out.glob("*__*"))   # the report only, no run copied


def test_identical_duplicates_count_once_and_name_both_folders(tmp_path):
    a, b = grid(tmp_path / "a", [0, 1]), grid(tmp_path / "b", [1, 2])     # seed 1 in both, same numbers
    found = build_report(tmp_path / "m", sources=[a, b])
    assert found["finished"] == 12
    runs = pd.read_csv(tmp_path / "m" / "runs.csv")
    assert len(runs) == 12 * 3
    twice = runs.loc[runs["seed"] == 1, "folder"].iloc[0]
    assert str(a) in twice and str(b) in twice


def test_same_run_with_different_metrics_is_an_error_naming_both(tmp_path):
    a, b = grid(tmp_path / "a", [0]), grid(tmp_path / "b", [1])
    write_run(b, "hst", 0.1, 0, test=12.0)                        # the run of a, other numbers
    result = cli("report", "--out", str(tmp_path / "m"), str(a), str(b))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert run_name("hst", 0.1, 0) in lines[0] and str(a) in lines[0] and str(b) in lines[0]
    assert not (tmp_path / "m").exists()                          # nothing written
    with pytest.raises(UserError, match="different metrics"):
        build_report(tmp_path / "m", sources=[a, b])


def test_mismatched_masks_across_folders_are_flagged_in_every_table(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_run(a, "partial_bce", 0.1, 0, sha="aaaaaaaa" * 8)
    write_run(b, "hst", 0.1, 0, sha="bbbbbbbb" * 8)
    out = tmp_path / "m"
    build_report(out, sources=[a, b])
    md, tex, page = ((out / n).read_text() for n in ("leaderboard.md", "leaderboard.tex", "index.html"))
    assert "WARNING: masks differ across methods at 10% seed 0" in md and "§" in md
    assert "WARNING: masks differ" in tex and "§" in tex
    assert "mask-mismatch" in page and "same mask per seed: NO" in page
    means = pd.read_csv(out / "leaderboard.csv")
    assert set(means.loc[means["ratio"] != "avg", "n_seeds"]) == {1}   # never averaged together


def test_unfinished_runs_are_listed_not_counted(tmp_path):
    a = grid(tmp_path / "a", [0])
    failed = write_run(a, "hst", 0.9, 0, done=False)
    (failed / "error.txt").write_text("NonFiniteLoss: loss term loss_bce is nan\n")
    write_run(a, "partial_bce", 0.9, 1, done=False)
    summary = build_report(a)
    assert summary["finished"] == 4 and summary["unfinished"] == 2 and summary["failed"] == 1
    page = Tables((a / "index.html").read_text())
    assert "failed†" in sum(page.tables["group-0-val"], [])
    text = (a / "index.html").read_text()
    assert "Runs not counted" in text and run_name("partial_bce", 0.9, 1) in text


# ---------------------------------------------------------------- the page without a browser


def test_page_cells_carry_their_provenance_and_the_trunk_difference(tmp_path):
    out = grid(tmp_path / "g", [0, 1, 2], methods=("partial_bce", "hst", "ssgrl"))
    build_report(out, method_order=["partial_bce", "hst", "ssgrl"])
    html = (out / "index.html").read_text()
    page = Tables(html)
    assert {"group-0-val", "group-0-last", "group-0-oracle", "group-0-diff"} <= set(page.tables)
    header, *rows = page.tables["group-0-val"]
    assert header == ["method", "10%", "50%", "Avg."]
    assert [r[0] for r in rows] == ["partial_bce", "hst", "ssgrl"]
    assert rows[1][1] == "57.0 ± 1.0"                                    # hst 10%: 50 + 2 + 4 + mean(0, 1, 2)
    title = page.attrs["group-0-val"][2][1]["title"]
    for words in ("seeds: 3 (0, 1, 2)", "mask sha256: " + mask_sha(0.1, 0)[:16], "same mask per seed: yes", "preset: none",
                  "git: 0123456789 (dirty tree)", "train time: 7.5 s", "peak memory: 321 MB",
                  str(out / run_name("hst", 0.1, 0))):
        assert words in title, (words, title)
    diff = page.tables["group-0-diff"]
    assert ["hst", "ssgrl (trunk)", "+1.0 ± 0.0", "+1.0 ± 0.0", "+1.0 ± 0.0"] in diff
    assert ["hst", "partial_bce", "+4.0 ± 0.0", "+4.0 ± 0.0", "+4.0 ± 0.0"] in diff
    md = (out / "leaderboard.md").read_text()
    assert "| hst      | ssgrl (trunk)   | +1.0 ± 0.0" in md
    for name in ("map_vs_ratio.png", "difference_heatmap.png", "cd_diagram.png", "cost.png", "recovery.png"):
        assert any(img["src"] == name for img in page.images), name
        assert (out / name).stat().st_size > 5000
    for name in ("leaderboard.md", "leaderboard.tex", "leaderboard.csv", "runs.csv", "statistics.md"):
        assert f'href="{name}"' in html
    assert not re.search(r'(src|href)="(https?:)?//', html)           # no network assets
    assert "optimistic" in html and 'name="selection"' in html


def test_trunk_table_only_with_the_trunk_rows(tmp_path):
    out = grid(tmp_path / "g", [0])
    build_report(out)
    assert "(trunk)" not in (out / "leaderboard.md").read_text()
    assert "(trunk)" not in (out / "index.html").read_text()


def test_reported_numbers_beside_our_row_and_privileged_marks(tmp_path):
    out = tmp_path / "voc"
    for seed in (0, 1):
        write_run(out, "hst", 0.1, seed, dataset="voc2007", privileged={"expected_num_pos": 2.0})
    build_report(out)
    page = Tables((out / "index.html").read_text())
    rows = page.tables["group-0-val"]
    assert rows[1][0] == "hst" and rows[1][1].endswith("‡")
    assert rows[2][0].startswith("↳ HST") and "(reported)" in rows[2][0]
    assert "privileged information" in (out / "index.html").read_text()


# ---------------------------------------------------------------- in a real browser


def browse(tmp: Path, url: str, *flags: str, javascript: bool = True) -> tuple[str, str]:
    """Chromium headless on ``url``: (stdout, stderr). Console messages land in stderr as CONSOLE lines.
    ``javascript=False`` blocks the page's scripts through the profile's content setting (the
    ``scriptEnabled`` switch would also stop ``--dump-dom``)."""
    profile = tmp / ("chromium-profile" if javascript else "chromium-profile-nojs")
    if not javascript:
        (profile / "Default").mkdir(parents=True, exist_ok=True)
        (profile / "Default" / "Preferences").write_text(
            json.dumps({"profile": {"default_content_setting_values": {"javascript": 2}}}))
    cmd = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=5000", *flags, url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout, out.stderr


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smoke") / "grid"
    result = cli("--profile", "smoke", "--methods", "partial_bce", "ssgrl", "--embeddings", "random",
                 "--ratios", "0.2,0.6", "--epochs", "1", "--jobs", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@needs_browser
def test_page_in_chromium_matches_runs_csv_sorts_and_loads_its_plots(smoke_report, tmp_path):
    url = (smoke_report / "index.html").resolve().as_uri()
    shot = tmp_path / "leaderboard.png"
    _, err = browse(tmp_path, url, "--window-size=1280,1800", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20000
    dom, err = browse(tmp_path, url, "--dump-dom")
    assert "CONSOLE" not in err, [line for line in err.splitlines() if "CONSOLE" in line]
    body = re.search(r"<body([^>]*)>", dom).group(1)
    images = Tables(dom).images
    assert len(images) >= 4
    assert 'data-images-broken=""' in body and f'data-images-loaded="{len(images)}"' in body
    assert "data-js-errors" not in body

    # What a person sees: the headline table's cells equal runs.csv aggregated over seeds.
    page = Tables(dom)
    header, *rows = page.tables["group-0-val"]
    runs = pd.read_csv(smoke_report / "runs.csv")
    means = runs[runs["selection"] == "val"].groupby(["variant", "ratio"])["mAP"].mean()
    assert header == ["method", "20%", "60%", "Avg."]
    assert sorted(r[0] for r in rows) == ["partial_bce", "ssgrl"]
    for method, *cells in rows:
        expected = [f"{means[(method, 0.2)]:.1f}", f"{means[(method, 0.6)]:.1f}",
                    f"{means[method].mean():.1f}"]
        assert cells == expected, (method, cells, expected)
    # With JavaScript the selection switch shows the headline only; the other rules are hidden.
    boards = re.findall(r'<div class="board[^"]*" data-rule="(\w+)"( hidden="")?', dom)
    assert [(rule, bool(hidden)) for rule, hidden in boards] == [("val", False), ("last", True), ("oracle", True)]

    # Clicking the 20% header (a scripted click) sorts the rows by that column, best first.
    dom, err = browse(tmp_path, url + "?click=group-0-val-c1", "--dump-dom")
    assert "CONSOLE" not in err
    sorted_rows = Tables(dom).tables["group-0-val"][1:]
    assert [r[0] for r in sorted_rows] == sorted((r[0] for r in rows), key=lambda m: -means[(m, 0.2)])
    assert 'aria-sort="descending"' in dom and 'data-sorted-by="1:desc"' in dom
    dom, _ = browse(tmp_path, url + "?sort=1&dir=asc", "--dump-dom")
    assert [r[0] for r in Tables(dom).tables["group-0-val"][1:]] == [r[0] for r in reversed(sorted_rows)]


@needs_browser
def test_page_works_without_javascript(smoke_report, tmp_path):
    dom, _ = browse(tmp_path, (smoke_report / "index.html").resolve().as_uri(), "--dump-dom", javascript=False)
    assert "data-selection" not in dom                                  # the script did not run
    boards = re.findall(r'<div class="board[^"]*" data-rule="(\w+)"( hidden="")?', dom)
    assert [(rule, bool(hidden)) for rule, hidden in boards] == [("val", False), ("last", False), ("oracle", False)]
    assert re.search(r'<form id="selection-switch" class="switch" hidden', dom)
    assert len(Tables(dom).tables["group-0-val"]) == 3
