"""VOC 2012 and CUB-200-2011 (attributes) on tiny fixture trees in their official on-disk formats:
the single-positive papers' splits and label conventions (SPML's ``format_pascal.py`` and
``format_cub.py``), ``prepare`` accepting them and refusing broken ones with one line naming the
file and the entry (also in a grid's preflight), the registry, ``--list`` and one engine run each."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmark.cli.main import main
from benchmark.core.errors import UserError
from benchmark.core.registry import discover, get_dataset
from datasets.cub import load_cub
from datasets.prepare import check_dataset
from datasets.voc2007 import VOC_CLASSES
from datasets.voc2012 import load_voc2012
from tests.integration.test_hostile_annotations import (
    SETTINGS,
    assert_loads_or_names,
    corrupt_bytes,
    corrupt_lines,
)
from tests.integration.test_real_datasets import write_jpeg

discover()
REPO = Path(__file__).resolve().parents[2]
GRID = ["--profile", "smoke", "--methods", "partial_bce", "--ratios", "0.5", "--epochs", "1", "--embeddings", "random"]


# ----------------------------------------------------------------------------- VOC 2012 fixture
VOC_TRAIN = ["2008_000002", "2008_000003", "2008_000007", "2009_000001", "2010_000005"]
VOC_VAL = ["2008_000008", "2008_000015", "2011_000003"]


def voc_value(image_id: str, j: int) -> int:
    """Image k (over train + val): class k%20 present (1); class (k+3)%20 difficult only (0), for k != 2
    (image 2 = 2008_000007 has only the difficult class, so SPML leaves it out); the rest -1."""
    k = (VOC_TRAIN + VOC_VAL).index(image_id)
    if j == k % 20 and k != 2:
        return 1
    return 0 if j == (k + 3) % 20 else -1


def write_voc2012(root: Path, size: int = 32) -> Path:
    """VOCdevkit/VOC2012 with the per-class lists ('%s %2d' lines, as the devkit writes them), listed
    in reverse order (the loader sorts), the split lists, JPEGImages and (unread) Annotations."""
    base = root / "VOCdevkit" / "VOC2012"
    main_dir = base / "ImageSets" / "Main"
    main_dir.mkdir(parents=True)
    (base / "Annotations").mkdir()
    for split, ids in (("train", VOC_TRAIN), ("val", VOC_VAL)):
        (main_dir / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for j, name in enumerate(VOC_CLASSES):
            (main_dir / f"{name}_{split}.txt").write_text("".join(f"{i} {voc_value(i, j):2d}\n" for i in ids[::-1]))
    for k, image_id in enumerate(VOC_TRAIN + VOC_VAL):
        write_jpeg(base / "JPEGImages" / f"{image_id}.jpg", k, size)
    return root


def voc_list(root: Path, name: str = "dog", split: str = "train") -> Path:
    return root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main" / f"{name}_{split}.txt"


# ----------------------------------------------------------------------------- CUB fixture
CUB_ATTRIBUTES = ["has_bill_shape::curved_(up_or_down)", "has_bill_shape::dagger", "has_wing_color::blue",
                  "has_wing_color::brown", "has_upperparts_color::iridescent", "has_breast_pattern::solid"]
CUB_IMAGES = ["001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg",
              "001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg",
              "002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg",
              "002.Laysan_Albatross/Laysan_Albatross_0003_1033.jpg",
              "003.Sooty_Albatross/Sooty_Albatross_0031_1066.jpg"]
CUB_TRAIN = [1, 0, 1, 1, 0]                     # is_training_image of images 1..5
CUB_PRESENT = np.array([[1, 0, 1, 0, 0, 1],      # is_present of image i, attribute j
                        [0, 1, 0, 0, 1, 0],
                        [0, 0, 0, 0, 0, 0],      # no attribute present: kept (as SPML)
                        [1, 1, 0, 1, 0, 0],
                        [0, 0, 1, 1, 1, 1]], dtype=np.uint8)


def cub_label_lines() -> list[str]:
    """One line per (image, attribute), image-major; certainty 1 (not visible) on a present attribute
    (still a positive: SPML reads is_present only); line 8 has a sixth field, line 9 only four."""
    lines = []
    for i in range(5):
        for j in range(6):
            certainty = 1 if (i, j) == (3, 3) else 4 - (i + j) % 3
            lines.append(f"{i + 1} {j + 1} {CUB_PRESENT[i, j]} {certainty} {2.5 + i + j / 10:.3f}")
    lines[7] += " 0"
    lines[8] = lines[8].rsplit(" ", 1)[0]
    return lines


def write_cub(root: Path, size: int = 32) -> Path:
    """As CUB_200_2011.tgz unpacks: attributes.txt beside CUB_200_2011/ (images.txt, the split,
    attributes/image_attribute_labels.txt and certainties.txt, images/<class>/<name>.jpg)."""
    base = root / "CUB_200_2011"
    (base / "attributes").mkdir(parents=True)
    (root / "attributes.txt").write_text("".join(f"{j + 1} {n}\n" for j, n in enumerate(CUB_ATTRIBUTES)))
    (base / "images.txt").write_text("".join(f"{i + 1} {p}\n" for i, p in enumerate(CUB_IMAGES)))
    (base / "train_test_split.txt").write_text("".join(f"{i + 1} {t}\n" for i, t in enumerate(CUB_TRAIN)))
    (base / "attributes" / "certainties.txt").write_text("1 not visible\n2 guessing\n3 probably\n4 definitely\n")
    (base / "attributes" / "image_attribute_labels.txt").write_text("\n".join(cub_label_lines()) + "\n")
    for k, path in enumerate(CUB_IMAGES):
        write_jpeg(base / "images" / path, k, size)
    return root


def cub_labels_file(root: Path) -> Path:
    return root / "CUB_200_2011" / "attributes" / "image_attribute_labels.txt"


def edit_line(path: Path, number: int, text: str) -> Path:
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return path


def drop_line(path: Path, number: int) -> Path:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:number - 1] + lines[number:]) + "\n")
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- loaders
def test_voc2012_spml_split_labels_order_and_difficult(tmp_path):
    root = write_voc2012(tmp_path)
    splits = load_voc2012(root)
    assert splits.info["preset"] == "hcp" and splits.info["test_split"] == "val"
    kept = [i for i in VOC_TRAIN if i != "2008_000007"]           # difficult-only image left out
    assert splits.train.image_ids == sorted(kept) and splits.test.image_ids == VOC_VAL
    expected = np.array([[voc_value(i, j) == 1 for j in range(20)] for i in kept], dtype=np.uint8)
    assert (splits.train.labels == expected).all() and splits.train.labels.sum() == 4
    assert splits.test.labels.argmax(axis=1).tolist() == [5, 6, 7] and splits.test.ignore is None
    assert splits.train.image_paths[0] == root / "VOCdevkit" / "VOC2012" / "JPEGImages" / "2008_000002.jpg"
    notes = " | ".join(splits.info["notes"])
    assert "label 0): train 4, test 3 (negative)" in notes and "left out (as SPML): train 1, test 0" in notes
    assert "listed images train/test = 5/3, not the standard 5,717/5,823" in notes
    ignored = load_voc2012(root / "VOCdevkit" / "VOC2012", preset="clsl")     # root = the VOC2012 folder
    assert ignored.train.ignore.sum() == 4 and ignored.test.ignore[:, [8, 9, 10]].diagonal().all()
    assert (ignored.train.labels == splits.train.labels).all()


def test_cub_attribute_labels_split_and_extra_fields(tmp_path):
    root = write_cub(tmp_path)
    splits = load_cub(root)
    assert splits.class_names == CUB_ATTRIBUTES and splits.info["test_split"] == "is_training_image = 0"
    assert splits.train.image_ids == [CUB_IMAGES[0], CUB_IMAGES[2], CUB_IMAGES[3]]
    assert (splits.train.labels == CUB_PRESENT[[0, 2, 3]]).all() and (splits.test.labels == CUB_PRESENT[[1, 4]]).all()
    assert splits.test.image_paths[1] == root / "CUB_200_2011" / "images" / CUB_IMAGES[4]
    notes = " | ".join(splits.info["notes"])
    assert "without a present attribute: train 1, test 0 (kept, as SPML)" in notes
    assert "2 line(s) of" in notes and "6 attributes, not the standard 312" in notes
    assert "images train/test = 3/2, not the standard 5,994/5,794" in notes
    nested = tmp_path / "spml"                                   # SPML's data/cub/CUB_200_2011/CUB_200_2011
    (root / "CUB_200_2011").rename(tmp_path / "moved")
    (nested / "CUB_200_2011").mkdir(parents=True)
    (tmp_path / "moved").rename(nested / "CUB_200_2011" / "CUB_200_2011")
    (root / "attributes.txt").rename(nested / "CUB_200_2011" / "CUB_200_2011" / "attributes" / "attributes.txt")
    again = load_cub(nested)
    assert again.train.fingerprint() == splits.train.fingerprint()


def test_cub_line_by_line_reader_gives_the_same_labels(tmp_path):
    root = write_cub(tmp_path)
    fast = load_cub(root)
    edit_line(cub_labels_file(root), 3, "1\t3  1 3 2.700")           # a tab: not plain, read line by line
    slow = load_cub(root)
    assert (slow.train.labels == fast.train.labels).all() and (slow.test.labels == fast.test.labels).all()


# ----------------------------------------------------------------------------- prepare
def test_prepare_accepts_both_fixtures(tmp_path, capsys):
    for name, writer in (("voc2012", write_voc2012), ("cub", write_cub)):
        root = writer(tmp_path / name)
        assert main(["prepare", "--dataset", name, "--data-root", str(root)]) == 0
        out = capsys.readouterr().out
        assert out.strip().splitlines()[-1] == f"OK: {name} is ready", out
    assert "train: 3 images, 6 classes, 6 positives (per class 0..2), 1 without labels" in out
    assert "warning: 1 class(es) without a positive in train: has_upperparts_color::iridescent" in out
    assert "images: 5 opened and verified, 0 missing, 0 unreadable" in out
    report = check_dataset("voc2012", tmp_path / "voc2012", preset="clsl")
    assert report.ok and any("train: 4 images, 20 classes, 4 positives" in line and "4 ignored" in line
                             for line in report.lines)


def test_prepare_lists_what_is_missing(tmp_path, capsys):
    assert main(["prepare", "--dataset", "cub", "--data-root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    missing = [line for line in out.splitlines() if "problem: missing" in line]
    assert len(missing) == 5 and "attributes.txt" in missing[-1] and "expected layout" in out
    assert main(["prepare", "--dataset", "voc2012", "--data-root", str(tmp_path)]) == 1
    assert len([line for line in capsys.readouterr().out.splitlines() if "problem: missing" in line]) == 2


# Each case: (id, dataset, writer, break(root) -> the file the line must name, a word the line must contain).
BROKEN = [
    ("voc-missing-class-list", "voc2012", write_voc2012, lambda r: _unlink(voc_list(r, "sofa", "val")), "missing file"),
    ("voc-bad-label", "voc2012", write_voc2012, lambda r: edit_line(voc_list(r), 2, "2009_000001  2"),
     "has label '2'"),
    ("voc-label-missing", "voc2012", write_voc2012, lambda r: edit_line(voc_list(r), 2, "2009_000001"),
     "has label 'nothing'"),
    ("voc-duplicate-id", "voc2012", write_voc2012, lambda r: edit_line(voc_list(r), 3, "2010_000005 -1"),
     "repeats image id '2010_000005'"),
    ("voc-lists-disagree", "voc2012", write_voc2012, lambda r: edit_line(voc_list(r), 3, "2012_000001 -1"),
     "lists image '2012_000001', which"),
    ("voc-image-missing", "voc2012", write_voc2012, lambda r: drop_line(voc_list(r, "aeroplane"), 5),
     "does not list image '2008_000002', which"),
    ("voc-train-val-overlap", "voc2012", write_voc2012, lambda r: _voc_overlap(r), "lists too"),
    ("voc-id-is-a-path", "voc2012", write_voc2012, lambda r: edit_line(voc_list(r), 1, "../../x -1"),
     "not an image id"),
    ("cub-missing-split", "cub", write_cub, lambda r: _unlink(r / "CUB_200_2011" / "train_test_split.txt"),
     "missing file"),
    ("cub-bad-label-line", "cub", write_cub, lambda r: edit_line(cub_labels_file(r), 4, "1 4 x 3 2.8"), "line 4 is"),
    ("cub-short-label-line", "cub", write_cub, lambda r: edit_line(cub_labels_file(r), 4, "1 4 0"), "line 4 is"),
    ("cub-is-present-2", "cub", write_cub, lambda r: edit_line(cub_labels_file(r), 5, "1 5 2 3 2.9"),
     "line 5 has is_present 2"),
    ("cub-unknown-attribute", "cub", write_cub, lambda r: edit_line(cub_labels_file(r), 6, "1 99 0 3 3.0"),
     "line 6 names attribute id 99"),
    ("cub-unknown-image", "cub", write_cub, lambda r: edit_line(cub_labels_file(r), 30, "77 6 0 3 3.0"),
     "line 30 names image id 77"),
    ("cub-repeated-pair", "cub", write_cub, lambda r: edit_line(cub_labels_file(r), 7, "1 2 1 3 3.1"),
     "line 7 repeats image 1 attribute 2 (first on line 2)"),
    ("cub-duplicate-image-id", "cub", write_cub, lambda r: edit_line(r / "CUB_200_2011" / "images.txt", 4,
                                                                      "3 " + CUB_IMAGES[3]), "line 4 repeats id 3"),
    ("cub-image-path-climbs-out", "cub", write_cub, lambda r: edit_line(r / "CUB_200_2011" / "images.txt", 2,
                                                                         "2 ../../etc/passwd"), "climbs out"),
    ("cub-split-not-0-1", "cub", write_cub, lambda r: edit_line(r / "CUB_200_2011" / "train_test_split.txt", 2,
                                                                 "2 yes"), "is not 0 or 1"),
    ("cub-split-unknown-image", "cub", write_cub, lambda r: edit_line(r / "CUB_200_2011" / "train_test_split.txt",
                                                                       5, "9 0"), "names image id 9"),
    ("cub-attribute-name-not-printable", "cub", write_cub, lambda r: edit_line(r / "attributes.txt", 3,
                                                                                "3 has_wing\u200b_color::blue"),
     "not printable"),
    ("cub-attribute-name-twice", "cub", write_cub, lambda r: edit_line(r / "attributes.txt", 3,
                                                                        "3 " + CUB_ATTRIBUTES[0]), "repeats the name"),
    ("cub-empty-labels", "cub", write_cub, lambda r: write(cub_labels_file(r), "\n"), "is empty"),
]


def _unlink(path: Path) -> Path:
    path.unlink()
    return path


def _voc_overlap(root: Path) -> Path:
    """val.txt and every val class list also list train image 2008_000002 (the lists agree, the splits overlap)."""
    for name in VOC_CLASSES:
        with voc_list(root, name, "val").open("a") as fh:
            fh.write("2008_000002  1\n")
    val = voc_list(root, name, "val").with_name("val.txt")
    val.write_text(val.read_text() + "2008_000002\n")
    return val


def test_label_pair_missing_is_named(tmp_path):
    root = write_cub(tmp_path)
    path = cub_labels_file(root)
    path.write_text("\n".join(cub_label_lines()[:-1]) + "\n")
    with pytest.raises(UserError, match=r"has no line for image id 5 and attribute id 6"):
        load_cub(root)


@pytest.mark.parametrize("dataset, writer, breaker, word", [pytest.param(*c[1:], id=c[0]) for c in BROKEN])
def test_broken_file_is_one_line_naming_it(dataset, writer, breaker, word, tmp_path, capsys):
    root = writer(tmp_path / dataset)
    target = breaker(root)
    code = main(["prepare", "--dataset", dataset, "--data-root", str(root), "--no-verify"])
    out, err = capsys.readouterr()
    problems = [line[len("  problem: "):] for line in out.splitlines() if line.startswith("  problem: ")]
    assert code == 1 and err == "" and "Traceback" not in out, out + err
    assert len(problems) == 1 and str(target) in problems[0] and word in problems[0], out
    code = main(["--dataset", dataset, "--data-root", str(root), *GRID, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0][len("error: "):].startswith(problems[0]), err
    assert not (tmp_path / "out").exists()


@SETTINGS
@given(data=st.data())
def test_corrupted_file_loads_or_names_the_file(tmp_path, data):
    """Property: a randomly corrupted list or label file loads as well-formed labels, or is one
    UserError line naming that file (both readers of the CUB labels file included)."""
    dataset = data.draw(st.sampled_from(["voc2012", "cub"]))
    root = tmp_path / dataset
    if not root.exists():
        (write_voc2012 if dataset == "voc2012" else write_cub)(root)
    if dataset == "voc2012":
        files = [voc_list(root, "aeroplane"), voc_list(root, "dog", "val"), voc_list(root).with_name("train.txt")]
    else:
        base = root / "CUB_200_2011"
        files = [cub_labels_file(root), base / "images.txt", base / "train_test_split.txt", root / "attributes.txt"]
    originals = {path: path.read_bytes() for path in files}
    target = data.draw(st.sampled_from(files))
    try:
        if data.draw(st.booleans()):
            target.write_text(data.draw(corrupt_lines(originals[target].decode())))
        else:
            target.write_bytes(data.draw(corrupt_bytes(originals[target])))
        assert_loads_or_names(dataset, root, target)
    finally:
        for path, content in originals.items():
            path.write_bytes(content)


# ----------------------------------------------------------------------------- registry, CLI, engine
def test_registry_list_and_data_root(tmp_path):
    for name in ("voc2012", "cub"):
        with pytest.raises(UserError, match=f"dataset {name} needs --data-root PATH"):
            get_dataset(name)(size="smoke", root=None, preset=None)
    assert get_dataset("cub")(root=str(write_cub(tmp_path / "cub"))).train.num_classes == 6
    proc = subprocess.run([sys.executable, str(REPO / "run_benchmark.py"), "--list"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
    assert proc.returncode == 0, proc.stderr
    datasets = proc.stdout[proc.stdout.index("datasets:"):proc.stdout.index("profiles:")]
    assert "\n  voc2012 " in datasets and "\n  cub " in datasets


def test_single_positive_run_through_the_engine(tmp_path):
    """CUB (an image without a present attribute: no observed label) under SPML's protocol, one epoch."""
    from benchmark.engine.lifecycle import run_one
    from tests.conftest import smoke_spec

    root = write_cub(tmp_path / "cub", size=48)
    spec = smoke_spec(dataset="cub", data_root=str(root), preset="hcp", protocol="frozen", epochs=1, batch_size=4,
                      mask_protocol="single_positive", ratio=1.0)
    folder = run_one(spec, tmp_path / "out")
    assert folder.done
    record = json.loads((folder.path / "spec.json").read_text())
    assert (record["dataset"], record["mask_protocol"], record["num_test"]) == ("cub", "single_positive", 2)
    metrics = folder.records("eval")[-1]
    assert math.isfinite(metrics["test/mAP"]) and metrics["test/num_classes_scored"] == 5   # 5 of 6: a test positive


