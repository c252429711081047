"""Run folders: ``<out>/<run_id>/spec.json``, ``metrics.jsonl`` and ``done`` (written last, atomically).

A folder without ``done`` is unfinished: a grid redoes it (resuming from its last checkpoint
when there is one), and reports skip it. ``done`` holds the sha256 of ``metrics.jsonl`` as it
was when the run finished, so a finished run whose records were lost or edited is detected
(:meth:`RunFolder.verify`) and retrained instead of being reported wrong.

One process owns a run folder at a time: :meth:`RunFolder.claim` takes an advisory ``flock`` on
``<out>/.locks/<run_id>.lock`` (outside the run folder, so a reset never deletes a held lock). The
kernel drops the lock when its process dies, so a lock left by a kill is never stale; the file
names the owner's pid and host for the message another process prints.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import platform
import shutil
import zipfile
from contextlib import contextmanager
from pathlib import Path

from benchmark.core.files import atomic_write_text, sha256_file


class RunBusy(Exception):
    """Another process is training this run; the message names it."""


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

    @property
    def finished(self) -> bool:
        """Done, and its records are intact (see :meth:`verify`)."""
        return self.done and self.verify() is None

    def verify(self) -> str | None:
        """Why a run marked done cannot be trusted, or None when it can."""
        metrics = self.path / "metrics.jsonl"
        if not metrics.is_file():
            return "metrics.jsonl is missing"
        try:
            marker = json.loads((self.path / "done").read_text())
        except (OSError, ValueError):
            marker = None
        if isinstance(marker, dict) and marker.get("metrics_sha256"):
            if sha256_file(metrics) != marker["metrics_sha256"]:
                return "metrics.jsonl changed after the run finished"
            return None
        # A marker of an older version: check the records themselves.
        epochs = self.spec_record().get("epochs")
        evals = {r.get("epoch") for r in self.records("eval")}
        if not evals:
            return "metrics.jsonl has no evaluation line"
        missing = sorted(set(range(1, int(epochs) + 1)) - evals) if isinstance(epochs, int) else []
        if missing:
            return f"metrics.jsonl lacks the evaluation of epoch(s) {missing}"
        return None

    @contextmanager
    def claim(self):
        """Own the run folder for the duration of the block; raises :class:`RunBusy` when another
        live process owns it."""
        locks = self.path.parent / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        fh = open(locks / f"{self.path.name}.lock", "a+")
        try:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                owner = fh.read().strip() or "another process"
                raise RunBusy(f"being trained by {owner}") from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {platform.node()}\n")
            fh.flush()
            try:
                yield self
            finally:
                fh.truncate(0)               # released: no owner to name
        finally:
            fh.close()                       # closing the file releases the lock

    def owner(self) -> str | None:
        """The live process that owns this run folder ("pid N on HOST"), or None. A lock file left by
        a killed process on this host is not an owner (its pid is gone); on another host it is
        taken at its word."""
        try:
            text = (self.path.parent / ".locks" / f"{self.path.name}.lock").read_text().strip()
        except OSError:
            return None
        parts = text.split()
        if len(parts) != 4 or parts[0] != "pid":
            return None
        if parts[3] == platform.node():
            try:
                os.kill(int(parts[1]), 0)
            except (ProcessLookupError, ValueError):
                return None
            except PermissionError:
                pass
        return text

    def spec_record(self) -> dict:
        try:
            return json.loads((self.path / "spec.json").read_text())
        except (OSError, ValueError):
            return {}

    def start(self, spec_record: dict, resumed: bool = False) -> None:
        """Write spec.json; a resumed run keeps the record of its first start and appends the
        environment it resumed in."""
        self.path.mkdir(parents=True, exist_ok=True)
        first = self.spec_record() if resumed else {}
        if first:
            keep = ("git_sha", "git_dirty", "versions", "device_name", "torch_threads", "python", "host", "parallel")
            first.setdefault("resumed", []).append({k: spec_record.get(k) for k in keep})
            spec_record = first
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
            if not isinstance(rec, dict):
                continue
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

    def checkpoint_problem(self, ckpt: Path) -> str | None:
        """Why a checkpoint file cannot be loaded (truncated, corrupt), or None. torch writes zip
        archives; every member's CRC is checked."""
        try:
            with zipfile.ZipFile(ckpt) as archive:
                bad = archive.testzip()
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return f"member {bad} is corrupt" if bad else None

    def finish(self, keep_checkpoints: bool = False) -> None:
        if not keep_checkpoints and self.work_dir.exists():
            for ckpt in self.work_dir.glob("*.pth"):
                ckpt.unlink()
            (self.work_dir / "last_checkpoint").unlink(missing_ok=True)
        marker = {"metrics_sha256": sha256_file(self.path / "metrics.jsonl")}
        atomic_write_text(self.path / "done", json.dumps(marker) + "\n")

    def reset(self) -> None:
        """Forget a broken attempt (no usable checkpoint): start the run from scratch."""
        if self.path.exists():
            shutil.rmtree(self.path)


@contextmanager
def report_lock(out_dir: Path):
    """Serialise report building on one output folder (blocking ``flock``): the process that scans
    last writes last, so the final report covers every run finished before it."""
    fd = os.open(out_dir, os.O_RDONLY)       # a lock on the folder itself: nothing is written
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
