"""Drawing primitives of the embedded synthetic dataset (``datasets.synthetic``): category shapes
and colours, textures, scene backgrounds, distractor clutter, occluders and image degradation.

Every function draws from the ``numpy.random.Generator`` it is given, in a fixed order, so an
image depends only on its seed. Any change here changes the images: bump
``datasets.synthetic.GENERATOR_VERSION`` (the cache folder of the old images is then not reused).
"""
from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

COLOURS = {"red": (0, .85, .85), "orange": (28, .9, .95), "yellow": (55, .85, .95), "green": (120, .7, .7),
           "cyan": (185, .7, .85), "blue": (225, .75, .8), "purple": (280, .6, .7), "pink": (330, .5, .95),
           "brown": (25, .65, .45), "gray": (0, 0., .6)}  # hue (degrees), saturation, value


def _polygon(n: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
    angles = phase + 2 * math.pi * np.arange(n) / n
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star() -> np.ndarray:
    points = _polygon(10, 1.0, -math.pi / 2)
    points[1::2] *= 0.45
    return points


def _cross(w: float) -> np.ndarray:
    """A plus sign with arms of half-width ``w``."""
    quarter = np.array([[-w, -1.0], [w, -1.0], [w, -w]])
    turns = [np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) for a in np.arange(4) * math.pi / 2]
    return np.vstack([quarter @ turn.T for turn in turns])


SHAPES = {  # unit outlines in [-1, 1]^2; a second outline is a hole
    "circle": (_polygon(32),), "ellipse": (_polygon(32) * [1.0, 0.6],), "square": (_polygon(4, 1.3, math.pi / 4),),
    "triangle": (_polygon(3, 1.1, -math.pi / 2),), "diamond": (_polygon(4) * [0.7, 1.1],),
    "pentagon": (_polygon(5, 1.0, -math.pi / 2),), "hexagon": (_polygon(6),), "star": (_star(),),
    "ring": (_polygon(32), _polygon(32, 0.55)),
    "halfdisc": (np.vstack([_polygon(33)[:17], [[0.0, 0.0]]]) - [0.0, 0.5],),
    "trapezoid": (np.array([[-1.0, -0.8], [1.0, -0.8], [0.55, 0.8], [-0.55, 0.8]]),),
    "cross": (_cross(0.36),),
}


def jittered_rgb(colour: str, rng: np.random.Generator, hue_jitter: float) -> np.ndarray:
    hue, sat, val = COLOURS[colour]
    hue = (hue + rng.uniform(-hue_jitter, hue_jitter)) % 360
    sat = min(1.0, sat * rng.uniform(0.75, 1.1))
    val = min(1.0, val * rng.uniform(0.75, 1.15))
    return 255 * np.array(colorsys.hsv_to_rgb(hue / 360, sat, val))


def texture(kind: str, rgb: np.ndarray, u: np.ndarray, v: np.ndarray, size: float, rng) -> np.ndarray:
    """Fill colours ``[h, w, 3]`` of a texture in object-local coordinates (u, v)."""
    other = rgb * 0.4 if rgb.mean() > 110 else rgb * 0.4 + 150
    period = max(3.0, size * rng.uniform(0.14, 0.24))
    if kind == "solid":
        t = np.zeros_like(u)
    elif kind == "stripes":
        t = np.floor(u / period) % 2
    elif kind == "checker":
        t = (np.floor(u / period) + np.floor(v / period)) % 2
    elif kind == "dots":
        t = (((u % period) - period / 2) ** 2 + ((v % period) - period / 2) ** 2 < (period / 3.2) ** 2) * 1.0
    else:  # gradient
        t = np.clip(u / size + 0.5, 0.0, 1.0)
    return rgb * (1 - t[..., None]) + other * t[..., None]


