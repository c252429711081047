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

from benchmark.config.run_spec import CLIP_BACKBONE, RunSpec
from benchmark.core.errors import UserError
from benchmark.core.files import sha256_file

SEED_LIMIT = 2**32
# Far above any recipe, far below a value that could only be a typo (an image of 10^5 px a side, 10^11 epochs).
MAX_BATCH, MAX_LR, MAX_IMAGE_SIZE, MAX_EPOCHS = 65536, 100.0, 4096, 100_000           # numpy's legacy seeding (the official mask generator) takes [0, 2**32)


def check_numbers(seeds, batch_size, lr, image_size, workers) -> None:
    """Flag values that argparse accepts by type but that cannot work."""
    for seed in seeds:
        if not 0 <= seed < SEED_LIMIT:
            raise UserError(f"--seeds {seed} is out of range; seeds are integers in [0, 2**32)")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {' '.join(map(str, seeds))} names a seed twice; give each seed once")
    if batch_size is not None and not 1 <= batch_size <= MAX_BATCH:
        raise UserError(f"--batch-size {batch_size} must be between 1 and {MAX_BATCH}")
    if lr is not None and not (math.isfinite(lr) and 0 < lr <= MAX_LR):
        raise UserError(f"--lr {lr} must be a finite number in (0, {MAX_LR:g}], e.g. 1e-4")
    if image_size is not None and not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise UserError(f"--image-size {image_size} must be a number of pixels between 1 and {MAX_IMAGE_SIZE}, "
                        "e.g. 224")
    cores = os.cpu_count() or 1
    if workers is not None and not 0 <= workers <= max(64, 4 * cores):
        raise UserError(f"--workers {workers} must be between 0 (load in the training process) and "
                        f"{max(64, 4 * cores)} (this machine has {cores} cores)")


def check_output(out: Path) -> None:
    """The output folder: a folder (or creatable), writable."""
    _check_writable_dir(out, "--out")


