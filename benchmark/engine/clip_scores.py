"""Per-image CLIP views for the pseudo-label methods (aevlp, vlpl; spec wave3_clip 1.4 item 4, 4.1, 4.6).

A method whose card requires ``clip_views`` names its views with ``Method.clip_view_rule(cfg, dataset)``:

- ``grid`` G: view 0 is the whole image; G > 0 adds the G x G tiles of ``floor(W / G) x floor(H / G)``
  pixels in row-major order (the remainder pixels are in no tile, P90). Every view is resized to the
  CLIP's input size without keeping the aspect ratio (AEVLP ``datasets.py``).
- ``pre_resize`` S0 (or None): the image is first resized to S0 x S0 (VLPL: the 448-px classifier image
  is resized to 336 for CLIP, P98); then each view to the CLIP size (bilinear, antialiased, as
  torchvision's ``Resize``).
- ``norm``: ``imagenet`` (AEVLP and VLPL feed CLIP ImageNet-normalised views, P87) or ``clip``.
- ``flips``: also the horizontally flipped copy of every view (rows V..2V-1), so that a method can draw
  the official random flip (p 0.5 per view and step) from the cache.

Each view goes through the run's frozen CLIP once (``encode_image``, float32, unit-normalised) and the
``[N, V, D]`` features are cached as float16 by :func:`datasets.side_info.clip_view_features`, keyed by
the CLIP's fingerprint, the rule, the CLIP input size and the images' fingerprint. The class scores
(cosines with the class text features, softmax) are the method's: they depend on its text side (prompts,
AEVLP's seeded random GCN), which costs nothing to recompute, so one cache serves every seed and switch.
Official code recomputes the views with fresh flips at every iteration (17 ViT-B/16 forwards per image
per step, P89, P90); the cache is computed once.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import functional as TF

from benchmark.core import progress
from benchmark.core.errors import UserError
from benchmark.engine.backbones import IMAGENET_MEAN, IMAGENET_STD
from benchmark.engine.clip import CLIP_MEAN, CLIP_STD
from benchmark.engine.data import ImageSource
from benchmark.engine.features import images_fingerprint

NORMS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "clip": (CLIP_MEAN, CLIP_STD)}
RULE_KEYS = ("grid", "pre_resize", "norm", "flips")
SMALL = 4096                 # images decoded in the main process (the CPU profiles' synthetic sets)


def check_rule(rule: dict | None, method: str = "") -> dict:
    """The rule with every key, validated (a UserError names the method and the bad value)."""
    if not isinstance(rule, dict) or set(rule) - set(RULE_KEYS):
        raise UserError(f"method '{method}' requires clip_views but its clip_view_rule gives {rule!r}; return a "
                        f"dict with the keys {RULE_KEYS}")
    out = {"grid": rule.get("grid", 0), "pre_resize": rule.get("pre_resize"), "norm": rule.get("norm", "imagenet"),
           "flips": rule.get("flips", False)}
    if not (isinstance(out["grid"], int) and 0 <= out["grid"] <= 16) or out["norm"] not in NORMS \
            or not isinstance(out["flips"], bool) or not (out["pre_resize"] is None or (
                isinstance(out["pre_resize"], int) and out["pre_resize"] > 0)):
        raise UserError(f"method '{method}': clip view rule {out} is invalid: grid an integer in 0..16, pre_resize "
                        f"None or a positive integer, norm one of {tuple(NORMS)}, flips True or False")
    return out


def num_views(rule: dict) -> int:
    rule = check_rule(rule)
    return (1 + rule["grid"] ** 2) * (2 if rule["flips"] else 1)


def input_size(clip) -> int:
    """The CLIP's image input size (224 for ViT-B/16, 336 for ViT-L/14@336, 16 for tiny-ViT)."""
    size = clip.visual.image_size
    return int(size if isinstance(size, int) else size[0])


def image_views(image, rule: dict, size: int) -> torch.Tensor:
    """``[V, 3, size, size]`` normalised views of one PIL image under ``rule`` (see the module docstring)."""
    if rule["pre_resize"]:
        image = TF.resize(image, [rule["pre_resize"], rule["pre_resize"]])
    width, height = image.size
    g = rule["grid"]
    crops = [image]
    if g:
        tw, th = max(1, width // g), max(1, height // g)       # suite guard: G > W gives 1-px tiles, not empty ones
        crops += [image.crop((x * tw, y * th, (x + 1) * tw, (y + 1) * th)) for y in range(g) for x in range(g)]
    if rule["pre_resize"]:       # VLPL resizes the classifier's float tensor, not the 8-bit image (main_clip.py)
        views = [TF.resize(TF.to_tensor(c), [size, size], antialias=True) for c in crops]
    else:
        views = [TF.to_tensor(TF.resize(c, [size, size])) for c in crops]
    if rule["flips"]:
        views += [TF.hflip(v) for v in views]
    mean, std = NORMS[rule["norm"]]
    return TF.normalize(torch.stack(views), mean, std)


class _Views(torch.utils.data.Dataset):
    def __init__(self, paths, rule: dict, size: int):
        self.source, self.rule, self.size = ImageSource(paths, None), rule, size

    def __len__(self) -> int:
        return len(self.source)

    def __getitems__(self, idx):
        return torch.stack([image_views(self.source._read(self.source.paths[i]), self.rule, self.size) for i in idx])


def encode_views(paths, clip, rule: dict, device, views_per_batch: int = 256) -> np.ndarray:
    """``[N, V, D]`` float16 unit-norm ``clip.encode_image`` features of every image's views (float32
    forward on ``device``; the CLIP goes back to where it was)."""
    rule, size = check_rule(rule), input_size(clip)
    home = next(clip.parameters()).device
    clip.to(device)
    try:
        return _encode(paths, clip, rule, size, device, max(1, views_per_batch // num_views(rule)))
    finally:
        clip.to(home)


def _encode(paths, clip, rule: dict, size: int, device, images_per_batch: int) -> np.ndarray:
    # worker processes pay off only on real datasets (starting them costs seconds)
    workers = 0 if len(paths) <= SMALL else min(8, os.cpu_count() or 1)
    loader = DataLoader(_Views(paths, rule, size), batch_size=images_per_batch, shuffle=False, collate_fn=lambda b: b,
                        num_workers=workers)
    chunks = []
    with torch.inference_mode():
        for views in progress.bar(loader, desc=f"CLIP views ({len(paths)} images)", unit="batch", leave=False):
            b, v = views.shape[:2]
            feats = clip.encode_image(views.flatten(0, 1).to(device)).float()
            feats = feats / feats.norm(dim=-1, keepdim=True)
            chunks.append(feats.reshape(b, v, -1).to("cpu", torch.float16).numpy())
    return np.concatenate(chunks)


def clip_view_features(labelset, clip, clip_id: str, rule: dict, device) -> torch.Tensor:
    """The cached ``[N, V, D]`` float16 view features of every image of ``labelset`` (computed once)."""
    from datasets.side_info import clip_view_features as cached

    rule = check_rule(rule)
    identity = {"clip": clip_id, "rule": rule, "clip_size": input_size(clip),
                "images": images_fingerprint(labelset.image_paths)}
    array = cached(labelset.image_paths, lambda paths: encode_views(paths, clip, rule, device), identity,
                   f"{labelset.name}-{clip_id.split(':')[0]}")
    return torch.from_numpy(array)
