"""Object features (compiled loops) equal scikit-image's regionprops on real and awkward labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.color import rgb2hed
from skimage.measure import regionprops_table

from sparseseg.measure.features import intensity_means, object_features
from sparseseg.tiling.pixels import object_pixels

DSB = Path(__file__).parent / "data" / "dsb2018"


def awkward_labels() -> np.ndarray:
    """Single pixels, lines, diagonal chains, rings, touching objects and objects on every image edge."""
    labels = np.zeros((40, 50), np.int32)
    labels[0, 0] = 1                                  # one pixel in a corner
    labels[5, 3:20] = 2                               # horizontal line
    labels[8:30, 45] = 3                              # vertical line
    for i in range(10):                               # diagonal chain (8-connected only)
        labels[12 + i, 5 + i] = 4
    yy, xx = np.mgrid[:40, :50]
    ring = (np.hypot(yy - 25, xx - 25) < 8) & (np.hypot(yy - 25, xx - 25) > 4)
    labels[ring] = 5                                  # a ring with a hole
    labels[(np.hypot(yy - 25, xx - 25) <= 4)] = 6      # the hole filled by a touching object
    labels[35:, 30:50] = 7                            # bottom-right edge
    labels[35:, 20:30] = 8                            # touching 7 along a column
    labels[10:14, 30:40] = 9
    labels[10:14, 32:34] = 10                         # an object splitting another: 9 is not one piece
    return labels


@pytest.mark.parametrize("source", ["awkward", "he_0121d675", "fluo_0402a81e"])
def test_object_features_equal_regionprops(source):
    labels = awkward_labels() if source == "awkward" else tifffile.imread(DSB / "labels" / f"{source}.tif")
    ids, pixels = object_pixels(labels)
    local = pixels.image()
    ref = regionprops_table(local, properties=("area", "bbox", "centroid", "perimeter", "equivalent_diameter_area",
                                               "eccentricity", "orientation", "solidity"))
    ours = object_features(labels, pixels)
    assert len(ours["area"]) == len(ref["area"]) == ids.size - 1 > 5
    np.testing.assert_array_equal(ours["area"], ref["area"])
    np.testing.assert_array_equal(ours["bbox"], np.stack([ref[f"bbox-{i}"] for i in range(4)], 1))
    np.testing.assert_allclose(ours["centroid"], np.stack([ref["centroid-0"], ref["centroid-1"]], 1), rtol=1e-12)
    for key in ("perimeter", "equivalent_diameter_area", "solidity"):
        np.testing.assert_allclose(ours[key], ref[key], rtol=1e-12, err_msg=key)
    np.testing.assert_allclose(ours["eccentricity"], ref["eccentricity"], atol=1e-7)
    np.testing.assert_allclose(ours["orientation"], ref["orientation"], atol=1e-7)


def test_intensity_means_equal_regionprops_on_real_he():
    import imageio.v3 as iio

    labels = tifffile.imread(DSB / "labels" / "he_0121d675.tif")
    rgb = iio.imread(DSB / "images" / "he_0121d675.png")[..., :3]
    _, pixels = object_pixels(labels)
    local = pixels.image()
    hed = rgb2hed(np.clip(rgb / 255, 0, 1)).astype(np.float32)[..., :2]
    ref = regionprops_table(local, intensity_image=np.concatenate([rgb.astype(np.float32), hed], -1),
                            properties=("intensity_mean",))
    channels = np.ascontiguousarray(rgb.transpose(2, 0, 1)).reshape(3, -1)
    ours = intensity_means(channels, pixels.flat, pixels.objects, pixels.n, he=True)
    np.testing.assert_allclose(ours, np.stack([ref[f"intensity_mean-{i}"] for i in range(5)], 1), rtol=1e-5)


def test_he_densities_equal_skimage_rgb2hed():
    """Every colour its own one-pixel object: its means are its densities, extremes included."""
    rgb = np.random.default_rng(0).integers(0, 256, (5000, 3), dtype=np.uint8)
    rgb[:8] = [[0, 0, 0], [255, 255, 255], [0, 255, 0], [255, 0, 255], [1, 2, 3], [254, 1, 128], [0, 0, 255],
               [255, 255, 0]]
    reference = rgb2hed(rgb[:, None, :])[:, 0, :2]  # skimage scales uint8 to [0, 1] itself
    ours = intensity_means(np.ascontiguousarray(rgb.T), np.arange(5000), np.arange(1, 5001), 5000, he=True)
    np.testing.assert_array_equal(ours[:, :3], rgb)
    np.testing.assert_allclose(ours[:, 3:], reference, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("offset, spread", [(0, 1000), (3_000_000_000, 1000), (5, 10**9)])
def test_object_pixels_keep_id_order_for_dense_and_sparse_id_sets(offset, spread):
    labels = np.zeros((30, 30), np.uint64)
    values = np.array([7, 2, 40, 41, spread], np.uint64) + np.uint64(offset)
    for i, v in enumerate(values):
        labels[i * 5: i * 5 + 3, 2: 9] = v
    ids, pixels = object_pixels(labels)
    local = pixels.image()
    np.testing.assert_array_equal(ids, np.concatenate([[0], np.sort(values)]))
    np.testing.assert_array_equal(ids[local], labels)


@pytest.mark.parametrize("seed", range(4))
def test_object_features_equal_regionprops_on_random_shapes(seed):
    """Ragged, holed, non-convex and disconnected shapes (smoothed noise, then labelled), hundreds per image."""
    from scipy import ndimage as ndi
    from skimage.measure import label

    rng = np.random.default_rng(seed)
    noise = ndi.gaussian_filter(rng.normal(size=(300, 280)), 1.5 + seed)
    labels = label(noise > np.quantile(noise, 0.55), connectivity=1)
    labels[labels % 7 == 3] = labels[labels % 7 == 3] + 1  # merge some pairs: objects in several pieces
    ids, pixels = object_pixels(labels)
    local = pixels.image()
    ref = regionprops_table(local, properties=("area", "bbox", "perimeter", "solidity", "eccentricity"))
    ours = object_features(labels, pixels)
    assert ids.size - 1 > 20
    np.testing.assert_array_equal(ours["bbox"], np.stack([ref[f"bbox-{i}"] for i in range(4)], 1))
    np.testing.assert_allclose(ours["perimeter"], ref["perimeter"], rtol=1e-12)
    np.testing.assert_allclose(ours["solidity"], ref["solidity"], rtol=1e-12)
    np.testing.assert_allclose(ours["eccentricity"], ref["eccentricity"], atol=1e-7)


def test_occupied_blocks_equal_a_direct_count():
    """Which chunks of a grid hold labelled pixels (to skip decoding the others), on random sparse images."""
    rng = np.random.default_rng(1)
    for _ in range(200):
        h, w = rng.integers(1, 60, 2)
        labels = np.zeros((h, w), np.uint32)
        for _ in range(rng.integers(0, 6)):
            labels[rng.integers(0, h), rng.integers(0, w)] = rng.integers(1, 5)
        _, pixels = object_pixels(labels)
        (y0, x0), (by, bx) = rng.integers(0, 50, 2), rng.integers(1, 20, 2)
        expected = np.zeros(((y0 + h - 1) // by - y0 // by + 1, (x0 + w - 1) // bx - x0 // bx + 1), bool)
        rows, cols = np.nonzero(labels)
        expected[(rows + y0) // by - y0 // by, (cols + x0) // bx - x0 // bx] = True
        np.testing.assert_array_equal(pixels.occupied((y0, x0), (by, bx)), expected)


def test_features_compile_without_a_writable_cache_folder():
    """A read-only install with no writable home: numba cannot cache, the loops still compile and agree."""
    import subprocess
    import sys

    setup = """
import json
import numpy as np
labels = np.zeros((20, 20), np.uint32)
labels[2:9, 3:12] = 7
labels[12:18, 5:8] = 3
labels[13, 6] = 0
"""
    script = setup + """
from numba.core import caching
caching.CacheImpl._locator_classes = []  # no folder numba could write its cache to
from sparseseg.measure.features import object_features
from sparseseg.tiling.pixels import object_pixels
features = object_features(labels, object_pixels(labels)[1])
print(json.dumps({key: np.asarray(value).tolist() for key, value in features.items()}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    namespace = {}
    exec(setup, namespace)
    labels = namespace["labels"]
    ours = object_features(labels, object_pixels(labels)[1])
    uncached = json.loads(done.stdout.strip().splitlines()[-1])
    assert uncached["area"] == [17, 63]
    for key, value in ours.items():
        np.testing.assert_array_equal(np.asarray(uncached[key]), value, err_msg=key)
