"""Command line: ``python run_benchmark.py [options]`` runs a grid; ``report`` rebuilds the
leaderboard from run folders; ``samples`` saves a labelled grid of synthetic images."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import warnings
from pathlib import Path

from benchmark.core import process_group
from benchmark.core.cache import REPO_ROOT
from benchmark.core.errors import UserError, one_line

DEFAULT_METHOD_ORDER = ("partial_bce", "asl", "ssgrl", "hst", "dsrb", "clsl")
SUBCOMMANDS = ("run", "report", "samples", "prepare", "status")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (a UserError: exit status 2, no usage block)."""

    def error(self, message: str):
        raise UserError(f"{message} (see python {self.prog} --help)")


def _run_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="run_benchmark.py", description=(
        "Train methods for multi-label recognition with partial labels across a grid of known-label "
        "proportions and write a leaderboard. Subcommands: report --out DIR | status --out DIR | samples --out PNG | "
        "prepare --dataset NAME --data-root PATH."))
    p.add_argument("--methods", nargs="+", help="methods to run, or 'all' (default: every method in the default grid)")
    p.add_argument("--dataset", nargs="+", default=["synthetic"], help="dataset name(s) (default: synthetic)")
    p.add_argument("--ratios", default="0.1:0.9", help="known-label proportions: a:b, a:b:step or a,b,c (default 0.1:0.9)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds; seed 0 = the official mask generator")
    p.add_argument("--data-root", help="folder of a real dataset (VOC 2007, MS-COCO 2014, NUS-WIDE, VG-200)")
    p.add_argument("--preset", help="real datasets: the choices of a code base, hcp (HST/DSRB code) | clsl")
    p.add_argument("--protocol", choices=("frozen", "finetune"), default="frozen")
    p.add_argument("--profile", default="default", help="smoke | default | paper")
    p.add_argument("--mask-protocol", help="random (HCP code; default) | random_clsl (CLSL code) | single_positive")
    p.add_argument("--epochs", type=int, help="override the profile's number of epochs")
    p.add_argument("--batch-size", type=int, help="override the profile's batch size (paper profile: each method's official one)")
    p.add_argument("--lr", type=float, help="override the profile's learning rate")
    p.add_argument("--image-size", type=int, help="override the profile's image size")
    p.add_argument("--backbone", help="any timm model name (default: the profile's)")
    p.add_argument("--backbone-weights", help="local weights file, or 'packaged' (EfficientNet-Lite0 from its package)")
    p.add_argument("--embeddings", default="glove", help="label embeddings: glove | minilm | random | file:PATH.npy")
    p.add_argument("--set", dest="overrides", nargs="*", metavar="KEY=VALUE", help="method config overrides: key=value for every method, method.key=value for one")
    p.add_argument("--out", help="output folder (default: results/<dataset>-<protocol>-<profile>)")
    p.add_argument("--plugins", nargs="*", default=[], help="folders with extra method files")
    p.add_argument("--workers", type=int, default=0, help="data-loader workers (finetune protocol)")
    p.add_argument("--jobs", type=int, help="runs trained at the same time, each in its own process (default: one per "
                   "CPU core, at most 8; with GPUs one per GPU, each worker pinned to its own)")
    p.add_argument("--threads", type=int, help="torch CPU threads per run (default: cores / jobs)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each run's last checkpoint")
    p.add_argument("--list", action="store_true", help="list registered methods, datasets and profiles, then exit")
    p.add_argument("--no-report", action="store_true", help="skip writing the leaderboard after the grid")
    p.add_argument("--tensorboard", action="store_true", help="also log losses, diagnostics and metrics to TensorBoard "
                   "in each run folder (tensorboard --logdir <out>)")
    p.add_argument("--launcher", default="local", help="local (train here; default) | slurm (submit the unfinished "
                   "runs as one SLURM job array through submitit, then return) | pytorch (under torchrun: every "
                   "run on all the ranks with DistributedDataParallel, e.g. torchrun --nproc-per-node 4 "
                   "run_benchmark.py --launcher pytorch ...)")
    s = p.add_argument_group("SLURM (--launcher slurm)")
    s.add_argument("--slurm-partition", help="partition to submit to")
    s.add_argument("--slurm-gpus-per-run", type=int, default=1, help="GPUs per run (default 1; 0 for CPU nodes); "
                   "N > 1 trains each run with N DDP ranks, one task and one GPU each")
    s.add_argument("--slurm-cpus-per-run", type=int, default=8, help="CPU cores per run (per rank with several "
                   "GPUs per run), also its torch threads unless --threads is given (default 8)")
    s.add_argument("--slurm-time", default="12:00:00", help="time limit per run (default 12:00:00); a run stopped "
                   "by it is requeued and resumes from its last epoch")
    s.add_argument("--slurm-array-parallelism", type=int, help="at most this many runs at a time")
    s.add_argument("--slurm-setup", action="append", default=[], metavar="LINE",
                   help="shell line run before each task, e.g. 'module load cuda' (repeatable)")
    s.add_argument("--slurm-param", nargs="*", default=[], metavar="KEY=VALUE",
                   help="other sbatch options, e.g. account=ABC qos=normal mem=64G")
    return p