# ----------------------------------------------------------------------------- published numbers
def test_single_positive_reported_numbers_sit_beside_single_positive_tables_only():
    import pandas as pd

    from reports.reported import beside_leaderboard, load_reported, reported_table

    frame = load_reported()
    single = frame[frame["proportion"] == "single_positive"]
    assert len(single) == 43 and set(single["metric"]) == {"mAP"} and set(single["evidence"]) <= {"2nd", "readme"}
    assert single["note"].str.startswith("single positive").all()
    voc = reported_table("voc2012")
    assert list(voc.columns[:1]) == ["single positive"] and voc.loc["EM loss + APL", "single positive"] == 89.19
    assert reported_table("cub").loc["SCPNet", "single positive"] == 25.7 and "DualCoOp (VLPL README)" not in \
        reported_table("cub").index
    assert reported_table("nuswide").loc["GR Loss (AEVLP table)", "method_key"] == "gr_loss"
    ours = pd.DataFrame({"single positive": ["70.1"]}, index=pd.Index(["em"], name="method"))
    merged = beside_leaderboard(ours, "coco2014")
    assert list(merged.columns) == ["single positive"] and merged.loc["EM loss [reported]"].tolist() == ["70.7"]
    assert "HST [reported]" not in merged.index                   # the random-protocol numbers stay out
    random = beside_leaderboard(pd.DataFrame({"10%": ["80.0"]}, index=pd.Index(["an"], name="method")), "coco2014")
    assert "single positive" not in random.columns and "EM loss [reported]" not in random.index
    from reports.html import _reported_rows

    assert _reported_rows("coco2014", ["an", "hst"], ["10%", "Avg."]).keys() == {"hst"}
    assert _reported_rows("coco2014", ["an", "hst"], ["single positive"])["an"]["cells"] == ["64.9"]
