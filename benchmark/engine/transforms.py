"""Image transforms: the HCP multi-scale training crop (spec 1.4), the CLSL training pipeline
(spec 8.5: cutout + RandAugment), the SPML resize-and-flip pipeline, IGNORE's two-view (weak, strong)
pipeline (wave-3 spec 1.4 item 3), SCPNet's three views (weak, weak, strong; wave-3 CLIP spec 3.5) and
plain test resizing."""
from __future__ import annotations

import random

import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from benchmark.core.errors import UserError

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


# ----------------------------------------------------------------------------- CLSL code base (spec 8.5)
class RandomColourCutout:
    """The CLSL code's ``CutoutPIL`` (``lib/cutout.py``, cutout_factor 0.5): one box painted with a
    single random RGB colour.

    With ``c = int(factor * side + 0.5)`` per axis, a centre drawn uniformly over the pixels and the
    corners ``centre -/+ c // 2`` clipped to the image, PIL's ``ImageDraw.rectangle`` paints the
    box *including* both corners, so an unclipped box is ``2 * (c // 2) + 1`` pixels wide (225 px at
    448: half the side plus one pixel), as in the code. Differences, none of which changes the
    distribution of boxes on the square images of the CLSL pipeline:

    - the code names ``img.size`` (width, height) as (h, w), so on a non-square image its box is
      transposed; here width-based sizes go along x and height-based ones along y;
    - the centre is drawn with Python's ``random`` (the code uses ``np.random``, which torch's
      DataLoader workers do not reseed, so workers would repeat each other's boxes); the colour,
      as in the code, with ``random.randint(0, 255)`` per channel;
    - the input image is copied, not painted in place.
    """

    def __init__(self, factor: float = 0.5):
        self.factor = factor

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """A random box (x1, y1, x2, y2), corners included, clipped to the image."""
        half_x = int(self.factor * width + 0.5) // 2
        half_y = int(self.factor * height + 0.5) // 2
        cx, cy = random.randrange(width), random.randrange(height)
        return (min(max(cx - half_x, 0), width), min(max(cy - half_y, 0), height),
                min(max(cx + half_x, 0), width), min(max(cy + half_y, 0), height))

    def __call__(self, img):
        img = img.copy()
        box = self.box(*img.size)
        colour = tuple(random.randint(0, 255) for _ in range(3))
        ImageDraw.Draw(img).rectangle(box, fill=colour)
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(factor={self.factor})"


_GREY = (128, 128, 128)


def _signed(value: float) -> float:
    return value * random.choice([-1, 1])


def _affine(img, coeffs, resample=Image.Resampling.NEAREST):
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, resample, fillcolor=_GREY)


def _rotate(img, degrees: float):
    rotated = img.convert("RGBA").rotate(degrees)
    return Image.composite(rotated, Image.new("RGBA", rotated.size, (128,) * 4), rotated).convert(img.mode)


