"""Tissue detection at a low pyramid level, so later stages skip glass.

Brightfield (H&E, IHC): Otsu on the mean optical density; fluorescence: Otsu on the mean
intensity. The threshold comes from a histogram computed block by block, and the binary mask is
cleaned with physical-size morphology (closing, hole filling, small-object removal).
"""

from __future__ import annotations

import dask.array as da
import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import disk, remove_small_holes, remove_small_objects

TISSUE_MODES = ("auto", "brightfield", "fluorescence", "none")

#: Pixel size assumed for morphology sizes when the slide records none (20x scanners).
_FALLBACK_PIXEL_UM = 0.5


def resolve_mode(mode: str, n_channels: int, dtype: np.dtype) -> str:
    """'auto' means brightfield for 8-bit RGB and fluorescence for everything else."""
    if mode not in TISSUE_MODES:
        raise ValueError(f"tissue mode must be one of {TISSUE_MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    return "brightfield" if n_channels == 3 and np.dtype(dtype) == np.uint8 else "fluorescence"


def choose_mask_level(pixel_sizes_um: list[float], target_um: float = 8.0) -> int:
    """The coarsest level whose pixel size is at most ``target_um`` (level 0 if none is)."""
    fine_enough = [k for k, size in enumerate(pixel_sizes_um) if size <= target_um]
    return max(fine_enough) if fine_enough else 0


def tissue_feature(level: da.Array, mode: str) -> da.Array:
    """(Y, X) float32 image in which tissue is high: optical density or intensity."""
    pixels = level.astype(np.float32)
    if mode == "brightfield":
        top = float(np.iinfo(level.dtype).max) if np.issubdtype(level.dtype, np.integer) else 1.0
        density = -da.log10(da.clip(pixels, 1.0 if top > 1 else 1e-3, None) / top)
        return density.mean(axis=0)
    return pixels.mean(axis=0)


def otsu_threshold(feature: da.Array, bins: int = 256, **compute) -> float:
    """Otsu's threshold from a histogram computed block by block (no whole array in memory).

    ``compute`` is passed to dask (e.g. scheduler and pool).
    """
    lo, hi = (float(v) for v in da.compute(feature.min(), feature.max(), **compute))
    if hi <= lo:
        return hi
    counts, edges = da.histogram(feature, bins=bins, range=(lo, hi))
    counts = counts.compute(**compute)
    centres = (edges[:-1] + edges[1:]) / 2
    return float(threshold_otsu(hist=(counts, centres)))


def tissue_mask(level: da.Array, mode: str, pixel_size_um: float | None, **compute) -> np.ndarray:
    """Boolean (Y, X) tissue mask of one (low-resolution) level; ``mode`` is brightfield|fluorescence."""
    feature = tissue_feature(level, mode)
    threshold = otsu_threshold(feature, **compute)
    mask = (feature > threshold).compute(**compute)
    um = pixel_size_um or _FALLBACK_PIXEL_UM
    closing_px = max(1, round(10.0 / um))  # bridge gaps between nuclei of ~10 um
    mask = ndi.binary_closing(mask, structure=disk(closing_px), border_value=0)
    min_area_px = max(1, round((30.0 / um) ** 2))  # drop specks smaller than ~30x30 um
    mask = remove_small_holes(mask, max_size=min_area_px)
    return remove_small_objects(mask, max_size=min_area_px)


def resample_mask_block(mask: np.ndarray, shift: int, shape_yx: tuple[int, int],
                        y0: int, x0: int) -> np.ndarray:
    """Nearest-neighbour view of ``mask`` at another pyramid level, for one output block.

    ``shift`` = (output level - mask level): >0 coarser, <0 finer. Each output pixel takes the mask
    pixel under its centre, so the label pyramid overlays the image levels exactly.
    """
    ys, xs = np.arange(y0, y0 + shape_yx[0]), np.arange(x0, x0 + shape_yx[1])
    if shift >= 0:
        ys, xs = (ys << shift) + ((1 << shift) >> 1), (xs << shift) + ((1 << shift) >> 1)
    else:
        ys, xs = ys >> -shift, xs >> -shift
    ys, xs = np.minimum(ys, mask.shape[0] - 1), np.minimum(xs, mask.shape[1] - 1)
    return mask.take(ys, axis=0).take(xs, axis=1).astype(np.uint8)
