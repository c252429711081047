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

    pack = mask_pack_of(args)
    runs, methods, profile = grid_runs(args)
    runs = check_grid(runs, out)
    if pack is not None:
        from benchmark.cli.preflight import apply_mask_pack

        runs = apply_mask_pack(runs, pack)
    return runs, methods, profile


def mask_pack_of(args):
    """The verified pack of ``--mask-pack`` (None without), for a grid of its dataset; its protocol
    becomes the grid's mask protocol (``--mask-protocol`` naming another one is refused)."""
    if not getattr(args, "mask_pack", None):
        return None
    from datasets.mask_pack import read_pack

    pack = read_pack(args.mask_pack)
    for name in args.dataset:
        if name != pack.dataset:
            raise UserError(f"--mask-pack {pack.path} holds masks of {pack.dataset}, the grid also trains {name}; "
                            "run each dataset as its own grid, with its own pack")
    if args.mask_protocol not in (None, pack.protocol):
        raise UserError(f"--mask-pack {pack.path} holds {pack.protocol} masks, the grid trains {args.mask_protocol} "
                        "masks; drop --mask-protocol (the grid takes the pack's), or export a pack of "
                        f"{args.mask_protocol} masks")
    args.mask_protocol = pack.protocol
    return pack


def mask_ratios(protocol: str, ratios: list[float]) -> list[float]:
    """The proportions a grid trains for a mask protocol: its ratios, or [1.0] for one without a
    proportion (single positive). The CLSL protocol has one (it is the random protocol drawn with torch).
    The same rule as :func:`benchmark.config.run_spec.expand_grid` (``NO_PROPORTION``)."""
    from benchmark.config.run_spec import NO_PROPORTION

    return [1.0] if protocol in NO_PROPORTION else ratios


def export_cells(args) -> tuple[tuple, str, list[float], list[int]]:
    """What ``masks export`` draws: the dataset key (name, size, root, preset) a grid of these flags
    loads, its mask protocol, proportions and seeds, resolved as :func:`grid_runs` resolves them."""
    from benchmark.cli.preflight import check_numbers
    from benchmark.config.profiles import get_profile
    from benchmark.config.run_spec import parse_ratios
    from benchmark.core.registry import get_dataset
    from datasets.masks import PROTOCOLS

    check_numbers(args.seeds, None, None, None, None)
    profile = get_profile(args.profile)
    get_dataset(args.dataset)
    if args.data_root and args.dataset == "synthetic":
        raise UserError("--data-root is for the real datasets (voc2007, coco2014, nuswide, vg200, voc2012, cub); "
                        "the synthetic dataset is embedded: drop --data-root, or name a real dataset with --dataset")
    choices = _dataset_choices(args.dataset, args)
    protocol = choices["mask_protocol"]
    if protocol not in PROTOCOLS:
        raise UserError(f"--mask-protocol {protocol!r} is unknown; choose one of {', '.join(PROTOCOLS)}")
    root = str(Path(args.data_root).expanduser().resolve()) if args.data_root else None
    key = (args.dataset, profile.dataset_size, None if args.dataset == "synthetic" else root, choices["preset"])
    return key, protocol, mask_ratios(protocol, parse_ratios(args.ratios)), list(args.seeds)


