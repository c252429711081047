"""benchmark.core.escape: every output format gets strings it cannot be tricked by (property-based)."""
from __future__ import annotations

import csv
import html
import io
import re

import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from benchmark.core.escape import (
    CSV_FORMULA_START,
    csv_cell,
    csv_frame,
    latex,
    markdown_cell,
    markdown_heading,
    markdown_text,
    mathtext,
    one_line,
    short_repr,
)
from tests.conftest import fuzz_examples

# Text with the characters every format treats specially, whitespace of every kind and controls.
SPECIAL = "\\{}$&%#_^~[]()<>|`*=+-@!:\"'\n\r\t\x0b\x0c\x00\x1b\x85\u2028\u2029\u200b\u00a0"
TEXT = st.text(st.sampled_from(SPECIAL) | st.characters(codec="utf-8"), max_size=60)
EXAMPLES = settings(max_examples=fuzz_examples(20), deadline=None)
PAYLOADS = ("a\\|b", "100% & $\\x$", "\\input{/etc/passwd}", "[x](javascript:alert(1))", "<script>alert(1)</script>",
            '=HYPERLINK("http://evil")', "a\nb\r\n\nc")


def payloads(test):
    """The known tricks as explicit examples of a property test (random text rarely hits them)."""
    for payload in PAYLOADS:
        test = example(payload)(test)
    return test

LATEX_TOKENS = {r"\textbackslash{}": "\\", r"\textasciicircum{}": "^", r"\textasciitilde{}": "~",
                r"\textless{}": "<", r"\textgreater{}": ">", r"\textbar{}": "|", "{[}": "[", "{]}": "]",
                **{"\\" + c: c for c in "{}$&%#_"}}
LATEX_TOKEN = re.compile("|".join(re.escape(t) for t in sorted(LATEX_TOKENS, key=len, reverse=True)))


def _latex_plain(text: str) -> str:
    """What LaTeX reads as plain characters: ``text`` with every escape sequence removed."""
    return LATEX_TOKEN.sub("", text)


def _render_cell(cell: str) -> list[str]:
    """The cells of a one-row GFM table whose second cell is ``cell``, rendered by markdown-it with
    raw HTML allowed and every link target accepted (the most permissive renderer)."""
    markdown_it = pytest.importorskip("markdown_it")
    md = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table")
    md.validateLink = lambda url: True
    out = md.render(f"| a | b |\n|---|---|\n| x | {cell} |\n")
    body = out.split("<tbody>")[1]
    return re.findall(r"<td>(.*?)</td>", body, re.S)


@EXAMPLES
@given(TEXT)
@payloads
def test_one_line_is_one_printable_line(text):
    out = one_line(text)
    assert out.isprintable() and "  " not in out and out == out.strip()
    assert one_line(out) == out                                   # idempotent
    if text.isprintable() and " ".join(text.split()) == text:
        assert out == text                                        # plain names are kept as they are


@EXAMPLES
@given(TEXT)
@payloads
def test_latex_never_leaves_a_special_character_unescaped(text):
    out = latex(text)
    assert "\n" not in out and "\r" not in out and out.isprintable()
    plain = _latex_plain(out)
    assert not set(plain) & set("\\{}$&%#_^~[]"), (text, out)
    # Decoding the escapes gives the one-line text back: nothing is lost or added.
    assert LATEX_TOKEN.sub(lambda m: LATEX_TOKENS[m.group(0)], out) == one_line(text)


def test_latex_known_payloads():
    assert latex(r"\input{/etc/passwd}") == r"\textbackslash{}input\{/etc/passwd\}"
    assert latex("100% & $\\x$") == r"100\% \& \$\textbackslash{}x\$"
    assert latex("a\n\nb") == "a b"                                  # no paragraph break inside \caption
    assert latex("^^5cinput") == r"\textasciicircum{}\textasciicircum{}5cinput"
    assert latex("[x]") == "{[}x{]}"                                 # never an optional argument of \\


