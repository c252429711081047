"""``python -m benchmark.perf ddp [--nproc N] [grid arguments ...]``: one grid trained by one process
and by N ranks under torchrun (``--launcher pytorch``; default N: the GPUs here, else 2 gloo ranks
on the CPU), run by run: training seconds (the runs' own epoch times, so cache building and
start-up do not count), the largest test-mAP difference over the epochs, and whether the ranks'
states ever differed. With one GPU, ``--nproc 1`` exercises the NCCL path of the DDP code once.

    python -m benchmark.perf ddp --nproc 1 --profile paper --protocol finetune --backbone-weights r101.pth ...
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from benchmark.core.cache import REPO_ROOT


def _runs(folder: Path) -> dict:
    out = {}
    for spec_file in sorted(folder.glob("*/spec.json")):
        spec = json.loads(spec_file.read_text())
        records = [json.loads(line) for line in (spec_file.parent / "metrics.jsonl").read_text().splitlines()]
        key = (spec["method"], spec["ratio"], spec["seed"])
        out[key] = (spec, records)
    return out


def _train_seconds(records: list[dict]) -> float:
    return sum(r.get("train_seconds", 0.0) for r in records if r["kind"] == "summary")


def compare(one: dict, many: dict) -> list[str]:
    rows = ["| method | proportion | ranks | global batch | train s, 1 process | train s, ranks | "
            "max abs. test mAP difference over epochs | ranks' states differed |", "|---|---|---|---|---|---|---|---|"]
    for key in sorted(one):
        if key not in many:
            continue
        (_, rec1), (spec2, rec2) = one[key], many[key]
        ev1 = {r["epoch"]: r["test/mAP"] for r in rec1 if r["kind"] == "eval"}
        ev2 = {r["epoch"]: r["test/mAP"] for r in rec2 if r["kind"] == "eval"}
        gap = max((abs(ev1[e] - ev2[e]) for e in ev1 if e in ev2), default=float("nan"))
        checks = [r for r in rec2 if r["kind"] == "rank_check"]
        par = spec2.get("parallel") or {}
        rows.append(f"| {key[0]} | {key[1]:.0%} | {par.get('world_size', 1)} ({par.get('backend')}) | "
                    f"{par.get('global_batch_size')} | {_train_seconds(rec1):.2f} | {_train_seconds(rec2):.2f} | "
                    f"{gap:.3f} | {'yes: ' + ', '.join(checks[0]['differing'][:3]) if checks else 'no'} |")
    return rows


def main(argv: list[str]) -> int:
    import torch

    parser = argparse.ArgumentParser(prog="python -m benchmark.perf ddp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, help="ranks (default: the GPUs here, else 2)")
    args, grid = parser.parse_known_args(argv)
    nproc = args.nproc or (torch.cuda.device_count() if torch.cuda.is_available() else 2)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        base = ["run_benchmark.py", *grid, "--no-report"]
        subprocess.run([sys.executable, *base, "--jobs", "1", "--out", f"{tmp}/one"], cwd=REPO_ROOT, env=env,
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                        *base, "--launcher", "pytorch", "--out", f"{tmp}/ddp"], cwd=REPO_ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        rows = compare(_runs(Path(tmp) / "one"), _runs(Path(tmp) / "ddp"))
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    print(f"`python -m benchmark.perf ddp --nproc {nproc} {' '.join(grid)}` on {device}, {date.today()}\n")
    print("\n".join(rows))
    return 0
