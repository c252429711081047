"""RunSpec (one run's identity) and the expansion of a grid into runs."""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

from benchmark.core.errors import UserError
from benchmark.core.files import stable_hash

SPEC_VERSION = 1


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run's result. Its hash is the run's identity and folder name.

    ``seed`` derives every random choice: the mask seed (seed 0 = the official HCP generator),
    the validation split and training (initialisation, shuffling, dropout).
    """

    method: str
    dataset: str
    ratio: float
    seed: int
    protocol: str = "frozen"
    mask_protocol: str = "random"
    profile: str = "default"
    epochs: int = 9
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "Adam"
    lr_step: int | None = None
    image_size: int = 128
    backbone: str = "tf_efficientnet_lite0"
    backbone_weights: str | None = "packaged"
    dataset_size: str = "default"
    val_fraction: float = 0.1
    embeddings: str = "glove"
    method_config: tuple = field(default_factory=tuple)   # sorted (key, value) overrides
    preset: str | None = None             # dataset/protocol preset of a code base (hcp | clsl)
    data_root: str | None = None          # folder of a real dataset (None for synthetic)
    # Fingerprints of inputs given by path, (name, value) pairs: an embedding file's sha256, a weights
    # file's size and mtime, a real dataset's label fingerprint. A changed input is a new run.
    inputs: tuple = field(default_factory=tuple)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["method_config"] = dict(self.method_config)
        out["inputs"] = dict(self.inputs)
        out["spec_version"] = SPEC_VERSION
        return out

    def identity(self) -> dict:
        """What the run id hashes: the spec, with inputs given by path replaced by their content
        fingerprints (the same weights, embeddings or dataset on two machines at two paths is one
        run; an edited file is another)."""
        out = self.to_dict()
        prints = dict(self.inputs)
        if not prints:
            del out["inputs"]             # runs without path inputs keep the ids they always had
        for name, field_name in (("data", "data_root"), ("backbone_weights", "backbone_weights"),
                                 ("embeddings", "embeddings")):
            if name in prints:
                out[field_name] = "<fingerprinted>"
        return out

    @property
    def run_id(self) -> str:
        digest = stable_hash(self.identity(), 10)
        ratio = f"p{self.ratio:g}" if self.mask_protocol == "random" else self.mask_protocol
        return f"{self.method}__{self.dataset}__{self.protocol}__{ratio}__s{self.seed}__{digest}"

    def describe(self) -> str:
        ratio = f"{self.ratio:.0%}" if self.mask_protocol == "random" else self.mask_protocol
        return f"{self.method} {self.dataset} {ratio} seed {self.seed}"


_RANGE = re.compile(r"^\s*([0-9.]+)\s*:\s*([0-9.]+)\s*(?::\s*([0-9.]+))?\s*$")


def parse_ratios(text: str) -> list[float]:
    """``0.1:0.9`` (step 0.1, ends included), ``0.1:0.9:0.2``, ``0.1,0.5,0.9`` or ``0.3``."""
    bad = UserError(f"--ratios '{text}' is malformed; use a:b (step 0.1), a:b:step, or a comma list such as 0.1,0.5,0.9 "
                    "with values in (0, 1]")
    match = _RANGE.match(text)
    try:
        if match:
            lo, hi = float(match.group(1)), float(match.group(2))
            step = float(match.group(3)) if match.group(3) else 0.1
            if step <= 0 or hi < lo:
                raise bad
            count = int(round((hi - lo) / step)) + 1
            values = [round(lo + k * step, 6) for k in range(count) if lo + k * step <= hi + 1e-9]
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise bad from None
    if not values or any(not (0.0 < v <= 1.0) for v in values):
        raise bad
    return sorted(set(values))


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
    if mask_protocol != "random":
        ratios = [1.0]
    for dataset in datasets:
        for seed in seeds:
            for ratio in ratios:
                for method in methods:
                    runs.append(RunSpec(method=method, dataset=dataset, ratio=ratio, seed=seed,
                                        method_config=overrides_for(method, overrides, fields_of.get(method)),
                                        **common))
    return runs
