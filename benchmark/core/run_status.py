"""Where a grid stands, read from its run folders alone (any launcher: local pool, SLURM, submitit's
local executor): ``run_benchmark.py status --out DIR``.

A run that trains keeps ``<run folder>/heartbeat`` fresh (:class:`Heartbeat`: a daemon thread
rewrites it every ``MLRPL_HEARTBEAT_S`` seconds, 30 by default, naming pid, host and scheduler
job), and removes it when it stops normally; a killed run leaves a heartbeat that ages. A run is

- ``done``: finished, records intact (:meth:`RunFolder.finished`);
- ``running``: its lock names a live process on this host, or its heartbeat is younger than
  ``stale`` seconds and does not name a dead process of this host (a process on another host
  cannot be checked from here: its heartbeat ages instead);
- ``failed``: ``error.txt`` (its first line is shown); a new attempt removes it;
- ``stopped``: started, not running, no error (killed, preempted, timed out): the next
  submission resumes it from its last epoch checkpoint;
- ``missing``: no folder yet (pending in a scheduler's queue, or never submitted).
"""
from __future__ import annotations

import json
import math
import os
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from benchmark.core.errors import UserError
from benchmark.core.errors import one_line as error_line
from benchmark.core.escape import one_line
from benchmark.core.files import atomic_write_text, read_text_nofollow
from benchmark.core.run_folder import RunFolder, looks_like_run

HEARTBEAT = "heartbeat"
STATES = ("done", "running", "failed", "stopped", "missing")


def heartbeat_seconds() -> float:
    """``MLRPL_HEARTBEAT_S`` (default 30): a finite number of seconds, at least 0.01."""
    text = os.environ.get("MLRPL_HEARTBEAT_S", "30")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0.01):
        raise UserError(f"MLRPL_HEARTBEAT_S={text!r} is not a number of seconds; unset it (30 s) or give e.g. 30")
    return value


