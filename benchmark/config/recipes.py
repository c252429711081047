"""Training recipes as data: what each method trains with, per (method, dataset, profile), every value
with its source.

A recipe has three parts:

- :class:`TrainRecipe`, what the engine builds from: trunk, image sizes, optimizer, learning rate,
  weight decay, schedule, epochs, batch size, precision, gradient clipping. It is part of every run's
  identity (:class:`benchmark.config.run_spec.RunSpec`).
- ``config``: the method's own hyper-parameters the official script sets (per dataset), applied as
  method config values under ``--set`` (which wins); part of the identity through the run's method
  config.
- ``info``: what the official code does that the suite records without building from it (where the
  weights came from, augmentation, label word vectors, EMA, the model-selection rule, a searched grid).

Profiles:

- ``smoke`` and ``default`` are the suite's own CPU recipes (:mod:`benchmark.config.profiles`); every
  value's source is ``suite``.
- ``official`` is the method's own paper setting, its backbone and image size included, read from the
  official repository (``benchmark/config/recipes/*.json``; each value cites ``repo@commit:path:line``).
- ``paper`` is the common trunk the field compares on (ResNet-101 at 448 px) with the method's own
  optimizer, schedule, epochs, batch size, precision and loss settings. Where the official backbone is a
  ResNet-101, ``paper`` and ``official`` are the same recipe.

A method or dataset the official code has no recipe for inherits one, and says so: ``inherited`` names
what was inherited and why, and the leaderboard marks such cells.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.config.train_recipe import TRAIN_FIELDS, TrainRecipe
from benchmark.core.errors import UserError

RECIPE_DIR = Path(__file__).with_name("recipes")
TRUNK = {"backbone": "resnet101", "image_size": 448, "test_image_size": 448}
TRUNK_SOURCE = "suite: the common trunk the field compares on (ResNet-101, 448 px)"
SUITE_SOURCE = "suite: benchmark/config/profiles.py"
OFFICIAL_PROFILES = ("paper", "official")
INFO_FIELDS = ("backbone_weights", "lr_multipliers", "ema_decay", "train_augmentation", "test_augmentation",
               "word_vectors", "selection", "search_grid", "official_switches")
# Nested fields: {config field: {value, source, note}}. ``config`` is applied; ``official_switches``
# (config values that restore an official pitfall, docs/pitfalls.md) is recorded, never applied.
NESTED_FIELDS = ("config", "official_switches")


@dataclass(frozen=True)
class Recipe:
    """One resolved recipe: its training values, method config and recorded facts, with sources."""

    method: str
    dataset: str
    profile: str
    train: TrainRecipe
    config: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)     # field -> "repo@commit:path:line" | "suite: ..."
    notes: dict = field(default_factory=dict)       # field -> a short note
    inherited: str | None = None                    # what was inherited and why (None: the code's own)
    deviations: tuple[str, ...] = ()                # where this profile departs from the official code

    def to_json(self) -> dict:
        """The plain form ``recipes --format json`` prints and spec.json stores."""
        return {"method": self.method, "dataset": self.dataset, "profile": self.profile,
                **self.train.to_dict(), "config": dict(self.config), **self.info,
                "sources": dict(self.sources), "notes": dict(self.notes), "inherited": self.inherited,
                "deviations": list(self.deviations)}


# ----------------------------------------------------------------------------- the official data


@functools.lru_cache(maxsize=None)
def official_files() -> tuple[dict, ...]:
    """The recipe files of the official code bases (``benchmark/config/recipes/*.json``)."""
    out = []
    for path in sorted(RECIPE_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        data["file"] = path.name
        out.append(data)
    return tuple(out)


def _cite(data: dict, source: str) -> str:
    return source if source.startswith("suite") else f"{data['repo']}@{data['commit']}:{source}"


def _code_base(method: str) -> dict | None:
    for data in official_files():
        if any(method in entry["methods"] for entry in data["entries"]):
            return data
    return None


def _entries(data: dict, method: str, dataset: str) -> list[dict]:
    return [e for e in data["entries"] if method in e["methods"] and e["dataset"] == dataset]


def _official_values(method: str, dataset: str, seen: tuple = ()) -> tuple[dict, dict, dict, str | None]:
    """({field: value}, {field: source}, {field: note}, inherited) from the official files: the code
    base's shared values ("*"), then the dataset's own (or those of the dataset or method it
    inherits, named in ``inherited``)."""
    data = _code_base(method)
    if data is None:
        return {}, {}, {}, None
    values, sources, notes, inherited = {}, {}, {}, None
    for dset in ("*", dataset):
        for entry in _entries(data, method, dset):
            parent = entry.get("inherits")
            if parent and (parent.get("method") or parent.get("dataset")):
                target = (parent.get("method", method), parent.get("dataset", dataset))
                if target in seen or target == (method, dataset):
                    raise RuntimeError(f"recipe inheritance cycle at {method}/{dataset}")
                v, s, n, _ = _official_values(*target, seen + ((method, dataset),))
                if target[0] != method:          # another method's training values, never its config
                    v = {k: x for k, x in v.items() if k not in NESTED_FIELDS}
                    s = {k: x for k, x in s.items() if k.split(".")[0] not in NESTED_FIELDS}
                for name in NESTED_FIELDS:
                    if name in v:
                        v[name] = {**values.get(name, {}), **v[name]}
                values.update(v)
                sources.update(s), notes.update(n)
            if parent and (inherited is None or parent["why"] not in inherited):
                inherited = parent["why"] if inherited is None else f"{inherited}; {parent['why']}"
            for name, item in entry.get("values", {}).items():
                if name in NESTED_FIELDS:        # method config values, each with its own source
                    for key, sub in item.items():
                        values.setdefault(name, {})[key] = sub["value"]
                        sources[f"{name}.{key}"] = _cite(data, sub["source"])
                        if sub.get("note"):
                            notes[f"{name}.{key}"] = sub["note"]
                    continue
                values[name] = item["value"]
                sources[name] = _cite(data, item["source"])
                if item.get("note"):
                    notes[name] = item["note"]
    return values, sources, notes, inherited


def _has_dataset_entry(method: str, dataset: str) -> bool:
    data = _code_base(method)
    return data is not None and bool(_entries(data, method, dataset))


# ----------------------------------------------------------------------------- resolution


def resolve(method: str, dataset: str, profile: str) -> Recipe:
    """The recipe of ``method`` on ``dataset`` under ``profile`` (flags not applied)."""
    from benchmark.config.profiles import get_profile

    prof = get_profile(profile)
    if profile not in OFFICIAL_PROFILES:
        train = prof.train
        sources = {name: SUITE_SOURCE for name in TRAIN_FIELDS}
        info = {"backbone_weights": prof.backbone_weights, "word_vectors": "suite: --embeddings (default glove, "
                "the packaged 50-d GloVe 6B)", "selection": "suite: best validation mAP (held-out share of train)"}
        return Recipe(method, dataset, profile, train, {}, info, sources)
    values, sources, notes, inherited = _official_values(method, dataset)
    if not values:
        raise UserError(f"method '{method}' has no official recipe (benchmark/config/recipes/); "
                        "use a CPU profile (smoke | default) or add its recipe file")
    if not _has_dataset_entry(method, dataset) and inherited is None and dataset != "synthetic":
        inherited = "the official code has no recipe for this dataset; the code base's shared values apply"
    values, sources, deviations = dict(values), dict(sources), []
    # A CLIP method's trunk is its CLIP (backbone clip:<arch>): no ImageNet trunk can replace it.
    if profile == "paper" and values.get("backbone") != TRUNK["backbone"] \
            and not str(values.get("backbone", "")).startswith("clip:"):
        for name, trunk in TRUNK.items():
            if values.get(name) not in (None, trunk):
                deviations.append(f"{name}: official {values[name]}, paper profile {trunk} (common trunk)")
            values[name], sources[name] = trunk, TRUNK_SOURCE
    missing = [n for n in ("backbone", "image_size", "epochs", "batch_size", "lr", "weight_decay", "optimizer")
               if n not in values]
    if missing:
        raise UserError(f"{method} has no {profile} recipe on {dataset}: its official code ({_code_base(method)['repo']}) "
                        f"sets no {', '.join(missing)} for it; leave {method} out of this grid, or train it under "
                        "--profile default (see python run_benchmark.py recipes)")
    train = TrainRecipe.from_dict(values)
    config = dict(values.get("config") or {})
    info = {name: values[name] for name in INFO_FIELDS if name in values}
    sources = {k: v for k, v in sources.items() if k in TRAIN_FIELDS or k in INFO_FIELDS or k.split(".")[0] in NESTED_FIELDS}
    return Recipe(method, dataset, profile, train, config, info, sources, notes, inherited, tuple(deviations))


def applied(recipe: Recipe, **overrides) -> tuple[TrainRecipe, tuple[str, ...]]:
    """The training values with command-line overrides (``--lr``, ``--epochs``, ``--batch-size``,
    ``--image-size``, ``--backbone``, ``--precision``; None = not given) and the names overridden."""
    given = {k: v for k, v in overrides.items() if v is not None}
    changes = {k: v for k, v in given.items() if getattr(recipe.train, k) != v}
    if "image_size" in changes and recipe.train.test_image_size == recipe.train.image_size:
        changes["test_image_size"] = changes["image_size"]
    return recipe.train.replace(**changes), tuple(sorted(given))


def registered(profiles: tuple[str, ...] | None = None, datasets: tuple[str, ...] | None = None,
               methods: tuple[str, ...] | None = None) -> list[Recipe]:
    """Every registered method on every dataset and profile (filtered), in a stable order. A method
    without an official recipe is listed under the CPU profiles only."""
    from benchmark.config.profiles import PROFILES
    from benchmark.core.registry import METHODS, get_dataset

    names = methods or tuple(sorted(METHODS.module_dict))
    out = []
    for profile in profiles or tuple(PROFILES):
        for dataset in datasets or ("synthetic", "voc2007", "coco2014", "nuswide", "vg200", "voc2012", "cub"):
            get_dataset(dataset)
            if (profile in OFFICIAL_PROFILES) == (dataset == "synthetic"):
                continue             # official recipes are for real datasets; CPU ones for the embedded set
            for name in names:
                if profile in OFFICIAL_PROFILES and _code_base(name) is None:
                    continue
                if dataset == "vg200" and profile in OFFICIAL_PROFILES and not _has_dataset_entry(name, "vg200"):
                    continue
                try:
                    out.append(resolve(name, dataset, profile))
                except UserError:
                    if dataset not in ("voc2012", "cub"):
                        raise
                    # the single-positive datasets: a code base that never ran there may set no full recipe
    return out


def markdown(recipes: list[Recipe]) -> str:
    """The recipes as Markdown: one table per (dataset, profile) with the method config values that
    differ from the method's defaults, then the inheritance notes and every official value's source."""
    from benchmark.core.escape import markdown_cell

    lines: list[str] = []
    key, reasons = None, {}
    shown = ("backbone", "image_size", "optimizer", "lr", "weight_decay", "schedule", "epochs", "batch_size",
             "precision")
    for recipe in recipes:
        if (recipe.dataset, recipe.profile) != key:
            key = (recipe.dataset, recipe.profile)
            lines += ["", f"## {recipe.dataset}, profile {recipe.profile}", "",
                      "| method | " + " | ".join(shown) + " | config (non-default) | inherits |",
                      "|" + "---|" * (len(shown) + 3)]
        train = recipe.train.to_dict()
        mark = ""
        if recipe.inherited:
            mark = f"[{reasons.setdefault(recipe.inherited, len(reasons) + 1)}]"
        cells = [recipe.method] + [_fmt(train[name]) for name in shown]
        cells += [", ".join(f"{k}={_fmt(v)}" for k, v in sorted(_non_default(recipe).items())), mark]
        lines.append("| " + " | ".join(markdown_cell(c) for c in cells) + " |")
    if reasons:
        lines += ["", "## Inherited recipes", ""]
        lines += [f"{n}. {markdown_cell(text)}" for text, n in reasons.items()]
    lines += ["", "## Sources", ""]
    for recipe in recipes:
        cited = {k: v for k, v in recipe.sources.items() if not v.startswith("suite")}
        if recipe.profile == "official" and cited:
            lines.append(f"- **{markdown_cell(recipe.method)} / {recipe.dataset}**: " + "; ".join(
                f"{name} `{source}`" for name, source in sorted(cited.items())))
    head = ["# Recipes", "", "Each method's training recipe per dataset and profile, every official value with its source "
            "(`repo@commit:path:line`). Written by `python run_benchmark.py recipes > docs/recipes.md` from "
            "`benchmark/config/recipes/*.json`; the CPU profiles are the suite's own recipe. `config` lists the "
            "method settings the recipe sets that differ from the method's defaults.", ""]
    return "\n".join(head + lines) + "\n"


def _non_default(recipe: Recipe) -> dict:
    from benchmark.core.registry import get_method

    cls = get_method(recipe.method)
    default = cls.make_config({}, profile=recipe.profile) if cls.Config is not None else None
    return {k: v for k, v in recipe.config.items()
            if default is None or not hasattr(default, k) or _plain(getattr(default, k)) != _plain(v)}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "/".join(_fmt(v) for v in value)
    return "" if value is None else str(value)
