"""`prepare`: a dataset folder is checked in a few lines, with counts, no traceback and an exit
status that says whether it is ready."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from datasets.prepare import check_dataset, main
from datasets.readers import count_note
from tests.integration.test_real_datasets import write_coco, write_vg, write_voc

REPO = Path(__file__).resolve().parents[2]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name, expected", [
    ("voc2007", ["Annotations", "JPEGImages", "trainval.txt", "test.txt"]),
    ("coco2014", ["train2014", "val2014", "instances_train2014.json", "instances_val2014.json"]),
    ("nuswide", ["Concepts81.txt", "TrainImagelist.txt", "TestImagelist.txt", "TrainTestLabels", "Flickr"]),
    ("vg200", ["VG_100K", "train_list_500.txt", "test_list_500.txt", "vg_category_200_labels_index.json"]),
])
def test_empty_folder_lists_what_is_missing(tmp_path, capsys, name, expected):
    code, out, err = _run(capsys, "--dataset", name, "--data-root", str(tmp_path))
    assert code == 1 and "Traceback" not in out + err
    lines = out.strip().splitlines()
    assert len(lines) <= 9, out
    missing = [line for line in lines if "problem: missing" in line]
    assert len(missing) == len(expected) and all(any(e in line for line in missing) for e in expected)
    assert "expected layout" in out and lines[-1] == f"NOT READY: {len(expected)} problem(s) found"


def test_root_that_is_not_a_folder(tmp_path, capsys):
    code, out, _ = _run(capsys, "--dataset", "coco2014", "--data-root", str(tmp_path / "nope"))
    assert code == 1 and "is not a folder" in out


def test_ready_voc_folder_prints_counts(tmp_path, capsys):
    write_voc(tmp_path)
    code, out, _ = _run(capsys, "--dataset", "voc2007", "--data-root", str(tmp_path), "--preset", "clsl")
    assert code == 0, out
    assert "train: 6 images, 20 classes, 6 positives (per class 0..1), 0 without labels, 6 ignored entries" in out
    assert "test: 4 images, 20 classes, 4 positives" in out
    assert "images: 10 opened and verified, 0 missing, 0 unreadable" in out
    assert "note: images train/test = 6/4, not the standard 5,011/4,952 (VOC 2007)" in out
    assert count_note("images", (5011, 4952), (5011, 4952), "VOC 2007") == []
    assert out.strip().splitlines()[-1] == "OK: voc2007 is ready"


def test_ready_coco_folder_reports_what_the_preset_dropped(tmp_path, capsys):
    write_coco(tmp_path)
    code, out, _ = _run(capsys, "--dataset", "coco2014", "--data-root", str(tmp_path), "--preset", "clsl")
    assert code == 0, out
    assert "train: 3 images, 3 classes, 4 positives (per class 1..2), 0 without labels" in out
    assert "note: images without annotations: dropped: train 1, test 1" in out
    code, out, _ = _run(capsys, "--dataset", "coco2014", "--data-root", str(tmp_path))
    assert code == 0 and "train: 4 images, 3 classes, 4 positives (per class 1..2), 1 without labels" in out


def test_missing_and_unreadable_images_are_counted(tmp_path, capsys):
    write_voc(tmp_path)
    images = tmp_path / "VOCdevkit" / "VOC2007" / "JPEGImages"
    (images / "000001.jpg").unlink()
    (images / "000008.jpg").write_text("this is text, not a JPEG")
    (images / "000009.jpg").write_bytes((images / "000009.jpg").read_bytes()[:40])  # truncated JPEG
    code, out, err = _run(capsys, "--dataset", "voc2007", "--data-root", str(tmp_path))
    assert code == 1 and "Traceback" not in out + err
    assert "1 of 10 images missing, e.g." in out and "000001.jpg" in out
    assert "2 of 10 images unreadable, e.g." in out and "000008.jpg" in out and "000009.jpg" in out
    assert "images: 10 opened and verified, 1 missing, 2 unreadable" in out
    code, out, _ = _run(capsys, "--dataset", "voc2007", "--data-root", str(tmp_path), "--no-verify")
    assert code == 1 and "0 unreadable" in out and "1 missing" in out


def test_malformed_annotation_is_one_problem_line(tmp_path, capsys):
    write_coco(tmp_path)
    (tmp_path / "annotations" / "instances_val2014.json").write_text('{"images": [')
    code, out, err = _run(capsys, "--dataset", "coco2014", "--data-root", str(tmp_path))
    assert code == 1 and "Traceback" not in out + err
    assert "instances_val2014.json is not valid JSON" in out and len(out.strip().splitlines()) == 3


def test_vg_note_about_the_official_last_line_bug(tmp_path):
    write_vg(tmp_path, final_newline=False)
    report = check_dataset("vg200", tmp_path)
    assert report.ok
    assert any("P13" in line and "'12.jp'" in line for line in report.lines)


def test_unknown_dataset_or_preset_is_a_usage_error(tmp_path, capsys):
    code, out, err = _run(capsys, "--dataset", "imagenet", "--data-root", str(tmp_path))
    assert code == 2 and "prepare knows no dataset 'imagenet'" in err and out == ""
    code, out, err = _run(capsys, "--dataset", "vg200", "--data-root", str(tmp_path), "--preset", "sarb")
    assert code == 2 and "unknown --preset 'sarb'" in err and out == ""


def _prepare_command() -> list[str]:
    """``run_benchmark.py prepare`` once the CLI has the subcommand, else the module itself."""
    from benchmark.cli.main import main as cli

    if "prepare" in getattr(cli, "SUBCOMMANDS", ()):
        return [sys.executable, str(REPO / "run_benchmark.py"), "prepare"]
    return [sys.executable, "-m", "datasets.prepare"]


def test_command_line_has_no_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([*_prepare_command(), "--dataset", "vg200", "--data-root", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "missing folder" in proc.stdout and "VG_100K" in proc.stdout
