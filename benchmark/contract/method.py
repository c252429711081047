"""The Method interface every benchmarked method implements (design guide, section 4).

A method is one class in one file of ``methods/``, registered with ``@METHODS.register_module()``.
The harness gives it a :class:`TaskSpec` (what is known about the task) and, per training
iteration, a :class:`Batch` of inputs with the *observed* labels only plus a :class:`TrainContext`.
Hidden labels never reach method code, and neither do evaluation labels: an evaluation batch holds
inputs and row numbers, the engine hands the method the inputs only, and the harness's metric looks
the labels up by row. Importing this module does not import MMEngine (``--list`` stays fast).

Inputs are images in the ``finetune`` protocol and cached backbone feature maps ``[B, D, h, w]``
in the ``frozen`` protocol; a method calls :meth:`Method.features` and never needs to know which.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator

import torch
from torch import Tensor, nn

from benchmark.contract.card import MethodCard, check_no_legacy_attributes
from benchmark.contract.sample_table import read_legacy_tables
from benchmark.core.errors import UserError


@dataclass
class TaskSpec:
    """What a method may know about the task before training."""

    num_classes: int
    class_names: list[str]
    num_train: int
    feature_dim: int
    feature_size: tuple[int, int]
    protocol: str
    label_embeddings: Tensor | None = None
    label_graph: Tensor | None = None
    info: dict = field(default_factory=dict)
    # The run's frozen open_clip CLIP (eval mode, requires_grad False) when the card requires "clip",
    # else None. Not a submodule of the method: a method registers the parts it uses (so that they move
    # to the run's device and its checkpoints hold them).
    clip: nn.Module | None = None
    # When the card requires "clip_views": float16 [num_train, V, D] unit-norm CLIP image features of the
    # V views of every training row that the method's ``clip_view_rule`` names (whole image, tiles, flipped
    # copies), computed once per image with that CLIP and cached on disk; rows in training order (index
    # with ``batch.index``). Not state: a checkpoint does not hold it, a resumed run gets it again.
    clip_views: Tensor | None = None


@dataclass
class Batch:
    """One training batch: ``targets`` float {0,1} [B, C] (0 where unknown), ``observed`` bool [B, C]."""

    inputs: Tensor
    targets: Tensor
    observed: Tensor
    index: Tensor


@dataclass
class TrainContext:
    """Where training stands; set by the engine before every iteration and epoch hook."""

    epoch: int = 0
    max_epochs: int = 1
    iter_in_epoch: int = 0
    iters_per_epoch: int = 1
    seed: int = 0
    profile: str = "default"
    device: torch.device = torch.device("cpu")
    # Ranks of a torchrun launch (1 otherwise). A loss that sums over the batch multiplies by it, so
    # that DDP's gradient average equals the gradient of the global batch (benchmark.contract.collectives).
    world_size: int = 1
    # Yields Batch objects over the training set in a fixed order, without augmentation.
    iterate_train: Callable[[], Iterator[Batch]] | None = None

    @property
    def ramp(self) -> float:
        """The HCP warm-up factor: i/N during epoch 0, 1 afterwards (spec F16)."""
        return self.iter_in_epoch / self.iters_per_epoch if self.epoch == 0 else 1.0


class Method(nn.Module):
    """Base class: subclasses set ``name``, ``Config`` and ``card`` and implement the two abstract methods.

    A Method is a plain ``nn.Module``: the engine wraps it (``benchmark.engine.runner.MethodModel``) for
    MMEngine and calls only :meth:`compute_losses` with a :class:`Batch` and :meth:`predict_scores`
    with inputs, so method code never sees a data loader's batch dictionaries."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = None
    card: ClassVar[MethodCard] = MethodCard()    # requires, default grid, trunk, cost, profiles
    plugin_file: ClassVar[str | None] = None     # set by the registry for a method loaded with --plugins

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        check_no_legacy_attributes(cls)

    def __init__(self, task: TaskSpec, cfg: Any = None, backbone: nn.Module | None = None):
        super().__init__()
        self.task = task
        self.cfg = cfg if cfg is not None else (self.Config() if self.Config else None)
        if self.cfg is not None:
            self.check_config(self.cfg)          # also for a Config built by hand, not by make_config
        # In the frozen protocol the inputs are already feature maps: the backbone is Identity.
        self.backbone = backbone if backbone is not None else nn.Identity()
        self.ctx = TrainContext()
        self._register_load_state_dict_pre_hook(read_legacy_tables, with_module=True)

    # ----------------------------------------------------------------- to implement
    def compute_losses(self, batch: Batch, ctx: TrainContext) -> dict[str, Tensor]:
        """Weighted loss terms, keys ``loss_*``; a term that is not active yet is absent."""
        raise NotImplementedError

    def predict_scores(self, inputs: Tensor) -> Tensor:
        """Logits [B, C] for images or feature maps; never sees labels."""
        raise NotImplementedError

    # ----------------------------------------------------------------- optional hooks
    def on_train_epoch_start(self, ctx: TrainContext) -> None:
        """Epoch-level state (prototypes, schedules); keep it in buffers so checkpoints carry it."""

    def on_train_epoch_end(self, ctx: TrainContext) -> dict[str, float]:
        """Diagnostics to log (floats)."""
        return {}

    def recovered_labels(self) -> tuple[Tensor, Tensor] | None:
        """Optional: (index [M], pseudo-positive bool [M, C]) recovered during the last epoch.

        The harness scores them against the hidden labels for the label-recovery diagnostics;
        the method itself never sees those labels.
        """
        return None

    def param_groups(self, lr: float, weight_decay: float) -> list[dict] | None:
        """Optional parameter groups (lr multipliers, no-decay); None = one group of all params."""
        return None

    @classmethod
    def augmentation(cls, cfg: Any) -> str:
        """Optional: the name of the ``finetune`` protocol's training augmentation, one of the
        harness's pipelines (``benchmark.engine.transforms.TRAIN_PIPELINES``): ``"hcp"`` (the default,
        the HCP multi-scale crop and flip), ``"clsl"`` (resize, flip, random-colour cutout,
        RandAugment pair), ``"spml"`` (resize, flip) or ``"weak_strong"`` (two views: the ``spml``
        view and a RandAugment(3, 5) view, IGNORE). A pipeline gives a normalised [3, S, S] tensor
        per image, or a stack [V, 3, S, S] of V views, and then training ``Batch.inputs`` are
        [B, V, 3, S, S]; evaluation inputs and epoch passes (``ctx.iterate_train``) are always one
        un-augmented view [B, 3, S, S]. A method names its pipeline; the engine builds it with the
        backbone's normalisation. The ``frozen`` protocol trains on cached, un-augmented features and
        never asks."""
        return "hcp"

    @classmethod
    def clip_view_rule(cls, cfg: Any, dataset: str) -> dict | None:
        """Required with the card's "clip_views": which views of each training image the harness encodes
        with the run's CLIP (``benchmark.engine.clip_scores``): ``{"grid": G (the whole image, plus its
        G x G tiles when G > 0), "pre_resize": a size or None, "norm": "imagenet" | "clip", "flips": bool}``
        for the run's config and dataset key."""
        return None

    # ----------------------------------------------------------------- shared helpers
    def features(self, inputs: Tensor) -> Tensor:
        """Backbone feature maps [B, D, h, w] (identity on cached features)."""
        return self.backbone(inputs)

    @classmethod
    def config_fields(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls.Config)} if cls.Config is not None else set()

    @classmethod
    def make_config(cls, overrides: dict | None = None, profile: str | None = None):
        """The Config with profile values and ``--set`` overrides applied. Each value is checked
        against the field's annotation (bool, int, float, str, tuple, X | None, Literal) and the
        Config's own ``__post_init__`` checks (raising ValueError); a bad value is a UserError."""
        if cls.Config is None:
            if overrides:
                raise UserError(f"method '{cls.name}' has no config; remove its --set values {sorted(overrides)}")
            return None
        overrides = {**cls.card.overrides(profile), **dict(overrides or {})}
        names = cls.config_fields()
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise UserError(f"method '{cls.name}' has no config field(s) {unknown}; valid: {sorted(names)}")
        hints = typing.get_type_hints(cls.Config)
        values = {k: _checked(cls.name, k, v, hints.get(k)) for k, v in overrides.items()}
        try:
            cfg = cls.Config(**values)
        except (TypeError, ValueError) as exc:
            raise UserError(f"method '{cls.name}': {exc}") from None
        cls.check_config(cfg)
        return cfg

    @classmethod
    def check_config(cls, cfg) -> None:
        """Optional: raise a UserError for config values that cannot work. Runs whenever a config is
        made, so a grid refuses them before its first run."""

    def forward(self, inputs: Tensor) -> Tensor:
        """Logits for ``inputs`` (the same as :meth:`predict_scores`)."""
        return self.predict_scores(inputs)


def _checked(method: str, key: str, value, hint):
    """``value`` converted to the field's annotated type, or a UserError naming the field and type."""
    if hint is None or hint is typing.Any:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _checked(method, key, value, option)
            except Exception:  # noqa: BLE001 - try the next member of the union
                continue
    elif origin is typing.Literal:
        if value in args:
            return value
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is tuple or hint is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
    else:
        return value
    want = " or ".join(sorted({getattr(a, "__name__", repr(a)) for a in (args or (hint,))})) \
        if origin is not typing.Literal else "one of " + ", ".join(map(repr, args))
    raise UserError(f"method '{method}': --set {key}={value!r} has the wrong type; expected {want}")
