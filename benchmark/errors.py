"""User-facing errors.

A :class:`UserError` carries one line that names the problem and the fix. The CLI prints it
without a traceback and exits with status 2; nothing already computed is touched.
"""


class UserError(Exception):
    """Bad input from the user (a path, a name, a value); the message says how to fix it."""