def check_path_shape(path: Path, what: str) -> Path:
    """A path that names something the file system can hold: no symbolic-link loop, no dangling
    link, no component longer than the file system allows. Returns it with ``~`` expanded."""
    path = Path(path).expanduser()
    text = str(path)
    if not text.strip():
        raise UserError(f"{what} is empty; give a folder path")
    if "\0" in text:
        raise UserError(f"{what} {text!r} holds a NUL character; give a plain path")
    probe = path if path.is_absolute() else Path.cwd() / path
    parent = _existing_parent(probe)
    try:
        name_max, path_max = os.pathconf(parent, "PC_NAME_MAX"), os.pathconf(parent, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for part in probe.parts:
        if len(os.fsencode(part)) > name_max:
            raise UserError(f"{what}: the name {part[:40]!r}... is {len(os.fsencode(part))} bytes, more than the "
                            f"file system's {name_max}; choose a shorter name")
    if len(os.fsencode(str(probe))) >= path_max:
        raise UserError(f"{what} is {len(os.fsencode(str(probe)))} bytes long, more than the system's {path_max}; "
                        "choose a shorter path")
    try:
        probe.resolve(strict=False)
    except (RuntimeError, OSError) as exc:
        raise UserError(f"{what} {path}: cannot be resolved ({exc.__class__.__name__}: symbolic-link loop?); "
                        "remove the link or choose another path") from None
    current = probe
    while True:                               # every existing prefix: no dangling or looping link
        if os.path.islink(current) and not os.path.exists(current):
            raise UserError(f"{what} {path}: {current} is a symbolic link to nothing (or a link loop); remove the "
                            "link or choose another path")
        if current.parent == current:
            break
        current = current.parent
    return path


def _existing_parent(path: Path) -> Path:
    probe = path
    while not os.path.isdir(probe) and probe.parent != probe:
        probe = probe.parent
    return probe


def _check_writable_dir(path: Path, what: str) -> None:
    path = check_path_shape(path, what)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder; give a folder path")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{what} {path}: {probe} is a file, so the folder cannot be created; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK) or _read_only_mount(probe):
        raise UserError(f"{what} {path} is not writable (no write permission on {probe}, or a read-only file "
                        "system); choose another folder")


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def check_cache() -> None:
    from benchmark.core.cache import cache_path

    _check_writable_dir(cache_path(), "cache folder (MLRPL_CACHE)")


def check_environment() -> None:
    """The environment variables the suite reads, checked before anything is written."""
    from benchmark.core import progress
    from benchmark.core.run_status import heartbeat_seconds

    heartbeat_seconds()          # a UserError names MLRPL_HEARTBEAT_S when it is not a positive number
    progress.mode()              # ... and MLRPL_PROGRESS when it is not auto, bar or plain
    check_cache()


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


def _check_clip(arch: str, weights: str | None, trunk: bool) -> None:
    """A CLIP the runs can build: a known architecture whose weights file loads and fits it strictly
    (or the tiny random one); a ResNet CLIP where the method trains on its trunk."""
    from benchmark.engine.clip import ClipTrunk, build_clip

    model = build_clip(arch, weights)
    if trunk:
        ClipTrunk(model, CLIP_BACKBONE + arch)          # refuses a ViT CLIP (P69)


def check_grid(runs: list[RunSpec], out: Path) -> list[RunSpec]:
    """Check every cell of the grid; returns the runs with their input fingerprints."""
    from benchmark.core.registry import get_method
    from benchmark.engine.prepared_run import load_dataset
    from datasets.masks import PROTOCOLS
    from datasets.side_info import label_embeddings

    check_output(out)
    check_environment()
    for protocol in {r.mask_protocol for r in runs}:
        if protocol not in PROTOCOLS:
            raise UserError(f"--mask-protocol {protocol!r} is unknown; choose one of {', '.join(PROTOCOLS)}")
    for arch, weights, trunk in {(r.clip_arch, r.clip_weights, r.backbone.startswith(CLIP_BACKBONE))
                                 for r in runs if r.clip_arch is not None}:
        _check_clip(arch, weights, trunk)
    for backbone, weights, size, protocol in {(r.backbone, r.trunk_weights, r.image_size, r.protocol) for r in runs}:
        if backbone.startswith(CLIP_BACKBONE):           # its CLIP was checked above
            if size < 32:
                raise UserError(f"--image-size {size} is smaller than the CLIP trunk's stride 32; use at least 32 "
                                "(the official recipe uses 448)")
            continue
        _check_backbone(backbone, weights, size, needs_model=True)       # the frozen protocol runs the trunk too
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
    if run.clip_weights is not None:
        prints["clip_weights"] = file_fingerprint(run.clip_weights)
    if run.embeddings is not None and run.embeddings.startswith("file:"):
        prints["embeddings"] = file_fingerprint(run.embeddings[len("file:"):])
    for key, value in run.method_config:            # a file named in --set (e.g. csl prior=file:PATH)
        if isinstance(value, str) and value.startswith("file:"):
            path = Path(value[len("file:"):]).expanduser()
            if not path.is_file():
                raise UserError(f"--set {key}={value}: no file at {path}; give the path of an existing file")
            prints[f"set:{key}"] = file_fingerprint(path)
    return tuple(sorted(prints.items()))


def apply_mask_pack(runs: list[RunSpec], pack) -> list[RunSpec]:
    """The runs of a grid trained on a mask pack (:mod:`datasets.mask_pack`; its dataset and protocol
    are the grid's: :func:`benchmark.cli.plan.mask_pack_of`), checked against the grid's training
    split before any run starts. A run whose pack mask is the mask the suite draws itself
    (same sha256) is the suite's own run, id unchanged. Any other mask must never share an id with the
    suite's: that run carries ``inputs["mask_pack"] = pack.digest`` (a new run id, one variant for
    the whole pack in reports), and its mask is installed in the mask cache for the run to load."""
    from benchmark.engine.prepared_run import load_dataset
    from datasets.masks import get_mask, install_mask

    keys = sorted({(r.dataset, r.dataset_size, r.data_root, r.preset) for r in runs}, key=str)
    cells = sorted({(r.ratio, r.seed) for r in runs})
    for key in keys:
        pack.check_labelset(load_dataset(*key).train, key[0])
    for ratio, seed in cells:
        pack.sha256(ratio, seed)                    # every cell of the grid is in the pack
    differ = set()
    for key in keys:
        train = load_dataset(*key).train
        for ratio, seed in cells:
            if get_mask(train, pack.protocol, ratio, seed).sha256 != pack.sha256(ratio, seed):
                install_mask(train, pack.protocol, ratio, seed, pack.mask(ratio, seed), pack.digest, pack.generator)
                differ.add((key, ratio, seed))
    print(f"mask pack {pack.path} ({pack.digest}): {len(keys) * len(cells) - len(differ)} mask(s) are the suite's own "
          f"(run ids unchanged), {len(differ)} differ (their runs get new ids)")
    return [replace(r, inputs=tuple(sorted({**dict(r.inputs), "mask_pack": pack.digest}.items())))
            if ((r.dataset, r.dataset_size, r.data_root, r.preset), r.ratio, r.seed) in differ else r for r in runs]
