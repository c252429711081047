"""Content digests (a stable hash of a JSON-able object, a file's sha256), atomic writes (a reader
never sees a half-written file; a failed write leaves nothing behind) and reads that never follow
a symbolic link planted in a folder the suite does not trust.

Every file the suite writes goes through :func:`atomic_writer` (or its two short forms): the data
goes to a temporary file with an unpredictable name, created exclusively beside its target (so a
link planted at a predictable name is never written through), is flushed to disk, then renamed
over the target (``rename`` replaces a link at the target itself, never the file it points to).
On any failure the temporary file is removed; a full disk is one :class:`DiskFull` line naming the
folder and the space the write needed.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

from benchmark.core.errors import UserError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(UserError):
    """A write failed for lack of space; the message names the folder and the space needed."""


class UnsafePath(UserError, OSError):
    """A file the suite would read or write in a run or grid folder is a symbolic link, not a
    regular file, or resolves outside its folder. An OSError too: a reader that treats an
    unreadable file as missing treats a planted link alike."""


def stable_hash(obj, length: int = 12) -> str:
    """A short, stable hex digest of a JSON-serialisable object (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GB"


def disk_full(folder: Path, needed: float | None = None, what: str = "") -> DiskFull:
    """The one-line error of a full disk (or quota) in ``folder``."""
    try:
        fs = os.statvfs(folder)
        free = human_bytes(fs.f_bavail * fs.f_frsize)
    except OSError:
        free = "unknown"
    need = f" (needs about {human_bytes(needed)}, {free} free)" if needed else f" ({free} free)"
    return DiskFull(f"no space left on the device of {folder}{' writing ' + what if what else ''}{need}; free space "
                    "there (or point --out / MLRPL_CACHE elsewhere) and run the same command again: finished runs "
                    "are kept")


def _umask() -> int:
    """The process's umask, read without changing it (Linux); 0o022 where it cannot be read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


@contextmanager
def atomic_writer(path: Path, mode: str = "wb", expected_size: float | None = None):
    """``with atomic_writer(path) as fh: ...`` writes ``path`` atomically (see the module doc).
    ``expected_size`` (bytes) goes into the message of a full disk."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:80]}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())          # as open() would create it (mkstemp makes it 0600)
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            raise disk_full(path.parent, expected_size, path.name) from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that a reader never sees a half-written version (write, fsync, rename)."""
    with atomic_writer(path, "wb", expected_size=len(data)) as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def plain_file(path: Path) -> bool:
    """A regular file that is not a symbolic link."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def plain_dir(path: Path) -> bool:
    """A folder that is not a symbolic link."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def open_nofollow(path: Path, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """``os.open`` that refuses a symbolic link at ``path`` (and anything but a regular file) with
    :class:`UnsafePath`; other errors (missing file) are the usual OSError."""
    path = Path(path)
    try:
        # O_NONBLOCK: a FIFO planted at the name must not block the open (it is refused below)
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"{path} is a symbolic link; the suite never follows links inside its folders: "
                             "remove it (or copy the file it points to in its place)") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePath(f"{path} is not a regular file; remove it")
    os.set_blocking(fd, True)
    return fd


def read_bytes_nofollow(path: Path, limit: int | None = None) -> bytes:
    """The bytes of a regular file (at most ``limit``), never through a symbolic link."""
    with os.fdopen(open_nofollow(path), "rb") as fh:
        return fh.read() if limit is None else fh.read(limit)


def read_text_nofollow(path: Path, limit: int | None = None) -> str:
    return read_bytes_nofollow(path, limit).decode("utf-8", errors="replace")


def inside(folder: Path, path: Path) -> bool:
    """Whether ``path`` resolves to a place inside ``folder`` (links resolved)."""
    try:
        return Path(path).resolve().is_relative_to(Path(folder).resolve())
    except (OSError, RuntimeError):
        return False
