"""Errors the user fixes (a config value, a path, the data), as opposed to bugs.

Entry points print a UserError as one line on stderr and exit with code 2 (SSAMBA_TRACEBACK=1 shows
the traceback instead); any other exception keeps its traceback. UserError is a ValueError and
MissingInput also a FileNotFoundError, so library callers may catch either as before.
"""

from __future__ import annotations

import sys


class UserError(ValueError):
    """A setting or an input that the user must change; the message says how."""


class MissingInput(UserError, FileNotFoundError):
    """A file or folder the user named, or must prepare, is not there; the message says how to get it."""


def report(e: UserError) -> int:
    """Print e as one line and return the exit code for user errors."""
    print(f"error: {e}", file=sys.stderr)
    return 2
