"""Real-dataset loaders on tiny fixture datasets written here in each official on-disk format:
labels, class order, image order, splits, ignore marks, presets, malformed input, and one smoke run
per dataset through the engine."""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.core.errors import UserError
from datasets.coco2014 import load_coco2014
from datasets.nuswide import load_nuswide
from datasets.presets import DEFAULT_PRESET, PRESETS, preset_options, resolve_preset
from datasets.vg200 import load_vg200
from datasets.voc2007 import VOC_CLASSES, load_voc2007


# ----------------------------------------------------------------------------- fixture writers
def write_jpeg(path: Path, index: int, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = ((37 * index) % 256, (91 * index) % 256, (53 * index) % 256)
    Image.new("RGB", (size, size), colour).save(path, quality=90)


def voc_objects(i: int) -> list[tuple[str, int]]:
    """Image i: class i%20 (non-difficult + one difficult instance), class (i+5)%20 difficult only."""
    return [(VOC_CLASSES[i % 20], 0), (VOC_CLASSES[i % 20], 1), (VOC_CLASSES[(i + 5) % 20], 1)]


def voc_xml(objects: list[tuple[str, int]]) -> str:
    body = "".join(f"<object><name>{n}</name><pose>Left</pose><difficult>{d}</difficult></object>"
                   for n, d in objects)
    return f"<annotation><folder>VOC2007</folder>{body}</annotation>"


def write_voc(root: Path, n_train: int = 6, n_test: int = 4, size: int = 32) -> Path:
    """A VOCdevkit/VOC2007 tree; ids 000001.. (trainval first), listed in reverse id order."""
    base = root / "VOCdevkit" / "VOC2007"
    (base / "ImageSets" / "Main").mkdir(parents=True)
    (base / "Annotations").mkdir()
    ids = [f"{i + 1:06d}" for i in range(n_train + n_test)]
    for i, image_id in enumerate(ids):
        (base / "Annotations" / f"{image_id}.xml").write_text(voc_xml(voc_objects(i)))
        write_jpeg(base / "JPEGImages" / f"{image_id}.jpg", i, size)
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids[:n_train][::-1]) + "\n")
    (base / "ImageSets" / "Main" / "test.txt").write_text("\n".join(ids[n_train:]) + "\n")
    return root


