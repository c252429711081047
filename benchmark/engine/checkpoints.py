"""Checkpoints are data, never code: they are loaded with ``torch.load(weights_only=True)``.

A results folder may come from someone else (a merge, a shared ``--out``), and a pickled
checkpoint can run any code when it is unpickled. So the suite resumes only through torch's
restricted unpickler, which builds tensors, containers and plain values plus the few types listed
in :data:`SAFE_GLOBALS`:

- mmengine's ``HistoryBuffer`` (the message hub's logged scalars). mmengine pickles its instances
  through ``getattr`` on the class, which no safe unpickler may allow; :func:`install` registers a
  reduction (``copyreg``) that pickles a buffer as its constructor call on plain lists instead.
- numpy scalars and arrays (mmengine keeps a few numbers, e.g. the ETA, as numpy floats).

mmengine 0.10.7 loads checkpoints with torch's default, which is ``weights_only=True`` from torch
2.6 on, and so cannot resume its own checkpoints (their HistoryBuffers); :func:`install` also
re-registers mmengine's local-file loader to load with the allow-list, and to refuse a path that
is a symbolic link. The engine resumes only from the checkpoint its run folder names
(:meth:`benchmark.core.run_folder.RunFolder.last_checkpoint`, a file inside the folder's ``work/``).
"""
from __future__ import annotations

import copyreg
import pickle
from pathlib import Path

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

from benchmark.core.errors import UserError
from benchmark.core.files import plain_file

SAFE_GLOBALS = [HistoryBuffer, np.ndarray, np.dtype, np._core.multiarray._reconstruct, np._core.multiarray.scalar,
                *{type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64", "bool", "uint8")}]


class UnsafeCheckpoint(UserError):
    """A checkpoint holds something other than tensors, plain values and the allowed types."""


def _reduce_history_buffer(buffer: HistoryBuffer):
    return HistoryBuffer, ([float(v) for v in buffer._log_history], [float(v) for v in buffer._count_history],
                           int(buffer.max_length))


def load(path: str | Path, map_location=None):
    """A checkpoint file loaded with the restricted unpickler (see the module doc)."""
    path = Path(path).expanduser()
    if not plain_file(path):
        what = "a symbolic link" if path.is_symlink() else "missing or not a regular file"
        raise FileNotFoundError(f"checkpoint {path} is {what}")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafeCheckpoint(f"checkpoint {path} holds objects a checkpoint of this suite never holds ({first}); "
                               "it was not loaded: delete it (the run starts afresh)") from None


def unsafe_reason(path: str | Path) -> str | None:
    """Why a checkpoint must not be loaded (it names globals outside the allow-list), or None. Reads
    the pickle's opcodes only; nothing is built."""
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:  # noqa: BLE001 - any unreadable archive is a reason
        return f"unreadable ({type(exc).__name__})"
    names = [n for n in names if n not in allowed]
    return f"it names {', '.join(sorted(names)[:3])}, which no checkpoint of this suite holds" if names else None


def install() -> None:
    copyreg.pickle(HistoryBuffer, _reduce_history_buffer)

    @CheckpointLoader.register_scheme(prefixes="", force=True)
    def _load_local(filename, map_location=None):
        return load(filename, map_location)


install()
