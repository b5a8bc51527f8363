"""User-facing errors.

A :class:`UserError` is bad input (a config key, a file, a parameter): the CLI prints its
message on one line and exits with code 2. Anything else that escapes is a bug and keeps its
traceback.
"""


class UserError(Exception):
    """Bad input from the user. The message names the offending key or file."""

    exit_code = 2