def _list(out=sys.stdout) -> int:
    from benchmark.config.profiles import PROFILES
    from benchmark.core.registry import DATASETS, METHODS

    print("methods:", file=out)
    for name, cls in sorted(METHODS.module_dict.items()):
        first = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        flag = " [default grid]" if cls.in_default_grid else ""
        print(f"  {name:14s}{flag} {first}", file=out)
    print("datasets:", file=out)
    for name, fn in sorted(DATASETS.module_dict.items()):
        first = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        print(f"  {name:14s} {first}", file=out)
    print("profiles: " + ", ".join(PROFILES), file=out)
    return 0


def _default_methods() -> list[str]:
    from benchmark.core.registry import METHODS

    chosen = [n for n, c in METHODS.module_dict.items() if c.in_default_grid]
    return sorted(chosen, key=lambda n: (DEFAULT_METHOD_ORDER.index(n) if n in DEFAULT_METHOD_ORDER else 99, n))


def _chosen_methods(names: list[str] | None) -> list[str]:
    from benchmark.core.registry import METHODS, get_method

    if not names:
        return _default_methods()
    if names == ["all"]:
        return sorted(METHODS.module_dict, key=lambda n: (DEFAULT_METHOD_ORDER.index(n)
                                                          if n in DEFAULT_METHOD_ORDER else 99, n))
    out = []
    for name in names:
        get_method(name)
        if name not in out:
            out.append(name)          # a method named twice is trained once
    return out


def _build_runs(args, out: Path):
    """The grid's runs, every input checked (:func:`benchmark.cli.preflight.check_grid`) and fingerprinted."""
    from benchmark.cli.preflight import check_grid

    runs, methods, profile = _grid_runs(args)
    return check_grid(runs, out), methods, profile


