"""Named training profiles: how long and at what size a grid runs, and whose recipe it follows.

- ``smoke``: seconds per run on a CPU; what the tests use (tiny synthetic set, 64 px).
- ``default``: the embedded grid on a CPU (synthetic default size, 128 px, frozen backbone).
- ``paper``: each method's official optimizer, schedule, epochs, batch size, precision and loss settings
  on the common trunk (ResNet-101 at 448 px); needs a GPU, local weights and a real dataset.
- ``official``: each method's own paper setting, its backbone and image size included.

The CPU profiles carry the suite's own recipe (``train``); the two others resolve each method's from
the official code (:mod:`benchmark.config.recipes`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from benchmark.config.train_recipe import TrainRecipe
from benchmark.core.errors import UserError


@dataclass(frozen=True)
class Profile:
    name: str
    train: TrainRecipe | None           # the suite's recipe (CPU profiles); None = each method's official one
    backbone_weights: str | None = "packaged"   # None: the user must give --backbone-weights
    dataset_size: str = "default"       # the synthetic size this profile uses
    val_fraction: float = 0.1           # held-out share of the training set (model selection)
    num_workers: int = 0                # data-loader workers when --workers is not given
    needs_real_data: bool = False       # refused on the embedded synthetic dataset
    protocol: str | None = None         # the training protocol it is defined for (None: either)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["train"] = self.train.to_dict() if self.train else None
        return out


_CPU_TRUNK = dict(backbone="tf_efficientnet_lite0", optimizer="Adam", lr=1e-3, weight_decay=1e-4)

PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", TrainRecipe(**_CPU_TRUNK, image_size=64, epochs=3, batch_size=32),
                     dataset_size="tiny"),
    "default": Profile("default", TrainRecipe(**_CPU_TRUNK, image_size=128, epochs=9, batch_size=64,
                                              schedule="step", step_size=6)),
    "paper": Profile("paper", None, backbone_weights=None, num_workers=4, needs_real_data=True,
                     protocol="finetune"),
    "official": Profile("official", None, backbone_weights=None, num_workers=4, needs_real_data=True,
                        protocol="finetune"),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise UserError(f"unknown profile '{name}'; choose one of {', '.join(PROFILES)}")
    return PROFILES[name]
