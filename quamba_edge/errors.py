"""One exception type for every user-facing failure, so the CLI can print it without a traceback."""


class QuambaEdgeError(Exception):
    """A problem the user can fix; the message says what went wrong and how to fix it."""
