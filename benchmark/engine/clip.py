"""CLIP models through open_clip (PyPI ``open-clip-torch``), offline only.

Its model definitions and its tokenizer (the BPE vocabulary ships in the wheel) need no network;
nothing here downloads. A run's CLIP is ``RunSpec.clip_arch`` with ``RunSpec.clip_weights``:

* a real architecture (``RN50``, ``RN101``, ``ViT-B-16``, ``ViT-L-14-336``) with a local file:
  an OpenAI checkpoint (``RN101.pt``, a TorchScript archive: its tensors are read with
  ``torch.jit.load(...).state_dict()``, which runs no pickle code, and the integer entries
  ``input_resolution``, ``context_length``, ``vocab_size`` are dropped), or an OpenCLIP checkpoint or
  plain state-dict file (``torch.load(weights_only=True)``; a ``state_dict`` entry and ``module.``
  prefixes are unwrapped). The tensors are loaded strictly into open_clip's ``<arch>-quickgelu``
  model: OpenAI's weights were trained with QuickGELU, and the plain names (nn.GELU) load the same
  tensors without an error but give other features (spec 1.3, pitfall P99).
* ``tiny-RN`` / ``tiny-ViT`` without a file: the randomly initialised small CLIPs of spec 1.3 "Tests"
  (context length 77 and vocabulary 49408, fixed by the tokenizer), for the tests and the CPU
  profiles. Seeded with :data:`TINY_SEED` (not the run seed): it stands in for a pretrained file,
  which is the same for every seed of a grid, and its frozen-feature cache is shared by them.

The identity of a CLIP is :func:`clip_fingerprint` (sha256 of the file). The returned model is
frozen (``requires_grad`` False) and in eval mode; methods reach it through ``TaskSpec.clip``.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import logging
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from benchmark.config.run_spec import CLIP_BACKBONE
from benchmark.core.errors import UserError
from benchmark.core.files import sha256_file

log = logging.getLogger(__name__)

# The suite's arch names -> open_clip model names (always the QuickGELU variant, P99).
ARCHS = {"RN50": "RN50-quickgelu", "RN101": "RN101-quickgelu", "ViT-B-16": "ViT-B-16-quickgelu",
         "ViT-L-14-336": "ViT-L-14-336-quickgelu"}
TINY_VISION = {"tiny-RN": {"layers": [1, 1, 1, 1], "width": 4, "image_size": 224},
               "tiny-ViT": {"layers": 1, "width": 128, "patch_size": 8, "image_size": 16}}
TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 1}
TINY_SEED = 0
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")   # integers in OpenAI's archives
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHTS_HINT = "an OpenAI file such as RN101.pt or an OpenCLIP checkpoint"


def check_arch(arch: str) -> None:
    if arch not in ARCHS and arch not in TINY_VISION:
        raise UserError(f"--clip-arch {arch!r} is unknown; use one of {', '.join([*ARCHS, *TINY_VISION])}")


def is_tiny(arch: str) -> bool:
    return arch in TINY_VISION


def frozen(model: nn.Module) -> nn.Module:
    model.requires_grad_(False)
    return model.eval()


def create_clip(arch: str) -> nn.Module:
    """open_clip's model for ``arch`` with its own random initialisation (global generator)."""
    import open_clip

    check_arch(arch)
    if is_tiny(arch):
        return open_clip.model.CLIP(embed_dim=16, quick_gelu=True, vision_cfg=dict(TINY_VISION[arch]),
                                    text_cfg=dict(TINY_TEXT))
    logging.disable(logging.WARNING)     # open_clip's "initialized randomly" notice: the caller loads weights
    try:
        return open_clip.create_model(ARCHS[arch], pretrained=None)
    finally:
        logging.disable(logging.NOTSET)


