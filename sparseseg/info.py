"""Summarise an OME-Zarr slide: levels, shapes, dtype, chunks, pixel size and labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zarr

from sparseseg.errors import InputError
from sparseseg.instances.doubt import UNCERTAINTY
from sparseseg.io.ngff import read_ome_attrs, unit_to_um
from sparseseg.io.omezarr import dataset_scale, open_omezarr_slide


def describe_slide(path: str | Path) -> dict[str, Any]:
    """A JSON-ready description of the image and each label group of an OME-Zarr slide."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(path, "not an OME-Zarr directory")
    slide = open_omezarr_slide(path)
    group = zarr.open_group(path, mode="r")
    version, attrs = read_ome_attrs(group)
    multiscales = attrs["multiscales"][0]
    units = [unit_to_um(a.get("unit")) if isinstance(a, dict) else None for a in multiscales.get("axes", [])]
    levels = []
    for dataset in multiscales["datasets"]:
        arr = group[dataset["path"]]
        scale = dataset_scale(dataset)
        pixel = None
        if scale is not None and len(units) >= 2 and None not in units[-2:]:
            pixel = (scale[-2] * units[-2], scale[-1] * units[-1])
        levels.append({"path": dataset["path"], "shape": list(arr.shape), "chunks": list(arr.chunks),
                       "pixel_size_um": pixel})
    labels = {}
    if "labels" in group:
        _, label_attrs = read_ome_attrs(group["labels"])
        for name in label_attrs.get("labels", []):
            if name not in group["labels"]:  # a damaged or partial copy: say so instead of failing
                labels[name] = {"missing": True}
                continue
            label_group = group["labels"][name]
            _, one = read_ome_attrs(label_group)
            first = label_group[one["multiscales"][0]["datasets"][0]["path"]]
            labels[name] = {"levels": len(one["multiscales"][0]["datasets"]), "dtype": str(first.dtype),
                            "shape": list(first.shape), "doubt_map": UNCERTAINTY in label_group.array_keys()}
    ingested = dict(group.attrs).get("sparseseg", {}).get("ingest", {})
    return {"path": str(path), "ngff": version, "zarr_format": group.metadata.zarr_format,
            "source": ingested.get("source"), "reader": ingested.get("format"),
            "dtype": str(slide.dtype), "channels": list(slide.channel_names),
            "pixel_size_um": slide.pixel_size_um, "levels": levels, "labels": labels}


def format_description(info: dict[str, Any]) -> str:
    def size(ps):
        return "unknown" if ps is None else f"{ps[0]:.4g} x {ps[1]:.4g} um"

    lines = [f"{info['path']}  (NGFF {info['ngff']}, zarr v{info['zarr_format']})"]
    if info.get("source"):
        lines.append(f"ingested from {info['source']} ({info['reader']})")
    lines += [f"dtype {info['dtype']}, channels {', '.join(info['channels'])}, pixel size {size(info['pixel_size_um'])}",
              "levels:"]
    for lv in info["levels"]:
        lines.append(f"  {lv['path']}: shape {tuple(lv['shape'])} chunks {tuple(lv['chunks'])} "
                     f"pixel {size(lv['pixel_size_um'])}")
    if info["labels"]:
        lines.append("labels:")
        for name, lab in info["labels"].items():
            if lab.get("missing"):
                lines.append(f"  {name}: listed in labels/ but missing on disk (a damaged or partial copy)")
                continue
            lines.append(f"  {name}: {lab['dtype']} {tuple(lab['shape'])}, {lab['levels']} levels"
                         + (f", doubt map saved (suggest --from-segmentation {name})" if lab.get("doubt_map") else ""))
    else:
        lines.append("labels: none")
    return "\n".join(lines)
