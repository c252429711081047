"""RunSpec (one run's identity) and the expansion of a grid into runs."""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field

from benchmark.config.train_recipe import TrainRecipe
from benchmark.core.errors import UserError
from benchmark.core.files import stable_hash

# The version of the semantics a run's numbers depend on beyond its fields: model selection, metrics,
# masks. It is hashed into every run id, so a run of an older version is never "done" for this code,
# and reports refuse to merge it with new ones. 2: the single-positive ``val`` rule (masks without
# observed negatives select on the hidden labels of the validation rows, recorded as privileged) and
# recipes as data (benchmark.config.recipes).
SPEC_VERSION = 2

# Fields that describe where and how a run was executed rather than what it computes; they are part
# of its identity (the last digits depend on them) and reports treat runs that differ only here as one
# configuration (reports.variants).
EXECUTION_FIELDS = ("device", "threads")

# A backbone named ``clip:<arch>`` is the visual trunk of the run's CLIP (``RunSpec.clip_arch``), for the
# methods whose card requires "clip_trunk" (benchmark.engine.clip). CPU profiles without --clip-weights
# use the tiny random CLIP; the RunSpec fields of a method that needs no CLIP stay None and are left out
# of its record and identity, so the run ids of the other methods do not change.
# Mask protocols without a known-label proportion (one run per seed, ratio recorded as 1.0); the
# others (random, random_clsl) train at every proportion of the grid.
NO_PROPORTION = ("single_positive",)

CLIP_BACKBONE = "clip:"
CPU_CLIP_ARCH = "tiny-RN"
CPU_CLIP_VIT = "tiny-ViT"              # the CPU stand-in of a method whose official CLIP is a ViT
CLIP_FIELDS = ("clip_arch", "clip_weights")


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run's result. Its hash is the run's identity and folder name.

    ``seed`` derives every random choice: the mask seed (seed 0 = the official HCP generator),
    the validation split and training (initialisation, shuffling, dropout). ``train`` holds the
    resolved recipe's training values (:mod:`benchmark.config.recipes`) with flags applied;
    ``recipe_overrides`` names the values flags changed (recorded, not hashed: the values are).
    """

    method: str
    dataset: str
    ratio: float
    seed: int
    train: TrainRecipe
    protocol: str = "frozen"
    mask_protocol: str = "random"
    profile: str = "default"
    backbone_weights: str | None = "packaged"
    dataset_size: str = "default"
    val_fraction: float = 0.1
    embeddings: str | None = "glove"
    method_config: tuple = field(default_factory=tuple)   # sorted (key, value) overrides
    preset: str | None = None             # dataset/protocol preset of a code base (hcp | clsl)
    data_root: str | None = None          # folder of a real dataset (None for synthetic)
    # Content fingerprints of inputs given by path, (name, value) pairs: a real dataset's label
    # fingerprint, the sha256 of a weights or embedding file, of a file named in a --set value
    # (``set:<key>``). A changed input is a new run; one input at two paths is one run.
    inputs: tuple = field(default_factory=tuple)
    device: str = "cpu"                   # execution: "cpu" | "cuda"
    threads: int | None = None            # execution: torch CPU threads per process
    recipe_overrides: tuple = field(default_factory=tuple)
    clip_arch: str | None = None          # the CLIP the task gets (methods requiring "clip"): RN101, tiny-RN, ...
    clip_weights: str | None = None       # its weights file (None: the tiny random CLIP)

    @property
    def trunk_weights(self) -> str | None:
        """The backbone's weights: the CLIP file for a ``clip:`` backbone, else ``backbone_weights``."""
        return self.clip_weights if self.backbone.startswith(CLIP_BACKBONE) else self.backbone_weights

    @property
    def epochs(self) -> int:
        return self.train.epochs

    @property
    def batch_size(self) -> int:
        return self.train.batch_size

    @property
    def lr(self) -> float:
        return self.train.lr

    @property
    def weight_decay(self) -> float:
        return self.train.weight_decay

    @property
    def image_size(self) -> int:
        return self.train.image_size

    @property
    def backbone(self) -> str:
        return self.train.backbone

    @property
    def precision(self) -> str:
        return self.train.precision

    def to_dict(self) -> dict:
        out = asdict(self)
        out["train"] = self.train.to_dict()
        out["method_config"] = dict(self.method_config)
        out["inputs"] = dict(self.inputs)
        out["recipe_overrides"] = list(self.recipe_overrides)
        out["spec_version"] = SPEC_VERSION
        if self.clip_arch is None and self.clip_weights is None:
            for name in CLIP_FIELDS:
                del out[name]
        return out

    def identity(self) -> dict:
        """What the run id hashes: the spec, with inputs given by path replaced by their content
        fingerprints (the same weights, embeddings, dataset or ``--set`` file on two machines at two
        paths is one run; an edited file is another)."""
        out = self.to_dict()
        del out["recipe_overrides"]
        prints = dict(self.inputs)
        for name, field_name in (("data", "data_root"), ("backbone_weights", "backbone_weights"),
                                 ("embeddings", "embeddings"), ("clip_weights", "clip_weights")):
            if name in prints:
                out[field_name] = "<fingerprinted>"
        for key in out["method_config"]:
            if f"set:{key}" in prints:
                out["method_config"][key] = "<fingerprinted>"
        return out

    def numbers_identity(self) -> dict:
        """The identity without the execution fields: what reports group runs by."""
        out = self.identity()
        for name in EXECUTION_FIELDS:
            out.pop(name, None)
        return out

    @property
    def run_id(self) -> str:
        digest = stable_hash(self.identity(), 10)
        ratio = self.mask_protocol if self.mask_protocol in NO_PROPORTION else f"p{self.ratio:g}"
        if self.mask_protocol not in NO_PROPORTION and self.mask_protocol != "random":
            ratio = f"{self.mask_protocol}-{ratio}"
        return f"{self.method}__{self.dataset}__{self.protocol}__{ratio}__s{self.seed}__{digest}"

    def describe(self) -> str:
        ratio = self.mask_protocol if self.mask_protocol in NO_PROPORTION else f"{self.ratio:.0%}"
        if self.mask_protocol not in NO_PROPORTION and self.mask_protocol != "random":
            ratio = f"{ratio} ({self.mask_protocol})"
        return f"{self.method} {self.dataset} {ratio} seed {self.seed}"


