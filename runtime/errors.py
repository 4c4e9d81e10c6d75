"""The one exception type for user mistakes; CLIs print its message and exit non-zero."""


class OffsegError(Exception):
    """A mistake the user can fix: the message says what was wrong and what to do."""