def grid_runs(args):
    """The grid's RunSpecs from the command line (flags and method configs checked, data not read).

    Each (method, dataset) cell trains on its resolved recipe (:func:`benchmark.config.recipes.resolve`)
    with the flags applied; the recipe's method config comes under ``--set``. Identities are canonical:
    an embedding spelled two ways, or a config value equal to its default, is one run id."""
    from benchmark.cli.preflight import MAX_EPOCHS, check_numbers
    from benchmark.config.profiles import get_profile
    from benchmark.config.recipes import applied, resolve
    from benchmark.config.run_spec import (
        RunSpec,
        check_overrides,
        overrides_for,
        parse_overrides,
        parse_ratios,
    )
    from benchmark.core.registry import get_dataset, get_method
    from benchmark.launch.planning import default_threads

    check_numbers(args.seeds, args.batch_size, args.lr, args.image_size, args.workers)
    for flag in ("epochs", "jobs", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag} {value} must be at least 1")
    if args.epochs is not None and args.epochs > MAX_EPOCHS:
        raise UserError(f"--epochs {args.epochs} is more than {MAX_EPOCHS}; give the number of epochs to train")
    _check_threads(args)
    profile = get_profile(args.profile)
    protocol = _protocol(args, profile)
    methods = chosen_methods(args.methods)
    fields_of = {name: get_method(name).config_fields() for name in methods}
    overrides = dict(parse_overrides(args.overrides))
    check_overrides(overrides, fields_of)
    for name in args.dataset:
        get_dataset(name)
        if profile.needs_real_data and name == "synthetic":
            raise UserError(f"--profile {profile.name} is a real-data recipe (ResNet-101 at 448 px); the embedded "
                            "synthetic dataset runs under --profile smoke or default; give --dataset voc2007 (or "
                            "coco2014, nuswide, vg200, voc2012, cub) with --data-root")
    if args.data_root and all(name == "synthetic" for name in args.dataset):
        raise UserError("--data-root is for the real datasets (voc2007, coco2014, nuswide, vg200, voc2012, cub); "
                        "the synthetic dataset is embedded: drop --data-root, or name a real dataset with --dataset")
    embeddings = _canonical_embeddings(args.embeddings)
    weights = args.backbone_weights or profile.backbone_weights
    on_clip_trunk = {m for m in methods if "clip_trunk" in get_method(m).card.requires}
    if weights is None and set(methods) - on_clip_trunk:
        raise UserError(f"the {profile.name} profile needs --backbone-weights PATH (ImageNet weights of the "
                        "recipe's backbone, torchvision or timm format); nothing is downloaded")
    _check_weights(weights)
    _check_clip_flags(args, methods)
    device = _planned_device(args)
    if args.precision == "fp16" and device == "cpu":
        raise UserError("--precision fp16 needs a GPU (fp16 autocast on a CPU is not supported); use bf16 or fp32")
    data_root = str(Path(args.data_root).expanduser().resolve()) if args.data_root else None
    ratios = parse_ratios(args.ratios)
    cells = []
    for dataset in args.dataset:
        choices = _dataset_choices(dataset, args)
        for method in methods:
            recipe = resolve(method, dataset, profile.name)
            train, overridden = applied(recipe, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                                        image_size=args.image_size, backbone=args.backbone, precision=args.precision)
            if protocol == "frozen" and train.test_image_size != train.image_size:
                raise UserError(f"{method}'s recipe evaluates at {train.test_image_size} px and trains at "
                                f"{train.image_size} px; frozen features are extracted at one size: use "
                                "--protocol finetune, or --image-size to set both")
            if train.precision == "fp16" and device == "cpu":
                raise UserError(f"{method}'s recipe on {dataset} trains in fp16, which needs a GPU; "
                                "give --precision bf16 or fp32 to deviate (recorded)")
            config = {**recipe.config, **dict(overrides_for(method, overrides, fields_of[method]))}
            uses_embeddings = "label_embeddings" in get_method(method).card.requires
            cells.append(dict(
                method=method, dataset=dataset, train=train, protocol=protocol, profile=profile.name,
                backbone_weights=weights, dataset_size=profile.dataset_size, val_fraction=profile.val_fraction,
                embeddings=_method_embeddings(method, recipe, embeddings) if uses_embeddings else None,
                method_config=canonical_config(method, config, profile.name),
                data_root=None if dataset == "synthetic" else data_root, device=device,
                recipe_overrides=overridden, **choices))
            cells[-1].update(_clip_cell(method, recipe, train, args))
    per_dataset = {c["dataset"]: mask_ratios(c["mask_protocol"], ratios) for c in cells}
    count = sum(len(per_dataset[c["dataset"]]) * len(args.seeds) for c in cells)
    threads = args.threads or _launcher_threads(args) or default_threads(count, args.jobs)
    runs = []
    for dataset in args.dataset:           # ratio-major: every method gets its low ratios early
        for seed in args.seeds:
            for ratio in per_dataset.get(dataset, ratios):
                runs += [RunSpec(ratio=ratio, seed=seed, threads=threads, **c) for c in cells if c["dataset"] == dataset]
    return runs, methods, profile


