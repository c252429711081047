"""Image transforms: the HCP multi-scale training crop (spec 1.4) and plain test resizing."""
from __future__ import annotations

import random

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

BICUBIC = InterpolationMode.BICUBIC


class MultiScaleCrop:
    """Resize to ``scale`` x ``scale``, crop a random square whose side is drawn from
    ``scale * {1, 7/8, 6/8, 5/8, 4/8}`` (512 -> {512, 448, 384, 320, 256} in the paper recipe)."""

    def __init__(self, scale: int):
        self.scale = scale
        self.sides = sorted({max(1, round(scale * k / 8)) for k in (8, 7, 6, 5, 4)}, reverse=True)

    def __call__(self, img):
        img = img.resize((self.scale, self.scale), resample=3)  # PIL bicubic
        side = random.choice(self.sides)
        x = random.randint(0, self.scale - side)
        y = random.randint(0, self.scale - side)
        return img.crop((x, y, x + side, y + side))


def train_transform(size: int, mean, std):
    """HCP recipe: resize to size*512/448, multi-scale crop, resize to size, flip, normalise."""
    return T.Compose([
        MultiScaleCrop(round(size * 512 / 448)),
        T.Resize((size, size), interpolation=BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def eval_transform(size: int, mean, std):
    return T.Compose([T.Resize((size, size), interpolation=BICUBIC), T.ToTensor(), T.Normalize(mean, std)])
