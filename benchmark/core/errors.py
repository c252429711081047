"""User-facing errors.

A :class:`UserError` carries one line that names the problem and the fix. The CLI prints it
without a traceback and exits with status 2; nothing already computed is touched.
"""


class UserError(Exception):
    """Bad input from the user (a path, a name, a value); the message says how to fix it."""


def one_line(exc: BaseException) -> str:
    """The message of an error as one line. A UserError raised in a DataLoader worker comes back
    wrapped in the worker's traceback; its own message is the last line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    last = lines[-1]
    prefix = f"{UserError.__module__}.{UserError.__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else (last if len(lines) > 1 and "Traceback" in str(exc)
                                                               else " ".join(lines))
