"""The safe readers every dataset loader reads its files through, and the file checks they share.

:func:`read_list` (newline-stripped lines; pitfall P13), :func:`read_unique_names`,
:func:`load_json`, :func:`parse_xml` (no DOCTYPE / ENTITY), with :func:`reading` as the safety
net around each file's checks, and :func:`require_images` for image files. Whatever is wrong with
a file (missing, a folder, not UTF-8, empty, truncated, nested past the recursion limit, a missing
or mistyped key, an overlong line...) is one :class:`UserError` line naming the file and the fix.
"""
from __future__ import annotations

import gc
import json
import os
import re
import reprlib
import stat
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from xml.parsers import expat
from xml.parsers.expat import ExpatError

from benchmark.core.errors import UserError
from datasets.base import LabelSet

# ----------------------------------------------------------------------------- safe readers
# Every dataset file is read through these: any parse, type or structure error becomes one
# UserError line naming the file (and the entry) and the fix, never a traceback.
MAX_LINE = 4096            # characters in one line of a list file (far above any real path or name)
MAX_NAME = 255             # bytes in one path component (NAME_MAX)
MAX_FILE = 4 << 30         # bytes in one annotation file (instances_train2014.json is about 0.45 GB)
NOT_FOUND_FIX = "check --data-root (run `prepare` to see the expected layout)"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")      # in a text file (TAB, CR, LF allowed)
_NAME_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")        # in one name
_LONG_LINE = re.compile(r"[^\n\r]{%d,}" % (MAX_LINE + 1))
_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict = 60, 60, 3, 6, 4
NET = (ArithmeticError, AssertionError, AttributeError, LookupError, OSError, SyntaxError, TypeError,
       ValueError, ExpatError, MemoryError, RecursionError)   # what a malformed file can raise in a parser


def shown(value) -> str:
    """A short one-line rendering of a value read from a file, for a message."""
    try:
        text = _SHORT.repr(value)
    except Exception:  # a value whose repr fails is still named by its type
        text = f"<{type(value).__name__}>"
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def json_type(value) -> str:
    """The JSON name of a parsed value's type (object, array, string, number, boolean, null)."""
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def squeeze(text, limit: int = 160) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def path_kind(path: Path) -> str | None:
    """``file``, ``folder``, ``special file`` or None (absent or not even stat-able)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return "folder" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "special file"


def is_file(path: Path) -> bool:
    """Whether ``path`` is a regular file (links followed); False, never an error, for any odd path."""
    return path_kind(path) == "file"


def layout_problem(kind: str, path: Path) -> str | None:
    """``missing file X`` / ``X is a folder, not a file`` (None when ``path`` is a ``kind``)."""
    found = path_kind(path)
    if found == kind:
        return None
    if found is None:
        return f"missing {kind} {path}"
    if found == "special file":
        return f"{path} is not a {kind} (a FIFO, socket or device is there)"
    return f"{path} is a {found}, not a {kind}"


def bad_name(text: str, *, absolute_ok: bool = False, subfolders: bool = True) -> str | None:
    """Why ``text`` (read from a list or annotation file) cannot name a file under the dataset
    folder, or None when it can: empty, control characters, not encodable, too long, absolute,
    a ``..`` component, a path component over 255 bytes."""
    problem = _text_problem(text)
    if problem:
        return problem
    raw = text.encode("utf-8")
    if len(raw) > MAX_LINE:
        return f"is {len(raw):,} bytes long"
    parts = text.replace("\\", "/").split("/")
    if not subfolders and len(parts) > 1:
        return "holds a path separator"
    if not absolute_ok and (text.startswith(("/", "\\")) or (len(text) > 1 and text[1] == ":")):
        return "is an absolute path"
    if ".." in parts:
        return "climbs out of the dataset folder ('..')"
    if any(len(part.encode()) > MAX_NAME for part in parts):
        return f"has a path component longer than {MAX_NAME} bytes"
    return None


def bad_class_name(name) -> str | None:
    """Why ``name`` cannot be a class name (None when it can)."""
    problem = _text_problem(name)
    if problem:
        return problem
    return f"is {len(name):,} characters long" if len(name) > MAX_LINE else None


def _text_problem(text) -> str | None:
    """What every name read from a dataset file must be: a non-empty string without control
    characters that encodes as UTF-8 (None when it is)."""
    if not isinstance(text, str):
        return f"is a JSON {json_type(text)}, not a string"
    if not text.strip():
        return "is empty"
    if _NAME_CONTROL.search(text):
        return "holds a control character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "holds a character that is not valid Unicode"
    return None


@contextmanager
def reading(path: Path, what: str, fix: str):
    """Inside, any error a malformed file can raise in a parser (KeyError, TypeError, ValueError,
    IndexError, RecursionError, UnicodeError, OSError, XML errors...) becomes one UserError naming
    ``path``; a UserError passes through unchanged. The safety net behind the explicit checks."""
    try:
        yield
    except UserError:
        raise
    except RecursionError:
        raise UserError(f"{what} {path} is nested too deeply to read (Python's recursion limit); {fix}") from None
    except MemoryError:
        raise UserError(f"{what} {path} is too large to read into memory; {fix}") from None
    except NET as exc:
        raise UserError(f"{what} {path} is malformed ({type(exc).__name__}: {squeeze(exc, 100)}); {fix}") from None


def read_data_bytes(path: Path, what: str, fix: str, max_bytes: int = MAX_FILE) -> bytes:
    """The bytes of a regular file, or one UserError naming it: missing, a folder, a special file
    (a FIFO is never opened), unreadable, larger than ``max_bytes``."""
    path = Path(path)
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise UserError(f"{what} {path} is a folder, not a file; {fix}")
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{what} {path} is not a regular file; {fix}")
        if info.st_size > max_bytes:
            raise UserError(f"{what} {path} is {info.st_size:,} bytes, more than any real one ({max_bytes:,}); {fix}")
        with open(path, "rb") as fh:
            return fh.read(max_bytes + 1)
    except FileNotFoundError:
        raise UserError(f"{what} {path} not found; {NOT_FOUND_FIX}") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a folder, not a file; {fix}") from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else squeeze(exc, 80)
        raise UserError(f"{what} {path} cannot be read ({reason}); {fix}") from None
    except MemoryError:
        raise UserError(f"{what} {path} is too large to read into memory; {fix}") from None


def decode_text(data: bytes, path: Path, what: str, fix: str) -> str:
    """UTF-8 text (a leading byte-order mark allowed), or one UserError naming the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                        f"{exc.start:,}); {fix}") from None


