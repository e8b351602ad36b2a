"""Slide archives: discover slides, and remember which were processed with which settings.

A slide counts as done when its output folder holds a completion marker whose fingerprint (the
slide's path, size and mtime, the model's path and mtime, the parameters and the sparseseg
version) matches the current run; anything else is processed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from sparseseg import __version__
from sparseseg.io.names import SLIDE_SUFFIXES
MARKER = ".sparseseg-complete.json"


def discover_slides(input_dir: str | Path) -> list[Path]:
    """Slide files (SVS/TIFF) and OME-Zarr folders directly inside ``input_dir``, sorted by name."""
    input_dir = Path(input_dir)
    found = [p for p in input_dir.iterdir()
             if (p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES)
             or (p.is_dir() and p.name.endswith((".ome.zarr", ".zarr")))]
    return sorted(found)


def fingerprint(slide: Path, model: Path, params: dict[str, Any]) -> str:
    stat = slide.stat()
    payload = {"slide": str(slide.resolve()), "size": stat.st_size, "mtime": stat.st_mtime_ns,
               "model": str(Path(model).resolve()), "model_mtime": Path(model).stat().st_mtime_ns,
               "params": params, "version": __version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def is_done(output: Path, print_: str) -> bool:
    marker = Path(output) / MARKER
    try:
        return json.loads(marker.read_text())["fingerprint"] == print_
    except (OSError, ValueError, KeyError):
        return False


def mark_done(output: Path, print_: str, summary: dict[str, Any]) -> None:
    """Write the marker atomically, last: a crash before it means the slide is redone."""
    marker = Path(output) / MARKER
    tmp = marker.with_name(marker.name + ".partial")
    tmp.write_text(json.dumps({"fingerprint": print_, **summary}, indent=2, default=str))
    os.replace(tmp, marker)
