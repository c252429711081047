"""Mask packs (datasets/mask_pack.py, ``run_benchmark.py masks``, ``--mask-pack``): a pack exported and
trained on again gives the same run ids and numbers; a pack with other masks trains them under new
run ids; docs/mask_packs.md's numpy snippets run on a freshly exported pack; every bad pack or export
flag is one line, exit status 2, nothing written."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from benchmark.cli.main import main
from benchmark.core.registry import discover

discover()
REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "mask_packs.md").read_text()
SMOKE = ["--profile", "smoke", "--methods", "partial_bce", "--ratios", "0.5", "--epochs", "1", "--embeddings",
         "random", "--no-report", "--jobs", "1"]


def doc_block(heading: str, lang: str = "python") -> str:
    """The first ``lang`` code block after ``heading`` in docs/mask_packs.md."""
    start = DOC.index(heading)
    return re.search(rf"```{lang}\n(.*?)```", DOC[start:], re.DOTALL).group(1)


def smoke_train():
    from benchmark.engine.prepared_run import load_dataset

    return load_dataset("synthetic", "tiny").train


def only_run(folder: Path) -> Path:
    runs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(runs) == 1, runs
    return runs[0]


def evals(run: Path) -> list[dict]:
    """The evaluation records of a run (timings left out: they change between executions)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind") == "eval"]


@pytest.fixture(scope="module")
def packs(tmp_path_factory):
    """The smoke grid's masks as a pack (0.3 and 0.5 x seeds 0 1), and the grid trained without it."""
    tmp = tmp_path_factory.mktemp("mask_packs")
    assert main(["masks", "export", "--profile", "smoke", "--ratios", "0.3,0.5", "--seeds", "0", "1",
                 "--out", str(tmp / "masks.npz")]) == 0
    assert main([*SMOKE, "--out", str(tmp / "plain")]) == 0
    return tmp


def test_an_exported_pack_holds_the_suites_masks_as_documented(packs):
    from datasets.mask_pack import KEYS, PACK_FORMAT
    from datasets.masks import get_mask

    pack = np.load(packs / "masks.npz", allow_pickle=False)
    assert str(pack["format"]) == PACK_FORMAT and str(pack["protocol"]) == "random"
    assert pack["observed"].shape == (2, 2, 160, 20) and pack["observed"].dtype == bool
    assert list(pack["ratios"]) == [0.3, 0.5] and list(pack["seeds"]) == [0, 1]
    train = smoke_train()
    assert list(pack["image_ids"]) == [str(i) for i in train.image_ids]
    assert list(pack["class_names"]) == list(train.class_names) and str(pack["fingerprint"]) == train.fingerprint()
    for r, ratio in enumerate((0.3, 0.5)):
        for s in (0, 1):
            mask = get_mask(train, "random", ratio, s)
            np.testing.assert_array_equal(pack["observed"][r, s], mask.observed)
            assert str(pack["mask_sha256"][r, s]) == mask.sha256           # what spec.json records
    assert "HCP" in str(pack["generator"])
    import datasets.mask_pack as module

    for key in KEYS:                 # every key documented in the module and in docs/mask_packs.md
        assert f"``{key}``" in module.__doc__ and f"| `{key}` |" in DOC, key


def test_an_exported_pack_trained_again_gives_the_same_run_ids_and_numbers(packs, capsys):
    plain = only_run(packs / "plain")
    assert main([*SMOKE, "--out", str(packs / "again"), "--mask-pack", str(packs / "masks.npz")]) == 0
    again = only_run(packs / "again")
    assert again.name == plain.name
    a, b = (json.loads((r / "spec.json").read_text()) for r in (plain, again))
    assert a["mask_sha256"] == b["mask_sha256"] and a["inputs"] == b["inputs"] == {}
    assert evals(again) == evals(plain) and len(evals(plain)) == 1
    sa, sb = np.load(plain / "scores.npz"), np.load(again / "scores.npz")
    for key in sa.files:
        np.testing.assert_array_equal(sa[key], sb[key])
    capsys.readouterr()
    assert main([*SMOKE, "--out", str(packs / "plain"), "--mask-pack", str(packs / "masks.npz")]) == 0
    out = capsys.readouterr().out
    assert "1 mask(s) are the suite's own" in out and "0 trained, 1 already done" in out


