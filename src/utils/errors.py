"""Errors the user fixes (a config value, a path, the data), as opposed to bugs.

Every command prints a UserError as one line on stderr and exits with code 2 (SSAMBA_TRACEBACK=1 shows
the traceback instead); any other exception keeps its traceback. `command` wraps an argparse main,
utils.user_errors_exit a Hydra one; both ask `traceback_wanted`. UserError is a ValueError and
MissingInput also a FileNotFoundError, so library callers may catch either as before.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable


class UserError(ValueError):
    """A setting or an input that the user must change; the message says how."""


class MissingInput(UserError, FileNotFoundError):
    """A file or folder the user named, or must prepare, is not there; the message says how to get it."""


def report(e: UserError) -> int:
    """Print e as one line and return the exit code for user errors."""
    print(f"error: {e}", file=sys.stderr)
    return 2


def traceback_wanted() -> bool:
    """SSAMBA_TRACEBACK=1: user errors keep their traceback (for debugging the project itself)."""
    return os.environ.get("SSAMBA_TRACEBACK", "") not in ("", "0")


def command(main: Callable[..., int]) -> Callable[..., int]:
    """For a command's main(argv) -> exit code: a UserError raised anywhere in it is printed as one
    line and gives exit code 2, unless traceback_wanted()."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except UserError as e:
            if traceback_wanted():
                raise
            return report(e)

    return wrapped
