"""Progress bars that suit where the output goes.

On a terminal: a tqdm bar. When stderr is a file or a pipe (a redirected log, a SLURM job's output,
CI), tqdm's carriage-return redraws would fill the log with escape codes; there :func:`bar` returns
:class:`PlainProgress`, which has the tqdm methods the suite uses and prints plain lines instead: one
when something starts, then at most one every ``interval`` seconds, and one at the end.

``MLRPL_PROGRESS=plain`` forces plain lines on a terminal too, ``MLRPL_PROGRESS=bar`` forces the bar.
"""
from __future__ import annotations

import os
import sys
import time

from benchmark.core.errors import UserError

MODES = ("auto", "bar", "plain")


def mode() -> str:
    """``bar`` or ``plain``, from ``MLRPL_PROGRESS`` (auto = bar on a terminal)."""
    value = os.environ.get("MLRPL_PROGRESS", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise UserError(f"MLRPL_PROGRESS={os.environ['MLRPL_PROGRESS']!r} is not valid; use one of {', '.join(MODES)} "
                        "or unset it")
    if value == "auto":
        stream = sys.stderr
        return "bar" if stream is not None and hasattr(stream, "isatty") and stream.isatty() else "plain"
    return value


def duration(seconds: float) -> str:
    """A short human duration: 42 s, 3 min 05 s, 1 h 02 min."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class PlainProgress:
    """The subset of tqdm's interface the suite calls, as plain lines on stderr."""

    def __init__(self, total=None, initial=0, desc: str = "", unit: str = "it", disable: bool = False,
                 interval: float = 30.0, stream=None, **_):
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.disable, self.interval, self.postfix = disable, interval, ""
        self.stream = stream if stream is not None else sys.stderr
        self.start = self.last = time.monotonic()
        self._said_start = False

    def _line(self) -> str:
        count = f"{self.n:g}/{self.total:g} {self.unit}" if self.total else f"{self.n:g} {self.unit}"
        text = ", ".join(p for p in (count, self.postfix) if p)
        if self.desc:
            text = f"{self.desc}: {text}"
        elapsed = time.monotonic() - self.start
        eta = ""
        if self.total and 0 < self.n < self.total:
            eta = f", about {duration(elapsed * (self.total - self.n) / self.n)} left"
        return f"{text} ({duration(elapsed)} elapsed{eta})"

    def _emit(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.disable or (not force and now - self.last < self.interval):
            return
        self.last = now
        self.write(self._line())

    def update(self, n=1) -> None:
        self.n += n
        self._emit(force=bool(self.total) and self.n >= self.total)

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc
        if not self._said_start and desc:
            self._said_start = True
            self._emit(force=True)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s
        self._emit()

    def write(self, line: str) -> None:
        if not self.disable:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        pass

    def __iter__(self):  # pragma: no cover - the suite wraps no iterables in plain mode
        raise TypeError("PlainProgress wraps no iterable; use bar(iterable) instead")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(iterable=None, **kwargs):
    """A tqdm bar on a terminal, plain lines otherwise (see the module docstring). With ``iterable``,
    an iterator over it that reports as it goes."""
    if mode() == "bar":
        from tqdm.auto import tqdm

        return tqdm(iterable, dynamic_ncols=True, **kwargs) if iterable is not None else \
            tqdm(dynamic_ncols=True, **kwargs)
    progress = PlainProgress(**kwargs)
    if iterable is None:
        return progress
    return _plain_iter(iterable, progress)


def _plain_iter(iterable, progress: PlainProgress):
    if progress.total is None and hasattr(iterable, "__len__"):
        progress.total = len(iterable)
    progress.set_description(progress.desc)
    for item in iterable:
        yield item
        progress.update(1)
