"""RunSpec (one run's identity) and the expansion of a grid into runs."""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

from benchmark.errors import UserError
from benchmark.paths import stable_hash

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

    def to_dict(self) -> dict:
        out = asdict(self)
        out["method_config"] = dict(self.method_config)
        out["spec_version"] = SPEC_VERSION
        return out

    @property
    def run_id(self) -> str:
        digest = stable_hash(self.to_dict(), 10)
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


def overrides_for(method: str, overrides: dict) -> tuple:
    """``key=v`` applies to every method, ``method.key=v`` to that method only (and wins)."""
    plain = {k: v for k, v in overrides.items() if "." not in k}
    scoped = {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith(method + ".")}
    return tuple(sorted({**plain, **scoped}.items()))


def expand_grid(methods: list[str], datasets: list[str], ratios: list[float], seeds: list[int],
                **common) -> list[RunSpec]:
    """The runs of a grid, ordered so that every method gets its low ratios early (ratio-major)."""
    runs = []
    overrides = dict(common.pop("method_config", ()))
    mask_protocol = common.get("mask_protocol", "random")
    if mask_protocol != "random":
        ratios = [1.0]
    for dataset in datasets:
        for seed in seeds:
            for ratio in ratios:
                for method in methods:
                    runs.append(RunSpec(method=method, dataset=dataset, ratio=ratio, seed=seed,
                                        method_config=overrides_for(method, overrides), **common))
    return runs