def read_data_text(path: Path, what: str, fix: str) -> str:
    return decode_text(read_data_bytes(path, what, fix), Path(path), what, fix)


def load_json(path: Path, what: str, fix: str, *, unique_keys: bool = False):
    """A parsed JSON file, or one UserError naming it: unreadable, not UTF-8, empty, truncated or
    otherwise invalid JSON, nested past the recursion limit, a repeated key (``unique_keys``)."""
    path = Path(path)
    text = read_data_text(path, what, fix)
    if not text.strip():
        raise UserError(f"{what} {path} is empty; {fix}")

    def pairs(items):
        result = dict(items)
        if len(result) != len(items):
            seen = set()
            key = next(k for k, _ in items if k in seen or seen.add(k))
            raise UserError(f"{what} {path} repeats the key {shown(key)}; each key must appear once ({fix})")
        return result

    collect = gc.isenabled()
    gc.disable()                    # a large file builds millions of objects: no collection passes meanwhile
    try:
        return json.loads(text, object_pairs_hook=pairs if unique_keys else None)
    except RecursionError:
        raise UserError(f"{what} {path} is nested too deeply to read (the JSON parser hit Python's "
                        f"recursion limit); {fix}") from None
    except json.JSONDecodeError as exc:
        where = "the file ends early (truncated)" if exc.pos >= len(text.rstrip()) else \
            f"line {exc.lineno} column {exc.colno}"
        raise UserError(f"{what} {path} is not valid JSON ({exc.msg}: {where}); {fix}") from None
    except ValueError as exc:  # e.g. an integer longer than Python's digit limit
        raise UserError(f"{what} {path} is not valid JSON ({squeeze(exc, 100)}); {fix}") from None
    except MemoryError:
        raise UserError(f"{what} {path} is too large to read into memory; {fix}") from None
    finally:
        if collect:
            gc.enable()


def parse_xml(path: Path, what: str, fix: str) -> ET.Element:
    """The root element of an XML file, parsed by expat without any DOCTYPE or ENTITY declaration
    (refused before they act: no entity expansion, no external entity), or one UserError."""
    path = Path(path)
    data = read_data_bytes(path, what, fix)

    class Refused(Exception):
        pass

    def refuse(*_):
        raise Refused

    builder = ET.TreeBuilder()
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
        return builder.close()
    except Refused:
        raise UserError(f"{what} {path} declares a DOCTYPE or ENTITY, which is refused (entities can expand "
                        f"without bound or read other files; real annotations have none); {fix}") from None
    except ExpatError as exc:
        raise UserError(f"{what} {path} is not well-formed XML ({squeeze(exc, 100)}); {fix}") from None
    except RecursionError:
        raise UserError(f"{what} {path} is nested too deeply to read (Python's recursion limit); {fix}") from None
    except (AssertionError, ValueError, TypeError) as exc:
        raise UserError(f"{what} {path} is not well-formed XML ({squeeze(exc, 100)}); {fix}") from None


