"""Label pyramids inside a slide's OME-Zarr: written chunk by chunk, renamed into place when complete."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import dask
import dask.array as da
import imageio.v3 as iio
import numpy as np
import tifffile
import zarr

from sparseseg.classes import OBJECT_CLASSES
from sparseseg.errors import InputError
from sparseseg.files.atomic import staged_directory
from sparseseg.io.ngff import (create_level_array, read_ome_attrs, unregister_label, write_image_metadata,
                               write_label_metadata,
                               zarr_format_of)
from sparseseg.io.detect import sniff_format
from sparseseg.pyramid import downsample_nearest_2x, level_factors


#: Label groups that sparseseg commands write themselves, with the command that owns each.
RESERVED_LABELS = {"tissue": "ingest", "annotations": "annotations import", "foreground": "annotations import"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_label_name(name: str, reserved: bool = True) -> str:
    """``name`` if it can name a label group: one path component of letters, digits, '_', '.', '-'
    (not starting with '.'), and not a name another command writes (``RESERVED_LABELS``)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > 200:
        raise InputError(None, f"--name must be one folder name of letters, digits, '_', '.' or '-' (not starting "
                               f"with '.'), got {name!r}")
    if reserved and name in RESERVED_LABELS:
        raise InputError(None, f"--name {name!r} is reserved: labels/{name} is written by `sparseseg "
                               f"{RESERVED_LABELS[name]}`")
    return name


def image_levels(slide_path: Path) -> tuple[str, list[tuple[int, int]], tuple[float, float] | None, int]:
    """(NGFF version, level (Y, X) shapes, level-0 pixel size, chunk edge) of the slide image."""
    from sparseseg.io.omezarr import open_omezarr_slide

    slide = open_omezarr_slide(Path(slide_path), fill_missing=True)  # metadata only: no chunk is read
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


#: Array attribute of label levels written with every chunk stored (background chunks too): a chunk missing on disk
#: is then damage, never "all background", and readers refuse it (``resolve_labels``).
EVERY_CHUNK_STORED = "sparseseg_every_chunk_stored"


def write_label_levels(group: zarr.Group, version: str, name: str, shapes: list[tuple[int, int]], chunk: int,
                       pixel_size_um: tuple[float, float] | None,
                       level0_block: Callable[[tuple[slice, slice]], np.ndarray], dtype: np.dtype, method: str,
                       **compute) -> None:
    """Write a label image's levels into ``group``: level 0 chunk by chunk from ``level0_block(window)``, each
    coarser level from the one written before it (the pixel at each 2x2 block's centre, never interpolated),
    with the same shapes, chunks and physical scales as the image. ``compute``: dask's scheduler (and pool)."""
    arrays = []
    for level, shape in enumerate(shapes):
        target = create_level_array(group, str(level), shape, (chunk, chunk), dtype, ("y", "x"), write_empty=True)
        if level == 0:
            chunks = da.core.normalize_chunks((chunk, chunk), shape)
            source = da.map_blocks(_block_from_callable, dask.delayed(level0_block, pure=True), chunks=chunks,
                                   dtype=dtype)
        else:
            source = downsample_nearest_2x(da.from_zarr(arrays[-1], chunks=(2 * chunk, 2 * chunk)))
        da.store(source.rechunk(target.chunks), target, lock=False, **({"scheduler": "threads"} | compute))
        target.attrs[EVERY_CHUNK_STORED] = True
        arrays.append(target)
    write_image_metadata(group, version, name=name, n_levels=len(shapes), pixel_size_um=pixel_size_um,
                         level_factors=level_factors(shapes), omero=None, channel_axis=False,
                         method=f"{method}; coarser levels: the pixel at each 2x2 block centre")


def write_label_pyramid(slide_path: Path, name: str, level0_block: Callable[[tuple[slice, slice]], np.ndarray],
                        dtype: np.dtype, overwrite: bool, method: str, colors=None, properties=None,
                        scheduler="threads", extra: Callable[[zarr.Group], None] | None = None) -> None:
    """Write ``labels/<name>`` of a slide (``write_label_levels``), registered in ``labels/.zattrs``.

    The label group is built under a hidden name and renamed into place only once complete.
    ``scheduler``: where the chunk tasks run (dask's threads, or a distributed Client: the workers).
    ``extra``: writes more arrays or attributes into the group before it is renamed into place.
    """
    version, shapes, pixel_size, chunk = image_levels(slide_path)
    zarr.open_group(slide_path, mode="r+").require_group("labels")
    final = Path(slide_path) / "labels" / name
    with staged_directory(final, overwrite=overwrite) as tmp:
        staging = zarr.open_group(tmp, mode="w", zarr_format=zarr_format_of(version))
        write_label_levels(staging, version, name, shapes, chunk, pixel_size, level0_block, dtype, method,
                           scheduler=scheduler)
        if extra is not None:
            extra(staging)
    write_label_metadata(zarr.open_group(slide_path, mode="r+"), version, name, colors=colors, properties=properties)


def _block_from_callable(fn, block_info=None) -> np.ndarray:
    (y0, y1), (x0, x1) = block_info[None]["array-location"]
    return fn((slice(y0, y1), slice(x0, x1)))


