"""The training values of a run (:class:`TrainRecipe`): what the engine builds the optimizer, schedule,
precision and input sizes from. Part of every run's identity; resolved per (method, dataset, profile)
by :mod:`benchmark.config.recipes`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from benchmark.core.errors import UserError

PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("constant", "step", "multistep", "onecycle", "cosine")
OPTIMIZERS = ("Adam", "AdamW", "SGD")


@dataclass(frozen=True)
class TrainRecipe:
    """What the engine builds a run's training from. Every field is part of the run's identity."""

    backbone: str
    image_size: int
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    optimizer: str = "Adam"
    test_image_size: int | None = None        # None: the training size
    betas: tuple[float, float] | None = None  # Adam / AdamW; None = torch's default
    momentum: float | None = None             # SGD
    schedule: str = "constant"                # one of SCHEDULES
    step_size: int | None = None              # step: lr x gamma every step_size epochs
    milestones: tuple[int, ...] = ()          # multistep: lr x gamma at these epochs
    gamma: float = 0.1
    warmup_epochs: float = 0.0                # linear warm-up from lr / 100 (0 = none)
    pct_start: float | None = None            # onecycle: warm-up share of all iterations
    div_factor: float = 25.0                  # onecycle: initial lr = lr / div_factor
    final_div_factor: float = 1e4             # onecycle: final lr = initial lr / final_div_factor
    schedule_epochs: int | None = None        # onecycle / cosine: epochs the schedule spans (None = epochs;
                                              # more: training stops part-way, as ASL's code does)
    precision: str = "fp32"                   # one of PRECISIONS
    grad_clip: float | None = None            # max gradient norm (None = no clipping)

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"recipe optimizer {self.optimizer!r} is unknown; choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"recipe schedule {self.schedule!r} is unknown; choose one of {', '.join(SCHEDULES)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision {self.precision!r} is unknown; choose one of {', '.join(PRECISIONS)}")
        if self.schedule == "step" and not (isinstance(self.step_size, int) and self.step_size > 0):
            raise UserError(f"recipe schedule 'step' needs a positive step_size, not {self.step_size!r}")
        if self.schedule == "onecycle" and not (self.pct_start and 0 < self.pct_start < 1):
            raise UserError(f"recipe schedule 'onecycle' needs pct_start in (0, 1), not {self.pct_start!r}")
        if self.betas is not None:
            object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        if self.test_image_size is None:
            object.__setattr__(self, "test_image_size", self.image_size)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas) if self.betas is not None else None
        out["milestones"] = list(self.milestones)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> TrainRecipe:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def replace(self, **changes) -> TrainRecipe:
        return dataclasses.replace(self, **changes)


TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainRecipe))
