"""``--embeddings file:PATH``: a float ``[C, E]`` finite array saved with numpy.save loads; anything else
(a .npz, a pickle, a string or object array, a wrong shape, NaN/inf, an empty or truncated file, random
bytes) is one UserError naming the file, what is wrong and the fix, never another exception."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from benchmark.core.errors import UserError
from datasets.side_info import file_embeddings, label_embeddings

try:
    from tests.conftest import fuzz_examples
except ImportError:
    def fuzz_examples(default: int) -> int:
        return default

C = 4
FIX = "with numpy.save"
FUZZ = settings(max_examples=fuzz_examples(20), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _refused(path, fragment: str = "", num_classes: int = C) -> str:
    with pytest.raises(UserError) as exc:
        file_embeddings(path, num_classes)
    line = str(exc.value)
    assert "\n" not in line and str(path) in line and FIX in line and f"[{num_classes}, E]" in line, line
    assert fragment in line, line
    return line


def test_float_and_integer_arrays_load_as_float32(tmp_path):
    for dtype in (np.float16, np.float32, np.float64, ">f8", np.int64, np.uint8):
        path = tmp_path / f"e_{np.dtype(dtype).str.replace('<', 'l').replace('>', 'b')}.npy"
        array = (np.arange(C * 3).reshape(C, 3) % 7).astype(dtype)
        np.save(path, array)
        out = file_embeddings(path, C)
        assert out.dtype == np.float32 and out.shape == (C, 3)
        np.testing.assert_array_equal(out, array.astype(np.float32))
    fortran = tmp_path / "fortran.npy"
    np.save(fortran, np.asfortranarray(np.random.default_rng(0).standard_normal((C, 5))))
    assert file_embeddings(fortran, C).shape == (C, 5)
    np.testing.assert_array_equal(label_embeddings(list("abcd"), f"file:{fortran}"), file_embeddings(fortran, C))


def test_each_kind_of_bad_file_is_one_user_error(tmp_path):
    good = np.ones((C, 3), dtype=np.float32)
    np.savez(tmp_path / "arch.npz", a=good)
    _refused(tmp_path / "arch.npz", ".npz")
    (tmp_path / "p.pkl").write_bytes(pickle.dumps(good))
    _refused(tmp_path / "p.pkl", "pickle")
    np.save(tmp_path / "obj.npy", np.array([[object()] * 3] * C, dtype=object), allow_pickle=True)
    _refused(tmp_path / "obj.npy", "not a readable .npy array")
    np.save(tmp_path / "str.npy", np.array([["a", "b", "c"]] * C))
    _refused(tmp_path / "str.npy", "not numbers")
    np.save(tmp_path / "cplx.npy", good.astype(np.complex64))
    _refused(tmp_path / "cplx.npy", "not numbers")
    np.save(tmp_path / "bool.npy", good.astype(bool))
    _refused(tmp_path / "bool.npy", "not numbers")
    np.save(tmp_path / "rec.npy", np.zeros((C, 3), dtype=[("x", "f4"), ("y", "f4")]))
    _refused(tmp_path / "rec.npy", "not numbers")
    np.save(tmp_path / "rows.npy", np.ones((C + 1, 3), dtype=np.float32))
    _refused(tmp_path / "rows.npy", f"has shape [{C + 1}, 3]")
    np.save(tmp_path / "flat.npy", np.ones(C, dtype=np.float32))
    _refused(tmp_path / "flat.npy", f"has shape [{C}]")
    np.save(tmp_path / "cube.npy", np.ones((C, 3, 2), dtype=np.float32))
    _refused(tmp_path / "cube.npy", "has shape")
    np.save(tmp_path / "nodim.npy", np.ones((C, 0), dtype=np.float32))
    _refused(tmp_path / "nodim.npy")
    np.save(tmp_path / "scalar.npy", np.float32(1.0))
    _refused(tmp_path / "scalar.npy")
    for bad in (np.nan, np.inf, -np.inf, 1e300):          # 1e300 is inf in float32
        array = np.ones((C, 3), dtype=np.float64)
        array[2, 1] = bad
        np.save(tmp_path / "bad.npy", array)
        _refused(tmp_path / "bad.npy", "row 2, column 1")
    (tmp_path / "empty.npy").write_bytes(b"")
    _refused(tmp_path / "empty.npy", "is empty")
    np.save(tmp_path / "whole.npy", good)
    raw = (tmp_path / "whole.npy").read_bytes()
    for cut in (5, 20, len(raw) - 4):
        (tmp_path / "cut.npy").write_bytes(raw[:cut])
        _refused(tmp_path / "cut.npy")
    (tmp_path / "text.npy").write_text("0.1 0.2 0.3\n")
    _refused(tmp_path / "text.npy", "not a .npy file")
    _refused(tmp_path, "is not a file")
    _refused(tmp_path / "missing.npy", "not found")


def test_a_huge_declared_shape_is_refused_without_reading(tmp_path):
    """A header claiming terabytes over a small file: refused from the header and file size."""
    path = tmp_path / "liar.npy"
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (C, 10**12)})
        fh.write(b"\0" * 64)
    _refused(path)


DTYPES = st.one_of(hnp.floating_dtypes(), hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(),
                   hnp.boolean_dtypes(), hnp.complex_number_dtypes(), hnp.datetime64_dtypes(),
                   hnp.unicode_string_dtypes(max_len=4), hnp.byte_string_dtypes(max_len=4))


@FUZZ
@given(array=hnp.arrays(DTYPES, st.one_of(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
                                           st.tuples(st.just(C), st.integers(0, 5)))))
def test_any_saved_array_loads_or_is_a_user_error(tmp_path, array):
    path = tmp_path / "fuzz.npy"
    np.save(path, array)
    numeric = array.dtype.kind in "fiu"
    with np.errstate(over="ignore", invalid="ignore"):
        as_float = array.astype(np.float32) if numeric else None
    good = numeric and array.ndim == 2 and array.shape == (C, array.shape[1]) and array.shape[1] > 0 \
        and bool(np.isfinite(as_float).all())
    if good:
        np.testing.assert_array_equal(file_embeddings(path, C), as_float)
    else:
        _refused(path)


@FUZZ
@given(data=st.data())
def test_corrupted_bytes_load_or_are_a_user_error(tmp_path, data):
    """Flip, cut or overwrite the bytes of a good file: either still a valid float [C, E] array
    (e.g. a flipped data byte that stays finite), or one UserError; never another exception."""
    rows = np.random.default_rng(data.draw(st.integers(0, 3))).standard_normal((C, 3)).astype(np.float32)
    path = tmp_path / "corrupt.npy"
    np.save(path, rows)
    raw = bytearray(path.read_bytes())
    how = data.draw(st.sampled_from(["flip", "cut", "splice"]))
    if how == "flip":
        for index in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=8)):
            raw[index] ^= data.draw(st.integers(1, 255))
    elif how == "cut":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    else:
        start = data.draw(st.integers(0, len(raw)))
        raw[start:start] = data.draw(st.binary(min_size=1, max_size=40))
    path.write_bytes(bytes(raw))
    try:
        out = file_embeddings(path, C)
    except UserError as exc:
        line = str(exc)
        assert "\n" not in line and str(path) in line and FIX in line
    else:
        assert out.dtype == np.float32 and out.ndim == 2 and out.shape[0] == C and np.isfinite(out).all()