@EXAMPLES
@given(TEXT)
@payloads
def test_markdown_cell_never_has_a_bare_pipe_a_newline_or_markup(text):
    for escape in (markdown_cell, markdown_text, markdown_heading):
        out = escape(text)
        assert "\n" not in out and "\r" not in out and "<" not in out and ">" not in out
        # Every | is escaped: preceded by an odd number of backslashes.
        for match in re.finditer(r"(\\*)\|", out):
            assert len(match.group(1)) % 2 == 1, (text, out)
        assert "](" not in out.replace("\\](", "") and not re.search(r"(?<!\\)\]\(", out)


@EXAMPLES
@given(TEXT)
@payloads
def test_markdown_cell_renders_as_exactly_its_text_in_one_cell(text):
    cells = _render_cell(markdown_cell(text))
    assert len(cells) == 2 and cells[0] == "x"
    assert "<a " not in cells[1] and "<" not in html.unescape(cells[1]).replace(one_line(text), "")
    assert html.unescape(cells[1]) == one_line(text)


@EXAMPLES
@given(TEXT)
@payloads
def test_markdown_text_renders_in_one_cell_without_links_or_html(text):
    cells = _render_cell(markdown_text(text))
    assert len(cells) == 2 and cells[0] == "x"
    assert "<a " not in cells[1] and "<img" not in cells[1] and "<script" not in cells[1]


@pytest.mark.parametrize("payload", ["[x](javascript:alert(1))", "![i](javascript:alert(1))", "<script>alert(1)</script>",
                                     "<javascript:alert(1)>", "a\\|b", "a|b", "[x][y]\n\n[y]: javascript:alert(1)"])
def test_markdown_payloads_stay_text(payload):
    for escape in (markdown_cell, markdown_text):
        cells = _render_cell(escape(payload))
        assert len(cells) == 2
        assert "<a " not in cells[1] and "<script" not in cells[1] and "<img" not in cells[1]
    assert markdown_text("partial_bce [epochs=1]") == "partial_bce [epochs=1]"     # readable names stay so
    assert markdown_heading("a # b") == "a \\# b"


@EXAMPLES
@given(st.one_of(TEXT, st.integers(), st.floats(allow_nan=True), st.none(), st.booleans()))
@payloads
@example("-1")
@example(-1.5)
def test_csv_cell_never_starts_with_a_formula_character(value):
    out = csv_cell(value)
    if isinstance(value, str):
        assert not out.startswith(CSV_FORMULA_START)
        assert out in (value, "'" + value)
    else:
        assert out is value                                        # numbers are never touched


@EXAMPLES
@given(st.lists(TEXT, min_size=1, max_size=5))
@example(["\r", "a\rb", "\t=cmd", "x\ny"])
def test_csv_frame_round_trips_without_formulas(names):
    frame = pd.DataFrame({"method": names, "mAP": [-1.5] * len(names), "=bad": [True] * len(names)})
    text = csv_frame(frame).to_csv(index=False)
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == ["method", "mAP", "'=bad"]
    for (method, value, flag), name in zip(rows[1:], names):
        assert not method.startswith(CSV_FORMULA_START)
        assert method == csv_cell(one_line(name)) and value == "-1.5" and flag == "True"   # numbers stay numbers
    assert len(rows) == len(names) + 1                             # no cell starts a row of its own


@pytest.mark.filterwarnings("ignore:Glyph")
@EXAMPLES
@given(TEXT)
@payloads
def test_mathtext_is_never_parsed_as_math_and_draws(text):
    from matplotlib import cbook
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = mathtext(text)
    assert not cbook.is_math_text(out)
    assert out.replace("\\$", "$") == one_line(text)                # what matplotlib shows
    fig = Figure(figsize=(2, 1))
    fig.text(0.1, 0.5, out)
    FigureCanvasAgg(fig).draw()                                     # `$\x$` unescaped would raise here


@EXAMPLES
@given(st.one_of(TEXT, st.lists(TEXT), st.integers()))
def test_short_repr_is_short_and_one_line(value):
    out = short_repr(value)
    assert len(out) <= 40 and out.isprintable()
    assert short_repr("abc") == "'abc'" and short_repr("a\nb") == "'a\\nb'"