def _small_cutout(img, side: int):
    width, height = img.size
    cx, cy = random.randrange(width), random.randrange(height)
    out = img.copy()
    box = (max(0, cx - side // 2), max(0, cy - side // 2), min(width, cx + side // 2), min(height, cy + side // 2))
    out.paste((125, 122, 113), box)
    return out


def _level(low: float, high: float):
    """Magnitude of level k in 1..9: ``np.linspace(low, high, 10)[k]``, computed as NumPy does."""
    return lambda k: high if k == 9 else k * ((high - low) / 9) + low


# name -> (magnitude of level k, operation(img, magnitude)), in the package's order
_PAIR_OPS = {
    "Invert": (_level(0, 0), lambda img, m: ImageOps.invert(img)),
    "Cutout": (lambda k: int(round(20 * k / 9)), _small_cutout),
    "Sharpness": (_level(0, 0.9), lambda img, m: ImageEnhance.Sharpness(img).enhance(1 + _signed(m))),
    "AutoContrast": (_level(0, 0), lambda img, m: ImageOps.autocontrast(img)),
    "Posterize": (lambda k: int(round(8 - 4 * k / 9)), lambda img, m: ImageOps.posterize(img, m)),
    "ShearX": (_level(0, 0.3), lambda img, m: _affine(img, (1, _signed(m), 0, 0, 1, 0), Image.Resampling.BICUBIC)),
    "TranslateX": (_level(0, 150 / 331), lambda img, m: _affine(img, (1, 0, _signed(m * img.size[0]), 0, 1, 0))),
    "TranslateY": (_level(0, 150 / 331), lambda img, m: _affine(img, (1, 0, 0, 0, 1, _signed(m * img.size[1])))),
    "ShearY": (_level(0, 0.3), lambda img, m: _affine(img, (1, 0, 0, _signed(m), 1, 0), Image.Resampling.BICUBIC)),
    "Rotate": (_level(0, 30), _rotate),
    "Equalize": (_level(0, 0), lambda img, m: ImageOps.equalize(img)),
    "Contrast": (_level(0, 0.9), lambda img, m: ImageEnhance.Contrast(img).enhance(1 + _signed(m))),
    "Color": (_level(0, 0.9), lambda img, m: ImageEnhance.Color(img).enhance(1 + _signed(m))),
    "Solarize": (_level(256, 0), lambda img, m: ImageOps.solarize(img, m)),
    "Brightness": (_level(0, 0.9), lambda img, m: ImageEnhance.Brightness(img).enhance(1 + _signed(m))),
}


class PairRandAugment:
    """The RandAugment of the CLSL code: ``RandAugment()`` of the pip package ``randaugment`` 1.0.2,
    re-implemented here (the package is not a dependency; it also fails on NumPy >= 1.24, which
    removed the ``np.int`` it uses).

    Per image, a pair of (operation, level) is drawn uniformly from 15 operations x levels 1..9
    (with replacement: the same operation can come twice); each of the two is applied with
    probability 0.5, the first before the second. Magnitude of level k = ``linspace(a, b, 10)[k]``:
    ShearX/Y 0..0.3 (bicubic), TranslateX/Y 0..150/331 of the image side (nearest), Rotate 0..30
    degrees counter-clockwise only (nearest, grey corners), Color / Contrast / Sharpness /
    Brightness enhance by 1 +/- 0..0.9, Posterize 8..4 bits (rounded), Solarize threshold 256..0,
    Cutout an absolute 0..20-pixel square (rounded) of colour (125, 122, 113); Invert, Equalize and
    AutoContrast have no magnitude. Shear, translate and the enhancements pick their sign at random;
    affine fills are grey 128.

    Why not ``torchvision.transforms.RandAugment``: it always applies both operations (no p = 0.5),
    uses one fixed magnitude (9 of 31 bins by default) instead of a random level, has Identity but no
    Cutout, rotates both ways and scales its ranges differently, so it is a different augmentation.

    Differences from the package: every random draw uses Python's ``random`` (the package's Cutout
    operation draws its centre with ``np.random``); the other draws come in the package's order
    (pair index, p1, sign of op 1, p2, sign of op 2), so with the same ``random`` state the two
    produce the same pair, probabilities and signs. The pair is decoded from its index instead of
    looked up in the package's list of 135 x 135 pairs (same distribution).
    """

    ops = tuple(_PAIR_OPS)
    levels = 9
    p = 0.5

    def draw(self) -> tuple[tuple[str, int], tuple[str, int]]:
        """A random pair ((op, level), (op, level)); levels 1..9."""
        n = len(self.ops) * self.levels
        first, second = divmod(random.randint(0, n * n - 1), n)
        return tuple((self.ops[i // self.levels], i % self.levels + 1) for i in (first, second))

    @staticmethod
    def apply(img, op: str, level: int):
        magnitude, fn = _PAIR_OPS[op]
        return fn(img, magnitude(level))

    def __call__(self, img):
        for op, level in self.draw():
            if random.random() < self.p:
                img = self.apply(img, op, level)
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ops={len(self.ops)}, levels=1..{self.levels}, p={self.p})"


def clsl_train_transform(size: int, mean, std):
    """The CLSL code's training pipeline (``lib/dataset.py``): Resize(size x size, bilinear, the
    torchvision default) -> horizontal flip -> :class:`RandomColourCutout` (factor 0.5) ->
    :class:`PairRandAugment` -> ToTensor -> normalise. (Its test resize is bilinear too; the harness
    evaluates every method with :func:`eval_transform`, bicubic.)"""
    return T.Compose([
        T.Resize((size, size), interpolation=InterpolationMode.BILINEAR),
        T.RandomHorizontalFlip(),
        RandomColourCutout(0.5),
        PairRandAugment(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


# ----------------------------------------------------------------------------- SPML family (wave 3)
def spml_train_transform(size: int, mean, std):
    """The SPML code bases' training pipeline (Cole et al. ``datasets.py``; IGNORE ``datasets.py``
    ``get_transforms``): Resize(size x size, bilinear, the torchvision default; no crop) -> horizontal
    flip p = 0.5 -> ToTensor -> normalise."""
    return T.Compose([
        T.Resize((size, size), interpolation=InterpolationMode.BILINEAR),
        T.RandomHorizontalFlip(0.5),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


class WeakStrongViews:
    """Two views of one image, stacked [2, 3, size, size]: view 0 the weak SPML pipeline
    (:func:`spml_train_transform`), view 1 the strong one: ``torchvision.transforms.RandAugment``
    (num_ops 3, magnitude 5) on the PIL image as loaded, then the weak pipeline with its own flip draw
    (IGNORE ``datasets.py``: a copy of the training pipeline with RandAugment(3, 5) inserted first).
    Batches of it are [B, 2, 3, size, size]."""

    views = 2

    def __init__(self, size: int, mean, std, num_ops: int = 3, magnitude: int = 5):
        self.weak = spml_train_transform(size, mean, std)
        self.strong = T.Compose([T.RandAugment(num_ops=num_ops, magnitude=magnitude),
                                 *spml_train_transform(size, mean, std).transforms])

    @property
    def transforms(self) -> list:
        """Every step of both views (weak first), as a Compose lists its steps."""
        return [*self.weak.transforms, *self.strong.transforms]

    def __call__(self, img) -> torch.Tensor:
        weak = self.weak(img)
        return torch.stack([weak, self.strong(img)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weak={self.weak!r}, strong={self.strong!r})"


# ----------------------------------------------------------------------------- SCPNet (wave-3 CLIP spec 3.5)
def _fixmatch_affine(img, coeffs):
    return img.transform(img.size, Image.Transform.AFFINE, coeffs)      # PIL defaults: nearest, black fill


# name -> (low, high, operation(img, v)), v drawn uniformly in [low, high]
_FIXMATCH_OPS = {
    "AutoContrast": (0, 1, lambda img, v: ImageOps.autocontrast(img)),
    "Brightness": (0.05, 0.95, lambda img, v: ImageEnhance.Brightness(img).enhance(v)),
    "Color": (0.05, 0.95, lambda img, v: ImageEnhance.Color(img).enhance(v)),
    "Contrast": (0.05, 0.95, lambda img, v: ImageEnhance.Contrast(img).enhance(v)),
    "Equalize": (0, 1, lambda img, v: ImageOps.equalize(img)),
    "Identity": (0, 1, lambda img, v: img),
    "Posterize": (4, 8, lambda img, v: ImageOps.posterize(img, max(1, int(v)))),
    "Rotate": (-30, 30, lambda img, v: img.rotate(v)),
    "Sharpness": (0.05, 0.95, lambda img, v: ImageEnhance.Sharpness(img).enhance(v)),
    "ShearX": (-0.3, 0.3, lambda img, v: _fixmatch_affine(img, (1, v, 0, 0, 1, 0))),
    "ShearY": (-0.3, 0.3, lambda img, v: _fixmatch_affine(img, (1, 0, 0, v, 1, 0))),
    "Solarize": (0, 256, lambda img, v: ImageOps.solarize(img, v)),
    "TranslateX": (-0.3, 0.3, lambda img, v: _fixmatch_affine(img, (1, 0, v * img.size[0], 0, 1, 0))),
    "TranslateY": (-0.3, 0.3, lambda img, v: _fixmatch_affine(img, (1, 0, 0, 0, 1, v * img.size[1]))),
}


class FixMatchRandAugment:
    """The RandAugment of SCPNet's code (``randaugment.py``, the FixMatch variant; ``m`` is unused
    there): ``n`` operations drawn with replacement from 14, each with a magnitude drawn uniformly in
    its range (enhancements 0.05..0.95, so they only weaken; rotate -30..30 degrees; shear -0.3..0.3;
    translate -0.3..0.3 of the side; posterize 4..8 bits; solarize 0..256; nearest resampling and
    black fill, PIL's defaults), then a grey (125, 123, 114) square cutout of side u * width, u in
    [0, 0.5]. Every draw uses Python's ``random``; the cutout's corner is uniform over the image (the
    code's ``np.random.uniform(w)`` draws it in [1, w], a negligible difference)."""

    def __init__(self, n: int = 3, m: int = 5):
        self.n, self.m = n, m

    def __call__(self, img):
        for name in random.choices(list(_FIXMATCH_OPS), k=self.n):
            low, high, op = _FIXMATCH_OPS[name]
            img = op(img, low + float(high - low) * random.random())
        side = random.random() * 0.5 * img.size[0]
        if side <= 0:
            return img
        width, height = img.size
        x0, y0 = int(max(0, random.uniform(0, width) - side / 2)), int(max(0, random.uniform(0, height) - side / 2))
        img = img.copy()
        ImageDraw.Draw(img).rectangle((x0, y0, min(width, x0 + side), min(height, y0 + side)), (125, 123, 114))
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n}, m={self.m} (unused))"


class SCPNetViews:
    """SCPNet's three views of one image, stacked [3, 3, size, size] (``scpnet.py`` ``WeakStrongDataset``):
    two weak views, each RandomHorizontalFlip -> RandomResizedCrop(size) (scale 0.08-1, bilinear) ->
    ToTensor -> normalise with its own draws, and a strong view: :class:`FixMatchRandAugment` (3, 5) on
    the PIL image as loaded, then the weak steps. Batches of it are [B, 3, 3, size, size]."""

    views = 3

    def __init__(self, size: int, mean, std, n: int = 3, m: int = 5):
        self.weak = T.Compose([T.RandomHorizontalFlip(), T.RandomResizedCrop(size), T.ToTensor(),
                               T.Normalize(mean, std)])
        self.strong = T.Compose([FixMatchRandAugment(n, m), *self.weak.transforms])

    @property
    def transforms(self) -> list:
        """Every step (weak, then strong), as a Compose lists its steps."""
        return [*self.weak.transforms, *self.strong.transforms]

    def __call__(self, img) -> torch.Tensor:
        first = self.weak(img)
        second = self.weak(img)
        return torch.stack([first, second, self.strong(img)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weak={self.weak!r}, strong={self.strong!r})"


TRAIN_PIPELINES = {"hcp": train_transform, "clsl": clsl_train_transform, "spml": spml_train_transform,
                   "weak_strong": WeakStrongViews, "scpnet": SCPNetViews}


def training_pipeline(name: str, size: int, mean, std):
    """The ``finetune`` training augmentation a method names (:meth:`Method.augmentation`)."""
    if name not in TRAIN_PIPELINES:
        raise UserError(f"training augmentation '{name}' is unknown; use one of {sorted(TRAIN_PIPELINES)}")
    return TRAIN_PIPELINES[name](size, mean, std)
