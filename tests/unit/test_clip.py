"""CLIP through open_clip (benchmark.engine.clip): offline tokenizer and models, the checkpoint loader
(OpenAI TorchScript archives, plain and OpenCLIP state dicts), the QuickGELU variant (P99), and the
suite's CLIP forward against OpenAI's own CLIP code for the same weights (spec 1.3; fixture Y11).

The reference is OpenAI's ``clip/model.py`` from the PyPI package ``openai-clip`` 1.0.1 (the test
extra), byte-identical to github.com/openai/CLIP at commit b46f5ac (2022-05-01); it differs from the
spec's OA HEAD (d05afc4) only in ``AttentionPool2d`` querying every token instead of the mean token
(the same values up to float32 summation order) and in one f-string. Its package ``__init__`` needs
``pkg_resources``, which current setuptools no longer ships, so the tests load ``model.py`` by path
(it imports only torch and numpy)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmark.core.errors import UserError
from benchmark.core.registry import discover
from benchmark.engine import clip as engine_clip

discover()

Y11 = {"a photo of a traffic light.": [49406, 320, 1125, 539, 320, 3399, 1395, 269, 49407],
       "X X X X tv monitor.": [49406, 343, 343, 343, 343, 1583, 10198, 269, 49407]}
# (suite arch, OpenAI CLIP constructor arguments after embed_dim, image size of its inputs)
TINY_OPENAI = {"tiny-RN": ((224, (1, 1, 1, 1), 4, None, 77, 49408, 128, 2, 1), 224),
               "tiny-ViT": ((16, 1, 128, 8, 77, 49408, 128, 2, 1), 16)}


@pytest.fixture(scope="module")
def openai_clip():
    """OpenAI's ``clip/model.py`` (package openai-clip, test extra), loaded by path."""
    found = importlib.util.find_spec("clip")
    if found is None or not found.submodule_search_locations:
        pytest.skip("the test extra's openai-clip package is not installed (pip install -e .[test])")
    path = Path(next(iter(found.submodule_search_locations))) / "model.py"
    spec = importlib.util.spec_from_file_location("openai_clip_reference_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _spread_batch_norms(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.weight.copy_(0.5 + torch.rand(bn.num_features, generator=gen))
            bn.bias.copy_(0.1 * torch.randn(bn.num_features, generator=gen))
            bn.running_mean.copy_(0.1 * torch.randn(bn.num_features, generator=gen))
            bn.running_var.copy_(0.5 + torch.rand(bn.num_features, generator=gen))


def _half_representable(model: nn.Module) -> nn.Module:
    """Every float tensor rounded to float16 and back (as OpenAI's files and build_model store them)."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    return model


def _inputs(size: int):
    from methods.modules.prompts import tokenize

    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    return images, tokenize(["a photo of a dog.", "X X X X tv monitor.", "an aeroplane"])


def _same_outputs(ours, theirs, size: int, image_atol: float) -> None:
    images, ids = _inputs(size)
    with torch.no_grad():
        image_diff = (ours.encode_image(images) - theirs.encode_image(images)).abs().max().item()
        text_diff = (ours.encode_text(ids) - theirs.encode_text(ids)).abs().max().item()
        scale = ours.encode_image(images).abs().max().item()
        text_scale = ours.encode_text(ids).abs().max().item()
    print(f"max abs diff: image {image_diff:.2e} (scale {scale:.3g}), text {text_diff:.2e} (scale {text_scale:.3g})")
    assert image_diff <= image_atol * max(1.0, scale), (image_diff, scale)
    assert text_diff <= 1e-6 * max(1.0, text_scale), (text_diff, text_scale)   # float32 summation order only
    assert torch.equal(ours.logit_scale, theirs.logit_scale)


def test_tokenizer_gives_the_official_ids_offline():
    from methods.modules.prompts import tokenize

    ids = tokenize(list(Y11))
    assert ids.shape == (2, 77) and ids.dtype == torch.long
    for row, expected in zip(ids, Y11.values()):
        assert row[:len(expected)].tolist() == expected and not row[len(expected):].any()
        assert int(row.argmax()) == len(expected) - 1           # EOT (49407) is the argmax


def test_open_clip_imports_builds_and_tokenizes_with_the_network_cut():
    code = ("import socket\n"
            "def cut(*a, **k):\n    raise OSError('network used')\n"
            "socket.socket.connect = cut\nsocket.create_connection = cut\n"
            "import open_clip\n"
            "ids = open_clip.get_tokenizer('RN101-quickgelu')(['a photo of a traffic light.'])\n"
            "assert ids[0, :9].tolist() == [49406, 320, 1125, 539, 320, 3399, 1395, 269, 49407]\n"
            "from benchmark.engine.clip import tiny_clip\n"
            "tiny_clip()\nprint('offline ok')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                          cwd=Path(__file__).resolve().parents[2], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0 and "offline ok" in done.stdout, done.stderr[-2000:]


def test_real_archs_are_the_quickgelu_models_and_plain_gelu_changes_features():
    import open_clip

    for arch, name in engine_clip.ARCHS.items():
        assert name == f"{arch}-quickgelu" and open_clip.get_model_config(name)["quick_gelu"] is True
    tiny = engine_clip.tiny_clip()
    gelu = open_clip.model.CLIP(embed_dim=16, quick_gelu=False, vision_cfg=dict(engine_clip.TINY_VISION["tiny-RN"]),
                                text_cfg=dict(engine_clip.TINY_TEXT)).eval()
    gelu.load_state_dict(tiny.state_dict(), strict=True)       # loads without any error (P99) ...
    _, ids = _inputs(224)
    with torch.no_grad():
        assert (gelu.encode_text(ids) - tiny.encode_text(ids)).abs().max() > 1e-3    # ... but computes otherwise


def test_tiny_clip_is_reproducible_frozen_and_leaves_the_global_generator_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    first = engine_clip.tiny_clip(0)
    assert torch.equal(torch.rand(3), expected)
    second, other = engine_clip.tiny_clip(0), engine_clip.tiny_clip(1)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    assert not torch.equal(first.visual.conv1.weight, other.visual.conv1.weight)
    assert not first.training and not any(p.requires_grad for p in first.parameters())
    assert (first.visual.layer1[0].bn3.weight != 0).all()       # every residual branch acts


@pytest.mark.parametrize("arch", sorted(TINY_OPENAI))
def test_open_clip_state_dict_in_openais_clip_gives_the_same_forward(arch, openai_clip):
    ours = _half_representable(engine_clip.tiny_clip(3, arch))     # build_model keeps conv/linear in fp16
    theirs = openai_clip.build_model(dict(ours.state_dict())).float().eval()
    _same_outputs(ours, theirs, TINY_OPENAI[arch][1], image_atol=1e-5)


@pytest.mark.parametrize("arch, archive", [("tiny-RN", "torchscript"), ("tiny-ViT", "torchscript"),
                                           ("tiny-ViT", "state_dict"), ("tiny-RN", "openclip_checkpoint")])
def test_openai_weights_load_into_the_suites_clip_with_the_same_forward(arch, archive, openai_clip, tmp_path):
    args, size = TINY_OPENAI[arch]
    torch.manual_seed(4)
    theirs = openai_clip.CLIP(16, *args).eval()
    _spread_batch_norms(theirs, 4)
    path = tmp_path / f"{arch}.pt"
    if archive == "torchscript":                # the layout of OpenAI's RN101.pt: a TorchScript archive
        for name in engine_clip.OPENAI_EXTRA_KEYS:   # with the integer entries open_clip does not know
            theirs.__dict__.pop(name, None)
            theirs.register_buffer(name, torch.tensor(77))
        images, ids = _inputs(size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.trace(theirs, (images[:1], ids[:1]), check_trace=False).save(str(path))
    elif archive == "state_dict":
        torch.save(theirs.state_dict(), path)
    else:                                       # OpenCLIP's training checkpoint: DDP prefixes, other entries
        torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in theirs.state_dict().items()}},
                   path)
    ours = engine_clip.load_clip(arch, path)
    assert not ours.training and not any(p.requires_grad for p in ours.parameters())
    _same_outputs(ours, theirs, size, image_atol=1e-5)


def test_loader_errors_are_one_line_naming_the_file_and_the_fix(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    vit = tmp_path / "vit.pt"
    torch.save(engine_clip.tiny_clip(0, "tiny-ViT").state_dict(), vit)
    cases = [(tmp_path / "missing.pt", "not found"), (garbage, "could not be read"), (vit, "does not fit CLIP tiny-RN")]
    for path, words in cases:
        with pytest.raises(UserError) as err:
            engine_clip.load_clip("tiny-RN", path)
        assert str(path) in str(err.value) and words in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="--clip-weights"):
        engine_clip.build_clip("RN101", None)                  # no random init at paper scale
    with pytest.raises(UserError, match="--clip-arch"):
        engine_clip.build_clip("RN102", None)


def test_fingerprint_is_the_files_sha256(tmp_path):
    import hashlib

    path = tmp_path / "w.pt"
    torch.save(engine_clip.tiny_clip().state_dict(), path)
    assert engine_clip.clip_fingerprint("tiny-RN", path) == f"tiny-RN:sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"
    tiny = engine_clip.clip_fingerprint("tiny-RN", None)
    assert tiny.startswith(f"tiny-RN:random:{engine_clip.TINY_SEED}:") and tiny != engine_clip.clip_fingerprint(
        "tiny-ViT", None)


def test_trunk_is_the_visual_tower_before_attention_pooling_and_refuses_vit():
    model = engine_clip.tiny_clip(2)
    trunk = engine_clip.ClipTrunk(model, "clip:tiny-RN")
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        maps = trunk(images)
        assert maps.shape == (2, trunk.out_channels, 7, 7) and trunk.out_channels == 128
        assert torch.equal(model.visual.attnpool(maps), model.encode_image(images))
    trunk.train()
    assert not trunk.training and not any(p.requires_grad for p in trunk.parameters())
    assert trunk.pretrained_cfg["mean"] == engine_clip.CLIP_MEAN
    with pytest.raises(UserError, match="P69"):
        engine_clip.ClipTrunk(engine_clip.tiny_clip(0, "tiny-ViT"), "clip:tiny-ViT")


def test_prompt_text_path_equals_encode_text_here_and_in_openais_code(openai_clip):
    from methods.modules.prompts import PromptTextEncoder

    model = _half_representable(engine_clip.tiny_clip(6))
    theirs = openai_clip.build_model(dict(model.state_dict())).float().eval()
    _, ids = _inputs(224)
    with torch.no_grad():
        ours = PromptTextEncoder(model)(model.token_embedding(ids), ids)
        assert torch.equal(ours, model.encode_text(ids))
        assert (ours - theirs.encode_text(ids)).abs().max() <= 1e-6 * ours.abs().max()   # summation order


def test_dense_tokens_average_to_the_attention_pool_under_uniform_attention(openai_clip):
    """With the query projection zeroed every attention weight is 1/(HW+1): the official attention
    pool's output (open_clip's and OpenAI's) is then the mean of the dense tokens (spec 2.2)."""
    from methods.modules.dense_clip import DenseCLIPTokens

    model = engine_clip.tiny_clip(7)
    with torch.no_grad():
        model.visual.attnpool.q_proj.weight.zero_()
        model.visual.attnpool.q_proj.bias.zero_()
    _half_representable(model)
    theirs = openai_clip.build_model(dict(model.state_dict())).float().eval()
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        maps = engine_clip.ClipTrunk(model, "clip:tiny-RN")(images)
        tokens = DenseCLIPTokens(model.visual)(maps)
        assert tokens.shape == (2, 50, 16)
        for pooled in (model.encode_image(images), theirs.encode_image(images)):
            assert (tokens.mean(dim=1) - pooled).abs().max() <= 1e-5 * pooled.abs().max()


def test_positional_embedding_interpolates_the_grid_rows_and_columns_in_order():
    from methods.modules.dense_clip import interpolated_positions

    rows = torch.arange(7.0).repeat_interleave(7)                 # value = grid row i of position i * 7 + j
    embedding = torch.cat([torch.full((1, 2), -5.0), torch.stack([rows, torch.ones(49)], dim=1)])
    assert interpolated_positions(embedding, 7, 7) is embedding
    out = interpolated_positions(embedding, 4, 3)
    assert out.shape == (13, 2) and torch.equal(out[0], embedding[0])
    grid = out[1:, 0].reshape(4, 3)
    assert torch.allclose(grid, grid[:, :1].expand(4, 3)) and (grid[1:, 0] > grid[:-1, 0]).all()
    assert torch.allclose(out[1:, 1], torch.ones(12))


def _grid(*argv: str) -> list:
    """The RunSpecs the command line plans on the smoke profile (nothing is read or trained)."""
    from benchmark.cli.parser import run_parser
    from benchmark.cli.plan import grid_runs

    base = ["--profile", "smoke", "--ratios", "0.5", "--embeddings", "random"]
    return grid_runs(run_parser().parse_args([*base, *argv]))[0]


def test_cli_plans_dualcoop_on_the_tiny_clip_trunk_and_leaves_other_runs_unchanged():
    both = {r.method: r for r in _grid("--methods", "partial_bce", "dualcoop")}
    alone = _grid("--methods", "partial_bce")[0]
    assert both["partial_bce"].run_id == alone.run_id and "clip_arch" not in alone.to_dict()
    run = both["dualcoop"]
    assert (run.backbone, run.clip_arch, run.clip_weights, run.backbone_weights) == ("clip:tiny-RN", "tiny-RN",
                                                                                    None, None)
    assert run.to_dict()["clip_arch"] == "tiny-RN" and run.trunk_weights is None


def test_clip_weights_enter_the_run_identity_by_content_and_are_checked_before_any_run(tmp_path):
    import hashlib
    import shutil

    from benchmark.cli.preflight import check_grid

    first, other, vit = tmp_path / "a.pt", tmp_path / "c.pt", tmp_path / "vit.pt"
    torch.save(engine_clip.tiny_clip(0).state_dict(), first)
    torch.save(engine_clip.tiny_clip(1).state_dict(), other)
    torch.save(engine_clip.tiny_clip(0, "tiny-ViT").state_dict(), vit)
    (tmp_path / "moved").mkdir()
    moved = Path(shutil.copy(first, tmp_path / "moved" / "b.pt"))

    def planned(path: Path, arch: str = "tiny-RN"):
        runs = _grid("--methods", "dualcoop", "--clip-arch", arch, "--clip-weights", str(path))
        return check_grid(runs, tmp_path / "out")[0]

    a, b, c = planned(first), planned(moved), planned(other)
    assert a.run_id == b.run_id != c.run_id != _grid("--methods", "dualcoop")[0].run_id
    assert dict(a.inputs)["clip_weights"] == hashlib.sha256(first.read_bytes()).hexdigest()[:16]
    assert a.identity()["clip_weights"] == "<fingerprinted>" and a.trunk_weights == str(first.resolve())
    with pytest.raises(UserError, match="P69"):
        planned(vit, "tiny-ViT")
    with pytest.raises(UserError, match="does not fit CLIP tiny-RN"):
        planned(vit)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