# ----------------------------------------------------------------------------- shared file checks
@dataclass
class ListFile:
    """The non-blank lines of a text list file, newline characters (``\\n``, ``\\r\\n``) removed."""

    path: Path
    lines: list[str]
    unterminated: bool  # the last line has no final newline (the HCP code would cut its last character)
    numbers: list[int] | None = None  # the 1-based line number of each entry (None: entry i is on line i + 1)

    def number(self, i: int) -> int:
        """The line number of entry ``i`` in the file, for messages."""
        return self.numbers[i] if self.numbers is not None else i + 1


def read_unique_names(path: Path, what: str, holds: str, fix: str, check=None) -> list[str]:
    """The names of a list file, one per line, stripped: each passes ``check`` (default: a usable
    class name) and none appears twice; otherwise one UserError naming the file and the line."""
    check = check or bad_class_name
    listing = read_list(path, what, holds, fix, item="class")
    names, first = [], {}
    for i, line in enumerate(listing.lines):
        name = line.strip()
        problem = check(name)
        if problem:
            raise UserError(f"{what} {path} line {listing.number(i)}: {shown(name)} {problem}; the file must hold "
                            f"{holds} ({fix})")
        if name in first:
            raise UserError(f"{what} {path} repeats a name ({shown(name)} on lines {first[name]} and "
                            f"{listing.number(i)}); the file must hold {holds}, each once ({fix})")
        first[name] = listing.number(i)
        names.append(name)
    return names


def read_list(path: Path, what: str, holds: str = "one entry per line", fix: str = "re-download or regenerate it",
              *, item: str = "entry") -> ListFile:
    """Read a list file line by line, stripping only the newline (never a real character).

    One UserError naming the file (and the line) for a file that is missing, a folder, not UTF-8,
    empty (it lists no ``item``), or has a line longer than :data:`MAX_LINE` or a control character.
    """
    path = Path(path)
    text = read_data_text(path, what, fix)
    must = f"the file must hold {holds}"
    for pattern, problem in ((_CONTROL, "holds a control character"), (_LONG_LINE, "is too long")):
        found = pattern.search(text)
        if found:
            number = text.count("\n", 0, found.start()) + 1
            size = f" ({len(found.group()):,} characters)" if pattern is _LONG_LINE else f" ({shown(found.group())})"
            raise UserError(f"{what} {path} line {number} {problem}{size}; {must} ({fix})")
    raw = [line.rstrip("\r") for line in text.split("\n")]
    lines = [line for line in raw if line.strip()]
    if not lines:
        raise UserError(f"{what} {path} is empty: it lists no {item}; {must} ({fix})")
    trailing = len(raw) - 1 if not raw[-1].strip() else len(raw)
    numbers = None if len(lines) == trailing else \
        [n for n, line in enumerate(raw, 1) if line.strip()]
    return ListFile(path, lines, bool(text) and not text.endswith("\n"), numbers)


def missing_files(paths: list[Path]) -> list[Path]:
    """The paths that are not regular files."""
    return [p for p in paths if not is_file(Path(p))]


def unreadable_images(paths: list[Path]) -> list[tuple[Path, str]]:
    """(path, reason) for existing files that PIL cannot identify or that fail ``verify()``."""
    from PIL import Image, UnidentifiedImageError

    from benchmark.core import progress

    bad = []
    for path in progress.bar(paths, desc="verifying images", unit="img", disable=len(paths) < 2000, leave=False):
        try:
            with Image.open(path) as img:
                img.verify()
        except FileNotFoundError:
            continue
        except UnidentifiedImageError:
            bad.append((Path(path), "not an image file"))
        except Exception as exc:  # PIL raises many types for corrupt files
            bad.append((Path(path), f"{type(exc).__name__}: {str(exc).replace(str(path), '')[:80]}"))
    return bad


def require_images(labelset: LabelSet, where: str, verify: bool) -> None:
    """Raise a one-line UserError if an image of ``labelset`` is missing (or, with ``verify``, unreadable)."""
    paths = list(labelset.image_paths)
    missing = missing_files(paths)
    if missing:
        raise UserError(f"{len(missing)} of {len(paths)} images listed in {where} are missing, first: "
                        f"{missing[0]}; check --data-root and the image folder")
    bad = unreadable_images(paths) if verify else []
    if bad:
        raise UserError(f"{len(bad)} of {len(paths)} images listed in {where} are not readable images, first: "
                        f"{bad[0][0]} ({bad[0][1]}); re-download them")


def count_note(what: str, found: tuple, standard: tuple, source: str) -> list[str]:
    """A note when (train, test) counts differ from the standard ones (nothing when they match)."""
    if tuple(found) == tuple(standard):
        return []
    return [f"{what} train/test = {found[0]:,}/{found[1]:,}, not the standard {standard[0]:,}/{standard[1]:,} "
            f"({source}); fine for a subset, check the download otherwise"]


def layout_error(problems: list[str], layout: str) -> UserError:
    """One line for a loader: the first layout problem, how many more, and the expected layout."""
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return UserError(f"{problems[0]}{more}; expected layout: {layout}")
