"""Hostile annotation files: every broken dataset file (missing keys, wrong types, duplicate ids, ids
pointing nowhere, bad bytes, empty, truncated, a folder, a huge line, XML entity tricks, labels out
of range, nesting past the recursion limit) is one line naming the file, in ``run_benchmark.py
prepare`` and in a grid, never a traceback. Then a property test per format: a randomly corrupted
fixture file either loads as well-formed labels or is a UserError naming the file."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmark.cli.main import main
from benchmark.core.errors import UserError
from benchmark.core.registry import discover, get_dataset
from datasets.readers import json_type
from tests.conftest import fuzz_examples
from tests.integration.test_real_datasets import (
    voc_xml,
    write_coco,
    write_nus_official,
    write_vg,
    write_voc,
)

discover()
GRID = ["--profile", "smoke", "--methods", "partial_bce", "--ratios", "0.5", "--epochs", "1", "--embeddings", "random"]
DEEP = 100_000   # nesting far past Python's recursion limit


# ----------------------------------------------------------------------------- fixture editing
def coco_train(root: Path) -> Path:
    return root / "annotations" / "instances_train2014.json"


def voc_base(root: Path) -> Path:
    return root / "VOCdevkit" / "VOC2007"


def edit_json(path: Path, change) -> Path:
    data = json.loads(path.read_text())
    data = change(data) or data
    path.write_text(json.dumps(data))
    return path


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def to_folder(path: Path) -> Path:
    path.unlink()
    path.mkdir()
    return path


def _set(obj, *steps_and_value):
    *steps, key, value = steps_and_value
    for step in steps:
        obj = obj[step]
    obj[key] = value


def _del(obj, *steps):
    *steps, key = steps
    for step in steps:
        obj = obj[step]
    del obj[key]


def _truncate(path: Path) -> Path:
    return write(path, path.read_bytes()[: len(path.read_bytes()) // 2])


def _non_utf8(path: Path) -> Path:
    data = path.read_bytes()
    return write(path, data[:10] + b"\xff\xfe\xc3" + data[10:])


# Each case: (id, dataset, break(root) -> the file the message must name, a word the line must contain).
COCO = [
    ("missing-file_name", lambda r: edit_json(coco_train(r), lambda d: _del(d, "images", 0, "file_name")),
     "has no 'file_name'"),
    ("missing-category-name", lambda r: edit_json(coco_train(r), lambda d: _del(d, "categories", 1, "name")),
     "category 1 has no 'name'"),
    ("missing-images-list", lambda r: edit_json(coco_train(r), lambda d: _del(d, "images")), "no 'images' list"),
    ("missing-annotation-image_id", lambda r: edit_json(coco_train(r), lambda d: _del(d, "annotations", 2, "image_id")),
     "annotation 2 has no 'image_id'"),
    ("string-image-id", lambda r: edit_json(coco_train(r), lambda d: _set(d, "images", 0, "id", "9")),
     "must be an integer"),
    ("float-category-id", lambda r: edit_json(coco_train(r), lambda d: _set(d, "annotations", 0, "category_id", 1.0)),
     "must be an integer"),
    ("bool-image-id", lambda r: edit_json(coco_train(r), lambda d: _set(d, "images", 1, "id", True)),
     "must be an integer"),
    ("list-is-object", lambda r: edit_json(coco_train(r), lambda d: _set(d, "annotations", {})), "not a list"),
    ("top-level-array", lambda r: write(coco_train(r), "[1, 2]"), "holds a JSON array"),
    ("entry-not-object", lambda r: edit_json(coco_train(r), lambda d: _set(d, "images", 2, "x.jpg")),
     "image 2 is a JSON string"),
    ("name-is-number", lambda r: edit_json(coco_train(r), lambda d: _set(d, "categories", 0, "name", 3)),
     "not a string"),
    ("duplicate-image-id", lambda r: edit_json(coco_train(r), lambda d: _set(d, "images", 1, "id", 9)),
     "repeats image id 9"),
    ("duplicate-category-id", lambda r: edit_json(coco_train(r), lambda d: _set(d, "categories", 2, "id", 3)),
     "repeats category id 3"),
    ("duplicate-category-name", lambda r: edit_json(coco_train(r), lambda d: _set(d, "categories", 2, "name", "cat")),
     "repeats the category name 'cat'"),
    ("unknown-image-id", lambda r: edit_json(coco_train(r), lambda d: _set(d, "annotations", 0, "image_id", 12345)),
     "unknown image id 12345"),
    ("category-out-of-range", lambda r: edit_json(coco_train(r), lambda d: _set(d, "annotations", 1, "category_id", 81)),
     "unknown category id 81"),
    ("non-utf8", lambda r: _non_utf8(coco_train(r)), "not UTF-8"),
    ("empty", lambda r: write(coco_train(r), b""), "is empty"),
    ("whitespace-only", lambda r: write(coco_train(r), b"  \n\n"), "is empty"),
    ("truncated", lambda r: _truncate(coco_train(r)), "not valid JSON"),
    ("folder", lambda r: to_folder(coco_train(r)), "is a folder"),
    ("huge-file_name", lambda r: edit_json(coco_train(r), lambda d: _set(d, "images", 0, "file_name", "a" * 100_000)),
     "100,000 bytes long"),
    ("file_name-climbs-out", lambda r: edit_json(coco_train(r), lambda d: _set(d, "images", 0, "file_name",
                                                                               "../../../etc/passwd")), "climbs out"),
    ("control-char-in-name", lambda r: edit_json(coco_train(r), lambda d: _set(d, "categories", 0, "name", "c\nat")),
     "control character"),
    ("lone-surrogate", lambda r: write(coco_train(r), coco_train(r).read_text().replace('"cat"', '"\\ud800"')),
     "not valid Unicode"),
    ("nan-id", lambda r: write(coco_train(r), coco_train(r).read_text().replace('"id": 9,', '"id": NaN,', 1)),
     "must be an integer"),
    ("huge-integer", lambda r: write(coco_train(r), coco_train(r).read_text().replace('"id": 9,', '"id": ' + "9" * 5000
                                                                                      + ",", 1)), "not valid JSON"),
    ("recursion", lambda r: write(coco_train(r), '{"images": ' + "[" * DEEP + "]" * DEEP + "}"), "nested too deeply"),
    ("no-categories", lambda r: edit_json(coco_train(r), lambda d: _set(d, "categories", [])), "'categories' list is empty"),
]

BILLION_LAUGHS = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                  + "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">'
                            for i in range(1, 10))
                  + ']><annotation><object><name>&lol9;</name></object></annotation>')
EXTERNAL = ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            '<annotation><object><name>&x;</name></object></annotation>')


def _voc(name: str) -> callable:
    return lambda r: voc_base(r) / "Annotations" / name


def _voc_list(r: Path) -> Path:
    return voc_base(r) / "ImageSets" / "Main" / "trainval.txt"


VOC = [
    ("object-without-name", lambda r: write(_voc("000003.xml")(r), "<annotation><object><pose>x</pose></object>"
                                                                   "</annotation>"), "has no <name>"),
    ("difficult-not-0-1", lambda r: write(_voc("000003.xml")(r), voc_xml([("dog", "yes")])), "expected 0 or 1"),
    ("unknown-class", lambda r: write(_voc("000004.xml")(r), voc_xml([("unicorn", 0)])), "unknown class 'unicorn'"),
    ("wrong-root", lambda r: write(_voc("000004.xml")(r), "<html><object><name>dog</name></object></html>"),
     "root element 'html'"),
    ("duplicate-id", lambda r: write(_voc_list(r), "000001\n000002\n000001\n"), "repeats image id '000001'"),
    ("id-pointing-nowhere", lambda r: write(_voc_list(r), "000001\n999999\n"), "does not exist"),
    ("train-test-overlap", lambda r: write(_voc_list(r), "000001\n000007\n"), "lists too"),
    ("non-utf8-list", lambda r: write(_voc_list(r), b"000001\n0000\xff2\n"), "not UTF-8"),
    ("non-utf8-xml", lambda r: write(_voc("000002.xml")(r), b"<annotation><object><name>d\xffog</name></object>"
                                                            b"</annotation>"), "not well-formed XML"),
    ("empty-list", lambda r: write(_voc_list(r), ""), "lists no image"),
    ("empty-xml", lambda r: write(_voc("000002.xml")(r), ""), "not well-formed XML"),
    ("truncated-xml", lambda r: _truncate(_voc("000005.xml")(r)), "not well-formed XML"),
    ("xml-is-folder", lambda r: to_folder(_voc("000005.xml")(r)), "is a folder"),
    ("list-is-folder", lambda r: to_folder(_voc_list(r)), "is a folder"),
    ("huge-line", lambda r: write(_voc_list(r), "000001\n" + "7" * 100_000 + "\n"), "100,000 characters"),
    ("nul-in-list", lambda r: write(_voc_list(r), "000001\n000\x002\n"), "control character"),
    ("id-is-a-path", lambda r: write(_voc_list(r), "000001\n../../../etc/passwd\n"), "not an image id"),
    ("billion-laughs", lambda r: write(_voc("000001.xml")(r), BILLION_LAUGHS), "DOCTYPE"),
    ("external-entity", lambda r: write(_voc("000001.xml")(r), EXTERNAL), "DOCTYPE"),
    ("undefined-entity", lambda r: write(_voc("000001.xml")(r), "<annotation><object><name>&x;</name></object>"
                                                                "</annotation>"), "not well-formed XML"),
]


def _vg_index(r: Path) -> Path:
    return r / "vg_category_200_labels_index.json"


VG = [
    ("image-without-entry", lambda r: edit_json(_vg_index(r), lambda d: _del(d, "11.jpg")), "has no entry"),
    ("string-index", lambda r: edit_json(_vg_index(r), lambda d: _set(d, "10.jpg", ["3"])), "expected class indices"),
    ("entry-is-object", lambda r: edit_json(_vg_index(r), lambda d: _set(d, "10.jpg", {"a": 1})),
     "expected class indices"),
    ("top-level-array", lambda r: write(_vg_index(r), "[[0], [1]]"), "holds a JSON array"),
    ("duplicate-key", lambda r: write(_vg_index(r), '{"10.jpg": [0], "11.jpg": [1], "10.jpg": [2], "12.jpg": [], '
                                                    '"20.jpg": [3], "21.jpg": [4]}'), "repeats the key '10.jpg'"),
    ("index-out-of-range", lambda r: edit_json(_vg_index(r), lambda d: _set(d, "21.jpg", [200])), "0..199"),
    ("negative-index", lambda r: edit_json(_vg_index(r), lambda d: _set(d, "21.jpg", [-1])), "0..199"),
    ("non-utf8-index", lambda r: _non_utf8(_vg_index(r)), "not UTF-8"),
    ("non-utf8-list", lambda r: write(r / "train_list_500.txt", b"11.jpg\n1\xff0.jpg\n"), "not UTF-8"),
    ("empty-index", lambda r: write(_vg_index(r), ""), "is empty"),
    ("empty-list", lambda r: write(r / "test_list_500.txt", "\n\n"), "lists no image"),
    ("truncated-index", lambda r: _truncate(_vg_index(r)), "not valid JSON"),
    ("index-is-folder", lambda r: to_folder(_vg_index(r)), "is a folder"),
    ("huge-line", lambda r: write(r / "train_list_500.txt", "11.jpg\n" + "x" * 100_000 + "\n"), "100,000 characters"),
    ("name-climbs-out", lambda r: write(r / "train_list_500.txt", "11.jpg\n../../etc/passwd\n"), "climbs out"),
    ("recursion", lambda r: write(_vg_index(r), '{"10.jpg": ' + "[" * DEEP + "]" * DEEP + "}"), "nested too deeply"),
    ("duplicate-class-name", lambda r: write(r / "vg_category_200_names.txt", "a\nb\na\n"), "repeats a name ('a'"),
]


def _nus_labels(r: Path, concept: str = "water", split: str = "Train") -> Path:
    return r / "Groundtruth" / "TrainTestLabels" / f"Labels_{concept}_{split}.txt"


NUS = [
    ("label-out-of-range", lambda r: write(_nus_labels(r), "0\n1\n2\n0\n"), "holds value '2' on line 3"),
    ("label-line-missing", lambda r: write(_nus_labels(r), "0\n1\n0\n"), "has 3 lines but its image list has 4"),
    ("label-file-is-folder", lambda r: to_folder(_nus_labels(r)), "is a folder"),
    ("non-utf8-labels", lambda r: write(_nus_labels(r), b"0\n\xff\n0\n0\n"), "not UTF-8"),
    ("concept-is-a-path", lambda r: write(r / "Concepts81.txt", "sky\n../water\ndog\n"), "path separator"),
    ("empty-concepts", lambda r: write(r / "Concepts81.txt", ""), "lists no class"),
    ("huge-image-line", lambda r: write(r / "ImageList" / "TrainImagelist.txt", "a\\" + "b" * 100_000 + "\r\n"),
     "100,002 characters"),
]

CASES = ([pytest.param("coco2014", write_coco, *c[1:], id=f"coco2014-{c[0]}") for c in COCO]
         + [pytest.param("voc2007", write_voc, *c[1:], id=f"voc2007-{c[0]}") for c in VOC]
         + [pytest.param("vg200", write_vg, *c[1:], id=f"vg200-{c[0]}") for c in VG]
         + [pytest.param("nuswide", write_nus_official, *c[1:], id=f"nuswide-{c[0]}") for c in NUS])


def test_catalogue_covers_every_kind_for_each_format():
    assert len(COCO) >= 12 and len(VOC) >= 12 and len(VG) >= 12 and len(NUS) >= 5


@pytest.mark.parametrize("dataset, fixture, breaker, word", CASES)
def test_broken_file_is_one_line_naming_it_in_prepare_and_in_a_grid(dataset, fixture, breaker, word, tmp_path,
                                                                     capsys):
    root = fixture(tmp_path / dataset)
    target = breaker(root)
    code = main(["prepare", "--dataset", dataset, "--data-root", str(root), "--no-verify"])
    out, err = capsys.readouterr()
    problems = [line[len("  problem: "):] for line in out.splitlines() if line.startswith("  problem: ")]
    assert code == 1 and err == "" and "Traceback" not in out, out + err   # prepare: 1 = the folder has problems
    assert len(problems) == 1 and str(target) in problems[0] and word in problems[0], out
    assert out.strip().splitlines()[-1] == "NOT READY: 1 problem(s) found"

    runs = tmp_path / "out"
    code = main(["--dataset", dataset, "--data-root", str(root), *GRID, "--out", str(runs)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and str(target) in err[0] and word in err[0], err[0]
    assert err[0][len("error: "):].startswith(problems[0])      # the same line (the grid adds the layout)
    assert not runs.exists()


# ----------------------------------------------------------------------------- property tests
SETTINGS = settings(max_examples=fuzz_examples(20), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
OTHER_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(), st.text(max_size=12),
                         st.lists(st.integers(-3, 300), max_size=3), st.dictionaries(st.text(max_size=4),
                                                                                     st.integers(), max_size=2))


def _paths(obj, path=()):
    yield path
    children = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in children:
        yield from _paths(value, (*path, key))


@st.composite
def corrupt_json(draw, obj):
    """A JSON value with one random change: drop a key or row, retype a value, duplicate or reorder rows."""
    obj = copy.deepcopy(obj)
    path = draw(st.sampled_from(list(_paths(obj))))
    parent = obj
    for step in path[:-1]:
        parent = parent[step]
    node = parent[path[-1]] if path else obj
    op = draw(st.sampled_from(["drop", "retype", "duplicate", "reorder"]))
    if op == "drop" and path:
        del parent[path[-1]]
    elif op in ("duplicate", "reorder") and (isinstance(node, list) and node or isinstance(parent, list) and path):
        rows = node if isinstance(node, list) and node else parent
        if op == "duplicate":
            rows.insert(draw(st.integers(0, len(rows))), copy.deepcopy(rows[draw(st.integers(0, len(rows) - 1))]))
        else:
            rows[:] = draw(st.permutations(rows))
    else:
        value = draw(OTHER_VALUES.filter(lambda v: json_type(v) != json_type(node)))
        if not path:
            return value
        parent[path[-1]] = value
    return obj


@st.composite
def corrupt_bytes(draw, data: bytes):
    """Truncated at a random byte, or a few random bytes flipped."""
    if draw(st.booleans()):
        return data[:draw(st.integers(0, len(data) - 1))]
    out = bytearray(data)
    for position in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=6)):
        out[position] ^= draw(st.integers(1, 255))
    return bytes(out)


@st.composite
def corrupt_lines(draw, text: str):
    """One random line operation: drop, duplicate, reorder, or replace a line by random text."""
    lines = text.splitlines()
    op = draw(st.sampled_from(["drop", "duplicate", "reorder", "replace"]))
    k = draw(st.integers(0, len(lines) - 1))
    if op == "drop":
        del lines[k]
    elif op == "duplicate":
        lines.insert(draw(st.integers(0, len(lines))), lines[k])
    elif op == "reorder":
        lines = draw(st.permutations(lines))
    else:
        lines[k] = draw(st.text(max_size=30))
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\r\n"]))


def assert_loads_or_names(dataset: str, root: Path, target: Path) -> None:
    """The invariant: well-formed labels, or one UserError line naming ``target``; nothing else."""
    try:
        splits = get_dataset(dataset)(size="default", root=str(root), preset=None)   # what the preflight loads
    except UserError as exc:
        message = str(exc)
        assert str(target) in message and "\n" not in message, message
        return
    for labelset in (splits.train, splits.test):
        assert labelset.labels.dtype == np.uint8
        assert labelset.labels.shape == (len(labelset.image_ids), len(labelset.class_names))
        assert len(labelset.image_paths) == len(labelset.image_ids) and len(labelset) > 0
        assert set(np.unique(labelset.labels).tolist()) <= {0, 1}
        labelset.fingerprint()                       # the grid fingerprints what it loaded


@SETTINGS
@given(data=st.data())
def test_corrupted_coco_file_loads_or_names_the_file(tmp_path, data):
    root = tmp_path / "coco"
    if not root.exists():
        write_coco(root)
        for path in sorted((root / "annotations").glob("*.json")):
            path.with_suffix(".orig").write_bytes(path.read_bytes())
    target = data.draw(st.sampled_from(sorted((root / "annotations").glob("*.json"))))
    for path in (root / "annotations").glob("*.json"):
        path.write_bytes(path.with_suffix(".orig").read_bytes())
    original = target.read_bytes()
    if data.draw(st.booleans()):
        target.write_text(json.dumps(data.draw(corrupt_json(json.loads(original)))))
    else:
        target.write_bytes(data.draw(corrupt_bytes(original)))
    assert_loads_or_names("coco2014", root, target)


@SETTINGS
@given(data=st.data())
def test_corrupted_voc_file_loads_or_names_the_file(tmp_path, data):
    root = tmp_path / "voc"
    if not root.exists():
        write_voc(root)
    base = voc_base(root)
    files = [base / "ImageSets" / "Main" / "trainval.txt", base / "ImageSets" / "Main" / "test.txt",
             *sorted((base / "Annotations").glob("*.xml"))[:3]]
    originals = {path: path.read_bytes() for path in files}
    target = data.draw(st.sampled_from(files))
    try:
        if target.suffix == ".txt" and data.draw(st.booleans()):
            target.write_text(data.draw(corrupt_lines(originals[target].decode())))
        else:
            target.write_bytes(data.draw(corrupt_bytes(originals[target])))
        assert_loads_or_names("voc2007", root, target)
    finally:
        for path, content in originals.items():
            path.write_bytes(content)


@SETTINGS
@given(data=st.data())
def test_corrupted_vg_file_loads_or_names_the_file(tmp_path, data):
    root = tmp_path / "vg"
    if not root.exists():
        write_vg(root)
    files = [_vg_index(root), root / "train_list_500.txt", root / "test_list_500.txt"]
    originals = {path: path.read_bytes() for path in files}
    target = data.draw(st.sampled_from(files))
    try:
        how = data.draw(st.sampled_from(["structure", "bytes"]))
        if how == "structure" and target.suffix == ".json":
            target.write_text(json.dumps(data.draw(corrupt_json(json.loads(originals[target])))))
        elif how == "structure":
            target.write_text(data.draw(corrupt_lines(originals[target].decode())))
        else:
            target.write_bytes(data.draw(corrupt_bytes(originals[target])))
        assert_loads_or_names("vg200", root, target)
    finally:
        for path, content in originals.items():
            path.write_bytes(content)


def test_coco_labels_equal_the_pycocotools_index(tmp_path):
    """The checking loader reads labels as pycocotools' index does: categories by id, images in the
    file's order, a category present when any annotation of the image names it."""
    from pycocotools.coco import COCO

    from datasets.coco import load_coco_instances

    root = write_coco(tmp_path / "coco")
    ann_file = root / "annotations" / "instances_train2014.json"
    ours = load_coco_instances(ann_file, root / "train2014", "train")
    coco = COCO(str(ann_file))
    cat_ids = sorted(coco.cats)
    expected = np.zeros((len(coco.imgs), len(cat_ids)), dtype=np.uint8)
    for i, image_id in enumerate(coco.imgs):
        for ann in coco.imgToAnns[image_id]:
            expected[i, cat_ids.index(ann["category_id"])] = 1
    assert ours.class_names == [coco.cats[c]["name"] for c in cat_ids]
    assert [p.name for p in ours.image_paths] == [coco.imgs[i]["file_name"] for i in coco.imgs]
    assert np.array_equal(np.asarray(ours.labels), expected)
