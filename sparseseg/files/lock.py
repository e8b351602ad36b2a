"""One writer at a time per slide (or output): an exclusive, non-blocking lock held for the whole command.

``writer_lock(target)`` takes an ``flock`` on a lock file: ``target/.sparseseg.lock`` for a slide
written in place, a hidden sibling ``.NAME.sparseseg.lock`` for an output that is replaced by a
rename (``inside=False``: ingest's DST, a checkpoint, an export). A second command writing into the same
target fails at once with a message naming the holder. The kernel releases the lock when its
holder dies (kill -9 included), so a crashed run never blocks the next one; the lock file is
removed on release.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sparseseg.errors import InputError


def lock_path(target: Path, inside: bool = True) -> Path:
    target = Path(target).absolute()
    return target / ".sparseseg.lock" if inside and target.is_dir() else target.with_name(f".{target.name}.sparseseg.lock")


@contextmanager
def writer_lock(target: str | Path, command: str, inside: bool = True) -> Iterator[None]:
    """Hold the write lock of ``target`` while the block runs; InputError if another command holds it."""
    path = lock_path(Path(target), inside)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(target, f"cannot create the lock file {path.name} ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise InputError(target, f"another sparseseg command ({holder}) is writing into it; wait for it to "
                                     "finish (or run on a copy)") from None
        # the file may have been removed (its holder released it) between our open and our lock: retry on the new one
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"command": command, "pid": os.getpid(), "host": socket.gethostname()}).encode())
        yield
    finally:
        try:
            os.unlink(path)
        finally:
            os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"{info.get('command', '?')}, pid {info.get('pid', '?')} on {info.get('host', '?')}"
    except (OSError, ValueError):
        return "unknown holder"
