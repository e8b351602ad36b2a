"""Regions for per-region metrics: a square grid (um), tissue components, or GeoJSON ROIs.

Each object belongs to the region under its centroid (so per-region counts sum to the global
count: region 0 collects what falls outside every region). Tissue area per region comes from
``labels/tissue`` at a low level (or the region's whole area when the slide has no tissue mask).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from scipy import ndimage as ndi

from sparseseg.errors import InputError
from sparseseg.io.labels import coarse_label_level


@dataclass
class Regions:
    kind: str
    names: dict[int, str]
    tissue_area_um2: dict[int, float]
    _lookup: object  # callable (y_px, x_px) arrays -> region ids
    grid_shape: tuple[int, int] | None = None  # grid regions: id = row * cols + col + 1

    def assign(self, y_px: np.ndarray, x_px: np.ndarray) -> np.ndarray:
        return self._lookup(np.asarray(y_px, np.float64), np.asarray(x_px, np.float64))

    def assign_frame(self, frame) -> np.ndarray:
        """Region ids of a table's objects (a DataFrame or a mapping of columns)."""
        return self.assign(np.asarray(frame["centroid_y_px"]), np.asarray(frame["centroid_x_px"]))


def _tissue_mask(slide: Path, shape: tuple[int, int]) -> tuple[np.ndarray, float]:
    """(bool mask at a low level, level-0 pixels per mask pixel); all True when there is no mask."""
    root = zarr.open_group(slide, mode="r")
    if "labels/tissue" not in root:
        return np.ones((1, 1), bool), float(max(shape))
    mask = coarse_label_level(root["labels/tissue"], 2048)[0] > 0
    return mask, shape[0] / mask.shape[0]