def canonical_config(method: str, values: dict, profile: str) -> tuple:
    """``values`` as the run id holds them: checked, in the Config's own types, and without the
    entries equal to what the method would use anyway (its default with the profile's values)."""
    from benchmark.core.registry import get_method

    cls = get_method(method)
    if cls.Config is None:
        cls.make_config(values, profile=profile)           # refuses values for a method without config
        return ()
    chosen, default = cls.make_config(values, profile=profile), cls.make_config({}, profile=profile)
    out = {k: getattr(chosen, k) for k in values if getattr(chosen, k) != getattr(default, k)}
    return tuple(sorted((k, list(v) if isinstance(v, tuple) else v) for k, v in out.items()))


def _protocol(args, profile) -> str:
    """The training protocol: the flag, else the profile's (paper / official: finetune), else frozen.
    A real-data recipe with frozen heads is not the paper setting and is refused."""
    if profile.protocol and args.protocol not in (None, profile.protocol):
        raise UserError(f"--profile {profile.name} trains the whole network (--protocol {profile.protocol}); heads on "
                        f"a frozen trunk at the paper's lr are not the paper setting: drop --protocol {args.protocol}, "
                        "or use --profile default for frozen heads")
    return args.protocol or profile.protocol or "frozen"


def _canonical_embeddings(text: str | None) -> str | None:
    from datasets.side_info import canonical_provider

    return None if text is None else canonical_provider(text)   # a typo is an error even when no method uses embeddings


def _method_embeddings(method: str, recipe, given: str | None) -> str:
    """The label embeddings a method trains with: ``--embeddings``, else the recipe's. CPU profiles use
    the packaged GloVe vectors; an official recipe's own vectors are a file the user gives."""
    if given is not None:
        return given
    vectors = recipe.info.get("word_vectors")
    if recipe.profile in ("smoke", "default") or not isinstance(vectors, dict):
        return "glove"
    raise UserError(f"{method}'s {recipe.profile} recipe on {recipe.dataset} uses the official {vectors.get('dim')}-d label "
                    f"vectors ({vectors.get('file')}: {vectors.get('origin') or 'see recipes'}); give them with "
                    "--embeddings file:PATH.npy, or --embeddings glove to deviate (recorded)")


def _planned_device(args) -> str:
    """The device the runs will train on, fixed before they start (part of their identity): a GPU
    when this process sees one (or a SLURM task gets one), else the CPU."""
    import torch

    if args.launcher in ("slurm", "submitit-local"):
        return "cuda" if (args.slurm_gpus_per_run or 0) > 0 else "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _launcher_threads(args) -> int | None:
    return args.slurm_cpus_per_run if args.launcher in ("slurm", "submitit-local") else None


def _dataset_choices(dataset: str, args) -> dict:
    """A real dataset's preset (hcp | clsl) fixes its protocol choices unless a flag says otherwise;
    the resolved preset is part of every RunSpec, so each result records it."""
    from datasets.presets import DEFAULT_PRESET, preset_options

    if dataset not in DEFAULT_PRESET:
        if args.preset:
            raise UserError(f"--preset applies to real datasets ({', '.join(DEFAULT_PRESET)}), not '{dataset}'")
        return dict(preset=None, mask_protocol=args.mask_protocol or "random")
    options = preset_options(dataset, args.preset)
    return dict(preset=options["preset"], mask_protocol=args.mask_protocol or options.get("mask_protocol", "random"))


def _check_weights(weights: str | None) -> None:
    if weights in (None, "packaged"):
        return
    path = Path(weights).expanduser()
    if path.exists() and not path.is_file():
        raise UserError(f"--backbone-weights {weights} is a folder or a device, not a weights file; give the path of "
                        "a local state-dict file (nothing is downloaded)")
    if not path.is_file():
        raise UserError(f"--backbone-weights file {weights} not found; give the path of a local state-dict file "
                        "(nothing is downloaded)")


def _check_clip_flags(args, methods: list[str]) -> None:
    """--clip-weights / --clip-arch: for a grid with a CLIP method, a known architecture, a file."""
    from benchmark.core.registry import get_method
    from benchmark.engine.clip import check_arch

    arch, path = getattr(args, "clip_arch", None), getattr(args, "clip_weights", None)
    if arch is None and path is None:
        return
    if not any("clip" in get_method(m).card.requires for m in methods):
        raise UserError(f"--clip-weights / --clip-arch are for the methods that use CLIP (dualcoop); no method of "
                        f"this grid ({', '.join(methods)}) does: drop them, or add such a method with --methods")
    if arch is not None:
        check_arch(arch)
    if path is not None:
        file = Path(path).expanduser()
        if file.exists() and not file.is_file():
            raise UserError(f"--clip-weights {path} is a folder or a device, not a weights file; give an OpenAI "
                            "file such as RN101.pt or an OpenCLIP checkpoint (nothing is downloaded)")
        if not file.is_file():
            raise UserError(f"--clip-weights file {path} not found; give an OpenAI file such as RN101.pt or an "
                            "OpenCLIP checkpoint (nothing is downloaded)")