def _grid_runs(args):
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
    methods = _chosen_methods(args.methods)
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
    runs = [replace(run, embeddings=run.embeddings if "label_embeddings" in get_method(run.method).requires else None,
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
    """In the paper profile a method's official batch size (``Method.paper_batch_size``) replaces the
    profile's unless ``--batch-size`` was given; the RunSpec (and so spec.json) records the value used."""
    from dataclasses import replace

    from benchmark.core.registry import get_method

    if run.profile != "paper" or args.batch_size is not None:
        return run
    size = get_method(run.method).paper_batch_size(run.dataset)
    return run if size is None else replace(run, batch_size=int(size))


def _check_weights(weights: str | None) -> None:
    if weights in (None, "packaged"):
        return
    if not Path(weights).expanduser().is_file():
        raise UserError(f"--backbone-weights file {weights} not found; give the path of a local state-dict file "
                        "(nothing is downloaded)")


def cmd_run(argv: list[str]) -> int:
    from benchmark.core.registry import discover
    from benchmark.launch.grid import run_grid

    args = _run_parser().parse_args(argv)
    discover(tuple(args.plugins))
    if args.list:
        return _list()
    from benchmark.config.profiles import get_profile

    profile_name = get_profile(args.profile).name
    out = Path(args.out) if args.out else REPO_ROOT / "results" / f"{'+'.join(args.dataset)}-{args.protocol}-{profile_name}"
    from benchmark.cli.launchers import _check_local_launcher, _start_ranks, _submit
    from benchmark.launch.grid import LAUNCHERS

    if args.launcher not in LAUNCHERS:          # before any check that reads data
        raise UserError(f"--launcher {args.launcher!r} is unknown; choose local, pytorch (under torchrun) or slurm")
    if args.launcher == "pytorch":
        runs, methods, profile = _start_ranks(args, out)
    elif process_group.launched_by_torchrun() and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise UserError("this process was started by torchrun: add --launcher pytorch, so that the ranks train "
                        "each run together instead of each training the whole grid")
    else:
        runs, methods, profile = _checked_grid(args, out)
    if args.tensorboard:
        _enable_tensorboard()
    print(f"{len(runs)} runs: {', '.join(methods)} x {len(runs) // max(1, len(methods) * len(args.seeds) * len(args.dataset))}"
          f" proportions x {len(args.seeds)} seed(s) on {', '.join(args.dataset)} ({args.protocol}, {profile.name}) -> {out}")
    if args.launcher not in ("local", "pytorch"):
        return _submit(args, runs, out)
    _check_local_launcher(args)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        outcome = run_grid(runs, out, keep_checkpoints=args.keep_checkpoints, num_workers=args.workers,
                           jobs=args.jobs, threads=args.threads, plugins=tuple(args.plugins))
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished runs are kept in {out}; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    busy = f", {len(outcome.busy)} being trained by another process" if outcome.busy else ""
    print(f"grid: {len(outcome.finished)} trained, {len(outcome.skipped)} already done, "
          f"{len(outcome.failed)} failed{busy}, {outcome.seconds:.1f} s")
    if not args.no_report and process_group.is_main():
        from benchmark.cli.subcommands import _report

        _report(out, methods)
    return 1 if outcome.failed else 0


def _ranks_per_run(args) -> int:
    """How many processes train each run: torchrun's world size, or the GPUs per SLURM task."""
    if args.launcher == "pytorch":
        return int(os.environ.get("WORLD_SIZE", 1))
    if args.launcher in ("slurm", "submitit-local"):
        return max(1, args.slurm_gpus_per_run or 1)
    return 1


def _checked_grid(args, out: Path):
    runs, methods, profile = _build_runs(args, out)
    _check_plugins(methods)
    world = _ranks_per_run(args)
    odd = sorted({r.batch_size for r in runs if r.batch_size % world})
    if odd:
        raise UserError(f"batch size {odd[0]} does not split over {world} ranks; the batch size is the global "
                        f"one, so give --batch-size a multiple of {world} (or use a number of ranks dividing it)")
    return runs, methods, profile


def _enable_tensorboard() -> None:
    """--tensorboard: runs (and the worker processes, which inherit the environment) add MMEngine's
    TensorBoard backend; the flag does not enter run ids, it changes no number."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError as exc:
        raise UserError(f"--tensorboard needs the tensorboard package ({exc}); pip install tensorboard") from None
    from benchmark.engine.runner import TENSORBOARD_ENV

    os.environ[TENSORBOARD_ENV] = "1"


def _terminate(signum, frame):
    """SIGTERM (a scheduler, ``kill``) ends a grid as Ctrl-C does: workers stopped, results kept."""
    raise KeyboardInterrupt


def _check_plugins(methods: list[str]) -> None:
    """A method from --plugins passes the contract checks before its first run (memoised per file)."""
    from benchmark.cli.plugin_checks import check_plugin_method
    from benchmark.core.registry import get_method

    for name in methods:
        if get_method(name).plugin_file:
            check_plugin_method(name)


def quiet_libraries() -> None:
    """Offline hub, and no per-run mmengine warnings (they would break the progress bar)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=UserWarning, module="mmengine")
    logging.getLogger("mmengine").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from benchmark.engine.allocator import tune_allocator

    tune_allocator()
    quiet_libraries()
    command = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else "run"
    if command == "run":
        handler = cmd_run
    else:
        from benchmark.cli.main import subcommands as cli_tools

        handler = getattr(cli_tools, f"cmd_{command}")
    try:
        return handler(argv)
    except UserError as exc:
        if process_group.is_main():                  # under torchrun every rank has the same error: say it once
            print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    finally:
        process_group.shutdown()
