"""A method's card: everything the harness needs to know about a method besides its code, in one
declarative value (``card = MethodCard(...)`` on the class). The harness reads it to build the task
(``requires``), the default grid (``default_grid``), the reports (``trunk_baseline``), the order of a
parallel grid (``relative_cost``) and the config values of the CPU profiles (``profile_overrides``).
None of it changes what a method computes except ``profile_overrides``, which every run's spec.json
records. How a method trains (optimizer, schedule, batch size, precision) is its recipe, data under
``benchmark/config/recipes/`` (:mod:`benchmark.config.recipes`), not part of the card.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from benchmark.core.errors import UserError

# What a method may ask the harness for: TaskSpec.label_embeddings, TaskSpec.label_graph and
# TaskSpec.info["expected_num_pos"] (the mean number of positives per training image, estimated from
# observed labels, or, when the mask has no observed negative, from the hidden labels and then
# recorded as privileged). TaskSpec.info always holds "mask_protocol" and "dataset" (the dataset key, e.g.
# "coco2014": official recipes set some loss weights per dataset; not privileged). "clip": TaskSpec.clip,
# the run's frozen open_clip model (--clip-arch / --clip-weights; the tiny random one on the CPU
# profiles). "clip_trunk" (with "clip"): the backbone is that CLIP's visual trunk (stem + layer1-4 of a
# ResNet CLIP, frozen), in both protocols and in the frozen feature cache. "clip_trunk_trainable" (with
# "clip_trunk"): in the finetune protocol that trunk is a trainable copy, in train mode while the model
# trains (the CLIP of TaskSpec.clip stays frozen); the frozen protocol still trains on its cached maps.
# "clip_views" (with "clip"): TaskSpec.clip_views, per training row the cached CLIP image features of the
# views the method's ``clip_view_rule`` names (computed once per image from the images, in both protocols).
REQUIREMENTS = frozenset({"label_embeddings", "label_graph", "expected_num_pos", "clip", "clip_trunk",
                          "clip_trunk_trainable", "clip_views"})

# Class attributes of earlier versions that now live on the card; a class that still sets one is refused.
LEGACY_ATTRIBUTES = {"requires": "requires", "in_default_grid": "default_grid", "trunk_baseline": "trunk_baseline",
                     "relative_cost": "relative_cost", "profile_overrides": "profile_overrides"}
# Class attributes and hooks of earlier versions that moved out of the method, with where they went.
MOVED = {"paper_batch_size": "the method's recipe (batch_size in benchmark/config/recipes/*.json)",
         "optim_recipe": "the method's recipe (optimizer and schedule in benchmark/config/recipes/*.json)"}


DISPLAY_MAX = 40            # characters of a display name


@dataclass(frozen=True)
class MethodCard:
    """What the harness knows about a method.

    - ``requires``: harness inputs the method needs (a subset of :data:`REQUIREMENTS`).
    - ``default_grid``: trained by ``python run_benchmark.py`` without ``--methods``.
    - ``trunk_baseline``: the baseline that shares the method's architecture (e.g. ``ssgrl`` for the
      SARL methods); reports show the difference to it beside the difference to ``partial_bce``.
    - ``relative_cost``: rough training time relative to partial_bce on the same data and epochs; a
      parallel grid starts the longest runs first. It orders runs, never changes results.
    - ``profile_overrides``: ``{profile: {config field: value}}``, e.g. smaller layers on CPU
      profiles; ``--set`` wins over these.
    - ``display_name``: the method's name as papers print it (``Partial-BCE``, ``LL-Ct``), recorded in
      each run's spec.json and used by the LaTeX tables; None = the registry key. Only a card set on
      the class itself names it (:func:`display_name`): a subclass that inherits its base's card is
      not shown under the base's name.
    """

    requires: frozenset[str] = frozenset()
    default_grid: bool = False
    trunk_baseline: str | None = None
    relative_cost: float = 1.0
    profile_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    display_name: str | None = None

    def __post_init__(self):
        requires = frozenset(self.requires)
        unknown = sorted(requires - REQUIREMENTS)
        if unknown:
            raise UserError(f"MethodCard requires {unknown}: unknown; use some of {sorted(REQUIREMENTS)}")
        if "clip_trunk_trainable" in requires and not {"clip", "clip_trunk"} <= requires:
            raise UserError("MethodCard requires 'clip_trunk_trainable' without 'clip' and 'clip_trunk': a trainable "
                            "CLIP trunk is the run's CLIP's trunk; require all three")
        if "clip_views" in requires and "clip" not in requires:
            raise UserError("MethodCard requires 'clip_views' without 'clip': the views are encoded with the run's "
                            "CLIP; require both")
        if not (isinstance(self.relative_cost, (int, float)) and self.relative_cost > 0):
            raise UserError(f"MethodCard relative_cost={self.relative_cost!r} must be a positive number")
        name = self.display_name
        if name is not None and not (isinstance(name, str) and 0 < len(name) <= DISPLAY_MAX and name.isprintable()
                                     and name.strip() == name):
            raise UserError(f"MethodCard display_name={name!r} must be a printable one-line name of at most "
                            f"{DISPLAY_MAX} characters, e.g. 'Partial-BCE'")
        overrides = {str(p): MappingProxyType(dict(v)) for p, v in dict(self.profile_overrides).items()}
        object.__setattr__(self, "requires", requires)
        object.__setattr__(self, "profile_overrides", MappingProxyType(overrides))

    def overrides(self, profile: str | None) -> dict[str, Any]:
        """Config values of ``profile`` (empty when the card names none)."""
        return dict(self.profile_overrides.get(profile, {}))

    def replace(self, **changes) -> MethodCard:
        """A copy with ``changes``: a subclass's card built from its base's."""
        return dataclasses.replace(self, **changes)


def check_no_legacy_attributes(cls) -> None:
    """Refuse a Method subclass that sets card fields as class attributes (the layout before cards)."""
    for attr, card_field in LEGACY_ATTRIBUTES.items():
        if attr in vars(cls):
            raise UserError(f"method class {cls.__name__} sets '{attr}' on the class; it now belongs on the "
                            f"method's card: card = MethodCard({card_field}=...) (benchmark.contract.card)")
    for attr, where in MOVED.items():
        if attr in vars(cls):
            raise UserError(f"method class {cls.__name__} sets '{attr}'; it now belongs in {where}")
    if "card" in vars(cls) and not isinstance(cls.card, MethodCard):
        raise UserError(f"method class {cls.__name__}: 'card' must be a benchmark.contract.card.MethodCard")


def display_name(cls) -> str:
    """The name a report prints for method class ``cls``: its own card's ``display_name``, else its key."""
    own = vars(cls).get("card")
    return (own.display_name if isinstance(own, MethodCard) else None) or cls.name