def draw_object(canvas: Image.Image, owner: np.ndarray, idx: int, look: dict, p: dict, rng) -> int:
    """Paste one textured, rotated shape, mark its pixels as ``idx`` in ``owner``; return its pixel count."""
    s = canvas.size[0]
    size = s * rng.uniform(*p["object_scale"]) * look["size"]
    aspect = look["aspect"] * rng.uniform(0.85, 1.15)
    half = np.array([math.sqrt(aspect), 1 / math.sqrt(aspect)]) * size / 2
    theta = rng.uniform(0, 2 * math.pi)
    rot = np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])
    centre = rng.uniform(0.1, 0.9, 2) * s
    outlines = [o * half @ rot + centre for o in SHAPES[look["shape"]]]
    x0, y0 = np.maximum(np.floor(outlines[0].min(axis=0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(outlines[0].max(axis=0)).astype(int) + 1, s)
    if x1 <= x0 or y1 <= y0:
        return 0
    mask = Image.new("L", (int(x1 - x0), int(y1 - y0)))
    draw = ImageDraw.Draw(mask)
    for k, outline in enumerate(outlines):
        draw.polygon([tuple(q) for q in outline - [x0, y0]], fill=0 if k else 255)
    xs, ys = np.meshgrid(np.arange(x0, x1) + 0.5 - centre[0], np.arange(y0, y1) + 0.5 - centre[1])
    u, v = xs * rot[0, 0] + ys * rot[0, 1], xs * rot[1, 0] + ys * rot[1, 1]
    rgb = jittered_rgb(look["colour"], rng, p["hue_jitter"])
    fill = texture(look["texture"], rgb, u, v, size, rng)
    canvas.paste(Image.fromarray(np.clip(fill, 0, 255).astype(np.uint8)), (int(x0), int(y0)), mask)
    inside = np.asarray(mask) > 0
    owner[y0:y1, x0:x1][inside] = idx
    return int(inside.sum())


def smooth_noise(s: int, cells: int, rng) -> np.ndarray:
    """Low-frequency noise in about [-1, 1], ``[s, s]``."""
    small = Image.fromarray(rng.normal(size=(cells, cells)).astype(np.float32), mode="F")
    return np.asarray(small.resize((s, s), Image.BILINEAR))


def background(scene: str, s: int, rng) -> np.ndarray:
    """A scene-dependent textured background ``[s, s, 3]`` (float, 0..255)."""
    yy, xx = np.mgrid[0:s, 0:s] / s
    tint = rng.uniform(-20, 20, 3)
    blotch = smooth_noise(s, 5, rng)[..., None]
    if scene == "kitchen":  # tiles with grout lines
        n = rng.uniform(4, 7)
        tiles = ((np.floor(xx * n) + np.floor(yy * n)) % 2)[..., None]
        grout = ((xx * n % 1 < 0.06) | (yy * n % 1 < 0.06))[..., None]
        img = np.where(grout, 150.0, 225 - 20 * tiles) + [0, -5, -20]
    elif scene == "street":  # asphalt with dashed lane markings
        lane = (np.abs(yy - rng.uniform(0.3, 0.7)) < 0.025) & ((xx * rng.uniform(3, 6)) % 1 < 0.6)
        img = np.where(lane[..., None], [230.0, 210, 90], 105.0 + 18 * blotch)
    elif scene == "park":  # grass with darker patches
        img = np.array([80.0, 135, 55]) + 30 * blotch + rng.normal(0, 8, (s, s, 1))
    elif scene == "beach":  # sea above a wavy shoreline, sand below
        shore = rng.uniform(0.3, 0.55) + 0.04 * np.sin(xx * rng.uniform(8, 16) + rng.uniform(0, 6))
        img = np.where((yy < shore)[..., None], [90.0, 160, 215], [225.0, 205, 150]) + 12 * blotch
    else:  # office: panelled wall above a desk
        panels = ((xx * rng.uniform(2, 4)) % 1 < 0.03)[..., None]
        desk = (yy > rng.uniform(0.6, 0.8))[..., None]
        img = np.where(desk, [125.0, 85, 55], np.where(panels, 150.0, [200.0, 198, 185])) + 10 * blotch
    return np.asarray(img, dtype=np.float64) + tint


def blob(s: int, scale: tuple[float, float], rng) -> list[tuple[float, float]]:
    """An irregular polygon (not any category's shape) somewhere in the image."""
    n = int(rng.integers(6, 11))
    radius = s * rng.uniform(*scale) / 2 * rng.uniform(0.45, 1.0, n)
    angles = np.sort(rng.uniform(0, 2 * math.pi, n))
    centre = rng.uniform(0, 1, 2) * s
    return [(centre[0] + r * math.cos(a), centre[1] + r * math.sin(a)) for r, a in zip(radius, angles)]


def clutter(canvas: Image.Image, p: dict, rng) -> None:
    """Distractor strokes and small blobs drawn on the background."""
    s, draw = canvas.size[0], ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(p["distractors"][0], p["distractors"][1] + 1))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.6:
            points = [tuple(q) for q in rng.uniform(0, s, (int(rng.integers(2, 5)), 2))]
            draw.line(points, fill=colour, width=int(rng.integers(1, max(2, s // 32) + 1)))
        else:
            draw.polygon(blob(s, (0.06, 0.16), rng), fill=colour)


def occlude(canvas: Image.Image, owner: np.ndarray, p: dict, rng) -> None:
    """Occluding blobs drawn over the objects (their pixels belong to nobody)."""
    s = canvas.size[0]
    for _ in range(int(rng.integers(p["occluders"][0], p["occluders"][1] + 1))):
        mask = Image.new("L", (s, s))
        ImageDraw.Draw(mask).polygon(blob(s, (0.15, 0.35), rng), fill=255)
        grey = int(rng.integers(40, 220))
        canvas.paste(tuple(int(c) for c in np.clip(grey + rng.integers(-30, 31, 3), 0, 255)), (0, 0), mask)
        owner[np.asarray(mask) > 0] = -1


def kept_objects(owner: np.ndarray, cats, areas: list[int], visible_min: float) -> list[tuple]:
    """(category, COCO bbox, visible area) of objects with at least ``visible_min`` of their pixels visible."""
    kept = []
    for idx, (cat, area) in enumerate(zip(cats, areas)):
        ys, xs = np.nonzero(owner == idx)
        if area and len(xs) >= max(4, visible_min * area):
            bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            kept.append((int(cat), bbox, int(len(xs))))
    return kept


def degrade(canvas: Image.Image, params: dict, rng) -> Image.Image:
    """Optional slight blur, then Gaussian pixel noise."""
    if rng.random() < params["blur_prob"]:
        canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    noise = rng.normal(0, rng.uniform(*params["noise_sigma"]), (canvas.size[1], canvas.size[0], 3))
    return Image.fromarray(np.clip(np.asarray(canvas, dtype=np.float64) + noise, 0, 255).astype(np.uint8))