_RANGE = re.compile(r"^\s*([0-9.]+)\s*:\s*([0-9.]+)\s*(?::\s*([0-9.]+))?\s*$")


RATIO_DECIMALS = 4          # proportions are multiples of 0.0001: two values never make one mask twice
MAX_RATIOS = 200


def parse_ratios(text: str) -> list[float]:
    """``0.1:0.9`` (step 0.1, ends included), ``0.1:0.9:0.2``, ``0.1,0.5,0.9`` or ``0.3``. Values are
    in (0, 1], multiples of 0.0001 (a value with more decimals is refused rather than silently made a
    second column of the same mask), at most :data:`MAX_RATIOS` of them."""
    bad = UserError(f"--ratios {text!r} is malformed; use a:b (step 0.1), a:b:step, or a comma list such as "
                    "0.1,0.5,0.9 with values in (0, 1]")
    match = _RANGE.match(text)
    try:
        if match:
            lo, hi = float(match.group(1)), float(match.group(2))
            step = float(match.group(3)) if match.group(3) else 0.1
            if not all(math.isfinite(v) for v in (lo, hi, step)) or step <= 0 or hi < lo:
                raise bad
            count = (hi - lo) / step + 1
            if not math.isfinite(count) or count > MAX_RATIOS:
                raise UserError(f"--ratios {text!r} makes {count:.3g} proportions, more than {MAX_RATIOS}; use a "
                                "larger step")
            values = [lo + k * step for k in range(int(round(count - 1)) + 1) if lo + k * step <= hi + 1e-9]
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise bad from None
    if not values or any(not (0.0 < v <= 1.0) for v in values):
        raise bad
    if len(values) > MAX_RATIOS:
        raise UserError(f"--ratios names {len(values)} proportions, more than {MAX_RATIOS}; give fewer")
    for value in values:
        if abs(value - round(value, RATIO_DECIMALS)) > 1e-12 or round(value, RATIO_DECIMALS) <= 0:
            raise UserError(f"--ratios value {value:.10g} has more than {RATIO_DECIMALS} decimals; proportions are "
                            "multiples of 0.0001 (two values closer than that would train one mask twice)")
    return sorted({round(v, RATIO_DECIMALS) for v in values})


