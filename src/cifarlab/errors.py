"""The error base class for problems a user can fix.

The CLI prints these as one line (no traceback) and exits with status 2; the message must say
what was wrong, name the file or value, and say how to fix it.
"""


class CifarlabError(Exception):
    """A user-fixable problem; `str(err)` is the whole message."""

    user_facing = True
