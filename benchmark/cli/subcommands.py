"""The subcommands of ``run_benchmark.py`` other than ``run``: ``status``, ``report``, ``samples``,
``prepare``, ``recipes`` and ``masks``."""
from __future__ import annotations

import math
from pathlib import Path

from benchmark.cli.parser import ArgumentParser, run_parser
from benchmark.cli.plan import DEFAULT_METHOD_ORDER, build_runs
from benchmark.core.errors import UserError


def cmd_status(argv: list[str]) -> int:
    """Which runs of a grid folder are done, running, failed, stopped or missing (any launcher)."""
    from benchmark.core.registry import discover
    from benchmark.core.run_status import format_status, grid_status

    p = run_parser()
    p.prog = "run_benchmark.py status"
    p.description = ("Show which runs of a grid folder are done, running, failed, stopped or missing. Give the grid's "
                     "own arguments (--methods, --ratios, ...) to list what is missing too; with --out alone, the "
                     "runs the folder holds.")
    p.add_argument("--stale-minutes", type=float, default=5.0, help="a heartbeat older than this is not running "
                   "(default 5)")
    args = p.parse_args(argv)
    if not (math.isfinite(args.stale_minutes) and args.stale_minutes > 0):
        raise UserError(f"status --stale-minutes {args.stale_minutes} must be a positive number of minutes, e.g. 5")
    if not args.out:
        raise UserError("status needs --out DIR, the folder of a grid")
    out = Path(args.out)
    if not out.is_dir():
        raise UserError(f"results folder {out} does not exist; pass the --out folder of a grid")
    discover(tuple(args.plugins))
    own = {"--out", "--stale-minutes", "--plugins"}
    grid_args = [a for a in argv if a.startswith("--") and a.split("=")[0] not in own]
    runs = build_runs(args, out)[0] if grid_args else None
    print(format_status(grid_status(out, runs, stale=60 * args.stale_minutes), out))
    return 0


def _report(out: Path, methods=None, reported: bool = False, sources=None) -> None:
    from reports.build import build_report

    summary = build_report(out, method_order=list(methods) if methods else list(DEFAULT_METHOD_ORDER),
                           sources=sources, reported=reported)
    md = out / "leaderboard.md"
    if md.is_file():
        print(md.read_text())
    names = ", ".join(Path(p).name for p in summary["paths"].values())
    extra = "".join(f", {summary[k]} {k}" for k in ("unfinished", "running", "failed", "broken") if summary.get(k))
    if summary.get("running"):
        extra += " (running: being trained by another process; its report will include them)"
    print(f"report: {summary['finished']} finished runs{extra} -> {out}/ ({names})")
    for run, why in summary.get("broken_runs", {}).items():
        print(f"  broken run {run}: {why}")


def cmd_report(argv: list[str]) -> int:
    p = ArgumentParser(prog="run_benchmark.py report", description=(
        "Rebuild tables, statistics, plots and the HTML page (index.html) from run folders. With RESULTS_DIR "
        "folders (e.g. grids run on several machines), they are merged into one report written into --out. "
        "With --recompute, check instead: every test metric of every finished run is derived again from its "
        "stored per-image scores (scores.npz) and its dataset's labels and compared with metrics.jsonl "
        "(exit 1 on any mismatch); nothing is written."))
    p.add_argument("results", nargs="*", metavar="RESULTS_DIR", help="grid folders to merge (default: --out itself)")
    p.add_argument("--out", required=True, help="a results folder written by a grid, or where the merged report goes")
    p.add_argument("--reported", action="store_true", help="add the papers' published numbers, labelled reported")
    p.add_argument("--recompute", action="store_true", help="recompute every run's metrics from its stored scores "
                   "and compare them with metrics.jsonl (reads the runs' datasets; writes nothing)")
    p.add_argument("--data-root", action="append", default=[], metavar="DATASET=PATH",
                   help="with --recompute: the folder of a real dataset on this machine, for runs trained where "
                        "it lay elsewhere (default: the data_root each run's spec.json records); repeatable")
    args = p.parse_args(argv)
    from benchmark.cli.preflight import check_output

    out = Path(args.out)
    if not args.recompute:
        check_output(out)            # a folder (or creatable), writable, a path the file system can hold
    if not args.results and not out.is_dir():
        raise UserError(f"results folder {out} does not exist: `report --out DIR` rebuilds the report of a grid's "
                        "--out folder; to write a report into a new folder, name the grid folders it reads: "
                        f"report --out {out} RESULTS_DIR [RESULTS_DIR ...]")
    for folder in args.results:
        if not Path(folder).is_dir():
            raise UserError(f"results folder {folder} does not exist; name the --out folder of a grid")
    if args.recompute:
        return _recompute([Path(r) for r in args.results] or [out], _data_roots(args.data_root))
    if args.data_root:
        raise UserError("report --data-root is for --recompute (the datasets whose labels the check reads)")
    _report(out, reported=args.reported, sources=[Path(r) for r in args.results] or None)
    return 0