def test_a_pack_with_other_masks_trains_them_under_a_new_run_id(packs, capsys, monkeypatch):
    from datasets.mask_pack import read_pack
    from datasets.masks import draw_random

    def my_masks(image_ids, class_names, ratios, seeds):   # the suite's masks, but p=0.5 seed 0 drawn elsewhere
        mine = np.load(packs / "masks.npz")["observed"].copy()
        mine[1, 0] = draw_random(np.zeros((len(image_ids), len(class_names))), 0.5, 12345)
        return mine

    monkeypatch.chdir(packs)
    exec(doc_block("## Train the suite on your own masks"), {"my_masks": my_masks})  # noqa: S102 (our docs)
    pack = read_pack(packs / "my_masks.npz")
    assert main(["masks", "check", str(packs / "my_masks.npz")]) == 0
    out = capsys.readouterr().out
    assert "3 of 4 are the suite's own masks" in out and "1 differ" in out and "p=0.5 seed 0" in out
    assert main([*SMOKE, "--out", str(packs / "mine"), "--mask-pack", str(packs / "my_masks.npz")]) == 0
    plain, mine = only_run(packs / "plain"), only_run(packs / "mine")
    assert mine.name != plain.name
    spec = json.loads((mine / "spec.json").read_text())
    assert spec["mask_sha256"] == pack.sha256(0.5, 0) != json.loads((plain / "spec.json").read_text())["mask_sha256"]
    assert spec["inputs"] == {"mask_pack": pack.digest} and spec["identity"]["inputs"] == {"mask_pack": pack.digest}
    assert evals(mine)[0]["test/mAP"] != evals(plain)[0]["test/mAP"]
    cache = Path(os.environ["MLRPL_CACHE"]) / "masks"
    installed = next(cache.glob(f"*/packs/{pack.digest}/{spec['mask_manifest']}")).with_suffix(".json")
    assert json.loads(installed.read_text())["generator"] == "my code base, commit ..."


