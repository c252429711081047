"""Timing scripts whose numbers go into BENCHMARKS.md (never asserted in tests).

    python -m benchmark.perf synthetic            # generate the default synthetic set in a fresh cache
    python -m benchmark.perf grid [CLI args ...]  # a grid in a fresh out folder: cold cache, then warm cache
    python -m benchmark.perf features             # feature extraction img/s (default synthetic set, fresh cache)
    python -m benchmark.perf startup              # `run_benchmark.py --list` wall time
    python -m benchmark.perf overhead --method M [--profile P]   # engine vs a bare training loop
    python -m benchmark.perf gpu [--methods ...]  # paper-setting throughput per method (benchmark/perf/gpu.py)
    python -m benchmark.perf ddp [--nproc N] [CLI args ...]  # one process vs N torchrun ranks (benchmark/perf/ddp.py)

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

from benchmark.core.cache import REPO_ROOT


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


def time_features(size: str = "default") -> None:
    """Feature extraction alone, in a cache that already holds the generated images."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "MLRPL_CACHE": cache, "HF_HUB_OFFLINE": "1"}
        subprocess.run([sys.executable, "-c", f"from datasets.synthetic import load_synthetic; load_synthetic('{size}')"],
                       cwd=REPO_ROOT, env=env, check=True)
        code = ("import time, sys; from benchmark.engine.allocator import tune_allocator; "
                "tuned = '--untuned' not in sys.argv and tune_allocator(); "
                "from benchmark.core.registry import discover; discover(); "
                "from benchmark.engine.prepared_run import load_dataset, _feature_file; s = load_dataset('synthetic', "
                f"'{size}'); t = time.perf_counter(); n = 0\n"
                "for split in ('train', 'test'):\n"
                f"    _feature_file(('synthetic', '{size}', None, None), split, 'tf_efficientnet_lite0', 'packaged', 128)\n"
                "    n += len(getattr(s, split))\n"
                "print(f'{n / (time.perf_counter() - t):.0f} img/s ({n} images, allocator tuned: {tuned})')")
        for flag in ("--untuned", "--tuned"):
            for npy in Path(cache, "features").glob("*.npy"):
                npy.unlink()
                npy.with_suffix(".json").unlink(missing_ok=True)          # its manifest
            out = subprocess.run([sys.executable, "-c", code, flag], cwd=REPO_ROOT, env=env, check=True,
                                 capture_output=True, text=True).stdout.strip()
            print(f"| feature extraction, synthetic `{size}`, 128 px | {out} | {machine()} | "
                  f"`python -m benchmark.perf features` | {date.today()} |")


def time_startup(repeats: int = 3) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    best = min(_timed([sys.executable, "run_benchmark.py", "--list"], env) for _ in range(repeats))
    print(f"| `python run_benchmark.py --list` | {best:.2f} s (best of {repeats}) | {machine()} | {date.today()} |")


def main(argv: list[str]) -> int:
    commands = {"synthetic": lambda a: time_synthetic(*(a[:1] or ["default"])), "grid": time_grid,
                "features": lambda a: time_features(*(a[:1] or ["default"])), "startup": lambda a: time_startup()}
    if argv and argv[0] == "overhead":
        from benchmark.perf.overhead import main as overhead

        return overhead(argv[1:])
    if argv and argv[0] == "ddp":
        from benchmark.perf.ddp import main as ddp

        return ddp(argv[1:])
    if argv and argv[0] == "gpu":
        from benchmark.perf.gpu import main as gpu

        return gpu(argv[1:])
    if not argv or argv[0] not in commands:
        print(__doc__)
        return 2
    commands[argv[0]](argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