def _data_roots(pairs: list[str]) -> dict[str, str]:
    roots = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise UserError(f"report --data-root {pair!r} is not DATASET=PATH, e.g. --data-root coco2014=/data/coco")
        roots[name] = str(Path(path).expanduser().resolve())
    return roots


def _recompute(dirs: list[Path], data_roots: dict[str, str]) -> int:
    """``report --recompute``: the engine's dataset loader and metric, handed to :mod:`reports.recompute`."""
    from benchmark.core.registry import discover
    from benchmark.engine.metrics import evaluate_with_class_ap
    from benchmark.engine.prepared_run import load_dataset
    from reports.recompute import format_lines, recompute

    discover()

    def test_split(spec: dict):
        name = spec["dataset"]
        return load_dataset(name, spec.get("dataset_size") or "default", data_roots.get(name, spec.get("data_root")),
                            spec.get("preset")).test

    result = recompute(dirs, test_split, evaluate_with_class_ap)
    for line in format_lines(result):
        print(line)
    return result.exit_code


def cmd_samples(argv: list[str]) -> int:
    p = ArgumentParser(prog="run_benchmark.py samples", description="Save a labelled grid of synthetic images.")
    p.add_argument("--out", default="synthetic_samples.png")
    p.add_argument("--size", default="default", help="synthetic size: tiny | smoke | default")
    p.add_argument("-n", type=int, default=16, help="number of images")
    args = p.parse_args(argv)
    if args.n < 1:
        raise UserError(f"samples -n {args.n} must be at least 1")
    from benchmark.cli.preflight import check_output
    from datasets.synthetic import (
        load_synthetic,
        sample_count,
        sample_grid_format,
        save_sample_grid,
        synthetic_params,
    )

    out = Path(args.out).expanduser().resolve()
    sample_grid_format(out)                      # every check before anything is built or written
    synthetic_params(args.size)
    check_output(out.parent)
    splits = load_synthetic(size=args.size)
    written = save_sample_grid(splits, out, n=args.n)
    shown = sample_count(splits.train, args.n)
    asked = "" if shown == args.n else f" (asked for {args.n}; the {args.size} training split has {shown})"
    print(f"saved {shown} labelled images{asked} to {written}")
    return 0


def cmd_prepare(argv: list[str]) -> int:
    from datasets.prepare import main as prepare_main

    return prepare_main(argv)


def cmd_recipes(argv: list[str]) -> int:
    """Print the resolved recipes (every value with its source), as Markdown or JSON."""
    import json

    from benchmark.config.profiles import PROFILES
    from benchmark.config.recipes import markdown, registered
    from benchmark.core.registry import discover, get_method

    p = ArgumentParser(prog="run_benchmark.py recipes", description=(
        "Print each method's training recipe per dataset and profile, every value with its source "
        "(repo@commit:path:line of the official code, or 'suite' for the suite's own CPU recipes)."))
    p.add_argument("--methods", nargs="+", help="methods (default: every registered method)")
    p.add_argument("--dataset", nargs="+", help="datasets (default: synthetic for the CPU profiles, the real ones "
                   "for paper and official)")
    p.add_argument("--profile", nargs="+", help=f"profiles (default: all: {', '.join(PROFILES)})")
    p.add_argument("--format", choices=("md", "json"), default="md")
    p.add_argument("--plugins", nargs="*", default=[], help="folders with extra method files")
    args = p.parse_args(argv)
    discover(tuple(args.plugins))
    for name in args.methods or []:
        get_method(name)
    for name in args.profile or []:
        if name not in PROFILES:
            raise UserError(f"recipes --profile {name!r} is unknown; choose from {', '.join(PROFILES)}")
    found = registered(tuple(args.profile) if args.profile else None, tuple(args.dataset) if args.dataset else None,
                       tuple(args.methods) if args.methods else None)
    if not found:
        raise UserError("no recipe matches these filters; the paper and official profiles are for real datasets "
                        "(voc2007, coco2014, nuswide, vg200, voc2012, cub), the CPU profiles for synthetic")
    if args.format == "json":
        print(json.dumps([r.to_json() for r in found], indent=1, default=str))
    else:
        print(markdown(found), end="")
    return 0


def cmd_masks(argv: list[str]) -> int:
    """``masks export``: the masks a grid trains with, as one mask pack; ``masks check``: verify a pack
    and compare it with the suite's own masks (docs/mask_packs.md)."""
    if argv[:1] == ["import"]:
        raise UserError("there is no `masks import`: a grid trains on a pack with its flag --mask-pack FILE "
                        "(python run_benchmark.py --mask-pack FILE ...); `masks check FILE` verifies one")
    args = masks_parser().parse_args(argv)
    return _masks_export(args) if args.action == "export" else _masks_check(args)


