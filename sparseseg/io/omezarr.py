"""Open an existing OME-Zarr image (NGFF 0.4 or 0.5) as a Slide."""

from __future__ import annotations

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
    for transform in dataset.get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            return [float(v) for v in transform["scale"]]
    return None


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
    multiscales = attrs.get("multiscales")
    if not multiscales:
        raise InputError(path, "zarr group has no 'multiscales' metadata: not an OME-Zarr image")
    ms = multiscales[0]
    axes = [a["name"] if isinstance(a, dict) else a for a in ms.get("axes", ["t", "c", "z", "y", "x"])]
    if axes[-2:] != ["y", "x"]:
        raise InputError(path, f"unsupported axes {axes}: sparseseg reads 2D images ending in (y, x)")
    levels = []
    for dataset in ms["datasets"]:
        try:
            array = group[dataset["path"]]
        except KeyError:
            raise InputError(path, f"multiscales names dataset {dataset['path']!r}, which is missing") from None
        if not fill_missing:
            check_complete(path, dataset["path"], array)
        arr = da.from_zarr(array)
        if arr.ndim != len(axes):
            raise InputError(path, f"dataset {dataset['path']!r} has {arr.ndim} dims but axes are {axes}")
        index: list = []
        for name, size in zip(axes[:-2], arr.shape[:-2]):
            if name == "c":
                index.append(slice(None))
            elif size == 1:
                index.append(0)
            else:
                raise InputError(path, f"axis {name!r} has size {size}: sparseseg segments 2D images only")
        arr = arr[tuple(index)]
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
    omero_channels = attrs.get("omero", {}).get("channels", [])
    if len(omero_channels) == len(names):
        names = tuple(str(c.get("label", n)) for c, n in zip(omero_channels, names))
    return Slide(path=path, source_format=f"ome-zarr-{version}", levels=tuple(levels),
                 pixel_size_um=pixel_size, channel_names=names)
