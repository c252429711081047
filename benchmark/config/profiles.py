"""Named training profiles: how long and at what size a grid runs.

- ``smoke``: seconds per run on a CPU; what the tests use (tiny synthetic set, 64 px).
- ``default``: the embedded grid on a CPU (synthetic default size, 128 px, frozen backbone).
- ``paper``: the official HCP recipe (ResNet-101, 448 px, Adam 1e-5, wd 5e-4, 20 epochs,
  lr x0.1 at epoch 10); needs a GPU, local weights and a real dataset.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from benchmark.core.errors import UserError


@dataclass(frozen=True)
class Profile:
    name: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    optimizer: str = "Adam"
    lr_step: int | None = None          # epochs between x0.1 decays (None = constant lr)
    image_size: int = 128
    backbone: str = "tf_efficientnet_lite0"
    backbone_weights: str | None = "packaged"
    dataset_size: str = "default"       # the synthetic size this profile uses
    val_fraction: float = 0.1           # held-out share of the training set (model selection)
    eval_batch_size: int = 256
    num_workers: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", epochs=3, batch_size=32, lr=1e-3, weight_decay=1e-4, image_size=64,
                     dataset_size="tiny"),
    "default": Profile("default", epochs=9, batch_size=64, lr=1e-3, weight_decay=1e-4, lr_step=6,
                       image_size=128, dataset_size="default"),
    "paper": Profile("paper", epochs=20, batch_size=8, lr=1e-5, weight_decay=5e-4, lr_step=10,
                     image_size=448, backbone="resnet101", backbone_weights=None, dataset_size="default",
                     eval_batch_size=32, num_workers=4),
}


def get_profile(name: str, **overrides) -> Profile:
    if name not in PROFILES:
        raise UserError(f"unknown profile '{name}'; choose one of {', '.join(PROFILES)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return replace(PROFILES[name], **overrides)