def scheduler_job() -> str | None:
    """The scheduler's id of this process's job ("1234_5" for a SLURM array task), or None."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
    return env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID")


class Heartbeat:
    """While the block runs, ``<run folder>/heartbeat`` is rewritten every ``every`` seconds (atomic;
    one small file, a daemon thread that sleeps in between); removed when the block ends."""

    def __init__(self, folder: RunFolder, every: float | None = None):
        self.path = folder.path / HEARTBEAT
        self.every = heartbeat_seconds() if every is None else every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        record = {"pid": os.getpid(), "host": platform.node(), "time": time.time(), "job": scheduler_job()}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(record) + "\n")
        except OSError:
            pass                                 # a heartbeat never stops a run

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.beat()

    def __enter__(self):
        self.beat()
        self._thread = threading.Thread(target=self._loop, name="run-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.path.unlink(missing_ok=True)


def read_heartbeat(folder: RunFolder) -> tuple[float, dict] | None:
    """(age in seconds from the file's time, its record), or None."""
    path = folder.path / HEARTBEAT
    try:
        age = time.time() - path.stat().st_mtime
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return max(0.0, age), record if isinstance(record, dict) else {}


@dataclass
class RunState:
    run_id: str
    name: str                    # "method dataset ratio seed N"
    state: str                   # one of STATES
    epoch: int | None = None     # last evaluated epoch
    epochs: int | None = None
    detail: str = ""


def _ago(seconds: float) -> str:
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def _may_live(record: dict) -> bool:
    """False when the heartbeat names a process of this host that is gone (a kill leaves a fresh
    heartbeat); a process on another host cannot be checked from here."""
    if record.get("host") != platform.node():
        return True
    try:
        return _pid_alive(int(record.get("pid")))
    except (TypeError, ValueError):
        return False


def _pid_alive(pid: int) -> bool:
    """A process of this host that runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True                               # no /proc: trust kill(0)


def run_state(out_dir: Path, run_id: str, name: str | None = None, epochs: int | None = None,
              stale: float = 300.0) -> RunState:
    folder = RunFolder(out_dir, run_id)
    record = folder.spec_record()
    if name is None:
        ratio = record.get("ratio")
        name = (f"{record.get('method')} {record.get('dataset')} "
                f"{f'{ratio:.0%}' if isinstance(ratio, float) else ratio} seed {record.get('seed')}"
                if record else run_id)
        name = one_line(name)[:80]                # a terminal gets text only (escapes made visible)
    epochs = epochs or record.get("epochs")
    if not (isinstance(epochs, int) and not isinstance(epochs, bool) and epochs > 0):
        epochs = None
    evals = [r.get("epoch") for r in folder.records("eval")] if folder.path.is_dir() else []
    state = RunState(run_id, name, "missing", max(evals) if evals else None, epochs)
    if not folder.path.is_dir():
        return state
    if folder.finished:
        state.state = "done"
        return state
    owner, beat = folder.owner(), read_heartbeat(folder)
    local_owner = owner is not None and owner.split()[-1] == platform.node() and _pid_alive(int(owner.split()[1]))
    if local_owner or (beat is not None and beat[0] < stale and _may_live(beat[1])):
        state.state = "running"
        parts = [owner] if owner else []
        if beat is not None:
            who = f"pid {beat[1].get('pid')} on {beat[1].get('host')}"
            parts = [p for p in parts if p != who] + [who]
            if beat[1].get("job"):
                parts.append(f"job {beat[1]['job']}")
            parts.append(f"heartbeat {_ago(beat[0])}")
        state.detail = ", ".join(parts)
        return state
    error = folder.path / "error.txt"
    if os.path.lexists(error):
        state.state = "failed"
        try:
            first = (read_text_nofollow(error, 4096).splitlines() or [""])[0]
        except (OSError, UserError) as exc:
            first = f"error.txt unreadable ({error_line(exc)})"
        state.detail = one_line(first)[:300]
        return state
    state.state = "stopped"
    bits = ["resumes from its last checkpoint when submitted again" if folder.last_checkpoint()
            else "starts afresh when submitted again"]
    if beat is not None:
        bits.append(f"last heartbeat {_ago(beat[0])}")
    state.detail = "; ".join(bits)
    return state


def grid_status(out_dir: Path, runs=None, stale: float = 300.0) -> list[RunState]:
    """The state of each run of ``runs`` (RunSpecs), or of every run folder under ``out_dir`` when
    ``runs`` is None (then nothing can be missing)."""
    out_dir = Path(out_dir)
    if runs is not None:
        return [run_state(out_dir, r.run_id, r.describe(), r.epochs, stale) for r in runs]
    found = sorted(p.name for p in out_dir.iterdir() if looks_like_run(p))
    return [run_state(out_dir, run_id, stale=stale) for run_id in found] if out_dir.is_dir() else []


def format_status(states: list[RunState], out_dir: Path) -> str:
    order = {s: i for i, s in enumerate(STATES)}
    lines = []
    for st in sorted(states, key=lambda s: (order[s.state], s.name)):
        progress = f"epoch {st.epoch or 0}/{st.epochs}" if st.epochs and st.state != "done" and st.state != "missing" else ""
        lines.append(f"  {st.state:8s} {st.name:40s} {progress:12s} {st.detail}".rstrip())
    counts = {s: sum(1 for st in states if st.state == s) for s in STATES}
    summary = f"{len(states)} runs in {out_dir}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    submission = last_submission(out_dir)
    if submission:
        summary += (f"\nlast submission: {submission.get('launcher')} job {submission.get('job_id')}, "
                    f"{submission.get('runs')} run(s), {time.strftime('%Y-%m-%d %H:%M', time.localtime(submission.get('time', 0)))}"
                    f"; logs in {submission.get('logs')}")
    return "\n".join(lines + [summary])


SUBMISSIONS = ".submitit/submissions.jsonl"


def last_submission(out_dir: Path) -> dict | None:
    try:
        lines = (Path(out_dir) / SUBMISSIONS).read_text().splitlines()
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None
