"""OME-NGFF metadata for sparseseg's images and labels (0.4 on zarr v2, 0.5 on zarr v3).

Metadata is written with ome-zarr-py's writer functions; this module decides the values:
axes ``cyx``/``yx``, per-level scale and translation in micrometres, the omero block, labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.writer import add_metadata, write_multiscales_metadata
from zarr.codecs import BloscCodec

NGFF_VERSIONS = ("0.4", "0.5")
_UNIT_TO_UM = {"angstrom": 1e-4, "picometer": 1e-6, "nanometer": 1e-3, "micrometer": 1.0,
               "millimeter": 1e3, "centimeter": 1e4, "meter": 1e6}


def ngff_format(version: str):
    if version not in NGFF_VERSIONS:
        raise ValueError(f"NGFF version must be one of {NGFF_VERSIONS}, got {version!r}")
    return FormatV04() if version == "0.4" else FormatV05()


def zarr_format_of(version: str) -> int:
    return 2 if ngff_format(version).version == "0.4" else 3


def unit_to_um(unit: str | None) -> float | None:
    """Micrometres per NGFF unit, or None for a missing/non-length unit."""
    return None if unit is None else _UNIT_TO_UM.get(unit)


def read_ome_attrs(group: zarr.Group) -> tuple[str, dict[str, Any]]:
    """(NGFF version, the OME attributes dict) of a group; 0.5 nests them under 'ome'."""
    attrs = dict(group.attrs)
    if isinstance(attrs.get("ome"), dict):
        return str(attrs["ome"].get("version", "0.5")), dict(attrs["ome"])
    version = "0.4"
    multiscales = attrs.get("multiscales")
    if isinstance(multiscales, list) and multiscales and isinstance(multiscales[0], dict):
        version = str(multiscales[0].get("version", "0.4"))
    return version, attrs


def create_level_array(group: zarr.Group, name: str, shape: tuple[int, ...], chunks: tuple[int, ...],
                       dtype: np.dtype, dimension_names: tuple[str, ...], write_empty: bool = False) -> zarr.Array:
    """A pyramid level: '/'-separated chunk keys (NGFF), Blosc-LZ4 (fast on slides).

    ``write_empty``: store chunks that hold only the fill value too (image levels), so that a chunk
    missing on disk always means damage, never "empty".
    """
    common = dict(shape=shape, chunks=chunks, dtype=dtype, fill_value=0, overwrite=True,
                  config={"write_empty_chunks": write_empty})
    if group.metadata.zarr_format == 2:
        from numcodecs import Blosc

        return group.create_array(name, compressors=Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE),
                                  chunk_key_encoding={"name": "v2", "separator": "/"}, **common)
    return group.create_array(name, compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
                              dimension_names=dimension_names, **common)


def level_datasets(n_levels: int, pixel_size_um: tuple[float, float] | None,
                   level_factors: list[tuple[float, float]], channel_axis: bool) -> list[dict]:
    """Per-level scale and translation: level k pixel i covers level-0 pixels [f*i, f*(i+1)).

    The translation (f - 1) / 2 level-0 pixels puts each coarse pixel's centre on the centre of the
    block it averages, so every level overlays level 0 exactly in physical space.
    """
    base = pixel_size_um or (1.0, 1.0)
    datasets = []
    for level in range(n_levels):
        fy, fx = level_factors[level]
        scale = [base[0] * fy, base[1] * fx]
        shift = [base[0] * (fy - 1) / 2, base[1] * (fx - 1) / 2]
        if channel_axis:
            scale, shift = [1.0, *scale], [0.0, *shift]
        datasets.append({"path": str(level), "coordinateTransformations": [
            {"type": "scale", "scale": scale}, {"type": "translation", "translation": shift}]})
    return datasets


def spatial_axes(pixel_size_known: bool, channel_axis: bool) -> list[dict[str, str]]:
    unit = {"unit": "micrometer"} if pixel_size_known else {}
    axes = [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}]
    return ([{"name": "c", "type": "channel"}] if channel_axis else []) + axes


def omero_block(channel_names: tuple[str, ...], dtype: np.dtype,
                windows: list[tuple[float, float]]) -> dict[str, Any]:
    """Display settings viewers need (vizarr skips images without it)."""
    if np.issubdtype(dtype, np.integer):
        lo, hi = float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)
    else:
        lo, hi = min(w[0] for w in windows), max(w[1] for w in windows)
    rgb = len(channel_names) == 3
    colours = ["FF0000", "00FF00", "0000FF"] if rgb else ["FFFFFF"] * len(channel_names)
    channels = [{"label": name, "color": colour, "active": True, "coefficient": 1.0, "family": "linear",
                 "inverted": False, "window": {"start": float(s), "end": float(e), "min": lo, "max": hi}}
                for name, colour, (s, e) in zip(channel_names, colours, windows)]
    return {"channels": channels, "rdefs": {"model": "color" if rgb or len(channels) > 1 else "greyscale",
                                            "defaultT": 0, "defaultZ": 0}}


def write_image_metadata(group: zarr.Group, version: str, name: str, n_levels: int,
                         pixel_size_um: tuple[float, float] | None, level_factors: list[tuple[float, float]],
                         omero: dict[str, Any] | None, channel_axis: bool = True,
                         method: str = "mean of 2x2 blocks") -> None:
    datasets = level_datasets(n_levels, pixel_size_um, level_factors, channel_axis)
    axes = spatial_axes(pixel_size_um is not None, channel_axis)
    fmt = ngff_format(version)
    write_multiscales_metadata(group, datasets, fmt=fmt, axes=axes, name=name,
                               metadata={"method": method})
    if omero is not None:
        add_metadata(group, {"omero": omero}, fmt=fmt)


def write_label_metadata(image_group: zarr.Group, version: str, name: str,
                         colors: list[dict[str, Any]] | None = None,
                         properties: list[dict[str, Any]] | None = None) -> None:
    """Register ``labels/<name>`` (idempotently) and mark it as an image-label of ``../../``."""
    fmt = ngff_format(version)
    labels_group = image_group.require_group("labels")
    _, attrs = read_ome_attrs(labels_group)
    names = [n for n in attrs.get("labels", []) if n != name] + [name]
    container: dict[str, Any] = {"labels": names}
    if fmt.version != "0.4":  # 0.5 groups carry the version inside "ome"
        container["version"] = fmt.version
    add_metadata(labels_group, container, fmt=fmt)
    image_label: dict[str, Any] = {"version": fmt.version, "source": {"image": "../../"}}
    if colors:
        image_label["colors"] = colors
    if properties:
        image_label["properties"] = properties
    add_metadata(labels_group[name], {"image-label": image_label}, fmt=fmt)


def unregister_label(image_group: zarr.Group, version: str, name: str) -> None:
    """Take ``labels/<name>`` out of the labels list (its folder is removed by the caller)."""
    fmt = ngff_format(version)
    labels_group = image_group.require_group("labels")
    _, attrs = read_ome_attrs(labels_group)
    container: dict[str, Any] = {"labels": [n for n in attrs.get("labels", []) if n != name]}
    if fmt.version != "0.4":
        container["version"] = fmt.version
    add_metadata(labels_group, container, fmt=fmt)