def _clip_cell(method: str, recipe, train, args) -> dict:
    """The CLIP fields of a (method, dataset) cell: the architecture (--clip-arch, else the recipe's
    ``clip:<arch>`` backbone or ``clip_model``, else the tiny random CLIP on the CPU profiles: tiny-ViT
    for a method whose official CLIP is a ViT, else tiny-RN) and the weights file; a
    method requiring "clip_trunk" trains on that CLIP's trunk (backbone ``clip:<arch>``)."""
    from benchmark.config.run_spec import (
        CLIP_BACKBONE,
        cpu_clip_arch,
        official_clip_arch,
    )
    from benchmark.core.registry import get_method
    from benchmark.engine.clip import is_tiny

    requires = get_method(method).card.requires
    if "clip" not in requires:
        return {}
    arch, path = getattr(args, "clip_arch", None), getattr(args, "clip_weights", None)
    official = recipe.train.backbone[len(CLIP_BACKBONE):] if recipe.train.backbone.startswith(CLIP_BACKBONE) else None
    if official is None and recipe.profile not in ("smoke", "default"):
        official = official_clip_arch(method)    # aevlp / vlpl: the recipe's clip_model (their backbone is no CLIP)
    if path is None:
        if recipe.profile not in ("smoke", "default"):
            raise UserError(f"{method} needs CLIP weights: pass --clip-weights PATH (an OpenAI "
                            f"{arch or official or 'RN101'}.pt or an OpenCLIP checkpoint); nothing is downloaded")
        if arch is not None and not is_tiny(arch):
            raise UserError(f"--clip-arch {arch} needs --clip-weights PATH (its weights file); without one the CPU "
                            f"profiles train on the tiny random CLIP ({cpu_clip_arch(method)})")
        arch = arch or cpu_clip_arch(method)
    elif (arch := arch or official) is None:
        raise UserError("--clip-weights: also give --clip-arch, the file's architecture (RN50, RN101, ViT-B-16, "
                        "ViT-L-14-336)")
    out = {"clip_arch": arch, "clip_weights": str(Path(path).expanduser().resolve()) if path else None}
    if "clip_trunk" in requires:
        trunk = CLIP_BACKBONE + arch
        if args.backbone not in (None, trunk):
            raise UserError(f"--backbone {args.backbone}: {method}'s backbone is its CLIP's visual trunk ({trunk}); "
                            "choose the CLIP with --clip-arch, or leave the method out of this grid")
        out.update(train=train.replace(backbone=trunk), backbone_weights=None)
    return out


def _ranks_per_run(args) -> int:
    """How many processes train each run: torchrun's world size, or the GPUs per SLURM task."""
    if args.launcher == "pytorch":
        return int(os.environ.get("WORLD_SIZE", 1))
    if args.launcher in ("slurm", "submitit-local"):
        return max(1, args.slurm_gpus_per_run or 1)
    return 1


def _check_threads(args) -> None:
    """--threads and --jobs on this machine (a SLURM grid's values are for its nodes)."""
    if getattr(args, "launcher", "local") == "slurm":
        return
    cores = os.cpu_count() or 1
    if args.threads is not None and args.threads > cores:
        raise UserError(f"--threads {args.threads} is more than this machine's {cores} CPU cores; give at most "
                        f"{cores} (oversubscribed threads only slow a run down)")
    if args.jobs is not None and args.jobs > 4 * cores:
        raise UserError(f"--jobs {args.jobs} is far more than this machine's {cores} CPU cores; give at most {cores}")


def checked_grid(args, out: Path):
    from benchmark.cli.preflight import check_output
    from benchmark.core import published

    check_output(out)
    if not args.no_report:
        published.check_targets(out)         # the report would overwrite someone else's files
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
