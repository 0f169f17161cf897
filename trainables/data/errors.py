"""One error type for bad input: its message is a single line naming the file/field and the problem."""


class DataError(ValueError):
    """Raised for malformed or unusable input data. ``str(err)`` is one line, meant for the user."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = str(where)
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.where}: {self.problem}")
