"""Escaping of strings for the formats the suite writes by hand.

Every string a report takes from a results folder (method, dataset and other spec.json fields, the
first line of an error.txt, metric names, configuration values) is untrusted: results folders are
copied between machines and people. Each output format gets its own function here, applied to
every such string where it is written:

- :func:`one_line`: one printable line (no newline, no control character) — the base of the others;
- :func:`markdown_cell` / :func:`markdown_text` / :func:`markdown_heading`: Markdown (no live HTML,
  no link, a ``|`` never splits a table cell, a newline never breaks a row);
- :func:`latex`: LaTeX text (no command, group, math, table cell or optional argument from data);
- :func:`csv_cell`: a spreadsheet cell (no formula: the OWASP rule);
- :func:`mathtext`: matplotlib text (no mathtext parse: a name renders literally, never raises);
- :func:`short_repr`: a bad value in an error message (repr, one line, truncated).

HTML is escaped by Jinja2's autoescaping (:mod:`reports.html`).
"""
from __future__ import annotations

import html

_MARKDOWN_SPECIAL = str.maketrans({"\\": "\\\\", "|": "\\|", "`": "\\`", "*": "\\*", "_": "\\_", "[": "\\[",
                                   "]": "\\]", "$": "\\$", "~": "\\~"})
# The lighter set of markdown_text: what could make markup (code, emphasis, math, strike-through,
# table cells); brackets and underscores stay readable and links are broken at "](" / "][".
_MARKDOWN_TEXT = str.maketrans({"\\": "\\\\", "|": "\\|", "`": "\\`", "*": "\\*", "$": "\\$", "~": "\\~"})
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "%": r"\%",
                  "#": r"\#", "_": r"\_", "^": r"\textasciicircum{}", "~": r"\textasciitilde{}",
                  "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}", "[": "{[}", "]": "{]}"}
# A spreadsheet reads a cell starting with one of these as a formula (OWASP "CSV injection").
CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def one_line(text: object) -> str:
    """``text`` as one printable line: every run of whitespace (newline, tab, carriage return,
    Unicode line and paragraph separators) becomes one space, leading and trailing whitespace is
    dropped, and any other non-printable character (NUL, ESC, zero-width and bidi controls) is
    replaced by its visible ``\\xNN`` / ``\\uNNNN`` escape."""
    flat = " ".join(str(text).split())
    if flat.isprintable():
        return flat
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in flat)


def short_repr(value: object, limit: int = 40) -> str:
    """A bad value as an error message shows it: its ``repr`` (quotes tell a string from a number),
    one printable line, at most ``limit`` characters (``...`` marks a cut)."""
    try:
        text = one_line(repr(value))
    except (RecursionError, ValueError):            # a pathologically nested or huge value
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:max(limit - 3, 1)] + "..."


def markdown_cell(text: object) -> str:
    """``text`` as one Markdown table cell: one line, HTML characters as entities (no live markup),
    the characters that make tables, code, emphasis, math or links escaped (a backslash too, so
    that ``\\|`` in the data cannot turn an escaped pipe back into a cell separator)."""
    return html.escape(one_line(text).translate(_MARKDOWN_SPECIAL), quote=False)


def markdown_text(text: object) -> str:
    """``text`` as inline Markdown (a table cell, a paragraph, a list item), kept readable: one line,
    HTML characters as entities (no ``<script>``, no ``<url>`` autolink), ``\\ | ` * $ ~`` escaped (no
    cell split, code, emphasis, math or strike-through), and ``](`` / ``][`` broken so that no
    ``[text](url)`` link or image is ever made; ``_`` and brackets are left as they are."""
    out = html.escape(one_line(text).translate(_MARKDOWN_TEXT), quote=False)
    return out.replace("](", "]\\(").replace("][", "]\\[")


def markdown_heading(text: object) -> str:
    """:func:`markdown_text` for the text of a ``#`` heading: ``#`` is escaped as well (a trailing
    ``#`` would close the heading)."""
    return markdown_text(text).replace("#", "\\#")


def latex(text: object) -> str:
    """``text`` as LaTeX text: one line (a newline or blank line, a paragraph break inside a
    ``\\caption``, becomes a space), the special characters ``\\ { } $ & % # _ ^ ~`` escaped (no
    command such as ``\\input``, no group, math, table cell or ``^^`` character code from data), ``< >
    |`` as their text commands and ``[ ]`` braced (never read as the optional argument of a ``\\\\``
    or ``\\midrule`` before them)."""
    return "".join(_LATEX_SPECIAL.get(c, c) for c in one_line(text))


def csv_cell(value: object) -> object:
    """A CSV cell a spreadsheet never runs: a string starting with ``= + - @``, a tab or a carriage
    return gets a leading apostrophe (the OWASP rule for CSV injection); anything else, numbers
    included, is returned unchanged."""
    if isinstance(value, str) and value.startswith(CSV_FORMULA_START):
        return "'" + value
    return value


def _csv_string(value: object) -> object:
    return csv_cell(one_line(value)) if isinstance(value, str) else value


def csv_frame(frame):
    """A copy of a pandas DataFrame for ``to_csv``: every string cell and column name made one line
    (:func:`one_line`: pandas does not quote a lone carriage return, which a spreadsheet reads as a
    new row) and then :func:`csv_cell`; numeric and boolean columns untouched."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    out = frame.copy()
    for column in out.columns:
        if not (is_numeric_dtype(out[column]) or is_bool_dtype(out[column])):
            out[column] = out[column].map(_csv_string).astype(object)
    out.columns = [_csv_string(c) for c in out.columns]
    return out


def mathtext(text: object) -> str:
    """``text`` for a matplotlib text object (title, legend entry, tick label, annotation): one line,
    every ``$`` escaped, so matplotlib never parses it as mathtext (``$\\x$`` would raise at draw
    time); matplotlib shows ``\\$`` as ``$``."""
    return one_line(text).replace("$", "\\$")
