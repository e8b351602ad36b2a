"""Ingest a slide into an OME-Zarr pyramid (+ a tissue mask label), streaming block by block.

Level 0 is copied from the source; every coarser level is the 2x2 mean of the previous level as
written on disk, so peak memory depends on the chunk size and thread count, not the slide size.
Everything is written under a temporary sibling and moved to DST only when complete.
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import zarr

from sparseseg.errors import InputError, write_failure
from sparseseg import __version__
from sparseseg.files.atomic import remove_leftovers, staged_directory
from sparseseg.files.lock import writer_lock
from sparseseg.io.labels import write_label_levels
from sparseseg.io.ngff import create_level_array, omero_block, write_image_metadata, write_label_metadata, zarr_format_of
from sparseseg.io.detect import open_slide
from sparseseg.io.slide import Slide, check_finite
from sparseseg.progress import TqdmDaskProgress
from sparseseg.pyramid import downsample_mean_2x, level_factors, pyramid_shapes
from sparseseg.tissue import choose_mask_level, resample_mask_block, resolve_mode, tissue_mask

log = logging.getLogger(__name__)

TISSUE_COLOUR = [{"label-value": 1, "rgba": [0, 200, 0, 96]}]


def _store(source: da.Array, target: zarr.Array, description: str, progress: bool, pool) -> None:
    """Stream ``source`` into ``target``; dask chunks must align with zarr chunks (one writer per chunk)."""
    with TqdmDaskProgress(description, enabled=progress):
        da.store(source.rechunk(target.chunks), target, lock=False, scheduler="threads", pool=pool)


def _display_windows(level: np.ndarray) -> list[tuple[float, float]]:
    """Per-channel 0.1/99.9 percentile display window from a small level."""
    flat = level.reshape(level.shape[0], -1).astype(np.float64)
    lo, hi = np.percentile(flat, [0.1, 99.9], axis=1)
    return [(float(a), float(max(b, a + 1e-6))) for a, b in zip(lo, hi)]


def write_image_pyramid(slide: Slide, group: zarr.Group, ngff: str, chunk: int,
                        progress: bool = False, pool=None) -> list[zarr.Array]:
    """Write level 0 from ``slide`` and each coarser level from the previous written one."""
    shapes = pyramid_shapes(slide.shape[1:], chunk)
    n_channels, dtype = slide.n_channels, slide.dtype
    arrays: list[zarr.Array] = []
    for level, shape in enumerate(shapes):
        target = create_level_array(group, str(level), (n_channels, *shape), (n_channels, chunk, chunk),
                                    dtype, ("c", "y", "x"), write_empty=True)
        if level == 0:
            source = slide.levels[0]
            if np.issubdtype(dtype, np.floating):  # NaN or infinite pixels: an error, never silent garbage
                source = source.map_blocks(_finite, slide.path, dtype=dtype)
        else:  # read 2x2 written chunks per output chunk: no rechunk between the two levels
            source = downsample_mean_2x(da.from_zarr(arrays[-1], chunks=(n_channels, 2 * chunk, 2 * chunk)))
        _store(source, target, f"level {level} {shape[0]}x{shape[1]}", progress, pool)
        arrays.append(target)
    windows = _display_windows(arrays[-1][...])
    write_image_metadata(group, ngff, name=slide.path.name, n_levels=len(shapes),
                         pixel_size_um=slide.pixel_size_um, level_factors=level_factors(shapes),
                         omero=omero_block(slide.channel_names, dtype, windows))
    return arrays


def _finite(block: np.ndarray, path: Path) -> np.ndarray:
    check_finite(path, block)
    return block


def write_tissue_labels(group: zarr.Group, arrays: list[zarr.Array], ngff: str, mode: str,
                        pixel_size_um: tuple[float, float] | None, chunk: int, pool=None) -> float:
    """Detect tissue at a low level and write ``labels/tissue`` with one level per image level.

    Returns the fraction of the image covered by tissue.
    """
    shapes = [a.shape[1:] for a in arrays]
    factors = level_factors(shapes)
    sizes_um = [(pixel_size_um[1] if pixel_size_um else 0.5) * f[1] for f in factors]
    mask_level = choose_mask_level(sizes_um)
    mask = tissue_mask(da.from_zarr(arrays[mask_level]), mode, sizes_um[mask_level], scheduler="threads", pool=pool)
    write_label_levels(group.require_group("labels").require_group("tissue"), ngff, "tissue", shapes, chunk,
                       pixel_size_um, TissueLevel0(mask, mask_level), np.uint8,
                       f"{mode} Otsu at level {mask_level}, nearest-neighbour resampling", scheduler="threads",
                       pool=pool)
    write_label_metadata(group, ngff, "tissue", colors=TISSUE_COLOUR,
                         properties=[{"label-value": 1, "class": "tissue"}])
    return float(mask.mean())


@dataclass(frozen=True)
class TissueLevel0:
    """Level-0 windows of a low-resolution tissue mask (nearest neighbour)."""

    mask: np.ndarray
    level: int

    def __call__(self, window: tuple[slice, slice]) -> np.ndarray:
        rows, cols = window
        return resample_mask_block(self.mask, -self.level, (rows.stop - rows.start, cols.stop - cols.start),
                                   rows.start, cols.start)


def check_replaceable(dst: Path, src: Path) -> None:
    """--overwrite replaces only an OME-Zarr that ``ingest`` wrote, and never one holding the source."""
    if not dst.exists():
        return
    if not dst.is_dir():
        raise InputError(dst, "exists and is a file, not a slide written by `sparseseg ingest`; remove it or "
                              "choose another DST")
    src_abs, dst_abs = src.absolute(), dst.absolute()
    if dst_abs in src_abs.parents:
        raise InputError(dst, f"holds the source {src}: refusing to replace it")
    try:
        written_here = "ingest" in dict(zarr.open_group(dst, mode="r").attrs).get("sparseseg", {})
    except Exception:  # not a zarr group at all
        written_here = False
    if not written_here:
        raise InputError(dst, "exists and is not a slide written by `sparseseg ingest`; --overwrite only replaces "
                              "those (remove it yourself, or choose another DST)")


def ingest(src: str | Path, dst: str | Path, *, ngff: str = "0.4", pixel_size_um: float | None = None,
           chunk: int = 1024, tissue: str = "auto", overwrite: bool = False, progress: bool = False,
           fill_missing: bool = False, reader: str = "auto") -> Path:
    """Convert ``src`` (SVS, TIFF, PNG/JPEG or OME-Zarr) into an OME-Zarr pyramid at ``dst``.

    One ingest at a time per DST; ``overwrite`` replaces only a slide ``ingest`` wrote, and only once
    the new one is complete. Float pixels that are NaN or infinite are refused.
    """
    src, dst = Path(src), Path(dst)
    if chunk < 64 or chunk % 16:
        raise InputError(None, f"--chunk must be a multiple of 16 and >= 64, got {chunk}")
    if pixel_size_um is not None and not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise InputError(None, f"--pixel-size must be a finite number > 0, got {pixel_size_um}")
    slide = open_slide(src, chunk=chunk, fill_missing=fill_missing, reader=reader).with_pixel_size(pixel_size_um)
    if dst.absolute() == src.absolute():
        raise InputError(dst, "destination is the source itself")
    if dst.exists() and not overwrite:
        raise InputError(dst, "already exists (use --overwrite to replace it)")
    if overwrite:
        check_replaceable(dst, src)
    if not dst.absolute().parent.is_dir():
        raise InputError(dst, f"parent directory {dst.absolute().parent} does not exist")
    mode = resolve_mode(tissue, slide.n_channels, slide.dtype)
    # A private thread pool, passed to every compute (never set globally: flows ingest slides in
    # parallel threads): on failure, leaving the ``with`` waits for in-flight block writes, so the
    # staging directory is removed only after nothing can write into it any more.
    with writer_lock(dst, "ingest", inside=False):
        remove_leftovers(dst)
        with staged_directory(dst, overwrite=overwrite) as tmp, ThreadPoolExecutor(os.cpu_count()) as pool:
            group = zarr.open_group(tmp, mode="w", zarr_format=zarr_format_of(ngff))
            try:
                arrays = write_image_pyramid(slide, group, ngff, chunk, progress, pool)
            except InputError:
                raise
            except Exception as exc:  # decoding errors surface here, mid-stream
                if write_failure(exc):  # not the source's fault: staged_directory names DST
                    raise
                raise InputError(src, f"failed while reading pixel data: {type(exc).__name__}: {exc}") from exc
            if mode != "none":
                fraction = write_tissue_labels(group, arrays, ngff, mode, slide.pixel_size_um, chunk, pool)
                log.info("tissue covers %.1f%% of %s", 100 * fraction, src.name)
            group.attrs["sparseseg"] = {"ingest": {"source": str(src.absolute()), "format": slide.source_format,
                                                   "version": __version__}}
    return dst
