"""The report files of a results folder: written only where the suite may write, and published as a
whole.

- **Only the suite's own files are replaced.** ``<out>/.mlrpl-manifest.json`` lists each report file
  the suite wrote there, with its sha256. A file at a report name that the manifest does not list,
  or that changed since the suite wrote it, belongs to someone else: :func:`check_targets` refuses
  the folder (a :class:`~benchmark.core.errors.UserError`) before anything is built or trained. A
  folder of an older version (run folders, report files, no manifest) is adopted as the suite's.
- **Old report or new one, never a mix.** The report is built in a staging folder inside ``<out>``
  (:func:`staging`); :func:`publish` then writes a journal (the list of files to move), renames
  every file into place, writes the manifest and removes the journal. A kill in that loop (a few
  renames) leaves the journal, and the next report or grid on the folder finishes the move first
  (:func:`recover`); a kill while building leaves only a staging folder, removed next time.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from benchmark.core.errors import UserError
from benchmark.core.files import (
    atomic_write_text,
    plain_dir,
    plain_file,
    read_bytes_nofollow,
    sha256_file,
)

MANIFEST = ".mlrpl-manifest.json"
JOURNAL = ".mlrpl-publish.json"
STAGING_PREFIX = ".report-staging-"
RUNS_HEADER = b"run_id,dataset,protocol,method,"      # how the suite's runs.csv begins
PAGE_TITLE = b"<title>MLR-PL bench: leaderboard</title>"
# Every name a report may write (the figures exist only when the data supports them).
REPORT_NAMES = ("runs.csv", "leaderboard.md", "leaderboard.tex", "leaderboard.csv", "statistics.md",
                "map_vs_ratio.png", "difference_heatmap.png", "cd_diagram.png", "cost.png", "recovery.png",
                "index.html")


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(read_bytes_nofollow(path, 1 << 20))
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def manifest(out: Path) -> dict[str, str]:
    """name -> sha256 of the report files the suite wrote into ``out`` (empty when none)."""
    record = _read_json(Path(out) / MANIFEST) or {}
    files = record.get("files")
    return {k: v for k, v in files.items() if isinstance(k, str) and isinstance(v, str)} \
        if isinstance(files, dict) else {}


def _legacy(out: Path) -> bool:
    """A folder of an older version of the suite (no manifest): it holds run folders, or a report
    whose runs.csv and index.html are the suite's (a merged report has no run folders)."""
    from benchmark.core.run_folder import looks_like_run

    if os.path.lexists(out / MANIFEST):
        return False
    try:
        if any(looks_like_run(p) for p in out.iterdir()):
            return True
        runs = read_bytes_nofollow(out / "runs.csv", 256) if plain_file(out / "runs.csv") else b""
        page = read_bytes_nofollow(out / "index.html", 4096) if plain_file(out / "index.html") else b""
    except OSError:
        return False
    return runs.startswith(RUNS_HEADER) and (not page or PAGE_TITLE in page)


def check_targets(out: Path) -> None:
    """Refuse ``out`` when a report name there is a file the suite did not write (or one it wrote
    and someone changed since). A missing folder is fine."""
    out = Path(out)
    if not out.is_dir():
        return
    recover(out)
    ours, legacy = manifest(out), _legacy(out)
    for name in REPORT_NAMES:
        path = out / name
        if not os.path.lexists(path):
            continue
        if not plain_file(path):
            raise UserError(f"{path} is a symbolic link or a folder where the report writes {name}; the suite only "
                            "replaces files it wrote: move it away or choose another --out")
        if legacy:
            continue
        if name not in ours:
            raise UserError(f"{path} was not written by this suite (it is not in {MANIFEST}); the report would "
                            "overwrite it: move it away or choose another --out")
        if sha256_file(path) != ours[name]:
            raise UserError(f"{path} changed since the suite wrote it; the report would overwrite it: move it away "
                            "(or delete it) and run again")


@contextmanager
def staging(out: Path):
    """A fresh staging folder inside ``out`` for the files of one report; removed afterwards
    (whatever was not published). Stale staging folders of killed builds are removed first; the
    caller holds the folder's report lock."""
    out = Path(out)
    recover(out)
    for stale in out.glob(f"{STAGING_PREFIX}*"):
        if plain_dir(stale) and not os.path.lexists(out / JOURNAL):
            shutil.rmtree(stale, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        yield folder
    finally:
        journal = _read_json(out / JOURNAL) or {}
        if journal.get("staging") != folder.name:       # a publication under way keeps its files
            shutil.rmtree(folder, ignore_errors=True)


def publish(folder: Path, out: Path) -> dict[str, Path]:
    """Move every file of the staging ``folder`` into ``out`` as one report (see the module doc);
    report files of the previous report that this one lacks are removed. Returns name -> path."""
    out = Path(out)
    check_targets(out)
    names = sorted(p.name for p in folder.iterdir() if plain_file(p))
    unknown = [n for n in names if n not in REPORT_NAMES]
    if unknown:
        raise ValueError(f"staged files outside the report's names: {unknown}")
    sums = {name: sha256_file(folder / name) for name in names}
    stale = sorted(set(manifest(out)) - set(names))
    atomic_write_text(out / JOURNAL, json.dumps({"staging": folder.name, "files": sums, "remove": stale}))
    _apply(out, folder, sums, stale)
    return {name: out / name for name in names}


def _apply(out: Path, folder: Path, sums: dict[str, str], stale: list[str]) -> None:
    for name in sums:
        if plain_file(folder / name):
            os.replace(folder / name, out / name)
    for name in stale:
        if name in REPORT_NAMES and plain_file(out / name):
            (out / name).unlink()
    atomic_write_text(out / MANIFEST, json.dumps({"suite": "mlr-pl-bench", "files": sums}, indent=1, sort_keys=True)
                      + "\n")
    (out / JOURNAL).unlink(missing_ok=True)


def recover(out: Path) -> None:
    """Finish a publication a kill interrupted (its journal is still there)."""
    out = Path(out)
    journal = _read_json(out / JOURNAL)
    if journal is None:
        if os.path.lexists(out / JOURNAL) and plain_file(out / JOURNAL):
            (out / JOURNAL).unlink()              # a torn journal: the renames had not started
        return
    name = str(journal.get("staging", ""))
    sums = journal.get("files") if isinstance(journal.get("files"), dict) else {}
    stale = journal.get("remove") if isinstance(journal.get("remove"), list) else []
    folder = out / name
    if not (name.startswith(STAGING_PREFIX) and "/" not in name and plain_dir(folder)):
        (out / JOURNAL).unlink(missing_ok=True)
        return
    sums = {k: v for k, v in sums.items() if k in REPORT_NAMES}
    _apply(out, folder, sums, [s for s in stale if isinstance(s, str)])
    shutil.rmtree(folder, ignore_errors=True)