def open_label_image(path: Path) -> da.Array:
    """A (Y, X) integer label image from TIFF, PNG or zarr (an OME-Zarr label group's level 0)."""
    kind = sniff_format(path)
    if kind == "tiff":
        try:
            labels = da.from_zarr(zarr.open_array(tifffile.imread(path, aszarr=True), mode="r"))
        except (tifffile.TiffFileError, ValueError) as exc:
            raise InputError(path, f"cannot read TIFF label image ({exc})") from None
    elif kind == "zarr":
        node = zarr.open(path, mode="r")
        if isinstance(node, zarr.Group):
            _, attrs = read_ome_attrs(node)
            if not attrs.get("multiscales"):
                raise InputError(path, "zarr group has no 'multiscales' metadata: not a label image")
            node = node[attrs["multiscales"][0]["datasets"][0]["path"]]
        labels = da.from_zarr(node)
    else:
        labels = da.from_array(iio.imread(path))
    labels = labels.squeeze() if labels.ndim > 2 else labels
    if labels.ndim != 2:
        raise InputError(path, f"label image must be 2D, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        raise InputError(path, f"label image must hold integers, got {labels.dtype}")
    return labels


def refuse_missing_chunks(group_path: Path, level, name: str) -> None:
    """A label level written with every chunk stored that now misses some (a damaged or partial copy) would
    read as background there: refused, naming the group and the level."""
    if level.attrs.get(EVERY_CHUNK_STORED):
        stored, expected = level.nchunks_initialized, level.nchunks
        if stored < expected:
            raise InputError(group_path, f"label level {name} is missing {expected - stored} of its {expected} chunks "
                                         "(a damaged or partial copy): they would read as background; re-copy "
                                         "it, or pass --fill-missing to accept that")


def resolve_labels(slide: Path, name_or_file: str, shape: tuple[int, int], fill_missing: bool = False):
    """A label group of the slide (its level 0) or a label image file of level-0 size.

    A label level written with every chunk stored that now misses chunks (a damaged or partial copy) is
    refused unless ``fill_missing`` (then they read as background, 0)."""
    group_path = slide / "labels" / name_or_file
    if group_path.is_dir():
        try:
            labels = zarr.open_group(slide, mode="r")[f"labels/{name_or_file}/0"]
        except KeyError:
            raise InputError(group_path, "is not a label pyramid (it has no level 0)") from None
        where = group_path
        if not fill_missing:
            refuse_missing_chunks(group_path, labels, "0")
    else:
        where = Path(name_or_file)
        if not where.exists():
            raise InputError(slide, f"has no labels/{name_or_file}, and no file {name_or_file} exists")
        labels = open_label_image(where)
    if tuple(labels.shape) != tuple(shape):
        raise InputError(where, f"label image is {'x'.join(map(str, labels.shape))} but the slide's level 0 is "
                                f"{shape[0]}x{shape[1]}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise InputError(where, f"label image must hold integers, got {labels.dtype}")
    if labels.dtype in (np.uint64, np.int64):
        raise InputError(where, f"{labels.dtype} labels are not supported: sparseseg's labels are uint32 (ids up to "
                                "4294967295); relabel them")
    if np.issubdtype(labels.dtype, np.signedinteger) and int(da.asarray(labels).min().compute()) < 0:
        raise InputError(where, "label image has negative values: labels are 0 (background) and positive ids")
    return labels


#: Parquet schema metadata key of an object table: the segment run id of the labels it was measured on.
LABELS_RUN_KEY = "sparseseg_labels_run_id"


def labels_run_id(slide: Path, name_or_file: str) -> str | None:
    """The id of the segment run that wrote a slide's label group (None for files and older or foreign labels):
    tables measured on the labels record it, so a table is never joined to other labels."""
    group_path = slide / "labels" / name_or_file
    if not group_path.is_dir():
        return None
    try:
        attrs = dict(zarr.open_group(group_path, mode="r").attrs).get("sparseseg")
    except Exception:  # not a zarr group: resolve_labels reports it
        return None
    run_id = attrs.get("run_id") if isinstance(attrs, dict) else None
    return run_id if isinstance(run_id, str) else None


def label_source(slide: Path, name_or_file: str) -> str:
    """The path errors about the labels name: the label group's folder, or the file."""
    group_path = slide / "labels" / name_or_file
    return str(group_path if group_path.is_dir() else name_or_file)


def remove_label_pyramid(slide_path: Path, name: str) -> None:
    """Remove ``labels/<name>`` and its entry in the labels list (a stale group a new run replaces)."""
    import shutil

    version = image_levels(slide_path)[0]
    unregister_label(zarr.open_group(slide_path, mode="r+"), version, name)
    shutil.rmtree(Path(slide_path) / "labels" / name, ignore_errors=True)


def object_classes(slide: Path, labels: str, label_array) -> tuple[tuple[str, ...], np.ndarray | None]:
    """(class names, per-object class probabilities) of a segmentation with cell classes, else ((), None);
    a class table that does not cover the label ids (labels replaced since) is refused."""
    path = slide / "labels" / labels
    if not isinstance(label_array, zarr.Array) or not (path / OBJECT_CLASSES).exists():
        return (), None
    table = zarr.open_group(path, mode="r")[OBJECT_CLASSES]
    classes = tuple(table.attrs.get("classes") or ())
    probabilities = table[...]
    objects = dict(zarr.open_group(path, mode="r").attrs).get("sparseseg", {}).get("objects")
    if not classes or probabilities.shape != (len(probabilities), len(classes)) or \
            (objects is not None and len(probabilities) != int(objects) + 1):
        raise InputError(path / OBJECT_CLASSES, f"does not match labels/{labels} ({probabilities.shape[0] - 1} class "
                                                f"rows for {objects} objects): segment the slide again")
    return classes, probabilities
