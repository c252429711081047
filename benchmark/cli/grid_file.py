"""Grid files: an experiment as a small YAML file (the benchopt ``--config`` idea).

``python run_benchmark.py --grid FILE.yaml`` runs the experiment the file describes; flags given on
the command line as well win over the file's values (``--grid exp.yaml --seeds 3`` runs seed 3 of the same experiment).
``--write-grid FILE.yaml`` writes the experiment of the command it is part of, so that one file
re-runs it exactly (a release records it). Only what defines an experiment goes into a grid file
(:data:`EXPERIMENT_KEYS`); where the results go and how many processes train them (``--out``,
``--jobs``, the launcher...) stay command-line flags. ``threads`` is kept: CPU runs are
bit-identical only at the same thread count, and it is part of a run's identity.

The file is a mapping of flag names (``batch_size`` or ``batch-size``) to values::

    methods: [partial_bce, hst]
    dataset: synthetic
    ratios: "0.1:0.9"
    seeds: [0, 1, 2]
    profile: default
    set: {hst.instance_weight: 0.5}

Values become the same command-line tokens a user would type, so every check of the command line
applies to them unchanged. A file that is not such a mapping, names an unknown key or holds a value
of the wrong shape is one line naming the file, the key and the fix.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from benchmark.core.errors import UserError
from benchmark.core.files import atomic_write_text

# flag name -> "list" (nargs="+"), "set" (key=value mapping), "scalar"
EXPERIMENT_KEYS = {
    "methods": "list", "dataset": "list", "ratios": "scalar", "seeds": "list", "data_root": "scalar",
    "preset": "scalar", "protocol": "scalar", "profile": "scalar", "mask_protocol": "scalar", "epochs": "scalar",
    "batch_size": "scalar", "lr": "scalar", "image_size": "scalar", "precision": "scalar", "backbone": "scalar",
    "backbone_weights": "scalar", "clip_weights": "scalar", "clip_arch": "scalar", "embeddings": "scalar",
    "set": "set", "plugins": "list", "threads": "scalar", "mask_pack": "scalar",
}
DEST = {"set": "overrides"}                   # argparse destination of a key, where it differs
MAX_BYTES = 64 << 10
FORMAT_NOTE = "# Grid file of run_benchmark.py: re-run with  python run_benchmark.py --grid THIS_FILE --out DIR\n"


def _scalar(path: Path, key: str, value) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UserError(f"grid file {path}: {key} must be a number or a string, not {type(value).__name__}; "
                        f"e.g. {key}: 0.1:0.9")
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"grid file {path}: {key} is {value}; give a finite number")
    text = str(value)
    if not text or not text.isprintable() or text.startswith("-"):
        raise UserError(f"grid file {path}: {key} {text!r} is not a usable value (empty, a control character, or "
                        "starting with '-'); fix the file")
    return text


def _tokens(path: Path, key: str, value) -> list[str]:
    kind = EXPERIMENT_KEYS[key]
    flag = "--" + key.replace("_", "-")
    if kind == "set":
        if not isinstance(value, dict) or not value:
            raise UserError(f"grid file {path}: set must be a mapping of config keys to values, e.g. "
                            "set: {hst.instance_weight: 0.5}")
        items = []
        for name, item in value.items():
            name = _scalar(path, "set key", name)
            items.append(f"{name}={json.dumps(item)}")
        return [flag, *items]
    if kind == "list":
        values = value if isinstance(value, list) else [value]
        if not values:
            raise UserError(f"grid file {path}: {key} is an empty list; give at least one value or drop the key")
        return [flag, *(_scalar(path, key, v) for v in values)]
    return [flag, _scalar(path, key, value)]


def read_grid_file(path: str | Path) -> list[str]:
    """The command-line tokens of a grid file (see the module docstring), or one UserError."""
    import yaml

    from datasets.readers import decode_text, read_data_bytes

    path = Path(path).expanduser()
    fix = "give a YAML file written by --write-grid or by hand (see README)"
    text = decode_text(read_data_bytes(path, "grid file", fix, max_bytes=MAX_BYTES), path, "grid file", fix)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise UserError(f"grid file {path} is not valid YAML{line}; fix the file") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"grid file {path} must be a mapping of flags to values (methods: [...], ratios: ...); fix it")
    tokens: list[str] = []
    for raw, value in data.items():
        key = str(raw).replace("-", "_")
        if key not in EXPERIMENT_KEYS:
            raise UserError(f"grid file {path}: unknown key {str(raw)!r}; valid keys: {', '.join(EXPERIMENT_KEYS)} "
                            "(--out, --jobs and the launcher stay on the command line)")
        if value is None:
            continue
        tokens += _tokens(path, key, value)
    return tokens


def expand_grid_argument(argv: list[str]) -> list[str]:
    """``argv`` with ``--grid FILE`` replaced by the file's tokens, placed first so that flags given on
    the command line win (argparse keeps the last value of a flag)."""
    out, grid = [], None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--grid" or arg.startswith("--grid="):
            if grid is not None:
                raise UserError("--grid is given twice; name one grid file")
            if arg == "--grid":
                if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                    raise UserError("--grid needs a file: --grid FILE.yaml")
                grid, i = argv[i + 1], i + 2
            else:
                grid, i = arg.split("=", 1)[1], i + 1
            continue
        out.append(arg)
        i += 1
    return out if grid is None else [*read_grid_file(grid), *out]


def grid_record(args) -> dict:
    """The experiment of parsed run arguments as a grid-file mapping (keys with a value only)."""
    out = {}
    for key, kind in EXPERIMENT_KEYS.items():
        value = getattr(args, DEST.get(key, key), None)
        if value in (None, [], ()):
            continue
        if kind == "set":
            value = {k: _json_or_text(v) for k, v in (item.split("=", 1) for item in value if "=" in item)}
        out[key] = list(value) if kind == "list" else value
    return out


def _json_or_text(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def check_grid_target(path: str | Path) -> Path:
    """Where ``--write-grid`` writes: a .yaml / .yml name (checked before any run starts)."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise UserError(f"--write-grid {path}: name the file .yaml or .yml")
    if path.is_dir():
        raise UserError(f"--write-grid {path} is a folder; name a .yaml file")
    return path


def write_grid_file(path: str | Path, args, threads: int | None = None) -> Path:
    """Write the experiment of ``args`` as a grid file (atomically); returns the path. ``threads``: the
    thread count the grid's runs were planned with (part of their identity), recorded when the command
    line left it to the default."""
    import yaml

    path = check_grid_target(path)
    record = grid_record(args)
    if threads is not None:
        record.setdefault("threads", threads)
    body = yaml.safe_dump(record, sort_keys=False, default_flow_style=None, allow_unicode=True)
    atomic_write_text(path, FORMAT_NOTE + body)
    return path
