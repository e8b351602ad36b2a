"""Label pyramids inside a slide's OME-Zarr: written chunk by chunk, renamed into place when complete."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import zarr

from sparseseg.io.atomic import staged_directory
from sparseseg.io.ngff import (create_level_array, read_ome_attrs, write_image_metadata, write_label_metadata,
                               zarr_format_of)
from sparseseg.pyramid import downsample_nearest_2x, level_factors


def image_levels(slide_path: Path) -> tuple[str, list[tuple[int, int]], tuple[float, float] | None, int]:
    """(NGFF version, level (Y, X) shapes, level-0 pixel size, chunk edge) of the slide image."""
    from sparseseg.io.omezarr import open_omezarr_slide

    slide = open_omezarr_slide(Path(slide_path))
    group = zarr.open_group(slide_path, mode="r")
    version, attrs = read_ome_attrs(group)
    datasets = attrs["multiscales"][0]["datasets"]
    shapes = [tuple(group[d["path"]].shape[-2:]) for d in datasets]
    chunk = int(group[datasets[0]["path"]].chunks[-1])
    return version, shapes, slide.pixel_size_um, chunk


def coarse_label_level(group: zarr.Group, max_px: int) -> tuple[np.ndarray, int]:
    """(array, level-0 px per array px) of a label group's finest level whose longest edge fits ``max_px``.

    Falls back to the coarsest level. Used for cheap slide-wide lookups (tissue, annotated area).
    """
    levels = sorted(int(k) for k in group.array_keys())
    level = next((k for k in levels if max(group[str(k)].shape) <= max_px), levels[-1])
    return group[str(level)][...], 2**level


def write_label_pyramid(slide_path: Path, name: str, level0_block: Callable[[tuple[slice, slice]], np.ndarray],
                        dtype: np.dtype, overwrite: bool, method: str, colors=None, properties=None) -> None:
    """Write ``labels/<name>`` chunk by chunk from ``level0_block(window)``, then nearest-downsample.

    The label group is built under a hidden name and renamed into place only once complete.
    """
    version, shapes, pixel_size, chunk = image_levels(slide_path)
    zarr.open_group(slide_path, mode="r+").require_group("labels")
    final = Path(slide_path) / "labels" / name
    with staged_directory(final, overwrite=overwrite) as tmp:
        staging = zarr.open_group(tmp, mode="w", zarr_format=zarr_format_of(version))
        arrays = []
        for level, shape in enumerate(shapes):
            target = create_level_array(staging, str(level), shape, (chunk, chunk), dtype, ("y", "x"))
            if level == 0:
                chunks = da.core.normalize_chunks((chunk, chunk), shape)
                source = da.map_blocks(_block_from_callable, dask.delayed(level0_block, pure=True),
                                       chunks=chunks, dtype=dtype)
            else:
                source = downsample_nearest_2x(da.from_zarr(arrays[-1], chunks=(2 * chunk, 2 * chunk)))
            da.store(source.rechunk(target.chunks), target, lock=False, scheduler="threads")
            arrays.append(target)
        write_image_metadata(staging, version, name=name, n_levels=len(shapes), pixel_size_um=pixel_size,
                             level_factors=level_factors(shapes), omero=None, channel_axis=False,
                             method="level 0 as annotated; coarser levels: pixel at the 2x2 block centre")
    write_label_metadata(zarr.open_group(slide_path, mode="r+"), version, name, colors=colors, properties=properties)


def _block_from_callable(fn, block_info=None) -> np.ndarray:
    (y0, y1), (x0, x1) = block_info[None]["array-location"]
    return fn((slice(y0, y1), slice(x0, x1)))
