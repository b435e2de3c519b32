"""User-facing errors: one line that names the thing and the problem."""


class MeetError(Exception):
    """An error caused by input or environment, shown to the user as one line (no traceback)."""
