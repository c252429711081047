"""The embedded synthetic multi-label dataset: procedurally drawn scenes, written once in COCO format.

Every image belongs to one latent scene type (kitchen, street, park, beach, office) that draws
1 to 5 distinct object categories from its own distribution, so labels co-occur strongly within a
scene and the overall class frequency is long-tailed. A category is a (shape, colour family,
texture) look with 2-3 sub-types (modes) that change one attribute; several categories share an
attribute, so they are confusable. Objects get random position, scale, rotation and hue jitter,
overlap each other, sit on scene-dependent textured backgrounds among distractor strokes and
blobs, are partly hidden by occluders, and the image gets blur, pixel noise and JPEG coding.
Annotations of objects with less than ``visible_min`` of their pixels visible are dropped.

The set is generated deterministically from its parameters (per-image seeds derived from (seed,
split, index)), written into a temporary sibling folder (removed on any failure) and renamed into
place, then read back through :func:`datasets.coco.load_coco_instances`.

The folder holds a manifest, ``checksums.json``, with the size and sha256 of every file (images,
annotations, ``params.json``), written last. Every load verifies the files against it (memoised
per process by each file's stat). A folder whose manifest is missing (written before manifests
existed) or that has a file failing its checksum, truncated or missing is generated again, with one
warning naming the folder and the first bad file; the files that still match are kept as they are
(same bytes, same modification times, so the feature caches of those images stay valid).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.core.cache import cache_dir
from benchmark.core.digests import verified_file
from benchmark.core.errors import UserError
from benchmark.core.files import atomic_write_bytes, atomic_writer, stable_hash
from datasets.base import DatasetSplits, LabelSet
from datasets.coco import load_coco_instances
from datasets.synthetic_draw import (
    COLOURS,
    background,
    clutter,
    degrade,
    draw_object,
    kept_objects,
    occlude,
)

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump on any change to the drawing code (table changes are hashed in)
SCENES = ("kitchen", "street", "park", "beach", "office")
SCENE_PRIOR = (0.3, 0.24, 0.2, 0.15, 0.11)
HOME_WEIGHTS = (1.0, 0.5, 0.25, 0.12)  # by rank of a category within its home scene
# name, home scene, shape, colour family, texture, extra modes ("attribute=value" changes of the base look)
CATEGORIES = (
    ("apple", "kitchen", "circle", "red", "solid", ("colour=green", "size=0.65")),
    ("cup", "kitchen", "trapezoid", "blue", "stripes", ("texture=dots", "aspect=1.4")),
    ("bottle", "kitchen", "ellipse", "green", "gradient", ("colour=brown", "aspect=1.6")),
    ("bowl", "kitchen", "halfdisc", "orange", "dots", ("colour=yellow",)),
    ("car", "street", "square", "red", "gradient", ("colour=blue", "aspect=0.6")),
    ("bus", "street", "square", "yellow", "stripes", ("texture=checker", "size=1.3")),
    ("sign", "street", "cross", "red", "solid", ("colour=blue",)),
    ("bicycle", "street", "ring", "gray", "solid", ("texture=stripes", "size=0.7")),
    ("tree", "park", "triangle", "green", "dots", ("texture=solid", "aspect=1.5")),
    ("dog", "park", "ellipse", "brown", "solid", ("texture=dots", "colour=gray")),
    ("flower", "park", "star", "pink", "solid", ("colour=yellow", "colour=purple")),
    ("bird", "park", "triangle", "cyan", "stripes", ("colour=blue", "aspect=1.6")),
    ("umbrella", "beach", "halfdisc", "pink", "stripes", ("colour=red", "texture=checker")),
    ("ball", "beach", "circle", "orange", "stripes", ("texture=checker", "colour=cyan")),
    ("boat", "beach", "trapezoid", "blue", "gradient", ("colour=orange", "texture=stripes")),
    ("kite", "beach", "diamond", "purple", "checker", ("colour=pink",)),
    ("laptop", "office", "square", "gray", "checker", ("texture=gradient", "aspect=0.7")),
    ("phone", "office", "pentagon", "purple", "solid", ("colour=gray", "texture=gradient")),
    ("book", "office", "hexagon", "brown", "stripes", ("colour=red", "colour=blue")),
    ("clock", "office", "ring", "cyan", "dots", ("colour=gray",)),
)
# Categories that also turn up outside their home scene: (name, scene, weight).
GUESTS = (("dog", "street", 0.25), ("bird", "beach", 0.2), ("ball", "park", 0.25), ("bottle", "beach", 0.2),
          ("bottle", "office", 0.15), ("cup", "office", 0.3), ("phone", "street", 0.15), ("bicycle", "park", 0.15),
          ("umbrella", "street", 0.1), ("apple", "office", 0.1), ("book", "kitchen", 0.1), ("tree", "street", 0.2))
MODE_PROBS = (0.5, 0.3, 0.2)
SIZES = {
    "tiny": {"num_train": 160, "num_test": 80, "image_size": 64},
    "smoke": {"num_train": 400, "num_test": 200, "image_size": 96},
    "default": {"num_train": 3000, "num_test": 1000, "image_size": 128},
}
DIFFICULTY = {"object_scale": [0.28, 0.52], "hue_jitter": 14.0, "noise_sigma": [2.0, 10.0], "occluders": [0, 2],
              "distractors": [2, 6], "visible_min": 0.35, "blur_prob": 0.5, "jpeg_quality": 88}
N_OBJECT_PROBS = (0.3, 0.3, 0.2, 0.12, 0.08)  # 1..5 objects
SPLITS = ("train", "test")
CHECKSUMS = "checksums.json"
CHECKSUMS_FORMAT = "mlrpl-synthetic-checksums/1"


@dataclass
class RenderedImage:
    """One generated image: pixels, scene name and kept objects as (category index, bbox, area)."""

    image: Image.Image
    scene: str
    objects: list[tuple[int, list[int], int]]

    @property
    def labels(self) -> set[int]:
        return {cat for cat, _, _ in self.objects}


def synthetic_params(size: str = "default", seed: int = 0, num_classes: int = len(CATEGORIES)) -> dict:
    """The full parameter dict of a named size (it determines the images and the cache folder)."""
    if size not in SIZES:
        raise UserError(f"unknown synthetic size {size!r}; choose one of: {', '.join(SIZES)}")
    if not 5 <= num_classes <= len(CATEGORIES):
        raise UserError(f"synthetic num_classes={num_classes} is out of range; use 5 to {len(CATEGORIES)}")
    tables = stable_hash([SCENES, SCENE_PRIOR, HOME_WEIGHTS, CATEGORIES, GUESTS, COLOURS, MODE_PROBS, N_OBJECT_PROBS])
    return {"generator_version": GENERATOR_VERSION, "tables": tables, "size": size, "seed": int(seed),
            "num_classes": num_classes, **SIZES[size], **DIFFICULTY}


@lru_cache(maxsize=None)
def class_table(num_classes: int) -> tuple[tuple, ...]:
    """The first ``num_classes`` categories in order of rank within their scene, kept in table order."""
    rank = {r[0]: sum(1 for q in CATEGORIES[:i] if q[1] == r[1]) for i, r in enumerate(CATEGORIES)}
    chosen = sorted(CATEGORIES, key=lambda r: (rank[r[0]], SCENES.index(r[1])))[:num_classes]
    return tuple(r for r in CATEGORIES if r in chosen)


@lru_cache(maxsize=None)
def scene_distributions(table: tuple[tuple, ...]) -> np.ndarray:
    """``[scenes, classes]`` probabilities of drawing each class in each scene."""
    names = [r[0] for r in table]
    weights = np.zeros((len(SCENES), len(table)))
    for j, row in enumerate(table):
        rank = sum(1 for r in table[:j] if r[1] == row[1])
        weights[SCENES.index(row[1]), j] = HOME_WEIGHTS[min(rank, len(HOME_WEIGHTS) - 1)]
    for name, scene, w in GUESTS:
        if name in names:
            weights[SCENES.index(scene), names.index(name)] = w
    probs = weights / weights.sum(axis=1, keepdims=True)
    probs.flags.writeable = False
    return probs


def _mode(row: tuple, rng: np.random.Generator) -> dict:
    """Draw one sub-type of a category: its base look with at most one attribute changed."""
    look = {"shape": row[2], "colour": row[3], "texture": row[4], "size": 1.0, "aspect": 1.0}
    modes = ("",) + row[5]
    probs = np.array(MODE_PROBS[:len(modes)])
    change = modes[rng.choice(len(modes), p=probs / probs.sum())]
    if change:
        key, value = change.split("=")
        look[key] = float(value) if key in ("size", "aspect") else value
    return look


def render_scene(params: dict, split: str, index: int) -> RenderedImage:
    """Draw image ``index`` of ``split``; it depends only on (params, split, index)."""
    rng = np.random.default_rng([params["seed"], SPLITS.index(split), index])
    table = class_table(params["num_classes"])
    probs = scene_distributions(table)
    scene = int(rng.choice(len(SCENES), p=SCENE_PRIOR))
    n = min(int(rng.choice(len(N_OBJECT_PROBS), p=N_OBJECT_PROBS)) + 1, int((probs[scene] > 0).sum()))
    cats = rng.choice(len(table), size=n, replace=False, p=probs[scene])
    s = params["image_size"]
    canvas = Image.fromarray(np.clip(background(SCENES[scene], s, rng), 0, 255).astype(np.uint8))
    clutter(canvas, params, rng)
    owner = np.full((s, s), -1, dtype=np.int16)
    areas = [draw_object(canvas, owner, idx, _mode(table[cat], rng), params, rng) for idx, cat in enumerate(cats)]
    unoccluded, owner_before = canvas.copy(), owner.copy()
    occlude(canvas, owner, params, rng)
    objects = kept_objects(owner, cats, areas, params["visible_min"])
    if not objects:  # occluders hid everything: keep the scene without them
        canvas, objects = unoccluded, kept_objects(owner_before, cats, areas, params["visible_min"])
    return RenderedImage(degrade(canvas, params, rng), SCENES[scene], objects)


def _digest(data: bytes) -> dict:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _write_image(job: tuple) -> tuple[str, list, dict]:
    """Render one image into the (private, temporary) folder; returns its scene, objects and digest."""
    params, split, index, path = job
    rendered = render_scene(params, split, index)
    buf = io.BytesIO()
    rendered.image.save(buf, format="JPEG", quality=params["jpeg_quality"])
    with open(path, "wb") as fh:   # inside the private temporary folder; the folder is renamed into place
        fh.write(buf.getvalue())
    return rendered.scene, rendered.objects, _digest(buf.getvalue())


def _coco_json(params: dict, split: str, results: list) -> dict:
    s, table = params["image_size"], class_table(params["num_classes"])
    images, annotations = [], []
    for i, (scene, objects, *_) in enumerate(results):
        images.append({"id": i + 1, "file_name": f"{i:06d}.jpg", "width": s, "height": s, "scene": scene})
        for cat, bbox, area in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cat + 1,
                                "bbox": bbox, "area": area, "iscrowd": 0})
    categories = [{"id": j + 1, "name": row[0], "supercategory": row[1]} for j, row in enumerate(table)]
    return {"info": {"description": f"synthetic {params['size']} {split}"}, "images": images,
            "annotations": annotations, "categories": categories}


def expected_files(params: dict) -> list[str]:
    """The files of a complete dataset folder, relative to it (its manifest aside)."""
    return ([f"images/{split}/{i:06d}.jpg" for split in SPLITS for i in range(params[f"num_{split}"])]
            + [f"annotations/instances_{split}.json" for split in SPLITS] + ["params.json"])


def dataset_problem(folder: Path, params: dict) -> str | None:
    """None when every file of ``folder`` matches its manifest, else why not ("is missing", "has no
    checksum manifest ...", "images/train/000003.jpg failed its checksum", ...)."""
    folder = Path(folder)
    if not folder.is_dir():
        return "is missing"
    try:
        manifest = json.loads((folder / CHECKSUMS).read_text())
        files = manifest["files"] if manifest.get("format") == CHECKSUMS_FORMAT else None
        if not isinstance(files, dict):
            raise ValueError
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return f"has no valid checksum manifest {CHECKSUMS} (written by an older version, or cut short)"
    expected = expected_files(params)
    if sorted(files) != sorted(expected):
        return f"has a manifest {CHECKSUMS} listing {len(files)} files, not the {len(expected)} of this dataset"
    for rel in expected:
        entry = files[rel]
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            return f"has a manifest {CHECKSUMS} without the checksum of {rel}"
        why = verified_file(folder / rel, entry["sha256"], entry.get("size"))
        if why:
            return f"file {rel} {why}"
    return None


def _ours(folder: Path) -> bool:
    """A folder this module wrote (a dataset, complete or not), not something else at that path."""
    return (folder / "params.json").is_file() or (folder / CHECKSUMS).is_file()


def generate_synthetic(out_dir: Path | str, params: dict) -> None:
    """Write the dataset into ``out_dir`` atomically (temporary sibling folder, then rename). An
    existing folder is kept when its files match its manifest, repaired when it is a dataset folder
    that does not (see the module docstring), refused when it is anything else."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        why = dataset_problem(out_dir, params)
        if why is None:
            return
        if not _ours(out_dir):
            raise UserError(f"{out_dir} exists but is not a complete synthetic dataset; delete it and rerun")
        log.warning("synthetic dataset %s %s; rebuilding it", out_dir, why)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):  # left by a killed generation
        try:
            if time.time() - stale.stat().st_mtime > 86400:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        jobs = []
        for split in SPLITS:
            (tmp / "images" / split).mkdir(parents=True)
            jobs += [(params, split, i, str(tmp / "images" / split / f"{i:06d}.jpg"))
                     for i in range(params[f"num_{split}"])]
        results = _run_jobs(jobs)
        files = {f"images/{job[1]}/{job[2]:06d}.jpg": result[2] for job, result in zip(jobs, results)}
        (tmp / "annotations").mkdir()
        for split in SPLITS:
            coco = _coco_json(params, split, [r for job, r in zip(jobs, results) if job[1] == split])
            blob = json.dumps(coco).encode()
            atomic_write_bytes(tmp / "annotations" / f"instances_{split}.json", blob)
            files[f"annotations/instances_{split}.json"] = _digest(blob)
        blob = json.dumps(params, indent=1, sort_keys=True).encode()
        atomic_write_bytes(tmp / "params.json", blob)
        files["params.json"] = _digest(blob)
        manifest = {"format": CHECKSUMS_FORMAT, "params": stable_hash(params), "files": files}
        atomic_write_bytes(tmp / CHECKSUMS, (json.dumps(manifest, indent=0, sort_keys=True) + "\n").encode())
        if out_dir.exists():
            _repair(out_dir, tmp, files, params)
            return
        try:
            os.replace(tmp, out_dir)
        except OSError:  # another process finished the same folder first
            if dataset_problem(out_dir, params) is not None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _repair(out_dir: Path, tmp: Path, files: dict, params: dict) -> None:
    """Bring ``out_dir`` to the freshly generated ``tmp``: its manifest goes first (a kill part-way
    leaves a folder without one: repaired again next time), each file that differs is replaced
    (renamed from ``tmp``), the new manifest goes last. Files that match keep their bytes and times."""
    if dataset_problem(out_dir, params) is None:   # another process repaired it meanwhile
        return
    (out_dir / CHECKSUMS).unlink(missing_ok=True)
    replaced = 0
    for rel, entry in files.items():
        target = out_dir / rel
        if verified_file(target, entry["sha256"], entry["size"]):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, target)
            replaced += 1
    os.replace(tmp / CHECKSUMS, out_dir / CHECKSUMS)
    log.info("synthetic dataset %s: %d of %d files replaced", out_dir, replaced, len(files))


def _run_jobs(jobs: list[tuple]) -> list:
    """Render all images, on several processes for large sets (results do not depend on it).

    Only forked workers are used: spawned ones would re-import the caller's unguarded script.
    """
    from benchmark.core import progress

    workers = min(os.cpu_count() or 1, 8)
    shown = progress.bar(total=len(jobs), desc=f"generating the synthetic set ({len(jobs)} images, once)",
                         unit="img", disable=len(jobs) < 1000, leave=False)
    shown.set_description(shown.desc)
    try:
        if workers < 2 or len(jobs) < 1000 or "fork" not in get_all_start_methods():
            return [_tick(shown, _write_image(job)) for job in jobs]
        with get_context("fork").Pool(workers) as pool:
            return [_tick(shown, result) for result in pool.imap(_write_image, jobs, chunksize=64)]
    finally:
        shown.close()


def _tick(shown, result):
    shown.update(1)
    return result


def dataset_dir(params: dict, root: Path | str | None = None) -> Path:
    """Cache folder of a parameter set: ``<root or cache>/synthetic/<size>-<hash(params)>``."""
    base = Path(root) if root is not None else cache_dir("synthetic")
    return base / f"{params['size']}-{stable_hash(params)}"


def _read_split(folder: Path, split: str, params: dict) -> LabelSet:
    ann_file = folder / "annotations" / f"instances_{split}.json"
    labelset = load_coco_instances(ann_file, folder / "images" / split, f"synthetic-{params['size']}-{split}")
    scenes = {img["id"]: img["scene"] for img in json.loads(ann_file.read_text())["images"]}
    labelset.info["scenes"] = [scenes[i] for i in labelset.image_ids]
    return labelset


def load_synthetic(size: str = "default", seed: int = 0, root: Path | None = None) -> DatasetSplits:
    """Generate the synthetic set if its cache folder is missing, then read both splits back."""
    params = synthetic_params(size, seed)
    folder = dataset_dir(params, root)
    if dataset_problem(folder, params) is not None:    # missing, or not matching its manifest
        generate_synthetic(folder, params)
    train, test = (_read_split(folder, split, params) for split in SPLITS)
    info = {"folder": str(folder), "params": params, "scenes": list(SCENES)}
    return DatasetSplits(name=f"synthetic-{size}", train=train, test=test, info=info)


SAMPLE_FORMATS = ("png", "jpg", "jpeg", "pdf", "svg", "svgz", "eps", "ps", "tif", "tiff", "webp", "gif")


def sample_grid_format(out: Path | str) -> str:
    """The image format of a sample-grid file name (from its extension); a UserError naming the file
    and the supported extensions when matplotlib cannot write it. Nothing is built or written."""
    from matplotlib.backend_bases import FigureCanvasBase

    supported = [f for f in SAMPLE_FORMATS if f in FigureCanvasBase.get_supported_filetypes()]
    ext = Path(out).suffix.lower().lstrip(".")
    if ext not in supported:
        what = f"extension .{ext}" if ext else "no extension"
        raise UserError(f"sample grid file {out} has {what}, which matplotlib cannot write; name it with one "
                        f"of {' '.join('.' + f for f in supported)} (e.g. samples.png)")
    return ext


def sample_count(labelset: LabelSet, n: int) -> int:
    """How many images a grid of ``n`` shows: ``n``, or the whole split when it has fewer images."""
    return min(int(n), len(labelset))


def save_sample_grid(splits_or_labelset: DatasetSplits | LabelSet, out_png: Path | str, n: int = 16,
                     seed: int = 0) -> Path:
    """Save a grid of ``n`` random images (training split of a DatasetSplits; all of them when it has
    fewer, see :func:`sample_count`), class names under each. The format comes from the extension
    (see :func:`sample_grid_format`); the file is written atomically. Returns the path written."""
    from matplotlib.figure import Figure

    out_png = Path(out_png).expanduser()
    fmt = sample_grid_format(out_png)
    labelset = splits_or_labelset.train if isinstance(splits_or_labelset, DatasetSplits) else splits_or_labelset
    count = sample_count(labelset, n)
    rows = np.sort(np.random.default_rng(seed).choice(len(labelset), size=count, replace=False))
    cols = math.ceil(math.sqrt(len(rows)))
    fig = Figure(figsize=(2.2 * cols, 2.5 * math.ceil(len(rows) / cols)))
    for k, row in enumerate(rows):
        ax = fig.add_subplot(math.ceil(len(rows) / cols), cols, k + 1)
        with Image.open(labelset.image_paths[row]) as img:
            ax.imshow(img.convert("RGB"))
        names = [labelset.class_names[j] for j in np.flatnonzero(labelset.labels[row])]
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_xlabel("\n".join([", ".join(names[:3]), ", ".join(names[3:])]).strip(), fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(out_png, "wb") as fh:
        fig.savefig(fh, format=fmt, dpi=100)
    return out_png


def frequency_table(splits: DatasetSplits) -> str:
    """Per-class image counts of both splits, most frequent first."""
    from tabulate import tabulate

    scene_of = {row[0]: row[1] for row in CATEGORIES}
    train, test = splits.train.labels.sum(axis=0), splits.test.labels.sum(axis=0)
    order = np.argsort(-train, kind="stable")
    rows = [(splits.class_names[j], scene_of[splits.class_names[j]], int(train[j]),
             f"{100 * train[j] / len(splits.train):.1f}", int(test[j])) for j in order]
    return tabulate(rows, headers=["class", "scene", "train", "train %", "test"])


def main(argv: list[str] | None = None) -> int:
    """CLI: generate (or reuse) a synthetic set, print its folder and class frequencies, save a grid."""
    parser = argparse.ArgumentParser(prog="python -m datasets.synthetic", description=main.__doc__)
    parser.add_argument("--size", default="default", help=f"one of {', '.join(SIZES)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=None, help="parent folder (default: the benchmark cache)")
    parser.add_argument("--sample-grid", type=Path, default=None, help="write a labelled grid PNG here")
    args = parser.parse_args(argv)
    try:
        if args.sample_grid is not None:
            sample_grid_format(args.sample_grid)     # before anything is generated
        splits = load_synthetic(args.size, args.seed, args.root)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"folder: {splits.info['folder']}")
    print(f"{len(splits.train)} train / {len(splits.test)} test images, {len(splits.class_names)} classes")
    print(frequency_table(splits))
    if args.sample_grid is not None:
        print(f"sample grid: {save_sample_grid(splits, args.sample_grid)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
