"""Write a directory under a temporary sibling name and move it into place only when complete."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sparseseg.errors import InputError


@contextmanager
def staged_directory(dst: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``dst``; on success it replaces ``dst``, on error it is removed.

    An interrupted write therefore never leaves something at ``dst`` that looks complete, and an
    existing ``dst`` (with ``overwrite``) is only removed after its replacement is fully written.
    """
    dst = Path(dst).absolute()
    if dst.exists() and not overwrite:
        raise InputError(dst, "already exists (use --overwrite to replace it)")
    if not dst.parent.is_dir():
        raise InputError(dst, f"parent directory {dst.parent} does not exist")
    token = uuid.uuid4().hex[:8]
    tmp = dst.with_name(f".{dst.name}.partial-{token}")
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dst.exists():
        trash = dst.with_name(f".{dst.name}.old-{token}")
        os.replace(dst, trash)
        os.replace(tmp, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, dst)