def tiny_clip(seed: int = TINY_SEED, arch: str = "tiny-RN") -> nn.Module:
    """The small random CLIP of spec 1.3 "Tests", reproducible from ``seed`` (the global generator is
    left as it was). In the ResNet variant every BatchNorm gets drawn affine values (open_clip
    zero-initialises each residual branch's last BN weight) and statistics calibrated on seeded
    smooth-noise images, so that every layer acts and the maps depend on the image (with arbitrary
    statistics the trunk's output hardly changes from one image to the next)."""
    if not is_tiny(arch):
        raise UserError(f"tiny_clip builds {', '.join(TINY_VISION)}, not {arch!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_clip(arch)
    gen = torch.Generator().manual_seed(seed + 1)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for module in norms:
            module.weight.copy_(0.5 + torch.rand(module.num_features, generator=gen))
            module.bias.copy_(0.1 * torch.randn(module.num_features, generator=gen))
        if norms:
            _calibrate(model.visual, norms, gen)
    return frozen(model)


def _calibrate(visual: nn.Module, norms: list[nn.BatchNorm2d], gen: torch.Generator) -> None:
    """BatchNorm running statistics = the batch statistics of 16 seeded smooth-noise images."""
    size = int(visual.image_size) if isinstance(visual.image_size, int) else int(visual.image_size[0])
    coarse = torch.randn(16, 3, size // 16, size // 16, generator=gen)
    images = nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    for module in norms:
        module.reset_running_stats()
        module.momentum = None                # a cumulative average: one batch sets the statistics
    visual.train()(images)
    for module in norms:
        module.momentum = 0.1


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_clip_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a CLIP checkpoint file (OpenAI TorchScript archive, OpenCLIP checkpoint or state dict)."""
    if not path.is_file():
        raise UserError(f"--clip-weights file {path} not found; give {WEIGHTS_HINT} (nothing is downloaded)")
    try:
        if _is_torchscript(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")       # torch.jit.load's deprecation notice
                blob = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt or foreign files
        raise UserError(f"--clip-weights file {path} could not be read ({type(exc).__name__}); give "
                        f"{WEIGHTS_HINT}") from None
    if isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict):
        blob = blob["state_dict"]
    if not isinstance(blob, dict) or not blob or not all(torch.is_tensor(v) for v in blob.values()):
        raise UserError(f"--clip-weights file {path} holds no state dict of tensors; give {WEIGHTS_HINT}")
    state = dict(blob)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return {k: v for k, v in state.items() if k not in OPENAI_EXTRA_KEYS}


def load_clip(arch: str, weights: str | Path) -> nn.Module:
    """open_clip's ``<arch>-quickgelu`` model with the tensors of ``weights``, matched strictly."""
    path = Path(weights).expanduser()
    state = read_clip_state_dict(path)
    model = create_clip(arch)
    target = model.state_dict()
    missing, unexpected = sorted(set(target) - set(state)), sorted(set(state) - set(target))
    wrong = sorted(k for k in set(target) & set(state) if target[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise UserError(f"--clip-weights {path} does not fit CLIP {arch}: missing {_few(missing)}, unexpected "
                        f"{_few(unexpected)}, other shapes {_few(wrong)}; give --clip-arch the file's architecture")
    model.load_state_dict(state, strict=True)        # float16 tensors are cast to the float32 parameters
    return frozen(model)


def _few(keys: list[str], limit: int = 4) -> str:
    return "none" if not keys else f"{len(keys)} ({', '.join(keys[:limit])}{', ...' if len(keys) > limit else ''})"


def build_clip(arch: str, weights: str | Path | None) -> nn.Module:
    """The run's CLIP: ``weights`` loaded into ``arch``; without a file only a tiny random one."""
    check_arch(arch)
    if weights is not None:
        return load_clip(arch, weights)
    if not is_tiny(arch):
        raise UserError(f"CLIP {arch} needs weights: pass --clip-weights PATH ({WEIGHTS_HINT})")
    return tiny_clip(TINY_SEED, arch)


@functools.cache
def _tiny_digest(arch: str, seed: int) -> str:
    """sha256 over the tiny random CLIP's tensors: its cache identity follows the code that draws it."""
    digest = hashlib.sha256()
    for key, tensor in tiny_clip(seed, arch).state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def clip_fingerprint(arch: str, weights: str | Path | None) -> str:
    """``arch:sha256:<hex>`` of the weights file, or ``arch:random:<seed>:<digest of its tensors>`` for
    a tiny random CLIP."""
    check_arch(arch)
    if weights is None:
        return f"{arch}:random:{TINY_SEED}:{_tiny_digest(arch, TINY_SEED)}"
    path = Path(weights).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"--clip-weights file {path} not found; give {WEIGHTS_HINT} (nothing is downloaded)")
    stat = path.stat()
    return f"{arch}:sha256:{_file_digest(str(path), stat.st_size, stat.st_mtime_ns)}"


@functools.lru_cache(maxsize=16)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a weights file, memoised per (path, size, modification time): a CLIP file is hashed once
    per process, not at every feature-cache lookup."""
    return sha256_file(Path(path))


class ClipTrunk(nn.Module):
    """The visual trunk of a ResNet CLIP (stem + layer1-4, before attention pooling): images
    ``[B, 3, H, W]`` -> maps ``[B, 32 * width, H / 32, W / 32]``. By default frozen and always in eval
    mode (``train()`` keeps it there), holding the model's own modules, not copies. ``trainable=True``
    (a card requiring "clip_trunk_trainable", finetune protocol): a trainable copy of those modules
    whose mode follows ``train()`` (BatchNorm statistics update while training); the CLIP itself, and
    so ``TaskSpec.clip``, stays frozen and unchanged."""

    def __init__(self, model: nn.Module, name: str, trainable: bool = False):
        super().__init__()
        from open_clip.modified_resnet import ModifiedResNet

        visual = model.visual
        if not isinstance(visual, ModifiedResNet):
            raise UserError(f"backbone {name}: a ViT CLIP has no convolutional feature map; the CLIP-trunk "
                            "methods (dualcoop, scpnet) need a ResNet CLIP (--clip-arch RN50 | RN101; pitfall P69)")
        stem = nn.Sequential(visual.conv1, visual.bn1, visual.act1, visual.conv2, visual.bn2, visual.act2,
                             visual.conv3, visual.bn3, visual.act3, visual.avgpool)
        layers = nn.Sequential(visual.layer1, visual.layer2, visual.layer3, visual.layer4)
        self.trainable = bool(trainable)
        self.stem, self.layers = (copy.deepcopy(stem), copy.deepcopy(layers)) if self.trainable else (stem, layers)
        self.name = name
        self.out_channels = int(visual.attnpool.v_proj.in_features)
        self.stride = 32
        self.pretrained_cfg = {"mean": CLIP_MEAN, "std": CLIP_STD}    # read by imagenet_normalization
        if self.trainable:
            self.requires_grad_(True)
        else:
            frozen(self)

    def train(self, mode: bool = True):
        return super().train(mode and self.trainable)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(images))


def clip_arch_of(backbone: str) -> str:
    """``RN101`` of the backbone name ``clip:RN101``."""
    return backbone[len(CLIP_BACKBONE):]


def clip_trunk(backbone: str, weights: str | Path | None, model: nn.Module | None = None,
               trainable: bool = False) -> ClipTrunk:
    """The :class:`ClipTrunk` of backbone ``clip:<arch>`` (of ``model`` when the caller built it),
    frozen, or a trainable copy."""
    model = model if model is not None else build_clip(clip_arch_of(backbone), weights)
    return ClipTrunk(model, backbone, trainable)