def _cells_per_region(mask: np.ndarray, factor: float, cell: float, rows: int, cols: int) -> np.ndarray:
    """(rows, cols) count of mask pixels whose centre (in level-0 px) falls in each grid region."""
    counts = np.zeros((rows, cols), np.int64)
    ry = ((np.arange(mask.shape[0]) + 0.5) * factor // cell).astype(np.int64)
    rx = ((np.arange(mask.shape[1]) + 0.5) * factor // cell).astype(np.int64)
    mask = mask[: np.searchsorted(ry, rows), : np.searchsorted(rx, cols)]  # centres beyond the image: none
    if not mask.size:
        return counts
    starts_y = np.flatnonzero(np.r_[True, np.diff(ry[: mask.shape[0]]) != 0])  # region index is non-decreasing
    starts_x = np.flatnonzero(np.r_[True, np.diff(rx[: mask.shape[1]]) != 0])
    ends_y = np.r_[starts_y[1:], mask.shape[0]]
    per_band = np.stack([np.count_nonzero(mask[a:b], axis=0) for a, b in zip(starts_y, ends_y)])  # no int64 copy
    counts[np.ix_(ry[starts_y], rx[starts_x])] = np.add.reduceat(per_band, starts_x, axis=1)
    return counts


def grid_regions(slide: Path, shape: tuple[int, int], pixel_size_um: float, size_um: float) -> Regions:
    cell = size_um / pixel_size_um
    rows, cols = int(np.ceil(shape[0] / cell)), int(np.ceil(shape[1] / cell))
    mask, factor = _tissue_mask(slide, shape)
    pixel_area = (factor * pixel_size_um) ** 2
    if mask.shape == (1, 1):
        area = {r * cols + c + 1: (min(shape[0], (r + 1) * cell) - r * cell) * (min(shape[1], (c + 1) * cell) - c * cell)
                * pixel_size_um**2 for r in range(rows) for c in range(cols)}
    else:
        counts = _cells_per_region(mask, factor, cell, rows, cols)
        area = {r * cols + c + 1: float(counts[r, c] * pixel_area) for r in range(rows) for c in range(cols)}
    names = {r * cols + c + 1: f"r{r}c{c}" for r in range(rows) for c in range(cols)}

    def lookup(y, x):
        r = np.clip((y // cell).astype(np.int64), 0, rows - 1)
        c = np.clip((x // cell).astype(np.int64), 0, cols - 1)
        return r * cols + c + 1

    return Regions(kind=f"grid:{size_um:g}um", names=names, tissue_area_um2=area, _lookup=lookup,
                   grid_shape=(rows, cols))


def tissue_regions(slide: Path, shape: tuple[int, int], pixel_size_um: float) -> Regions:
    mask, factor = _tissue_mask(slide, shape)
    components, n = ndi.label(mask)
    pixel_area = (factor * pixel_size_um) ** 2
    counts = np.bincount(components.ravel(), minlength=n + 1)
    names = {0: "outside tissue", **{k: f"tissue {k}" for k in range(1, n + 1)}}
    area = {0: 0.0, **{k: float(counts[k] * pixel_area) for k in range(1, n + 1)}}

    def lookup(y, x):
        i = np.clip((y // factor).astype(np.int64), 0, components.shape[0] - 1)
        j = np.clip((x // factor).astype(np.int64), 0, components.shape[1] - 1)
        return components[i, j].astype(np.int64)

    return Regions(kind="tissue", names=names, tissue_area_um2=area, _lookup=lookup)


def roi_regions(slide: Path, shape: tuple[int, int], pixel_size_um: float, path: Path) -> Regions:
    """Polygon ROIs of a GeoJSON file (e.g. QuPath annotations), level-0 pixel coordinates."""
    import shapely
    from shapely.geometry import shape as to_shape

    from sparseseg.annotations.geojson import load_features
    from sparseseg.geometry.polygons import rasterize_polygon

    polygons, names = [], {0: "outside ROIs"}
    for feature in load_features(path):
        geometry = to_shape(feature["geometry"])
        if geometry.geom_type not in ("Polygon", "MultiPolygon"):
            continue
        props = feature.get("properties") or {}
        cls = props.get("classification")
        label = props.get("name") or (cls.get("name") if isinstance(cls, dict) else cls) or f"ROI {len(polygons) + 1}"
        polygons.append(shapely.make_valid(geometry))
        names[len(polygons)] = str(label)
    if not polygons:
        raise InputError(path, "no Polygon/MultiPolygon ROI in the GeoJSON file")
    mask, factor = _tissue_mask(slide, shape)
    pixel_area = (factor * pixel_size_um) ** 2
    area = {0: 0.0}
    for k, polygon in enumerate(polygons, start=1):
        if mask.shape == (1, 1):
            area[k] = float(polygon.area * pixel_size_um**2)
        else:
            scaled = shapely.affinity.scale(polygon, 1 / factor, 1 / factor, origin=(0, 0))
            inside = rasterize_polygon(scaled, (slice(0, mask.shape[0]), slice(0, mask.shape[1])))
            area[k] = float((inside & mask).sum() * pixel_area)
    tree = shapely.STRtree(polygons)

    def lookup(y, x):
        points = shapely.points(x, y)
        hits = tree.query(points, predicate="within")  # (2, n): point index, polygon index
        out = np.zeros(len(points), np.int64)
        order = np.argsort(hits[1])[::-1]  # first polygon in file order wins
        out[hits[0][order]] = hits[1][order] + 1
        return out

    return Regions(kind=f"rois:{Path(path).name}", names=names, tissue_area_um2=area, _lookup=lookup)


def parse_regions(spec: str, slide: Path, shape: tuple[int, int], pixel_size_um: float) -> Regions:
    """``grid:250um`` | ``tissue`` | ``FILE.geojson``."""
    if spec.startswith("grid:"):
        value = spec[5:].removesuffix("um")
        try:
            size = float(value)
        except ValueError:
            raise InputError(None, f"--regions grid:SIZEum expects a number, got {spec!r}") from None
        if not (np.isfinite(size) and size > 0):
            raise InputError(None, f"--regions grid size must be a positive number of um, got {spec!r}")
        return grid_regions(slide, shape, pixel_size_um, size)
    if spec == "tissue":
        return tissue_regions(slide, shape, pixel_size_um)
    path = Path(spec)
    if not path.exists():
        raise InputError(path, "--regions is neither grid:SIZEum, tissue, nor an existing GeoJSON file")
    return roi_regions(slide, shape, pixel_size_um, path)


def stain_columns(names) -> list[str]:
    """The object table's per-channel means and optical densities, averaged per region."""
    return [c for c in names if c.startswith("mean_") or c.endswith("_od")]


def region_table(objects: pd.DataFrame, regions: Regions, classes: tuple[str, ...] = ()) -> pd.DataFrame:
    """Per region: cells, density per mm2 of tissue, area statistics, cell-covered fraction, stains, and per cell
    class its count, density per mm2 of tissue and fraction of the region's cells (e.g. the TIL density)."""
    stains = stain_columns(objects.columns)
    table = pd.DataFrame({"region": list(regions.names), "name": list(regions.names.values())})
    table["tissue_area_mm2"] = [regions.tissue_area_um2.get(r, 0.0) / 1e6 for r in regions.names]
    grouped = objects.groupby("region")
    stats = grouped["area_um2"].agg(["size", "mean", "median", "sum"])
    stats.columns = ["cells", "area_mean_um2", "area_median_um2", "area_sum"]
    stats["area_std_um2"] = grouped["area_um2"].std(ddof=0)  # population std, one vectorised pass
    table = table.join(stats, on="region").join(grouped[stains].mean(), on="region")
    table["cells"] = table["cells"].fillna(0).astype(int)
    tissue = table["tissue_area_mm2"].where(table["tissue_area_mm2"] > 0)
    table["density_per_mm2"] = table["cells"] / tissue
    table["cell_area_fraction"] = table["area_sum"].fillna(0) / (tissue * 1e6)
    per_class = []
    for name in classes:
        counts = objects.loc[objects["class"] == name].groupby("region").size()
        cells = table["region"].map(counts).fillna(0).astype(int)
        table[f"{name}_cells"] = cells
        table[f"{name}_density_per_mm2"] = cells / tissue
        table[f"{name}_fraction"] = cells / table["cells"].where(table["cells"] > 0)
        per_class += [f"{name}_cells", f"{name}_density_per_mm2", f"{name}_fraction"]
    return table[["region", "name", "tissue_area_mm2", "cells", "density_per_mm2", "area_mean_um2",
                  "area_median_um2", "area_std_um2", "cell_area_fraction", *stains, *per_class]]
