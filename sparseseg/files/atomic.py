"""Write a directory or file under a temporary sibling name and move it into place only when complete.

Temporary names are unique to each run (``.NAME.partial-<token>``), so two runs never share one.
Leftovers of a run that was killed (its partial or old siblings) are removed by the next run on the
same output, which holds the output's writer lock (``files.lock``) while it does so.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sparseseg.errors import InputError, write_failure

log = logging.getLogger(__name__)


def check_output_file(out: Path, overwrite: bool = False, example: str = "cells.geojson.gz") -> Path:
    """``out`` if a file can be written there: not a folder or a device, pipe or other non-regular file; an existing
    file only with ``overwrite``; in a folder that exists and is writable."""
    out = Path(out)
    if out.is_dir():
        raise InputError(out, f"is a folder; give the file to write (e.g. {example})")
    refuse_special_file(out)
    if out.exists() and not overwrite:
        raise InputError(out, "already exists (use --overwrite to replace it)")
    if not out.parent.is_dir():
        raise InputError(out, f"folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK):
        raise InputError(out, f"folder {out.parent} is not writable")
    return out


def refuse_special_file(out: Path) -> None:
    """Refuse an output path holding a device, pipe or socket: a staged write renames a new file onto the path,
    which would replace the node (run as root, ``--out /dev/full`` once became a regular file)."""
    if out.exists() and not out.is_dir() and not out.is_file():
        raise InputError(out, "is not a regular file (a device, pipe or socket); the output is written to a new file "
                              "and renamed into place, which would replace it")


def remove_leftovers(dst: Path) -> list[str]:
    """Remove ``.NAME.partial-*`` / ``.NAME.old-*`` siblings of ``dst`` left by killed runs; returns their names.

    Call it only while holding ``dst``'s writer lock: a live run's partial output has such a name too.
    """
    dst = Path(dst).absolute()
    removed = []
    if not dst.parent.is_dir():
        return removed
    for sibling in dst.parent.iterdir():
        if sibling.name.startswith((f".{dst.name}.partial", f".{dst.name}.old-")):
            shutil.rmtree(sibling) if sibling.is_dir() and not sibling.is_symlink() else sibling.unlink()
            removed.append(sibling.name)
    if removed:
        log.warning("removed leftovers of an interrupted run next to %s: %s", dst, ", ".join(sorted(removed)))
    return removed


def temporary_sibling(dst: Path, kind: str = "partial") -> Path:
    """A fresh hidden sibling name of ``dst``, unique to this call."""
    dst = Path(dst).absolute()
    return dst.with_name(f".{dst.name}.{kind}-{uuid.uuid4().hex[:8]}{''.join(dst.suffixes[-1:])}")


def _refuse_if_out_of_room(dst: Path, exc: BaseException) -> None:
    """A full disk (quota, size limit, read-only) becomes one line naming the output, not the input."""
    reason = write_failure(exc)
    if reason:
        raise InputError(dst, f"cannot be written: {reason} (nothing was kept, nothing existing was replaced)"
                         ) from exc


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


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
    tmp = temporary_sibling(dst)
    try:
        yield tmp
    except BaseException as exc:
        _remove(tmp)
        _refuse_if_out_of_room(dst, exc)
        raise
    if dst.exists():
        trash = temporary_sibling(dst, "old")
        os.replace(dst, trash)
        os.replace(tmp, dst)
        _remove(trash)
    else:
        os.replace(tmp, dst)


@contextmanager
def staged_file(dst: Path) -> Iterator[Path]:
    """Yield a unique temporary sibling file of ``dst``; renamed to ``dst`` on success, removed on error."""
    dst = Path(dst).absolute()
    refuse_special_file(dst)
    tmp = temporary_sibling(dst)
    try:
        yield tmp
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _refuse_if_out_of_room(dst, exc)
        raise
    os.replace(tmp, dst)


@contextmanager
def staged_outputs(folder: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success its files move into ``folder`` (created if needed,
    other files in it kept), on error it is removed and ``folder`` is untouched (not even created)."""
    folder = Path(folder).absolute()
    tmp = temporary_sibling(folder)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _refuse_if_out_of_room(folder, exc)
        raise
    items = sorted(tmp.iterdir())
    try:
        for item in items:  # all checked before any moves: a refusal leaves the folder as it was
            refuse_special_file(folder / item.name)
    except InputError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    folder.mkdir(exist_ok=True)
    for item in items:
        target = folder / item.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(item, target)
    tmp.rmdir()
