"""The bad-input catalogue: every kind of bad input gives exit status 2, exactly one line on stderr,
and creates nothing under --out. Called in-process through ``benchmark.cli.main.main`` (the same code
path as the command line; a few cases also run as real processes in tests/test_cli.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmark.cli.main import main
from benchmark.core.registry import discover

discover()
SMOKE = ["--profile", "smoke", "--methods", "partial_bce", "--ratios", "0.5", "--epochs", "1"]

SYNTAX_ERROR = "def broken(:\n    pass\n"
CLASH = '''
from benchmark.contract.method import Method
from benchmark.core.registry import METHODS


@METHODS.register_module()
class Clash(Method):
    name = "partial_bce"
'''
FINE = '''
from benchmark.contract.method import Method
from benchmark.core.registry import METHODS


@METHODS.register_module()
class {cls}(Method):
    name = "{name}"
'''


def _files(tmp):
    """Input files the catalogue points at."""
    np.save(tmp / "emb_shape.npy", np.zeros((3, 5), dtype=np.float32))
    nan = np.ones((20, 5), dtype=np.float32)
    nan[0, 0] = np.nan
    np.save(tmp / "emb_nan.npy", nan)
    (tmp / "garbage.pth").write_bytes(b"not a checkpoint")
    (tmp / "a_file").write_text("x")
    legacy = FINE.format(cls="Legacy", name="legacy") + "    in_default_grid = True\n"
    for folder, body in (("syntax", SYNTAX_ERROR), ("clash", CLASH), ("legacy", legacy)):
        (tmp / folder).mkdir()
        (tmp / folder / "plugin.py").write_text(body)
    for folder, cls in (("one", "PluginOne"), ("two", "PluginTwo")):
        (tmp / folder).mkdir()
        (tmp / folder / "same_name.py").write_text(FINE.format(cls=cls, name=cls.lower()))
    voc = tmp / "voc" / "VOC2007"
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (voc / sub).mkdir(parents=True)
    (voc / "ImageSets/Main/trainval.txt").write_text("")
    (voc / "ImageSets/Main/test.txt").write_text("")
    np.savez(tmp / "emb.npz", a=np.zeros((20, 5), dtype=np.float32))
    np.save(tmp / "emb_str.npy", np.array(["x"] * 20))
    from tests.integration.test_real_datasets import write_coco

    coco = write_coco(tmp / "coco")
    ann = coco / "annotations" / "instances_train2014.json"
    data = json.loads(ann.read_text())
    del data["images"][0]["file_name"]
    ann.write_text(json.dumps(data))
    (tmp / "loop").symlink_to(tmp / "loop")
    (tmp / "dangling").symlink_to(tmp / "nothing_here")
    plugins = {"exits": "import sys\nsys.exit(0)\n", "exits_text": "raise SystemExit('bye')\n",
               "named_all": FINE.format(cls="All", name="all"), "named_bad": FINE.format(cls="Bad", name="My-Method"),
               "named_dunder": FINE.format(cls="Dunder", name="a__b")}
    for folder, body in plugins.items():
        (tmp / folder).mkdir()
        (tmp / folder / "plugin.py").write_text(body)


# (arguments, a word the one line must contain); {tmp} is the test's folder.
CATALOGUE = [
    (["--methods", "nosuch"], "unknown method"),
    (["--methods", "partial-bce"], "unknown method"),
    (["--ratios", "0.1:abc"], "--ratios"),
    (["--ratios", "1.5"], "--ratios"),
    (["--ratios", "0.9:0.1"], "--ratios"),
    (["--ratios", "0"], "--ratios"),
    (["--ratios", ","], "--ratios"),
    (["--seeds", "-1"], "--seeds"),
    (["--seeds", "4294967296"], "--seeds"),
    (["--seeds", "0", "0"], "--seeds"),
    (["--seeds", "x"], "invalid int"),
    (["--mask-protocol", "bogus"], "--mask-protocol"),
    (["--backbone", "not_a_timm_model"], "--backbone"),
    (["--backbone-weights", "{tmp}/missing.pth"], "not found"),
    (["--backbone-weights", "{tmp}/garbage.pth"], "could not be read"),
    (["--backbone", "resnet18", "--backbone-weights", "packaged"], "packaged"),
    (["--embeddings", "word2vec"], "embedding provider"),
    (["--embeddings", "file:"], "needs a path"),
    (["--embeddings", "random:x"], "dimension"),
    (["--methods", "hst", "--embeddings", "file:{tmp}/missing.npy"], "not found"),
    (["--methods", "hst", "--embeddings", "file:{tmp}/emb_shape.npy"], "shape"),
    (["--methods", "hst", "--embeddings", "file:{tmp}/emb_nan.npy"], "NaN"),
    (["--set", "nosuchmethod.x=1"], "not a method of this grid"),
    (["--set", "partial-bce.loss=hcp"], "not a method of this grid"),
    (["--set", "hst.hidden_dim=64"], "not a method of this grid"),
    (["--set", "nosuchfield=1"], "no method of this grid"),
    (["--set", "partial_bce.nosuchfield=1"], "no config field"),
    (["--set", "partial_bce.loss=bogus"], "unknown"),
    (["--set", "partial_bce.dropout=2"], "dropout"),
    (["--set", "partial_bce.dropout=x"], "wrong type"),
    (["--methods", "hst", "--set", "hst.hidden_dim=1.5"], "wrong type"),
    (["--methods", "hst", "--set", "hst.prototype_sign=bogus"], "prototype_sign"),
    (["--set", "noequals"], "malformed"),
    (["--out", "{tmp}/a_file"], "is a file"),
    (["--out", "{tmp}/a_file/sub"], "is a file"),
    (["--batch-size", "0"], "--batch-size"),
    (["--lr", "0"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "-1e-3"], "--lr"),
    (["--image-size", "0"], "--image-size"),
    (["--protocol", "finetune", "--image-size", "16"], "stride"),
    (["--workers", "-1"], "--workers"),
    (["--epochs", "0"], "--epochs"),
    (["--jobs", "0"], "--jobs"),
    (["--threads", "0"], "--threads"),
    (["--profile", "bogus"], "unknown profile"),
    (["--dataset", "bogus"], "unknown dataset"),
    (["--preset", "hcp"], "--preset"),
    (["--protocol", "bogus"], "invalid choice"),
    (["--no-such-flag"], "unrecognized"),
    (["--dataset", "voc2007", "--data-root", "{tmp}/nowhere"], "nowhere"),
    (["--dataset", "voc2007", "--data-root", "{tmp}/voc"], "no image"),
    (["--profile", "paper"], "synthetic dataset runs under --profile smoke or default"),
    (["--profile", "paper", "--dataset", "voc2007", "--data-root", "{tmp}/voc"], "--backbone-weights"),
    (["--profile", "paper", "--protocol", "frozen"], "--profile paper trains the whole network"),
    (["--precision", "fp16"], "needs a GPU"),
    (["--precision", "fp64"], "invalid choice"),
    (["--set", "csl.prior=file:{tmp}/nowhere.csv", "--methods", "csl"], "nowhere.csv"),
    (["--plugins", "{tmp}/nowhere"], "does not exist"),
    (["--plugins", "{tmp}/syntax"], "syntax error"),
    (["--plugins", "{tmp}/clash"], "already registered"),
    (["--plugins", "{tmp}/one", "{tmp}/two"], "same name"),
    (["--plugins", "{tmp}/legacy"], "card = MethodCard"),
    (["--launcher", "pytorch"], "torchrun"),
    (["--launcher", "bogus"], "--launcher"),
    # Round 3: inputs outside the first catalogue, one per class of the issue.
    (["--out", "{tmp}/" + "x" * 300], "bytes"),
    (["--out", "{tmp}/loop"], "loop"),
    (["--out", "{tmp}/loop/sub"], "loop"),
    (["--out", "{tmp}/dangling"], "link to nothing"),
    (["--out", "{tmp}/dangling/sub"], "link to nothing"),
    (["--threads", "100000"], "cores"),
    (["--jobs", "100000"], "cores"),
    (["--data-root", "{tmp}/voc"], "--data-root is for the real datasets"),
    (["--image-size", "8"], "stride"),
    (["--ratios", "0.5,0.5000001"], "decimals"),
    (["--ratios", "0.0001:1:0.0001"], "more than 200"),
    (["--ratios", "0.1:0.9:0.0000001"], "more than 200"),
    (["--ratios", "nan"], "--ratios"),
    (["--ratios", "inf"], "--ratios"),
    (["--plugins", "{tmp}/exits"], "sys.exit(0)"),
    (["--plugins", "{tmp}/exits_text"], "sys.exit('bye')"),
    (["--plugins", "{tmp}/named_all"], "reserved"),
    (["--plugins", "{tmp}/named_bad"], "safe identifier"),
    (["--plugins", "{tmp}/named_dunder"], "safe identifier"),
    (["--methods", "hst", "--embeddings", "file:{tmp}/emb.npz"], ".npz"),
    (["--epochs", "100000000000"], "--epochs"),
    (["--batch-size", "100000000"], "--batch-size"),
    (["--image-size", "100000"], "--image-size"),
    (["--workers", "100000"], "--workers"),
    (["--lr", "1e308"], "--lr"),
    (["--backbone-weights", "{tmp}/syntax"], "is a folder"),
    (["--methods", "hst", "--embeddings", "file:{tmp}/emb_str.npy"], "not numbers"),
    (["--dataset", "coco2014", "--data-root", "{tmp}/coco"], "file_name"),
    # CLIP methods (--clip-weights / --clip-arch)
    (["--methods", "dualcoop", "--clip-arch", "RN101", "--clip-weights", "{tmp}/missing.pth"], "not found"),
    (["--methods", "dualcoop", "--clip-arch", "tiny-RN", "--clip-weights", "{tmp}/garbage.pth"], "could not be read"),
    (["--methods", "dualcoop", "--clip-arch", "RN101", "--clip-weights", "{tmp}/syntax"], "is a folder"),
    (["--methods", "dualcoop", "--clip-arch", "RN999"], "--clip-arch"),
    (["--methods", "dualcoop", "--clip-arch", "RN101"], "needs --clip-weights"),
    (["--methods", "dualcoop", "--clip-weights", "{tmp}/garbage.pth"], "also give --clip-arch"),
    (["--clip-weights", "{tmp}/garbage.pth"], "no method of this grid"),
    (["--methods", "dualcoop", "--backbone", "resnet18"], "visual trunk"),
    (["--profile", "paper", "--dataset", "voc2007", "--data-root", "{tmp}/voc", "--methods", "dualcoop",
      "--precision", "fp32"], "needs CLIP weights"),
    # mask packs (--mask-pack; more bad packs in tests/integration/test_mask_packs.py)
    (["--mask-pack", "{tmp}/missing.npz"], "mask pack"),
    (["--mask-pack", "{tmp}/a_file"], "not a .npz file"),
    (["--mask-pack", "{tmp}/emb.npz"], "lacks the key"),
    (["--mask-pack", "{tmp}/syntax"], "is a folder"),
    (["--mask-pack", "{tmp}/emb_shape.npy"], "single .npy"),
]

# Environment variables: (name, value, a word of the one line); {tmp} as above.
ENVIRONMENT = [
    ("MLRPL_CACHE", "", "MLRPL_CACHE is set but empty"),
    ("MLRPL_CACHE", "{tmp}/a_file", "is a file"),
    ("MLRPL_CACHE", "{tmp}/loop", "loop"),
    ("MLRPL_CACHE", "{tmp}/dangling", "link to nothing"),
    ("MLRPL_HEARTBEAT_S", "abc", "MLRPL_HEARTBEAT_S"),
    ("MLRPL_HEARTBEAT_S", "nan", "MLRPL_HEARTBEAT_S"),
    ("MLRPL_HEARTBEAT_S", "-1", "MLRPL_HEARTBEAT_S"),
    ("MLRPL_PROGRESS", "fancy", "MLRPL_PROGRESS='fancy' is not valid"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_inputs")
    _files(tmp)
    return tmp


@pytest.fixture(autouse=True)
def _plugins_forgotten(forget_plugins):
    """Plugins a case imports are dropped again, so every case starts from the built-in registry."""


def test_catalogue_has_at_least_forty_kinds():
    assert len(CATALOGUE) >= 40


@pytest.mark.parametrize("args,word", CATALOGUE, ids=[" ".join(a) for a, _ in CATALOGUE])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args, word, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    args = [a.replace("{tmp}", str(inputs)) for a in args]
    code = main([*SMOKE, "--embeddings", "random", "--out", str(out), *args])   # a later flag wins
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and word.lower() in err[0].lower(), err[0]
    assert not out.exists()


def test_bad_input_leaves_an_existing_results_folder_unchanged(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.json").write_text(json.dumps({"a": 1}))
    code = main([*SMOKE, "--out", str(out), "--lr", "-1"])
    assert code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["keep.json"]


@pytest.mark.parametrize("name,value,word", ENVIRONMENT, ids=[f"{n}={v!r}" for n, v, _ in ENVIRONMENT])
def test_bad_environment_is_one_line_exit_2_and_writes_nothing(name, value, word, inputs, tmp_path, capsys,
                                                               monkeypatch):
    monkeypatch.setenv(name, value.replace("{tmp}", str(inputs)))
    out = tmp_path / "out"
    code = main([*SMOKE, "--embeddings", "random", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert word.lower() in err[0].lower(), err[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_out_folder_holding_someone_elses_report_names_is_refused_untouched(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "index.html").write_text("<p>my own page</p>")
    (out / "notes").mkdir()
    assert main([*SMOKE, "--embeddings", "random", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "index.html was not written by this suite" in err[0], err
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "notes"]
    assert (out / "index.html").read_text() == "<p>my own page</p>"
    assert main(["report", "--out", str(out)]) == 2          # the report refuses the folder alike
    assert "not written by this suite" in capsys.readouterr().err


def test_subcommand_values_are_checked(tmp_path, inputs, capsys):
    (tmp_path / "grid").mkdir()
    cases = [(["status", "--out", str(tmp_path / "grid"), "--stale-minutes", "nan"], "--stale-minutes"),
             (["status", "--out", str(tmp_path / "grid"), "--stale-minutes", "-3"], "--stale-minutes"),
             (["report", "--out", str(inputs / "a_file")], "is a file"),
             (["report", "--out", str(inputs / "loop")], "loop"),
             (["report", "--out", str(tmp_path / ("y" * 300))], "bytes")]
    for args, word in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and word in err[0], (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid"]


def test_report_and_samples_errors_are_one_line(tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path / "nowhere")]) == 2
    assert main(["samples", "-n", "0", "--out", str(tmp_path / "g.png")]) == 2
    assert main(["report", "--bogus"]) == 2
    assert main(["samples", "--out", str(tmp_path / "g.xyz")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("error: ") for line in lines)
    assert "matplotlib cannot write" in lines[3]
    assert not (tmp_path / "g.png").exists() and not list(tmp_path.iterdir())


def test_corrupt_image_in_a_run_is_one_line_naming_the_file(tmp_path, capsys):
    """Feature extraction reads images in DataLoader workers; the error still comes out as one line."""
    from tests.integration.test_real_datasets import write_voc

    root = write_voc(tmp_path / "voc")
    bad = sorted((root / "VOC2007" / "JPEGImages").glob("*.jpg"))[0] if (root / "VOC2007").is_dir() else \
        sorted(root.rglob("*.jpg"))[0]
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    code = main(["--dataset", "voc2007", "--data-root", str(root), "--profile", "smoke", "--methods", "partial_bce",
                 "--ratios", "0.5", "--epochs", "1", "--out", str(out)])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error: ")
           or "Traceback" in line]
    assert code == 2 and len(err) == 1, err                # progress bars aside: one line, no traceback
    assert bad.name in err[0] and "cannot be read" in err[0], err[0]