def write_coco(root: Path) -> Path:
    """Categories listed out of id order, images out of id order, image 7 without annotations."""
    cats = [{"id": 3, "name": "cat"}, {"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}]
    plan = {"train": {9: [1], 2: [3, 2], 7: [], 4: [2]}, "test": {5: [1, 3], 3: []}}
    for split, folder in (("train", "train2014"), ("test", "val2014")):
        images, anns = [], []
        for image_id, cat_ids in plan[split].items():
            name = f"COCO_{folder}_{image_id:012d}.jpg"
            images.append({"id": image_id, "file_name": name, "width": 32, "height": 32})
            write_jpeg(root / folder / name, image_id)
            anns += [{"id": 100 * image_id + k, "image_id": image_id, "category_id": c, "bbox": [0, 0, 4, 4],
                      "area": 16, "iscrowd": 0} for k, c in enumerate(cat_ids)]
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{folder}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


NUS_CONCEPTS = ["sky", "water", "dog"]
NUS_TRAIN = {"actor\\0001_11.jpg": [1, 0, 0], "beach\\0002_12.jpg": [1, 1, 0], "dog\\0003_13.jpg": [0, 0, 0],
             "dog\\0004_14.jpg": [0, 0, 1]}
NUS_TEST = {"sea\\0005_15.jpg": [0, 1, 1], "sky\\0006_16.jpg": [1, 0, 0]}


def write_nus_official(root: Path) -> Path:
    (root / "ImageList").mkdir(parents=True)
    labels_dir = root / "Groundtruth" / "TrainTestLabels"
    labels_dir.mkdir(parents=True)
    (root / "Concepts81.txt").write_text("\n".join(NUS_CONCEPTS) + "\n")
    for split, table in (("Train", NUS_TRAIN), ("Test", NUS_TEST)):
        (root / "ImageList" / f"{split}Imagelist.txt").write_text("\r\n".join(table) + "\r\n")
        for j, concept in enumerate(NUS_CONCEPTS):
            (labels_dir / f"Labels_{concept}_{split}.txt").write_text("".join(f"{r[j]}\n" for r in table.values()))
        for k, name in enumerate(table):
            write_jpeg(root / "Flickr" / name.replace("\\", "/"), k)
    return root


def write_nus_lists(root: Path) -> Path:
    """CLSL lists: one absolute path from another machine (re-rooted), one relative path."""
    write_jpeg(root / "Flickr" / "actor" / "a.jpg", 1)
    write_jpeg(root / "Flickr" / "beach" / "b.jpg", 2)
    write_jpeg(root / "Flickr" / "sea" / "c.jpg", 3)
    (root / "label.txt").write_text("\n".join(NUS_CONCEPTS) + "\n")
    (root / "train.txt").write_text("/elsewhere/NUS-WIDE/Flickr/actor/a.jpg\tsky\n"
                                    "Flickr/beach/b.jpg\twater,sky\n"
                                    "Flickr/beach/b.jpg\t\n")
    (root / "test.txt").write_text("Flickr/sea/c.jpg\tdog,water\n")
    return root


def write_vg(root: Path, names: list[str] | None = None, final_newline: bool = True) -> Path:
    index = {"10.jpg": [0, 199], "11.jpg": [5], "12.jpg": [], "20.jpg": [3], "21.jpg": [7, 3]}
    for k, name in enumerate(index):
        write_jpeg(root / "VG_100K" / name, k)
    (root / "vg_category_200_labels_index.json").write_text(json.dumps(index))
    tail = "\n" if final_newline else ""
    (root / "train_list_500.txt").write_text("11.jpg\n10.jpg\n12.jpg" + tail)
    (root / "test_list_500.txt").write_text("21.jpg\n20.jpg\n")
    if names is not None:
        (root / "vg_category_200_names.txt").write_text("\n".join(names) + "\n")
    return root


# ----------------------------------------------------------------------------- presets
def test_presets_set_each_code_base_choices():
    assert preset_options("voc2007", "hcp")["difficult"] == "negative"
    assert preset_options("voc2007", "clsl")["difficult"] == "ignore"
    assert preset_options("coco2014", "hcp")["keep_empty"] is True
    assert preset_options("coco2014", "clsl")["keep_empty"] is False
    assert preset_options("nuswide", "clsl")["image_size"] == 224
    assert preset_options("coco2014", "clsl")["image_size"] == 448
    assert all(preset_options(d, p)["drop_last_test"] is False for d in DEFAULT_PRESET for p in PRESETS)
    assert [resolve_preset(d, None) for d in ("voc2007", "coco2014", "vg200", "nuswide")] == \
        ["hcp", "hcp", "hcp", "clsl"]
    with pytest.raises(UserError, match="unknown --preset 'sst'"):
        preset_options("voc2007", "sst")


# ----------------------------------------------------------------------------- VOC 2007
def _voc_expected(i: int) -> tuple[np.ndarray, np.ndarray]:
    labels, difficult_only = np.zeros(20, np.uint8), np.zeros(20, bool)
    labels[i % 20] = 1
    difficult_only[(i + 5) % 20] = True
    return labels, difficult_only


def test_voc_labels_order_and_difficult_choices(tmp_path):
    write_voc(tmp_path)
    hcp = load_voc2007(tmp_path, preset="hcp")
    assert hcp.class_names == list(VOC_CLASSES) and hcp.info["preset"] == "hcp"
    assert hcp.train.image_ids == ["000006", "000005", "000004", "000003", "000002", "000001"]
    assert hcp.test.image_ids == ["000007", "000008", "000009", "000010"]
    for labelset, offset in ((hcp.train, None), (hcp.test, 6)):
        for row, image_id in enumerate(labelset.image_ids):
            labels, _ = _voc_expected(int(image_id) - 1)
            np.testing.assert_array_equal(labelset.labels[row], labels)
    assert hcp.train.ignore is None and hcp.test.ignore is None
    clsl = load_voc2007(tmp_path / "VOCdevkit" / "VOC2007", preset="clsl")  # root = the VOC2007 folder
    np.testing.assert_array_equal(clsl.test.labels, hcp.test.labels)
    for row, image_id in enumerate(clsl.test.image_ids):
        np.testing.assert_array_equal(clsl.test.ignore[row], _voc_expected(int(image_id) - 1)[1])
    assert clsl.test.info["difficult_only_entries"] == 4 and int(clsl.train.ignore.sum()) == 6
    assert load_voc2007(tmp_path, preset="clsl", difficult="negative").test.ignore is None


def test_voc_malformed_inputs_name_the_file(tmp_path):
    write_voc(tmp_path)
    base = tmp_path / "VOCdevkit" / "VOC2007"
    (base / "JPEGImages" / "000003.jpg").write_bytes(b"not a jpeg at all")
    load_voc2007(tmp_path)  # existence is all that is checked by default
    with pytest.raises(UserError, match=r"1 of 6 images .* not readable images, first: .*000003\.jpg"):
        load_voc2007(tmp_path, check_images=True)
    (base / "JPEGImages" / "000002.jpg").unlink()
    with pytest.raises(UserError, match=r"1 of 6 images listed in .*trainval\.txt are missing, first: .*000002\.jpg"):
        load_voc2007(tmp_path)
    (base / "Annotations" / "000009.xml").write_text("<annotation><object><name>dog</na")
    with pytest.raises(UserError, match=r"000009\.xml is not well-formed XML"):
        load_voc2007(tmp_path, check_files=False)
    (base / "Annotations" / "000009.xml").write_text(voc_xml([("unicorn", 0)]))
    with pytest.raises(UserError, match=r"000009\.xml names unknown class 'unicorn'"):
        load_voc2007(tmp_path, check_files=False)
    with pytest.raises(UserError, match=r"missing folder .*Annotations.*expected layout"):
        load_voc2007(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- MS-COCO 2014
def test_coco_presets_keep_or_drop_empty_images_and_order(tmp_path):
    write_coco(tmp_path)
    hcp = load_coco2014(tmp_path, preset="hcp")
    assert hcp.class_names == ["person", "bicycle", "cat"]  # sorted by category id
    assert hcp.train.image_ids == [9, 2, 7, 4]              # JSON order
    np.testing.assert_array_equal(hcp.train.labels, [[1, 0, 0], [0, 1, 1], [0, 0, 0], [0, 1, 0]])
    assert hcp.train.info["dropped_empty"] == 0 and len(hcp.test) == 2
    clsl = load_coco2014(tmp_path, preset="clsl")
    assert clsl.train.image_ids == [2, 4, 9] and clsl.test.image_ids == [5]   # sorted by id, empty dropped
    np.testing.assert_array_equal(clsl.train.labels, [[0, 1, 1], [0, 1, 0], [1, 0, 0]])
    assert (clsl.train.info["dropped_empty"], clsl.test.info["dropped_empty"]) == (1, 1)
    assert clsl.train.image_paths[0].name == "COCO_train2014_000000000002.jpg"


def test_coco_unknown_category_and_missing_image(tmp_path):
    write_coco(tmp_path)
    ann = tmp_path / "annotations" / "instances_val2014.json"
    data = json.loads(ann.read_text())
    data["annotations"][0]["category_id"] = 99
    ann.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"instances_val2014\.json: annotation \d+ has unknown category id 99"):
        load_coco2014(tmp_path)
    data = json.loads(ann.read_text())
    data["categories"].append({"id": 4, "name": "dog"})
    data["annotations"][0]["category_id"] = 4
    ann.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"instances_val2014\.json has other categories than .*instances_train2014"):
        load_coco2014(tmp_path)
    write_coco(tmp_path)  # restore
    (tmp_path / "train2014" / "COCO_train2014_000000000004.jpg").unlink()
    with pytest.raises(UserError, match=r"1 of 4 images .*instances_train2014\.json are missing"):
        load_coco2014(tmp_path)


# ----------------------------------------------------------------------------- NUS-WIDE
def test_nuswide_official_layout(tmp_path):
    write_nus_official(tmp_path)
    splits = load_nuswide(tmp_path)
    assert splits.info["layout"] == "official" and splits.info["preset"] == "clsl"
    assert splits.class_names == NUS_CONCEPTS
    assert splits.train.image_ids == ["actor/0001_11.jpg", "beach/0002_12.jpg", "dog/0004_14.jpg"]
    np.testing.assert_array_equal(splits.train.labels, [[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    assert splits.train.info["dropped_unlabeled"] == 1 and splits.test.info["dropped_unlabeled"] == 0
    assert splits.train.image_paths[0] == tmp_path / "Flickr" / "actor" / "0001_11.jpg"
    assert len(load_nuswide(tmp_path, drop_unlabeled=False).train) == 4


def test_nuswide_clsl_lists_layout(tmp_path):
    write_nus_lists(tmp_path)
    splits = load_nuswide(tmp_path)
    assert splits.info["layout"] == "lists"
    assert splits.train.image_paths == [tmp_path / "Flickr" / "actor" / "a.jpg", tmp_path / "Flickr" / "beach" / "b.jpg"]
    np.testing.assert_array_equal(splits.train.labels, [[1, 0, 0], [1, 1, 0]])
    np.testing.assert_array_equal(splits.test.labels, [[0, 1, 1]])
    assert splits.train.info["dropped_unlabeled"] == 1


def test_nuswide_malformed_inputs(tmp_path):
    write_nus_official(tmp_path / "a")
    labels = tmp_path / "a" / "Groundtruth" / "TrainTestLabels" / "Labels_water_Test.txt"
    labels.write_text("0\n")
    with pytest.raises(UserError, match=r"Labels_water_Test\.txt has 1 lines but its image list has 2"):
        load_nuswide(tmp_path / "a")
    labels.write_text("0\n2\n")
    with pytest.raises(UserError, match=r"Labels_water_Test\.txt holds value '2'"):
        load_nuswide(tmp_path / "a")
    write_nus_lists(tmp_path / "b")
    (tmp_path / "b" / "test.txt").write_text("Flickr/sea/c.jpg\tcat\n")
    with pytest.raises(UserError, match=r"test\.txt line 1 names class 'cat'"):
        load_nuswide(tmp_path / "b")
    (tmp_path / "b" / "test.txt").write_text("Flickr/sea/c.jpg dog\n")
    with pytest.raises(UserError, match=r"test\.txt line 1 has no TAB"):
        load_nuswide(tmp_path / "b")


# ----------------------------------------------------------------------------- VG-200
def test_vg200_lists_labels_and_last_line_without_newline(tmp_path):
    write_vg(tmp_path, final_newline=False)
    splits = load_vg200(tmp_path)
    assert splits.class_names[0] == "class_000" and len(splits.class_names) == 200
    assert splits.train.image_ids == ["11.jpg", "10.jpg", "12.jpg"]  # P13: the last name read whole
    assert np.flatnonzero(splits.train.labels[1]).tolist() == [0, 199]
    assert splits.train.labels[2].sum() == 0  # empty index list kept (HCP)
    assert np.flatnonzero(splits.test.labels[0]).tolist() == [3, 7]
    assert any("'12.jp'" in note and "P13" in note for note in splits.info["notes"])


def test_vg200_class_names_file_and_malformed_index(tmp_path):
    names = [f"obj{j}" for j in range(200)]
    write_vg(tmp_path, names=names)
    assert load_vg200(tmp_path).class_names == names
    index = json.loads((tmp_path / "vg_category_200_labels_index.json").read_text())
    index["11.jpg"] = [200]
    (tmp_path / "vg_category_200_labels_index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match=r"entry '11\.jpg' is \[200\]; expected class indices 0\.\.199"):
        load_vg200(tmp_path)
    del index["11.jpg"]
    (tmp_path / "vg_category_200_labels_index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match=r"train_list_500\.txt lists image '11\.jpg', which has no entry"):
        load_vg200(tmp_path)


# ----------------------------------------------------------------------------- registry and engine
def test_registry_entries_need_a_data_root(tmp_path):
    import datasets.catalog  # noqa: F401  (registers the entries)
    from benchmark.core.registry import get_dataset

    for name in ("voc2007", "coco2014", "nuswide", "vg200"):
        with pytest.raises(UserError, match=f"dataset {name} needs --data-root PATH"):
            get_dataset(name)(size="smoke", root=None, preset=None)
    write_voc(tmp_path)
    splits = get_dataset("voc2007")(size="smoke", root=str(tmp_path), preset="clsl")
    assert splits.info["preset"] == "clsl" and splits.test.ignore is not None


def _smoke_run_on_fixture(root: Path, out: Path, monkeypatch, dataset: str, preset: str, protocol: str):
    """One partial_bce smoke run (1 epoch) on a fixture folder through ``run_one`` and the MMEngine
    runner; returns the run folder and the (split, scores shape) of every split the evaluator scored."""
    from benchmark.core.registry import discover
    from benchmark.engine.lifecycle import run_one
    from benchmark.engine.metrics import MultiLabelMetric
    from tests.conftest import smoke_spec

    discover()
    scored, score_split = [], MultiLabelMetric._score_split

    def spy(self, name, logits, labels, mask):
        scored.append((name, logits.shape))
        return score_split(self, name, logits, labels, mask)

    monkeypatch.setattr(MultiLabelMetric, "_score_split", spy)
    spec = smoke_spec(dataset=dataset, data_root=str(root), preset=preset, protocol=protocol, epochs=1, batch_size=16)
    return run_one(spec, out), scored


@pytest.mark.parametrize("dataset, write, preset, protocol, n_test, n_classes", [
    pytest.param("voc2007", functools.partial(write_voc, n_train=40, n_test=20, size=64), "clsl", "frozen", 20, 20,
                 id="voc2007"),
    pytest.param("coco2014", write_coco, "hcp", "frozen", 2, 3, id="coco2014"),       # empty images kept
    pytest.param("nuswide", write_nus_official, "clsl", "finetune", 2, 3, id="nuswide"),
    pytest.param("vg200", write_vg, "hcp", "frozen", 2, 200, id="vg200"),
])
def test_fixture_runs_through_the_engine(tmp_path, monkeypatch, dataset, write, preset, protocol, n_test, n_classes):
    root = write(tmp_path / dataset)
    folder, scored = _smoke_run_on_fixture(root, tmp_path / "out", monkeypatch, dataset, preset, protocol)
    assert folder.done
    record = json.loads((folder.path / "spec.json").read_text())
    assert (record["dataset"], record["preset"], record["protocol"]) == (dataset, preset, protocol)
    assert record["num_test"] == n_test and record["data_root"] == str(root)
    tests = [shape for split, shape in scored if split == "test"]
    assert tests and all(shape == (n_test, n_classes) for shape in tests)   # every test image, every class
    metrics = {k: v for k, v in folder.records("eval")[-1].items() if k.startswith("test/")}
    assert {"test/mAP", "test/CF1", "test/OF1"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values()) and 0.0 <= metrics["test/mAP"] <= 100.0
    assert 1 <= metrics["test/num_classes_scored"] <= n_classes


# ----------------------------------------------------------------------------- published numbers
def test_reported_numbers_table_and_leaderboard_rows():
    import pandas as pd

    from reports.reported import beside_leaderboard, load_reported, reported_table

    frame = load_reported()
    assert len(frame) == 127 and frame["source_url"].str.startswith("https://").all()
    assert frame["value"].between(0, 100).all() and \
        set(frame["dataset"]) <= {"voc2007", "coco2014", "vg200", "nuswide", "voc2012", "cub"}
    voc = reported_table("voc2007")
    assert voc.loc["HST", "Avg."] == 90.9 and voc.loc["SARB* (DSRB)", "method_key"] == "dsrb"
    assert voc.loc["CLSL (CSL, He et al.)", "10%"] == 91.7 and pd.isna(voc.loc["HST", "10%"])
    assert reported_table("vg200", "CF1").loc["CSL (Ben-Baruch et al.)", "Avg."] == 48.0
    assert reported_table("synthetic").empty
    with pytest.raises(UserError, match="no reported numbers for metric 'mAP@5'"):
        reported_table("voc2007", "mAP@5")
    ours = pd.DataFrame({"50%": ["85.0"], "Avg.": ["84.1"]}, index=pd.Index(["hst"], name="method"))
    merged = beside_leaderboard(ours, "coco2014")
    assert list(merged.columns) == ["10%", "50%", "Avg."]
    assert merged.loc["hst"].tolist() == ["–", "85.0", "84.1"]
    assert merged.loc["HST [reported]"].tolist() == ["–", "–", "77.9"]
    assert merged.loc["CLSL (CSL, He et al.) [reported]"].tolist() == ["82.6", "–", "–"]
    assert beside_leaderboard(ours, "synthetic") is ours
