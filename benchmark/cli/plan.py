"""The grid a command line asks for: the methods chosen, every flag and method config checked, the
RunSpecs built (a dataset's preset, a method's paper batch size), then the inputs checked and
fingerprinted (:mod:`benchmark.cli.preflight`), all before the first run starts."""
from __future__ import annotations

import os
from pathlib import Path

from benchmark.core.errors import UserError

DEFAULT_METHOD_ORDER = ("partial_bce", "asl", "ssgrl", "hst", "dsrb", "clsl")


def default_methods() -> list[str]:
    from benchmark.core.registry import METHODS

    chosen = [n for n, c in METHODS.module_dict.items() if c.card.default_grid]
    return sorted(chosen, key=lambda n: (DEFAULT_METHOD_ORDER.index(n) if n in DEFAULT_METHOD_ORDER else 99, n))


def chosen_methods(names: list[str] | None) -> list[str]:
    from benchmark.core.registry import METHODS, get_method

    if not names:
        return default_methods()
    if names == ["all"]:
        return sorted(METHODS.module_dict, key=lambda n: (DEFAULT_METHOD_ORDER.index(n)
                                                          if n in DEFAULT_METHOD_ORDER else 99, n))
    out = []
    for name in names:
        get_method(name)
        if name not in out:
            out.append(name)          # a method named twice is trained once
    return out


def build_runs(args, out: Path):
    """The grid's runs, every input checked (:func:`benchmark.cli.preflight.check_grid`) and fingerprinted."""
    from benchmark.cli.preflight import check_grid

    runs, methods, profile = grid_runs(args)
    return check_grid(runs, out), methods, profile


def grid_runs(args):
    """The grid's RunSpecs from the command line (flags and method configs checked, data not read)."""
    from dataclasses import replace

    from benchmark.cli.preflight import check_numbers
    from benchmark.config.profiles import get_profile
    from benchmark.config.run_spec import (
        check_overrides,
        expand_grid,
        parse_overrides,
        parse_ratios,
    )
    from benchmark.core.registry import get_dataset, get_method

    check_numbers(args.seeds, args.batch_size, args.lr, args.image_size, args.workers)
    for flag in ("epochs", "jobs", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag} {value} must be at least 1")
    profile = get_profile(args.profile, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          image_size=args.image_size, backbone=args.backbone, backbone_weights=args.backbone_weights)
    methods = chosen_methods(args.methods)
    fields_of = {name: get_method(name).config_fields() for name in methods}
    overrides = dict(parse_overrides(args.overrides))
    check_overrides(overrides, fields_of)
    for name in args.dataset:
        get_dataset(name)
    from datasets.side_info import _parse_provider

    _parse_provider(args.embeddings)           # a typo is an error even when no method uses embeddings
    if profile.name == "paper" and profile.backbone_weights is None:
        raise UserError("the paper profile needs --backbone-weights PATH (an ImageNet ResNet-101 state dict, "
                        "torchvision or timm format); nothing is downloaded")
    _check_weights(profile.backbone_weights)
    common = dict(protocol=args.protocol, mask_protocol=args.mask_protocol or "random", profile=profile.name,
                  epochs=profile.epochs, batch_size=profile.batch_size, lr=profile.lr,
                  weight_decay=profile.weight_decay, optimizer=profile.optimizer, lr_step=profile.lr_step,
                  image_size=profile.image_size, backbone=profile.backbone, backbone_weights=profile.backbone_weights,
                  dataset_size=profile.dataset_size, val_fraction=profile.val_fraction, embeddings=args.embeddings,
                  method_config=tuple(overrides.items()), preset=args.preset,
                  data_root=str(Path(args.data_root).expanduser().resolve()) if args.data_root else None)
    ratios = parse_ratios(args.ratios)
    runs = []
    for dataset in args.dataset:
        runs += expand_grid(methods, [dataset], ratios, args.seeds, fields_of=fields_of,
                            **_dataset_choices(dataset, args, common))
    # Options that cannot change a run do not enter its identity: embeddings for a method that
    # uses none, a data root for the embedded dataset.
    runs = [replace(run, embeddings=run.embeddings if "label_embeddings" in get_method(run.method).card.requires else None,
                    data_root=None if run.dataset == "synthetic" else run.data_root) for run in runs]
    return [_method_batch_size(run, args) for run in runs], methods, profile


def _dataset_choices(dataset: str, args, common: dict) -> dict:
    """A real dataset's preset (hcp | clsl) fixes its protocol choices unless a flag says otherwise;
    the resolved preset is part of every RunSpec, so each result records it."""
    from datasets.presets import DEFAULT_PRESET, preset_options

    if dataset not in DEFAULT_PRESET:
        if args.preset:
            raise UserError(f"--preset applies to real datasets ({', '.join(DEFAULT_PRESET)}), not '{dataset}'")
        return dict(common)
    options = preset_options(dataset, args.preset)
    out = dict(common, preset=options["preset"])
    if args.mask_protocol is None:
        out["mask_protocol"] = options.get("mask_protocol", "random")
    if args.image_size is None and common["profile"] == "paper":
        out["image_size"] = options.get("image_size", common["image_size"])
    return out


def _method_batch_size(run, args):
    """In the paper profile a method's official batch size (``MethodCard.paper_batch_size``) replaces the
    profile's unless ``--batch-size`` was given; the RunSpec (and so spec.json) records the value used."""
    from dataclasses import replace

    from benchmark.core.registry import get_method

    if run.profile != "paper" or args.batch_size is not None:
        return run
    size = get_method(run.method).card.batch_size(run.dataset)
    return run if size is None else replace(run, batch_size=int(size))


def _check_weights(weights: str | None) -> None:
    if weights in (None, "packaged"):
        return
    if not Path(weights).expanduser().is_file():
        raise UserError(f"--backbone-weights file {weights} not found; give the path of a local state-dict file "
                        "(nothing is downloaded)")


def _ranks_per_run(args) -> int:
    """How many processes train each run: torchrun's world size, or the GPUs per SLURM task."""
    if args.launcher == "pytorch":
        return int(os.environ.get("WORLD_SIZE", 1))
    if args.launcher in ("slurm", "submitit-local"):
        return max(1, args.slurm_gpus_per_run or 1)
    return 1


def checked_grid(args, out: Path):
    runs, methods, profile = build_runs(args, out)
    _check_plugins(methods)
    world = _ranks_per_run(args)
    odd = sorted({r.batch_size for r in runs if r.batch_size % world})
    if odd:
        raise UserError(f"batch size {odd[0]} does not split over {world} ranks; the batch size is the global "
                        f"one, so give --batch-size a multiple of {world} (or use a number of ranks dividing it)")
    return runs, methods, profile


def _check_plugins(methods: list[str]) -> None:
    """A method from --plugins passes the contract checks before its first run (memoised per file)."""
    from benchmark.cli.plugin_checks import check_plugin_method
    from benchmark.core.registry import get_method

    for name in methods:
        if get_method(name).plugin_file:
            check_plugin_method(name)
