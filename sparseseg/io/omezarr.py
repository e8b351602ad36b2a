"""Open an existing OME-Zarr image (NGFF 0.4 or 0.5) as a Slide."""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import zarr

from sparseseg.errors import InputError
from sparseseg.io.ngff import read_ome_attrs, unit_to_um
from sparseseg.io.slide import Slide, default_channel_names


def _open_group(path: Path) -> zarr.Group:
    try:
        return zarr.open_group(path, mode="r")
    except Exception as exc:  # zarr raises several types for non-groups
        raise InputError(path, f"cannot open as a zarr group ({exc})") from None


def dataset_scale(dataset: dict) -> list[float] | None:
    """The dataset's scale transform; None where it has none or a malformed one (the pixel size is then unknown)."""
    transforms = dataset.get("coordinateTransformations", [])
    for transform in transforms if isinstance(transforms, list) else []:
        if isinstance(transform, dict) and transform.get("type") == "scale":
            scale = transform.get("scale")
            if isinstance(scale, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               for v in scale):
                return [float(v) for v in scale]
    return None


def _multiscale(path: Path, attrs: dict) -> tuple[dict, list[str], list[str]]:
    """(the first multiscale, its axis names, its dataset paths), each member of the right JSON type, or one error."""
    multiscales = attrs.get("multiscales")
    if not multiscales:
        raise InputError(path, "zarr group has no 'multiscales' metadata: not an OME-Zarr image")
    if not isinstance(multiscales, list) or not isinstance(multiscales[0], dict):
        raise InputError(path, f"'multiscales' must be a list of objects, got {json.dumps(multiscales)[:60]}")
    ms = multiscales[0]
    raw_axes = ms.get("axes", ["t", "c", "z", "y", "x"])
    axes = [a.get("name") if isinstance(a, dict) else a for a in raw_axes] if isinstance(raw_axes, list) else None
    if axes is None or not all(isinstance(a, str) for a in axes):
        raise InputError(path, f"multiscales 'axes' must be a list of names or objects with a 'name', got "
                               f"{json.dumps(raw_axes)[:60]}")
    datasets = ms.get("datasets")
    if not isinstance(datasets, list) or not datasets or not all(
            isinstance(d, dict) and isinstance(d.get("path"), str) and d["path"] for d in datasets):
        raise InputError(path, f"multiscales 'datasets' must be a non-empty list of objects with a 'path', got "
                               f"{json.dumps(datasets)[:60]}")
    return ms, axes, [d["path"] for d in datasets]


def check_complete(path: Path, name: str, array: zarr.Array) -> None:
    """Refuse an image level with chunks missing on disk: zarr would read them as the fill value (black)."""
    stored, expected = array.nchunks_initialized, array.nchunks
    if stored < expected:
        raise InputError(path, f"image level {name} is missing {expected - stored} of its {expected} chunks (a "
                               "damaged or partial copy); re-copy it, or pass --fill-missing to read them as "
                               f"{array.fill_value!r}")


def open_omezarr_slide(path: Path, chunk: int = 1024, fill_missing: bool = False) -> Slide:
    """Levels as dask arrays (C, Y, X); singleton t/z axes are dropped, others refused.

    Levels with chunks missing on disk are refused unless ``fill_missing``.
    """
    group = _open_group(path)
    version, attrs = read_ome_attrs(group)
    ms, axes, paths = _multiscale(path, attrs)
    if axes[-2:] != ["y", "x"]:
        raise InputError(path, f"unsupported axes {axes}: sparseseg reads 2D images ending in (y, x)")
    levels = []
    for dataset_path in paths:
        try:
            array = group[dataset_path]
        except KeyError:
            raise InputError(path, f"multiscales names dataset {dataset_path!r}, which is missing") from None
        if not isinstance(array, zarr.Array):
            raise InputError(path, f"multiscales dataset {dataset_path!r} is a group, not an array")
        if 0 in array.shape:
            raise InputError(path, f"dataset {dataset_path!r} is empty (shape {array.shape})")
        if not fill_missing:
            check_complete(path, dataset_path, array)
        arr = da.from_zarr(array)
        if arr.ndim != len(axes):
            raise InputError(path, f"dataset {dataset_path!r} has {arr.ndim} dims but axes are {axes}")
        index: list = []
        for name, size in zip(axes[:-2], arr.shape[:-2]):
            if name == "c":
                index.append(slice(None))
            elif size == 1:
                index.append(0)
            else:
                raise InputError(path, f"axis {name!r} has size {size}: sparseseg segments 2D images only")
        arr = arr[tuple(index)]
        if arr.ndim not in (2, 3):
            raise InputError(path, f"dataset {dataset_path!r}: axes {axes} leave more than one channel axis, y and x")
        arr = arr[None] if arr.ndim == 2 else arr
        levels.append(arr.rechunk((arr.shape[0], chunk, chunk)))
    pixel_size = None
    scale = dataset_scale(ms["datasets"][0])
    axis_dicts = [a for a in ms.get("axes", []) if isinstance(a, dict)]
    if scale is not None and len(axis_dicts) == len(axes):
        factors = [unit_to_um(a.get("unit")) for a in axis_dicts[-2:]]
        if None not in factors:
            pixel_size = (scale[-2] * factors[0], scale[-1] * factors[1])
    names = default_channel_names(levels[0].shape[0])
    omero = attrs.get("omero")
    omero_channels = omero.get("channels") if isinstance(omero, dict) else None
    if isinstance(omero_channels, list) and len(omero_channels) == len(names):  # malformed: default names
        names = tuple(str(c.get("label", n)) if isinstance(c, dict) else n for c, n in zip(omero_channels, names))
    return Slide(path=path, source_format=f"ome-zarr-{version}", levels=tuple(levels),
                 pixel_size_um=pixel_size, channel_names=names)
