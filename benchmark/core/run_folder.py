"""Run folders: ``<out>/<run_id>/spec.json``, ``metrics.jsonl``, ``scores.npz`` (the per-image test
scores at the selected epochs, :mod:`benchmark.core.scores`) and ``done`` (written last, atomically).

A folder without ``done`` is unfinished: a grid redoes it (resuming from its last checkpoint
when there is one), and reports skip it. ``done`` holds the sha256 of ``metrics.jsonl``, ``spec.json``
and ``scores.npz`` as they were when the run finished, so a finished run whose records were lost or
edited is detected (:meth:`RunFolder.verify`) and retrained instead of being reported wrong.

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
import re
import shutil
import zipfile
from contextlib import contextmanager
from pathlib import Path

from benchmark.core.digests import verified_file
from benchmark.core.files import (
    UnsafePath,
    atomic_write_text,
    inside,
    open_nofollow,
    plain_dir,
    plain_file,
    read_bytes_nofollow,
    read_text_nofollow,
    sha256_file,
)
from benchmark.core.scores import SCORES_FILE, epoch_score_files

# ``method__dataset__protocol__p0.5__s0__<10 hex>`` (RunSpec.run_id): a folder of another name is not a run.
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*__[A-Za-z0-9_.+-]+__[A-Za-z0-9_.+-]+__[A-Za-z0-9_.+-]+__s[0-9]+__[0-9a-f]{10}$")
CHECKPOINT_NAME = re.compile(r"^epoch_[0-9]+\.pth$")
MARKER_LIMIT = 4096


def _is_sha256(value) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


RUN_FILES = ("spec.json", "metrics.jsonl", "error.txt", "done", SCORES_FILE)


def looks_like_run(path: Path) -> bool:
    """Whether an entry of a results folder is named like a run folder and holds a run's file. A
    symbolic link named like a run is a run (the report lists it as broken, never follows it)."""
    path = Path(path)
    if not RUN_ID.match(path.name):
        return False
    if path.is_symlink():
        return True
    return path.is_dir() and any(os.path.lexists(path / f) for f in RUN_FILES)


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
        """The folder (a real folder, not a link) holds a ``done`` marker (a regular file)."""
        return plain_dir(self.path) and plain_file(self.path / "done")

    @property
    def finished(self) -> bool:
        """Done, and its records are intact (see :meth:`verify`)."""
        return self.done and self.verify() is None

    def verify(self) -> str | None:
        """Why a run marked done cannot be trusted, or None when it can. The marker must hold the
        sha256 of ``metrics.jsonl`` (an emptied or older marker is not trusted: the run is retrained)
        and, when it has one, of ``spec.json`` and of ``scores.npz`` (a marker without a scores checksum,
        an older run's, must have no scores.npz beside it); spec.json must be a JSON object naming this
        run. No file is read through a symbolic link."""
        if not plain_dir(self.path):
            return "the run folder is a symbolic link (not followed)"
        for name in ("done", "metrics.jsonl", "spec.json", SCORES_FILE):
            if os.path.lexists(self.path / name) and not plain_file(self.path / name):
                return f"{name} is a symbolic link or not a regular file (not followed)"
        if not plain_file(self.path / "metrics.jsonl"):
            return "metrics.jsonl is missing"
        try:
            marker = json.loads(read_bytes_nofollow(self.path / "done", MARKER_LIMIT))
        except (OSError, ValueError):
            marker = None
        if not isinstance(marker, dict) or not _is_sha256(marker.get("metrics_sha256")):
            return "its done marker holds no checksum of metrics.jsonl (emptied, or written by an older version)"
        if sha256_file(self.path / "metrics.jsonl") != marker["metrics_sha256"]:
            return "metrics.jsonl changed after the run finished"
        if "spec_sha256" in marker:
            if not plain_file(self.path / "spec.json") or sha256_file(self.path / "spec.json") != marker["spec_sha256"]:
                return "spec.json changed after the run finished"
        why = self._scores_problem(marker)
        if why:
            return why
        record = self.spec_record()
        if not record:
            return "spec.json is missing or unreadable"
        if record.get("run_id") not in (None, self.path.name):
            return f"spec.json names another run ({str(record.get('run_id'))[:60]!r})"
        return None

    def _scores_problem(self, marker: dict) -> str | None:
        """Why scores.npz does not match the done marker: the marker names its sha256 and the file
        must have it; a marker without one (an older run) must have no scores.npz beside it."""
        path = self.path / SCORES_FILE
        if "scores_sha256" not in marker:
            return (f"{SCORES_FILE} was added after the run finished (its done marker holds no checksum of it)"
                    if os.path.lexists(path) else None)
        if not _is_sha256(marker["scores_sha256"]):
            return f"its done marker holds a malformed checksum of {SCORES_FILE}"
        if not plain_file(path):
            return f"{SCORES_FILE} is missing"
        if verified_file(path, marker["scores_sha256"]):
            return f"{SCORES_FILE} changed after the run finished"
        return None

    @contextmanager
    def claim(self):
        """Own the run folder for the duration of the block; raises :class:`RunBusy` when another
        live process owns it."""
        locks = self.path.parent / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        if not plain_dir(locks):
            raise UnsafePath(f"{locks} is a symbolic link; the suite never follows links inside its folders: remove it")
        fh = os.fdopen(open_nofollow(locks / f"{self.path.name}.lock", os.O_RDWR | os.O_CREAT), "r+")
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
            text = read_text_nofollow(self.path.parent / ".locks" / f"{self.path.name}.lock", 4096).strip()
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
        """spec.json as a dict ({} when it is missing, unreadable, a link or not an object)."""
        try:
            record = json.loads(read_bytes_nofollow(self.path / "spec.json"))
        except (OSError, ValueError, RecursionError):
            return {}
        return record if isinstance(record, dict) else {}

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
        fd = open_nofollow(path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
        with os.fdopen(fd, "a+b") as fh:         # writes always append; reads see the current end
            if fh.seek(0, os.SEEK_END) > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    line = "\n" + line
            fh.write(line.encode())
            fh.flush()

    def records(self, kind: str | None = None) -> list[dict]:
        path = self.path / "metrics.jsonl"
        if not plain_file(path):
            return []
        out = []
        for line in read_text_nofollow(path).splitlines():
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
        """The checkpoint ``work/last_checkpoint`` names: a regular file ``epoch_N.pth`` inside
        ``work/`` (the marker holds its name; older markers held its path, of which only the name is
        used). Anything else (a link, a path elsewhere) is no checkpoint."""
        marker = self.work_dir / "last_checkpoint"
        if not (plain_dir(self.path) and plain_dir(self.work_dir) and plain_file(marker)):
            return None
        try:
            name = Path(read_text_nofollow(marker, 4096).strip()).name
        except OSError:
            return None
        ckpt = self.work_dir / name
        if CHECKPOINT_NAME.match(name) and plain_file(ckpt) and inside(self.work_dir, ckpt):
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
        marker = {"metrics_sha256": sha256_file(self.path / "metrics.jsonl"),
                  "spec_sha256": sha256_file(self.path / "spec.json")}
        if plain_file(self.path / SCORES_FILE):
            marker["scores_sha256"] = sha256_file(self.path / SCORES_FILE)
        atomic_write_text(self.path / "done", json.dumps(marker) + "\n")
        for temporary in epoch_score_files(self.work_dir):     # after done: a kill before it keeps them
            temporary.unlink(missing_ok=True)

    def reset(self) -> None:
        """Forget a broken attempt (no usable checkpoint): start the run from scratch."""
        if self.path.is_symlink():
            self.path.unlink()               # a planted link: removed, never followed
        elif self.path.exists():
            shutil.rmtree(self.path)         # removes links inside, never what they point to


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
