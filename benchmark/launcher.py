"""Runs a grid: skips finished runs, resumes unfinished ones, shows progress, never loses results.

A failing run (a bug, not bad input) is recorded in its folder as ``error.txt`` and the grid
goes on; a :class:`UserError` stops the grid at once (it would hit every run alike).
"""
from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from benchmark.errors import UserError
from benchmark.spec import RunSpec
from benchmark.store import RunFolder

log = logging.getLogger(__name__)


@dataclass
class GridOutcome:
    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def run_grid(runs: list[RunSpec], out_dir: Path, keep_checkpoints: bool = False, num_workers: int = 0,
             show_progress: bool = True) -> GridOutcome:
    from benchmark.experiment import run_one

    out_dir.mkdir(parents=True, exist_ok=True)
    outcome, start = GridOutcome(), time.perf_counter()
    todo = [r for r in runs if not RunFolder(out_dir, r.run_id).done]
    outcome.skipped = [r.run_id for r in runs if r not in todo]
    bar = tqdm(total=len(runs), initial=len(outcome.skipped), unit="run", disable=not show_progress,
               dynamic_ncols=True, desc="grid")
    try:
        for spec in todo:
            bar.set_description(spec.describe())

            def progress(epoch, max_epochs, val_map, _bar=bar):
                _bar.set_postfix_str(f"epoch {epoch}/{max_epochs}" + (f" val mAP {val_map:.1f}" if val_map else ""))

            try:
                run_one(spec, out_dir, progress=progress, keep_checkpoints=keep_checkpoints, num_workers=num_workers)
                outcome.finished.append(spec.run_id)
            except (UserError, KeyboardInterrupt):
                raise
            except Exception as exc:  # a bug in one method must not cost the other runs
                folder = RunFolder(out_dir, spec.run_id)
                folder.path.mkdir(parents=True, exist_ok=True)
                (folder.path / "error.txt").write_text(traceback.format_exc())
                outcome.failed.append((spec.run_id, f"{type(exc).__name__}: {exc}"))
                bar.write(f"run {spec.describe()} failed: {type(exc).__name__}: {exc} (see {folder.path}/error.txt)")
            bar.update(1)
    finally:
        bar.close()
        outcome.seconds = time.perf_counter() - start
    return outcome
