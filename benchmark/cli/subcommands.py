"""The subcommands of ``run_benchmark.py`` other than ``run``: ``status``, ``report``, ``samples``,
``prepare`` and ``recipes``."""
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
        "folders (e.g. grids run on several machines), they are merged into one report written into --out."))
    p.add_argument("results", nargs="*", metavar="RESULTS_DIR", help="grid folders to merge (default: --out itself)")
    p.add_argument("--out", required=True, help="a results folder written by a grid, or where the merged report goes")
    p.add_argument("--reported", action="store_true", help="add the papers' published numbers, labelled reported")
    args = p.parse_args(argv)
    from benchmark.cli.preflight import check_output

    out = Path(args.out)
    check_output(out)                # a folder (or creatable), writable, a path the file system can hold
    if not args.results and not out.is_dir():
        raise UserError(f"results folder {out} does not exist: `report --out DIR` rebuilds the report of a grid's "
                        "--out folder; to write a report into a new folder, name the grid folders it reads: "
                        f"report --out {out} RESULTS_DIR [RESULTS_DIR ...]")
    for folder in args.results:
        if not Path(folder).is_dir():
            raise UserError(f"results folder {folder} does not exist; name the --out folder of a grid")
    _report(out, reported=args.reported, sources=[Path(r) for r in args.results] or None)
    return 0


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
