"""Escaping of strings for the formats the suite writes by hand (Markdown table cells)."""
from __future__ import annotations

import html

_MARKDOWN_SPECIAL = str.maketrans({"|": "\\|", "`": "\\`", "*": "\\*", "_": "\\_", "[": "\\[", "]": "\\]"})


def markdown_cell(text: object) -> str:
    """``text`` as one Markdown table cell: one line, HTML characters as entities (no live markup),
    the characters that make tables, code, emphasis or links escaped."""
    flat = " ".join(str(text).split())
    return html.escape(flat, quote=False).translate(_MARKDOWN_SPECIAL)
