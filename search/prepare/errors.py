"""The one error type for bad command-line input or options: its message is one line for the user."""


class UsageError(ValueError):
    """Raised before any trial starts for an unusable option (unknown space, unreachable URI, ...).

    ``str(err)`` is a single line naming the option and what was expected; entry points print it and
    exit with a non-zero code instead of showing a stack trace.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
