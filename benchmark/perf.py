"""Timing scripts whose numbers go into BENCHMARKS.md (never asserted in tests).

    python -m benchmark.perf synthetic            # generate the default synthetic set in a fresh cache
    python -m benchmark.perf grid [CLI args ...]  # a grid in a fresh out folder: cold cache, then warm cache

Each prints a Markdown row with the machine, the command and the date.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from benchmark.paths import REPO_ROOT


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"


def _timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def time_synthetic(size: str = "default") -> None:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "MLRPL_CACHE": cache}
        code = f"from datasets.synthetic import load_synthetic; load_synthetic('{size}')"
        seconds = _timed([sys.executable, "-c", code], env)
    print(f"| generate synthetic `{size}` | {seconds:.1f} s | {machine()} | `python -m benchmark.perf synthetic` | {date.today()} |")


def time_grid(args: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MLRPL_CACHE": str(Path(tmp) / "cache"), "HF_HUB_OFFLINE": "1"}
        base = [sys.executable, "run_benchmark.py", *args]
        cold = _timed(base + ["--out", str(Path(tmp) / "cold")], env)
        warm = _timed(base + ["--out", str(Path(tmp) / "warm")], env)
    cmd = " ".join(["python run_benchmark.py", *args])
    print(f"| `{cmd}` | cold cache {cold:.0f} s, warm cache {warm:.0f} s | {machine()} | {date.today()} |")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("synthetic", "grid"):
        print(__doc__)
        return 2
    if argv[0] == "synthetic":
        time_synthetic(*(argv[1:2] or ["default"]))
    else:
        time_grid(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
