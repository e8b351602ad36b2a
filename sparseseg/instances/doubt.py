"""The model's doubt about its own output, summed per square cell of the model grid.

`segment` saves these sums beside its labels (``labels/<name>/uncertainty``) and `suggest` ranks regions
by them, either from a saved run or from the network on the spot. Every channel is a sum over the
cell's pixels, so the doubt of any region is the sum of its cells, and the two paths share one
definition (``doubt_sums`` for the sums, ``doubt_components`` for what they mean):

- ``pixels``: pixels of the cell inside the image;
- ``near_threshold``: pixels whose distance lies within ``NEAR_THRESHOLD`` px of the foreground threshold;
- ``foreground``: pixels whose distance is above the threshold;
- ``class_doubt``: 1 - the most probable class, over the foreground (0 without a class head);
- ``object_pixels``: pixels of objects; ``flow_error``: each object pixel's object flow error (the mean
  squared difference between the predicted flow and the flow of the object's own mask);
- ``objects``: objects whose first pixel (raster order) lies in the cell;
- ``disagreement``: the test-time augmentation views' disagreement over the foreground (0 when none ran);
- then per class its probability summed over the foreground (the class mix).
"""

from __future__ import annotations

import math

import numpy as np

#: The array of a label group holding a `segment` run's doubt map, read by `suggest`.
UNCERTAINTY = "uncertainty"
#: Edge of a cell in model-grid pixels (8 um at 0.5 um/px): fine next to a 100 um proposal, 1/256 of the pixels.
CELL = 16
NEAR_THRESHOLD = 0.5
SUM_CHANNELS = ("pixels", "near_threshold", "foreground", "class_doubt", "object_pixels", "flow_error", "objects",
                "disagreement")
OBJECTS = SUM_CHANNELS.index("objects")
FOREGROUND = SUM_CHANNELS.index("foreground")


def block_cell(block: int) -> int:
    """The cell edge for blocks of ``block`` model-grid pixels: the largest divisor of ``CELL`` that divides the
    block edge, so that every cell lies in one block's core."""
    return math.gcd(block, CELL)


def channel_names(class_names: tuple[str, ...]) -> list[str]:
    """The channels of a doubt map: the sums, then one class-mix channel per class."""
    return [*SUM_CHANNELS, *(f"class:{name}" for name in class_names)]


def _cell_sums(values: np.ndarray, cell: int) -> np.ndarray:
    """(ceil(h/cell), ceil(w/cell)) float64 sums of a (h, w) map over square cells (partial cells at the end)."""
    h, w = values.shape
    ny, nx = -(-h // cell), -(-w // cell)
    if h % cell or w % cell:
        padded = np.zeros((ny * cell, nx * cell), values.dtype)
        padded[:h, :w] = values
        values = padded
    rows = values.reshape(ny * cell, nx, cell).sum(2, dtype=np.int32 if values.dtype == bool else np.float64)
    return rows.reshape(ny, cell, nx).sum(1).astype(np.float64)


def doubt_sums(distance: np.ndarray, labels: np.ndarray, errors: dict[int, float], probabilities: np.ndarray,
               threshold: float, cell: int, firsts: tuple[np.ndarray, np.ndarray] | None = None,
               spread: np.ndarray | None = None) -> np.ndarray:
    """(channels, ceil(h/cell), ceil(w/cell)) float32 sums per cell of a window's doubt (see the module).

    ``distance`` (h, w), ``labels`` (h, w) objects, ``errors``: each label's flow error, ``probabilities``
    (K, h, w) class probabilities (K = 0 without classes), ``firsts``: the (rows, cols) of the objects' first
    pixels when the caller knows them (found here otherwise), ``spread`` (h, w) the views' disagreement
    when test-time augmentation ran. One channel at a time: memory stays a few maps."""
    foreground = distance > threshold
    out = [_cell_sums(np.ones(distance.shape, bool), cell),
           _cell_sums(np.abs(distance - threshold) < NEAR_THRESHOLD, cell),
           _cell_sums(foreground, cell)]
    if len(probabilities):
        out.append(_cell_sums((1 - probabilities.max(0)) * foreground, cell))
    else:
        out.append(np.zeros_like(out[0]))
    error_of = np.zeros(int(labels.max()) + 1, np.float32)
    for label, error in errors.items():
        if label < error_of.size:
            error_of[label] = error
    out += [_cell_sums(labels > 0, cell), _cell_sums(error_of[labels], cell)]
    first = np.zeros(distance.shape, bool)  # each object's first pixel in raster order
    if firsts is None:
        ids, index = np.unique(labels.ravel(), return_index=True)
        first.ravel()[index[ids > 0]] = True
    else:
        first[firsts] = True
    out.append(_cell_sums(first, cell))
    out.append(_cell_sums(spread * foreground, cell) if spread is not None else np.zeros_like(out[0]))
    out += [_cell_sums(p * foreground, cell) for p in probabilities]
    return np.stack(out).astype(np.float32)


def doubt_components(total: np.ndarray, disagreement: bool = False) -> dict[str, float]:
    """What the summed channels of a region mean: its flow error (per object pixel), near-threshold share
    (per pixel), class doubt (per foreground pixel) and, when the views were run, their disagreement
    (per foreground pixel)."""
    pixels, near, foreground, class_doubt, object_pixels, flow_error, _, spread = (
        float(v) for v in total[:len(SUM_CHANNELS)])
    out = {"flow_error": flow_error / object_pixels if object_pixels else 0.0,
           "near_threshold": near / pixels if pixels else 0.0,
           "class_doubt": class_doubt / foreground if foreground else 0.0}
    if disagreement:
        out["disagreement"] = spread / foreground if foreground else 0.0
    return out


def foreground_fraction(total: np.ndarray) -> float:
    """The region's share of foreground pixels."""
    pixels = total[SUM_CHANNELS.index("pixels")]
    return float(total[FOREGROUND] / pixels) if pixels else 0.0


def class_mix(total: np.ndarray) -> np.ndarray:
    """Mean class probabilities over the region's foreground (empty without classes)."""
    sums = np.asarray(total[len(SUM_CHANNELS):], np.float64)
    return sums / total[FOREGROUND] if total[FOREGROUND] else np.zeros_like(sums)
