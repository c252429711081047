"""Run folders: ``<out>/<run_id>/spec.json``, ``metrics.jsonl`` and ``done`` (written last, atomically).

A folder without ``done`` is unfinished: a grid redoes it (resuming from its last checkpoint
when there is one), and reports skip it.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

from benchmark.paths import atomic_write_text


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return value


class RunFolder:
    def __init__(self, out_dir: Path, run_id: str):
        self.path = Path(out_dir) / run_id
        self.work_dir = self.path / "work"

    @property
    def done(self) -> bool:
        return (self.path / "done").is_file()

    def start(self, spec_record: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / "spec.json", json.dumps(spec_record, indent=2, sort_keys=True, default=str))

    def log(self, record: dict) -> None:
        """Append one JSON line. A line cut short by a kill (no final newline) is closed first, so
        it cannot swallow the record the resumed run appends after it."""
        path = self.path / "metrics.jsonl"
        line = json.dumps({k: _jsonable(v) for k, v in record.items()}, sort_keys=True) + "\n"
        with open(path, "a+b") as fh:            # writes always append; reads see the current end
            if fh.seek(0, os.SEEK_END) > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    line = "\n" + line
            fh.write(line.encode())
            fh.flush()

    def records(self, kind: str | None = None) -> list[dict]:
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill; the epoch is re-run and re-logged
            if kind is None or rec.get("kind") == kind:
                out.append(rec)
        return out

    def last_checkpoint(self) -> Path | None:
        marker = self.work_dir / "last_checkpoint"
        if marker.is_file():
            ckpt = Path(marker.read_text().strip())
            if ckpt.is_file():
                return ckpt
        return None

    def finish(self, keep_checkpoints: bool = False) -> None:
        if not keep_checkpoints and self.work_dir.exists():
            for ckpt in self.work_dir.glob("*.pth"):
                ckpt.unlink()
            (self.work_dir / "last_checkpoint").unlink(missing_ok=True)
        atomic_write_text(self.path / "done", "done\n")

    def reset(self) -> None:
        """Forget a broken attempt (no usable checkpoint): start the run from scratch."""
        if self.path.exists():
            shutil.rmtree(self.path)
