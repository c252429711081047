"""Property-based tests of the command line (hypothesis): generated argument vectors for ``--ratios``,
``--set`` and ``--out``. The invariant for every one: either the grid is planned normally, or the
command ends with exit status 2, exactly one stderr line ``error: ...`` and nothing new on disk;
never a traceback. And an id is an identity: two command lines that plan one run id plan one
configuration, so numbers never change silently under an old run id.

The grid itself is replaced by a recorder (training is tested elsewhere): what is fuzzed here is
everything the suite checks before the first run. ``MLRPL_FUZZ_EXAMPLES=500 pytest -m fuzz`` is
the long run (README, Reliability)."""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from benchmark.cli.main import main
from benchmark.launch.grid import GridOutcome
from tests.conftest import fuzz_examples

pytestmark = pytest.mark.fuzz

BASE = ["--profile", "smoke", "--epochs", "1", "--embeddings", "random", "--no-report"]


@pytest.fixture()
def planned(monkeypatch):
    """The runs each call of ``main`` planned (the grid records them instead of training)."""
    seen: list = []

    def record(runs, out, **kwargs):
        seen.append(list(runs))
        return GridOutcome()

    monkeypatch.setattr("benchmark.launch.grid.run_grid", record)
    return seen


def _invoke(argv, out: Path, capsys, planned) -> list | None:
    """Run ``main``; assert the invariant; the planned runs on success, None on a refusal."""
    capsys.readouterr()
    before = len(planned)
    existed = set(out.parent.iterdir()) if out.parent.is_dir() else set()
    code = main(argv)                                   # an exception here is a traceback: the test fails
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    if code == 0:
        assert len(planned) == before + 1
        event("planned")
        return planned[-1]
    event("refused: " + " ".join(err[0].split()[1:3]) if err else "refused")
    assert code == 2, (argv, code, err)
    assert len(err) == 1 and err[0].startswith("error: "), (argv, err)
    assert (set(out.parent.iterdir()) if out.parent.is_dir() else set()) == existed, argv    # nothing new
    return None


# ---------------------------------------------------------------------------------- --ratios
_number = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=0, max_value=1).map(lambda v: f"{v:.{len(repr(v))}g}"),
    st.integers(-3, 3).map(str),
    st.sampled_from(["0.1", "0.5", "1", "0", ".5", "5.", "1e-3", "1e-300", "-0.0", "0.30000000000000004", "0.12345",
                     "0.0001", "0.00001", " 0.2", "0.2 ", "", "nan", "inf", "0x1", "½", "0,5"]),
    st.text(max_size=4),
)
_ratios = st.one_of(
    st.lists(_number, min_size=2, max_size=3).map(":".join),
    st.lists(_number, min_size=1, max_size=6).map(",".join),
    st.text(max_size=24),
)


@settings(max_examples=fuzz_examples(20))
@given(text=_ratios)
def test_any_ratios_text_plans_a_clean_grid_or_is_one_line(text, tmp_path, capsys, planned):
    assume("\x00" not in text)
    out = tmp_path / "out"
    runs = _invoke([*BASE, "--methods", "partial_bce", "--ratios", text, "--out", str(out)], out, capsys, planned)
    if runs is None:
        return
    ratios = [r.ratio for r in runs]
    assert ratios and len(set(ratios)) == len(ratios) <= 200
    assert all(0 < r <= 1 and math.isclose(r, round(r, 4), abs_tol=1e-12) for r in ratios)
    assert len({r.run_id for r in runs}) == len(runs)                 # one column per mask


# ---------------------------------------------------------------------------------- --set
_json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
              st.text(max_size=8)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2),
    max_leaves=4,
)
_FIELDS = ["loss", "dropout", "hidden_dim", "prototype_sign", "temperature", "threshold", "nosuch", "hst.hidden_dim",
           "partial_bce.dropout", "partial_bce.nosuch", "x.y"]
IDENTITIES: dict[str, dict] = {}            # run id -> the resolved config of the first command that planned it


def _set_value(value) -> str:
    import json

    return json.dumps(value) if not isinstance(value, str) else value


@settings(max_examples=fuzz_examples(20))
@given(field=st.sampled_from(_FIELDS), value=_json_value, as_file=st.booleans())
def test_any_set_value_is_one_line_or_one_identity(field, value, as_file, tmp_path, capsys, planned):
    from benchmark.core.registry import get_method

    text = _set_value(value)
    if as_file:
        (tmp_path / "v.txt").write_text(text)
        text = f"file:{tmp_path / 'v.txt'}"
    assume("\x00" not in text)
    out = tmp_path / "out"
    runs = _invoke([*BASE, "--methods", "partial_bce", "hst", "--ratios", "0.5", "--set", f"{field}={text}",
                    "--out", str(out)], out, capsys, planned)
    if runs is None:
        return
    for run in runs:
        cfg = get_method(run.method).make_config(dict(run.method_config), profile=run.profile)
        resolved = dataclasses.asdict(cfg) if cfg is not None else {}
        first = IDENTITIES.setdefault(run.run_id, resolved)
        assert first == resolved, f"run id {run.run_id} names two configurations"


