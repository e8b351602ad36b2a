"""User-facing errors: the CLI prints them as one line, without a traceback."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad input from the user (a file, a parameter); the message names the file and the problem."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")

    def __reduce__(self):  # rebuilt from (path, problem) when it travels back from a Dask worker
        return type(self), (self.path, self.problem)