def parse_overrides(items: list[str] | None) -> tuple:
    """``key=value`` pairs (values parsed as JSON when possible) into a sorted, hashable tuple."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set '{item}' is malformed; use key=value, e.g. --set prototype_sign=official")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return tuple(sorted(out.items()))


def overrides_for(method: str, overrides: dict, fields: set[str] | None = None) -> tuple:
    """``key=v`` applies to every method that has the field ``key`` (every method when ``fields`` is
    None), ``method.key=v`` to that method only (and wins)."""
    plain = {k: v for k, v in overrides.items() if "." not in k and (fields is None or k in fields)}
    scoped = {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith(method + ".")}
    return tuple(sorted({**plain, **scoped}.items()))


def check_overrides(overrides: dict, fields_of: dict[str, set[str]]) -> None:
    """Every ``--set`` key must reach a method of the grid: ``method.key`` names a method of the grid
    with that field, a plain ``key`` is a field of at least one of them."""
    grid = ", ".join(fields_of)
    for key in overrides:
        if "." in key:
            method, name = key.split(".", 1)
            if method not in fields_of:
                raise UserError(f"--set {key}: '{method}' is not a method of this grid ({grid}); "
                                "use one of them, or add it with --methods")
            if name not in fields_of[method]:
                raise UserError(f"--set {key}: method '{method}' has no config field '{name}'; "
                                f"valid: {', '.join(sorted(fields_of[method]))}")
        elif not any(key in f for f in fields_of.values()):
            raise UserError(f"--set {key}: no method of this grid ({grid}) has a config field '{key}'; "
                            "see the Config classes in methods/")


def expand_grid(methods: list[str], datasets: list[str], ratios: list[float], seeds: list[int],
                fields_of: dict[str, set[str]] | None = None, **common) -> list[RunSpec]:
    """The runs of a grid, ordered so that every method gets its low ratios early (ratio-major).
    ``fields_of`` (method -> config field names) scopes plain ``--set`` keys to the methods that
    have them."""
    runs = []
    fields_of = fields_of or {}
    overrides = dict(common.pop("method_config", ()))
    mask_protocol = common.get("mask_protocol", "random")
    if mask_protocol in NO_PROPORTION:
        ratios = [1.0]
    for dataset in datasets:
        for seed in seeds:
            for ratio in ratios:
                for method in methods:
                    runs.append(RunSpec(method=method, dataset=dataset, ratio=ratio, seed=seed,
                                        method_config=overrides_for(method, overrides, fields_of.get(method)),
                                        **common))
    return runs


def profile_spec(method: str, profile: str = "smoke", ratio: float = 0.5, seed: int = 0, train: dict | None = None,
                 **fields) -> RunSpec:
    """A RunSpec of a CPU profile on the embedded dataset, as the command line resolves it without
    flags; ``train`` changes recipe values (e.g. ``{"epochs": 2}``), ``fields`` other RunSpec fields."""
    from benchmark.config.profiles import get_profile

    prof = get_profile(profile)
    if prof.train is None:
        raise UserError(f"profile_spec builds CPU-profile runs; '{profile}' resolves each method's own recipe")
    recipe = prof.train.replace(**(train or {}))
    values = dict(method=method, dataset="synthetic", ratio=ratio, seed=seed, train=recipe, profile=profile,
                  dataset_size=prof.dataset_size, val_fraction=prof.val_fraction,
                  backbone_weights=prof.backbone_weights, threads=None)
    values.update(_cpu_clip(method, fields.get("clip_arch"), recipe, train or {}))
    values.update(fields)
    return RunSpec(**values)


def _cpu_clip(method: str, arch: str | None, recipe: TrainRecipe, train: dict) -> dict:
    """The CLIP fields of a CPU-profile run: a method requiring "clip" gets the tiny random CLIP (or
    ``arch``); one requiring "clip_trunk" trains on that CLIP's visual trunk (backbone ``clip:<arch>``)."""
    from benchmark.core.registry import METHODS

    cls = METHODS.module_dict.get(method)
    requires = cls.card.requires if cls is not None else frozenset()
    if "clip" not in requires:
        return {}
    out = {"clip_arch": arch or cpu_clip_arch(method)}
    if "clip_trunk" in requires and "backbone" not in train:
        out.update(train=recipe.replace(backbone=CLIP_BACKBONE + out["clip_arch"]), backbone_weights=None)
    return out


def official_clip_arch(method: str) -> str | None:
    """The CLIP architecture a method's official recipe names (``benchmark/config/recipes/*.json``, the
    code base's shared entry): the arch of a ``clip:<arch>`` backbone (the CLIP-trunk methods), else its
    ``clip_model`` value (the pseudo-label CLIP of aevlp / vlpl, whose backbone is no CLIP); None without."""
    from benchmark.config.recipes import official_files

    for data in official_files():
        for entry in data["entries"]:
            if method in entry["methods"] and entry["dataset"] == "*":
                values = entry["values"]
                backbone = str(values.get("backbone", {}).get("value", ""))
                if backbone.startswith(CLIP_BACKBONE):
                    return backbone[len(CLIP_BACKBONE):]
                if "clip_model" in values:
                    return values["clip_model"]["value"]
    return None


def cpu_clip_arch(method: str) -> str:
    """The tiny random CLIP of the CPU profiles: tiny-ViT where the official CLIP is a ViT, else tiny-RN."""
    official = official_clip_arch(method) or ""
    return CPU_CLIP_VIT if official.startswith("ViT") else CPU_CLIP_ARCH
