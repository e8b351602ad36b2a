"""User-facing errors: the CLI prints them as one line, without a traceback."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

#: Write failures for want of room or rights on the output's file system (not a fault of any input).
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
_ERRNO_IN_TEXT = re.compile(r"errno (\d+)", re.IGNORECASE)  # pyarrow and zarr codecs only quote it


class InputError(ValueError):
    """Bad input from the user (a file, a parameter); the message names the file and the problem."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")

    def __reduce__(self):  # rebuilt from (path, problem) when it travels back from a Dask worker
        return type(self), (self.path, self.problem)


def write_failure(exc: BaseException) -> str | None:
    """Why writing failed when ``exc`` (or what caused it) is a full disk, a quota, a file-size limit or a
    read-only file system, e.g. "No space left on device"; None for any other error."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError):
            code = exc.errno
            if code is None:
                found = _ERRNO_IN_TEXT.search(str(exc))
                code = int(found.group(1)) if found else None
            if code in _WRITE_ERRNOS:
                return os.strerror(code)
        exc = exc.__cause__ or exc.__context__
    return None