def masks_parser() -> ArgumentParser:
    """The flags of ``masks export`` and ``masks check``."""
    p = ArgumentParser(prog="run_benchmark.py masks", description=(
        "Mask packs: export the exact masks a grid trains with as one .npz (numpy, no pickle) for another code "
        "base, or check a pack; a grid trains on a pack with --mask-pack FILE. See docs/mask_packs.md."))
    sub = p.add_subparsers(dest="action", required=True, metavar="{export,check}")
    e = sub.add_parser("export", help="write the masks of a grid as one pack", description=(
        "Write the masks a grid with these flags trains with (drawn, or read from the mask cache) as one pack."))
    e.add_argument("--dataset", default="synthetic", help="dataset name (default: synthetic)")
    e.add_argument("--data-root", help="folder of a real dataset")
    e.add_argument("--preset", help="real datasets: hcp | clsl (as for the grid)")
    e.add_argument("--profile", default="default", help="the grid's profile: it fixes the synthetic size "
                   "(smoke: tiny, else default); default: default")
    e.add_argument("--mask-protocol", help="random (default) | random_clsl | single_positive (as for the grid)")
    e.add_argument("--ratios", default="0.1:0.9", help="known-label proportions, as for the grid (default 0.1:0.9)")
    e.add_argument("--seeds", nargs="+", type=int, default=[0], help="mask seeds (default 0)")
    e.add_argument("--out", required=True, metavar="FILE.npz", help="the pack to write")
    e.add_argument("--force", action="store_true", help="overwrite an existing pack")
    c = sub.add_parser("check", help="verify a pack and compare it with the suite's masks", description=(
        "Verify a mask pack (format, checksums, ids and class order against the dataset) and say, per proportion "
        "and seed, whether it holds the suite's own mask (a grid keeps its run ids) or another one (new ids)."))
    c.add_argument("pack", metavar="FILE.npz")
    c.add_argument("--data-root", help="folder of the real dataset the pack was exported from")
    return p


def _masks_export(args) -> int:
    from benchmark.cli.plan import export_cells
    from benchmark.cli.preflight import check_cache, check_output, check_path_shape
    from benchmark.core.files import human_bytes
    from benchmark.core.registry import discover
    from benchmark.engine.prepared_run import load_dataset
    from datasets.mask_pack import pack_arrays, write_pack
    from datasets.masks import get_mask

    out = check_path_shape(Path(args.out), "masks export --out")
    if out.suffix != ".npz":
        raise UserError(f"masks export --out {out}: a mask pack is a .npz file; give a name ending in .npz")
    if out.is_dir() or (out.exists() and not out.is_file()):
        raise UserError(f"masks export --out {out} is a folder or a special file; give the path of a .npz file")
    if out.exists() and not args.force:
        raise UserError(f"masks export --out {out} exists; give another name, or --force to overwrite it")
    check_output(out.parent)
    discover(())
    key, protocol, ratios, seeds = export_cells(args)
    check_cache()
    train = load_dataset(*key).train
    masks = {(r, s): get_mask(train, protocol, r, s) for r in ratios for s in seeds}
    out.parent.mkdir(parents=True, exist_ok=True)
    size = write_pack(out, pack_arrays(train, key[0], key[1], key[3], protocol, masks))
    shown = "single positive" if protocol == "single_positive" else f"proportions {', '.join(f'{r:g}' for r in ratios)}"
    print(f"mask pack: {len(masks)} {protocol} mask(s) of {key[0]} ({shown}; seeds {' '.join(map(str, seeds))}), "
          f"{len(train)} images x {train.num_classes} classes -> {out} ({human_bytes(size)})")
    print(f"read it with numpy (docs/mask_packs.md), or train on it: python run_benchmark.py --mask-pack {out} ...")
    return 0


def _masks_check(args) -> int:
    from benchmark.core.registry import discover
    from benchmark.engine.prepared_run import load_dataset
    from datasets.mask_pack import read_pack
    from datasets.masks import get_mask

    pack = read_pack(args.pack)
    cells = pack.cells()
    print(f"mask pack {pack.path} ({pack.digest}): {len(cells)} {pack.protocol} mask(s) of {pack.dataset}, "
          f"{len(pack.image_ids)} images x {len(pack.class_names)} classes; format and checksums verified")
    discover(())
    if pack.dataset != "synthetic" and not args.data_root:
        print(f"give --data-root (the {pack.dataset} folder) to check it against the dataset and the suite's masks")
        return 0
    if pack.dataset == "synthetic" and args.data_root:
        raise UserError("masks check --data-root is for packs of the real datasets; this pack is of the embedded "
                        "synthetic dataset: drop --data-root")
    root = str(Path(args.data_root).expanduser().resolve()) if args.data_root else None
    train = load_dataset(pack.dataset, pack.dataset_size, root, pack.preset or None).train
    pack.check_labelset(train, pack.dataset)
    differing = []
    for ratio, seed in cells:
        diff = int((get_mask(train, pack.protocol, ratio, seed).observed != pack.mask(ratio, seed)).sum())
        if diff:
            differing.append(f"p={ratio:g} seed {seed} ({diff} entries)")
    print(f"  {len(cells) - len(differing)} of {len(cells)} are the suite's own masks (a grid with --mask-pack keeps "
          "their run ids)")
    if differing:
        print(f"  {len(differing)} differ from the suite's (a grid with --mask-pack trains them under new run ids): "
              + "; ".join(differing[:10]) + ("; ..." if len(differing) > 10 else ""))
    return 0
