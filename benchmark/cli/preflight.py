"""Checks run before a grid's first run, so that a grid never dies half-way on input it could have
refused at once. Each problem is a :class:`UserError` (one line, exit status 2) raised before
anything is written under the output folder.

:func:`check_grid` also returns the runs with the content fingerprints of their path inputs
(``RunSpec.inputs``): an edited embedding file, another weights file or a changed dataset makes
a new run instead of a stale "already done".
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import replace
from pathlib import Path

from benchmark.config.run_spec import RunSpec
from benchmark.core.errors import UserError
from benchmark.core.files import sha256_file

SEED_LIMIT = 2**32           # numpy's legacy seeding (the official mask generator) takes [0, 2**32)


def check_numbers(seeds, batch_size, lr, image_size, workers) -> None:
    """Flag values that argparse accepts by type but that cannot work."""
    for seed in seeds:
        if not 0 <= seed < SEED_LIMIT:
            raise UserError(f"--seeds {seed} is out of range; seeds are integers in [0, 2**32)")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {' '.join(map(str, seeds))} names a seed twice; give each seed once")
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size {batch_size} must be at least 1")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise UserError(f"--lr {lr} must be a finite number above 0, e.g. 1e-4")
    if image_size is not None and image_size < 1:
        raise UserError(f"--image-size {image_size} must be a positive number of pixels, e.g. 224")
    if workers is not None and workers < 0:
        raise UserError(f"--workers {workers} must be 0 (load in the training process) or more")


def check_output(out: Path) -> None:
    """The output folder: a folder (or creatable), writable."""
    _check_writable_dir(out, "--out")


def _check_writable_dir(path: Path, what: str) -> None:
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder; give a folder path")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{what} {path}: {probe} is a file, so the folder cannot be created; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} is not writable (no write permission on {probe}); choose another folder")


def check_cache() -> None:
    from benchmark.core.cache import REPO_ROOT

    _check_writable_dir(Path(os.environ.get("MLRPL_CACHE", REPO_ROOT / ".cache")), "cache folder (MLRPL_CACHE)")


@functools.lru_cache(maxsize=None)
def _file_print(path: str, size: int, mtime: int) -> str:
    return sha256_file(Path(path))[:16]


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file's content (memoised per path, size and mtime)."""
    path = Path(path).expanduser().resolve()
    st = os.stat(path)
    return _file_print(str(path), st.st_size, st.st_mtime_ns)


def _check_backbone(name: str, weights: str | None, image_size: int, needs_model: bool) -> None:
    """A timm model name, readable weights that fit it, an image size the network can take."""
    import timm

    from benchmark.engine.backbones import PACKAGED, PACKAGED_ARCH, build_backbone

    if not timm.is_model(name):
        raise UserError(f"--backbone {name!r} is not a timm model; use a name from timm.list_models(), "
                        "e.g. tf_efficientnet_lite0 or resnet101")
    if weights == PACKAGED and name != PACKAGED_ARCH:
        raise UserError(f"--backbone-weights packaged holds {PACKAGED_ARCH} weights only, not {name!r}; "
                        f"use --backbone {PACKAGED_ARCH} or a weights file")
    if needs_model or weights not in (None, PACKAGED):
        backbone = build_backbone(name, weights)        # reads the weights and matches them to the model
        if image_size < backbone.stride:
            raise UserError(f"--image-size {image_size} is smaller than {name}'s stride {backbone.stride}; "
                            f"use at least {backbone.stride} (the paper profile uses 448)")


def check_grid(runs: list[RunSpec], out: Path) -> list[RunSpec]:
    """Check every cell of the grid; returns the runs with their input fingerprints."""
    from benchmark.core.registry import get_method
    from benchmark.engine.prepared_run import load_dataset
    from datasets.masks import PROTOCOLS
    from datasets.side_info import label_embeddings

    check_output(out)
    check_cache()
    for protocol in {r.mask_protocol for r in runs}:
        if protocol not in PROTOCOLS:
            raise UserError(f"--mask-protocol {protocol!r} is unknown; choose one of {', '.join(PROTOCOLS)}")
    for backbone, weights, size, protocol in {(r.backbone, r.backbone_weights, r.image_size, r.protocol) for r in runs}:
        _check_backbone(backbone, weights, size, needs_model=protocol == "finetune")
    data_prints, checked = {}, set()
    for run in runs:
        key = (run.dataset, run.dataset_size, run.data_root, run.preset)
        if key not in data_prints:
            splits = load_dataset(*key)
            data_prints[key] = (splits, splits.train.fingerprint()[:16] + splits.test.fingerprint()[:16])
        splits, data_print = data_prints[key]
        if run.embeddings is not None and (run.dataset, run.embeddings) not in checked:
            label_embeddings(splits.class_names, run.embeddings, dataset=run.dataset)
            checked.add((run.dataset, run.embeddings))
        get_method(run.method).make_config(dict(run.method_config), profile=run.profile)
    return [replace(run, inputs=_inputs(run, data_prints[(run.dataset, run.dataset_size, run.data_root,
                                                          run.preset)][1])) for run in runs]


def _inputs(run: RunSpec, data_print: str) -> tuple:
    prints = {}
    if run.data_root is not None:
        prints["data"] = data_print
    if run.backbone_weights not in (None, "packaged"):
        prints["backbone_weights"] = file_fingerprint(run.backbone_weights)
    if run.embeddings is not None and run.embeddings.startswith("file:"):
        prints["embeddings"] = file_fingerprint(run.embeddings[len("file:"):])
    for key, value in run.method_config:            # a file named in --set (e.g. csl prior=file:PATH)
        if isinstance(value, str) and value.startswith("file:"):
            path = Path(value[len("file:"):]).expanduser()
            if not path.is_file():
                raise UserError(f"--set {key}={value}: no file at {path}; give the path of an existing file")
            prints[f"set:{key}"] = file_fingerprint(path)
    return tuple(sorted(prints.items()))
