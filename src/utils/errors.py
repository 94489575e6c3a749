"""User errors: problems fixed by changing a config, a path or the data. Entry points print them
as one line (exit code 2) instead of a traceback."""

from __future__ import annotations

import sys

USER_ERRORS = (FileNotFoundError, ValueError)


def user_error(e: Exception) -> int:
    print(f"error: {e}", file=sys.stderr)
    return 2