def test_the_docs_numpy_snippet_reads_a_fresh_pack(packs, monkeypatch, capsys):
    from datasets.masks import get_mask

    code = doc_block("## Read a pack")
    assert len(code.strip().splitlines()) <= 10
    monkeypatch.chdir(packs)
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 (the docs' snippet)
    train = smoke_train()
    np.testing.assert_array_equal(namespace["observed"], get_mask(train, "random", 0.3, 0).observed)
    assert list(namespace["image_ids"]) == [str(i) for i in train.image_ids]
    assert list(namespace["class_names"]) == list(train.class_names)
    assert capsys.readouterr().out.split()[:3] == ["random", "(160,", "20)"]


def test_the_docs_commands_parse_and_the_smoke_ones_run(tmp_path, monkeypatch, capsys):
    import shlex

    from benchmark.cli.parser import run_parser
    from benchmark.cli.subcommands import masks_parser

    lines = [shlex.split(line, comments=True)[2:] for block in ("## Export the masks of a grid",
             "## Train the suite on a pack") for line in doc_block(block, "bash").splitlines()]
    assert [words[0] for words in lines] == ["masks", "masks", "--profile", "masks"]
    for words in lines:              # every flag is one the parsers know (an unknown one raises UserError)
        if words[0] == "masks":
            masks_parser().parse_args(words[1:])
        else:
            assert run_parser().parse_args(words).mask_pack == "smoke_masks.npz"
    monkeypatch.chdir(tmp_path)
    assert main(lines[1]) == 0 and main(lines[3]) == 0           # export and check the embedded dataset's masks
    assert "2 of 2 are the suite's own masks" in capsys.readouterr().out


def test_a_pack_mask_that_was_not_installed_is_refused():
    from benchmark.core.errors import UserError
    from datasets.masks import get_mask

    with pytest.raises(UserError, match="not in the cache.*--mask-pack FILE again"):
        get_mask(smoke_train(), "random", 0.5, 0, pack="0" * 16)
    with pytest.raises(UserError, match="not a hex digest"):
        get_mask(smoke_train(), "random", 0.5, 0, pack="../x")


@pytest.mark.parametrize("protocol,ratios", [("random_clsl", [0.3, 0.5]), ("single_positive", [1.0])])
def test_packs_of_the_other_protocols_keep_the_run_ids(protocol, ratios, tmp_path):
    """Planned only (no training): the CLSL protocol keeps its proportions (it has one), single
    positive has one mask per seed; a pack the suite exported changes no run id."""
    from benchmark.cli.parser import run_parser
    from benchmark.cli.plan import build_runs

    pack = tmp_path / f"{protocol}.npz"
    assert main(["masks", "export", "--profile", "smoke", "--mask-protocol", protocol, "--ratios", "0.3,0.5",
                 "--out", str(pack)]) == 0
    loaded = np.load(pack)
    assert list(loaded["ratios"]) == ratios and str(loaded["protocol"]) == protocol
    if protocol == "single_positive":
        assert (loaded["observed"].sum(axis=-1) <= 1).all() and loaded["observed"].any()
    grid = ["--profile", "smoke", "--methods", "partial_bce", "--ratios", "0.3,0.5", "--embeddings", "random"]
    own = build_runs(run_parser().parse_args([*grid, "--mask-protocol", protocol]), tmp_path / "out")[0]
    packed = build_runs(run_parser().parse_args([*grid, "--mask-pack", str(pack)]), tmp_path / "out")[0]
    assert [r.ratio for r in own] == ratios and [r.mask_protocol for r in packed] == [protocol] * len(ratios)
    assert [r.run_id for r in packed] == [r.run_id for r in own]


# ----------------------------------------------------------------------------- bad packs
def _rehash(arrays: dict) -> None:
    from datasets.masks import mask_sha256

    arrays["mask_sha256"] = np.array([[mask_sha256(m) for m in row] for row in arrays["observed"]])


def _mutated(src: Path, dst: Path, change, rehash: bool = False) -> Path:
    arrays = dict(np.load(src, allow_pickle=False))
    change(arrays)
    if rehash:
        _rehash(arrays)
    np.savez(dst, **arrays)
    return dst


def _set(key, value):
    return lambda a: a.__setitem__(key, value)


def _flip(a):
    a["observed"][1, 0, 0, 0] ^= True


def _swap_classes(a):
    a["class_names"] = a["class_names"][[1, 0, *range(2, len(a["class_names"]))]]


def _other_id(a):
    a["image_ids"][5] = "nope"


def _all_known(a):
    a["observed"][1, 0] = True


def _only_first_ratio(a):
    a["observed"], a["mask_sha256"], a["ratios"] = a["observed"][:1], a["mask_sha256"][:1], a["ratios"][:1]


BAD_PACKS = [
    ("flipped", _flip, False, "sha256"),
    ("format", _set("format", np.array("mlrpl-mask-pack/9")), False, "this code reads mlrpl-mask-pack/1"),
    ("class_order", _swap_classes, False, "different class order"),
    ("image_ids", _other_id, False, "different image id order"),
    ("labels", _set("fingerprint", np.array("0" * 64)), False, "other labels of synthetic"),
    ("dtype", lambda a: a.__setitem__("observed", a["observed"].astype(np.uint8)), False, "observed is uint8"),
    ("missing_key", lambda a: a.pop("mask_sha256"), False, "lacks the key(s) mask_sha256"),
    ("no_cell", _only_first_ratio, False, "has no mask for p=0.5 seed 0"),
    ("dataset", _set("dataset", np.array("voc2007")), False, "holds masks of voc2007"),
    ("fraction", _all_known, True, "do not match the proportion"),
    ("sha_shape", lambda a: a.__setitem__("mask_sha256", a["mask_sha256"][:1]), False, "mask_sha256 has shape"),
    ("protocol", _set("protocol", np.array("bogus")), False, "has protocol 'bogus'"),
    ("ratios", _set("ratios", np.array([0.3, 0.3])), False, "distinct"),
    ("seeds", _set("seeds", np.array([0, -1])), False, "seeds"),
]


@pytest.mark.parametrize("name,change,rehash,word", BAD_PACKS, ids=[c[0] for c in BAD_PACKS])
def test_a_bad_pack_is_one_line_exit_2_and_nothing_written(name, change, rehash, word, packs, tmp_path, capsys):
    bad = _mutated(packs / "masks.npz", tmp_path / f"{name}.npz", change, rehash)
    out = tmp_path / "out"
    code = main([*SMOKE, "--out", str(out), "--mask-pack", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and word in err[0], err[0]
    assert not out.exists()


def test_other_bad_packs_are_one_line(packs, tmp_path, capsys):
    arrays = dict(np.load(packs / "masks.npz"))
    np.savez(tmp_path / "objects.npz", **{**arrays, "image_ids": np.array(list(arrays["image_ids"]), dtype=object)})
    np.save(tmp_path / "single.npy", arrays["observed"])
    (tmp_path / "text.npz").write_text("not a zip")
    data = (packs / "masks.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    sp = tmp_path / "sp.npz"
    assert main(["masks", "export", "--profile", "smoke", "--mask-protocol", "single_positive", "--out", str(sp)]) == 0
    labels = smoke_train().labels
    negative = dict(np.load(sp))
    row = int(np.argmax(negative["observed"][0, 0].any(axis=1)))       # an image with a known positive
    negative["observed"][0, 0, row] = False
    negative["observed"][0, 0, row, int(np.argmin(labels[row]))] = True      # now a known negative
    _rehash(negative)
    np.savez(tmp_path / "sp_negative.npz", **negative)
    two = dict(np.load(sp))
    two["observed"][0, 0] = labels.astype(bool)                          # every positive known
    _rehash(two)
    np.savez(tmp_path / "sp_two.npz", **two)
    cases = [("objects.npz", [], "Python objects (a pickle)"), ("single.npy", [], "single .npy array"),
             ("text.npz", [], "does not start as a zip"), ("cut.npz", [], "not a readable .npz"),
             ("nowhere.npz", [], "not found"), ("", [], "is a folder"),
             ("masks.npz", ["--mask-protocol", "random_clsl"], "holds random masks, the grid trains random_clsl masks"),
             ("masks.npz", ["--dataset", "synthetic", "voc2007"], "holds masks of synthetic, the grid also trains"),
             ("sp_negative.npz", [], "a negative"), ("sp_two.npz", [], "at most one per image")]
    for name, extra, word in cases:
        path = packs / name if name == "masks.npz" else tmp_path / name
        out = tmp_path / "out"
        code = main([*SMOKE, "--out", str(out), "--mask-pack", str(path), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, (name, err)
        assert word in err[0], (name, err[0])
        assert not out.exists()


def test_bad_export_flags_are_one_line_and_write_nothing(packs, tmp_path, capsys):
    (tmp_path / "exists.npz").write_bytes(b"keep")
    (tmp_path / "folder.npz").mkdir()
    cases = [(["--out", str(tmp_path / "exists.npz")], "--force"),
             (["--out", str(tmp_path / "folder.npz")], "is a folder"),
             (["--out", str(tmp_path / "pack.zip")], "ending in .npz"),
             (["--out", str(tmp_path / "p.npz"), "--dataset", "bogus"], "unknown dataset"),
             (["--out", str(tmp_path / "p.npz"), "--ratios", "0.1:abc"], "--ratios"),
             (["--out", str(tmp_path / "p.npz"), "--ratios", "0.5,0.5000001"], "decimals"),
             (["--out", str(tmp_path / "p.npz"), "--seeds", "-1"], "--seeds"),
             (["--out", str(tmp_path / "p.npz"), "--seeds", "0", "0"], "--seeds"),
             (["--out", str(tmp_path / "p.npz"), "--mask-protocol", "bogus"], "--mask-protocol"),
             (["--out", str(tmp_path / "p.npz"), "--profile", "bogus"], "unknown profile"),
             (["--out", str(tmp_path / "p.npz"), "--data-root", str(tmp_path)], "--data-root is for the real"),
             (["--out", str(tmp_path / "p.npz"), "--preset", "hcp"], "--preset"),
             (["--out", str(tmp_path / "exists.npz" / "p.npz")], "is a file"),
             (["--out", str(tmp_path / "p.npz"), "--bogus"], "unrecognized")]
    for args, word in cases:
        assert main(["masks", "export", *args]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and word in err[0], (args, err)
    for args, word in [(["masks"], "required"), (["masks", "import", "x.npz"], "--mask-pack FILE"),
                       (["masks", "bogus"], "invalid choice"),
                       (["masks", "check", str(tmp_path / "nowhere.npz")], "not found"),
                       (["masks", "check", str(packs / "masks.npz"), "--data-root", str(tmp_path)],
                        "drop --data-root")]:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and word in err[0], (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.npz", "folder.npz"]
    assert (tmp_path / "exists.npz").read_bytes() == b"keep"
    assert main(["masks", "export", "--profile", "smoke", "--ratios", "0.5", "--out", str(tmp_path / "exists.npz"),
                 "--force"]) == 0
    assert np.load(tmp_path / "exists.npz", allow_pickle=False)["observed"].shape == (1, 1, 160, 20)


def test_a_real_dataset_pack_follows_its_preset(tmp_path, capsys):
    """A VOC fixture under the CLSL preset: the torch protocol, VOC's zero-padded ids as strings, and a
    check against the dataset once its folder is given."""
    from tests.integration.test_real_datasets import write_voc

    root = write_voc(tmp_path / "voc")
    pack = tmp_path / "voc.npz"
    assert main(["masks", "export", "--dataset", "voc2007", "--data-root", str(root), "--preset", "clsl",
                 "--ratios", "0.3,0.5", "--out", str(pack)]) == 0
    loaded = np.load(pack, allow_pickle=False)
    assert str(loaded["protocol"]) == "random_clsl" and str(loaded["preset"]) == "clsl"
    assert all(len(i) == 6 and i.isdigit() for i in loaded["image_ids"]) and loaded["observed"].shape[:2] == (2, 1)
    capsys.readouterr()
    assert main(["masks", "check", str(pack)]) == 0 and "give --data-root" in capsys.readouterr().out
    assert main(["masks", "check", str(pack), "--data-root", str(root)]) == 0
    assert "2 of 2 are the suite's own masks" in capsys.readouterr().out