# ---------------------------------------------------------------------------------- --out
_name = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=40)
_out = st.one_of(
    _name,
    st.lists(_name, min_size=1, max_size=4).map("/".join),
    st.integers(200, 400).map(lambda n: "n" * n),
    st.sampled_from(["loop", "loop/sub", "dangling", "dangling/x", "a_file", "a_file/x", "ok dir/ü ñ", " ", "~",
                     ".", "..", "link_to_dir"]),
)


@settings(max_examples=fuzz_examples(20))
@given(name=_out)
def test_any_out_path_plans_or_is_one_line(name, tmp_path, capsys, planned):
    base = tmp_path / "paths"
    if not base.exists():
        base.mkdir()
        (base / "loop").symlink_to(base / "loop")
        (base / "dangling").symlink_to(base / "nowhere")
        (base / "a_file").write_text("x")
        (base / "real_dir").mkdir()
        (base / "link_to_dir").symlink_to(base / "real_dir")
    out = base / name
    before = sorted(os.listdir(base))
    code_runs = _invoke([*BASE, "--methods", "partial_bce", "--ratios", "0.5", "--out", str(out)],
                        base / "probe", capsys, planned)
    after = sorted(os.listdir(base))
    assert before == after or code_runs is not None            # a refusal creates nothing


# Numeric config fields and values a user would give, each in several spellings.
_NUMERIC = {"partial_bce": {"g_at_01": "float", "gamma": "float", "dropout": "unit"},
            "hst": {"hidden_dim": "int", "ggnn_steps": "int", "margin_init": "float", "instance_weight": "float",
                    "num_prototypes": "int"}}


def _spellings(value, kind: str) -> st.SearchStrategy:
    forms = [repr(value), str(value)]
    if kind != "int":
        forms += [f"{value:.17g}", f"{value:e}" if value == float(f"{value:e}") else repr(value)]
    else:
        forms += [f"{value}.0", f"{float(value):e}"]
    return st.sampled_from(forms)


@settings(max_examples=fuzz_examples(20))
@given(data=st.data())
def test_two_spellings_of_one_value_are_one_run_and_two_values_are_two(data, tmp_path, capsys, planned):
    """The identity property where it matters most: `--set f=V` spelled two ways plans one run id,
    and two different values plan two; a run id always names one configuration."""
    from benchmark.core.registry import get_method

    method = data.draw(st.sampled_from(sorted(_NUMERIC)))
    field, kind = data.draw(st.sampled_from(sorted(_NUMERIC[method].items())))
    values = {"int": st.integers(1, 64), "unit": st.floats(0, 0.9).map(lambda v: round(v, 4)),
              "float": st.floats(1e-3, 20.0).map(lambda v: round(v, 4))}[kind]
    first, second = data.draw(values), data.draw(values)
    spelled = [data.draw(_spellings(first, kind)), data.draw(_spellings(first, kind)), data.draw(_spellings(second, kind))]
    out = tmp_path / "out"
    planned_ids, configs = [], []
    for text in spelled:
        runs = _invoke([*BASE, "--methods", method, "--ratios", "0.5", "--set", f"{method}.{field}={text}",
                        "--out", str(out)], out, capsys, planned)
        assume(runs is not None)                  # a value the method's own checks refuse (one line) is fine
        (run,) = runs
        planned_ids.append(run.run_id)
        configs.append(dataclasses.asdict(get_method(method).make_config(dict(run.method_config), profile="smoke")))
    assert planned_ids[0] == planned_ids[1] and configs[0] == configs[1], spelled
    assert (planned_ids[2] == planned_ids[0]) == (configs[2] == configs[0]), spelled


_NUMBER_FLAGS = ["--epochs", "--batch-size", "--lr", "--image-size", "--workers", "--seeds", "--threads", "--jobs"]
_number_text = st.one_of(st.integers(-2**70, 2**70).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                         st.integers(0, 300).map(str), st.sampled_from(["", " ", "1e3", "0x10", "1_000", "-0", "٣"]),
                         st.text(max_size=6))


@settings(max_examples=fuzz_examples(20))
@given(flag=st.sampled_from(_NUMBER_FLAGS), text=_number_text)
def test_any_number_flag_plans_or_is_one_line(flag, text, tmp_path, capsys, planned):
    assume("\x00" not in text)                      # `--flag=value`: a negative number is a value, not a flag
    out = tmp_path / "out"
    runs = _invoke([*BASE, "--methods", "partial_bce", "--ratios", "0.5", f"{flag}={text}", "--out", str(out)],
                   out, capsys, planned)
    if runs is not None:
        run = runs[0]
        assert run.epochs >= 1 and run.batch_size >= 1 and run.lr > 0 and run.seed >= 0
