"""`sparseseg segment` on real content: tiled equals whole image, lost workers and crashes change nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch
import zarr
from scipy import ndimage as ndi
from conftest import DSB
from distributed import Client, LocalCluster
from helpers import assert_same_objects

from sparseseg.infer.predictor import Predictor
from sparseseg.instances.dynamics import finalize_clusters, instance_clusters, trimmed_pixels
from sparseseg.ingest import ingest
from sparseseg.io.omezarr import open_omezarr_slide
from sparseseg.model.normalize import slide_normalization
from sparseseg.segment import SegmentOptions, segment_slide
from sparseseg.segment.worker import slide_fields
from sparseseg.segment.plan import plan_segment

BLOCK = 96  # does not divide 520 x 694; a multiple of the model's downsampling factor (4)
TILE = 256  # network tiles: several across the slide, so windows really are cut from several tiles


def make_slide(folder) -> Path:
    """A real-content, non-square slide: DSB fluorescence nuclei tiled 2 x 2 (520 x 694)."""
    image = iio.imread(DSB / "images" / "fluo_0402a81e.png")
    mosaic = np.vstack([np.hstack([image, image[:, ::-1]])] * 2)
    tifffile.imwrite(folder / "mosaic.tif", mosaic, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    return ingest(folder / "mosaic.tif", folder / "slide.ome.zarr", chunk=128, tissue="none")


@pytest.fixture()
def slide(tmp_path) -> Path:
    return make_slide(tmp_path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fluo_model):
    """(slide, result, labels) of one undisturbed ``segment`` run on 2 workers, which the fault tests must reproduce."""
    slide = make_slide(tmp_path_factory.mktemp("reference"))
    result = segment_slide(slide, fluo_model, options(workers=2))
    return slide, result, zarr.open_group(slide, mode="r")["labels/cells/0"][...]


def options(**values) -> SegmentOptions:
    return SegmentOptions(**{"block": BLOCK, "tile": TILE, "progress": False, **values})


def whole_image_labels(slide, model_path, precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    info = open_omezarr_slide(slide)
    predictor = Predictor.from_checkpoint(model_path, device="cpu", precision=precision)
    normalization = slide_normalization(info.levels)
    pixels = np.asarray(info.levels[0])
    return predictor.fields(pixels, normalization, TILE), predictor.instances(pixels, normalization, tile=TILE)


def whole_image_trimmed(fields, model_path) -> tuple[int, int]:
    """(objects cut to their largest piece, pixels of the pieces cut away) in the whole image's ``fields``."""
    predictor = Predictor.from_checkpoint(model_path, device="cpu")
    clusters = instance_clusters(fields[0], fields[1:3], predictor.params, "cpu")
    lost = trimmed_pixels(clusters, finalize_clusters(clusters, fields[1:3], predictor.params))
    return int((lost > 0).sum()), int(lost.sum())


@pytest.mark.parametrize("block", [64, 96, 128, 256, 2048])
def test_block_network_outputs_equal_whole_image_outputs_bitwise(slide, fluo_model, block):
    """Every block's fields (each block on fresh fields: no tile shared through the cache) are the whole image's
    to the bit, whatever the block size."""
    output, _ = whole_image_labels(slide, fluo_model)
    plan = plan_segment(slide, fluo_model, options(block=block))
    fields = slide_fields(plan.job)
    for b in plan.grid.blocks():
        fields.cache.clear()
        assert torch.equal(torch.from_numpy(fields.compute([fields.load(b.context)])[0]),
                           torch.from_numpy(output[(slice(0, 3), *b.context)]))


def test_segment_equals_whole_image_segmentation(reference, fluo_model):
    slide, result, tiled = reference
    fields, whole = whole_image_labels(slide, fluo_model)
    assert result.n_objects == int(tiled.max()) and tiled.dtype == np.uint32
    assert whole.max() > 150
    assert_same_objects(whole, tiled)  # F1 at IoU 0.9 is then exactly 1: no split, merged or duplicated cell
    root = zarr.open_group(slide, mode="r")
    assert [root[f"labels/cells/{k}"].shape for k in range(2)] == [root[str(k)].shape[1:] for k in range(2)]
    from ome_zarr_models.v04 import ImageLabel

    ImageLabel.from_zarr(root["labels/cells"])
    trimmed = whole_image_trimmed(fields, fluo_model)  # stray pieces left as background are counted, as in the whole image
    assert trimmed[0] > 0 and (result.trimmed_objects, result.trimmed_pixels) == trimmed
    assert root["labels/cells"].attrs["sparseseg"]["trimmed_pieces"] == {"objects": trimmed[0], "pixels": trimmed[1]}
    assert not [p for p in (slide / "labels").iterdir() if p.name.startswith(".cells")]


def test_bf16_segment_equals_the_whole_image_in_bf16(slide, fluo_model):
    """--precision bf16: every tile runs the same bfloat16 kernels, so blocks still stitch to the whole image's
    labels (computed in bf16 too); the run records its precision."""
    result = segment_slide(slide, fluo_model, options(workers=1, threads=1, precision="bf16"))
    tiled = zarr.open_group(slide, mode="r")["labels/cells/0"][...]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the network's bits depend on the thread count (docs/segment.md)
    try:
        _, whole = whole_image_labels(slide, fluo_model, precision="bf16")
    finally:
        torch.set_num_threads(threads)
    assert result.n_objects == int(tiled.max()) > 150
    assert_same_objects(whole, tiled)
    assert zarr.open_group(slide, mode="r")["labels/cells"].attrs["sparseseg"]["precision"] == "bf16"


def test_killing_a_worker_mid_run_gives_identical_labels(slide, fluo_model, reference):
    work = slide / "labels" / ".cells.work" / "blocks"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        killed = []

        def kill_one_worker_when_blocks_appear():
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not (work.exists() and len(list(work.glob("*.npz"))) >= 3):
                time.sleep(0.05)
            pids = client.run(os.getpid)
            os.kill(pids[sorted(pids)[0]], signal.SIGKILL)
            killed.append(len(list(work.glob("*.npz"))))  # blocks finished when the worker died

        killer = threading.Thread(target=kill_one_worker_when_blocks_appear)
        killer.start()
        segment_slide(slide, fluo_model, options(scheduler=cluster.scheduler_address))
        killer.join()
    assert killed and 3 <= killed[0] < 40  # most blocks were still to do when the worker died
    np.testing.assert_array_equal(zarr.open_group(slide, mode="r")["labels/cells/0"][...], reference[2])


def test_interrupted_run_resumes_to_identical_labels(slide, fluo_model, reference):
    work = slide / "labels" / ".cells.work" / "blocks"
    command = [sys.executable, "-m", "sparseseg.cli", "segment", str(slide), "--model", str(fluo_model),
               "--block", str(BLOCK), "--tile", str(TILE), "--workers", "1", "-q"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (work.exists() and len(list(work.glob("*.npz"))) >= 10):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and its worker processes: a crash
    process.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in work.glob("*.npz")}
    assert 10 <= len(finished) < 48
    assert not (slide / "labels" / "cells").exists()  # never marked complete
    assert subprocess.run(command + ["--resume"], timeout=300).returncode == 0
    np.testing.assert_array_equal(zarr.open_group(slide, mode="r")["labels/cells/0"][...], reference[2])


@pytest.mark.parametrize("scale", [0.8, 1.37])
def test_resampled_windows_equal_the_whole_resampled_image(scale):
    from sparseseg.model.grid import model_grid_shape, resample_window, source_window

    pixels = iio.imread(DSB / "images" / "he_65c8527c.png").transpose(2, 0, 1)
    source = pixels.shape[1:]
    grid = model_grid_shape(source, scale)
    whole = resample_window(pixels, (0, 0), (slice(0, grid[0]), slice(0, grid[1])), scale, source)
    rng = np.random.default_rng(0)
    for _ in range(20):
        y0, x0 = rng.integers(0, grid[0] - 1), rng.integers(0, grid[1] - 1)
        window = (slice(y0, rng.integers(y0 + 1, grid[0] + 1)), slice(x0, rng.integers(x0 + 1, grid[1] + 1)))
        src = source_window(window, scale, source)
        part = resample_window(pixels[(slice(None), *src)], (src[0].start, src[1].start), window, scale, source)
        np.testing.assert_array_equal(part, whole[(slice(None), *window)])


def test_segment_at_another_pixel_size_equals_whole_image_segmentation(tmp_path, fluo_model):
    """The slide has 0.4 um pixels, the model 0.5 um: segmentation runs on the resampled grid."""
    from sparseseg.model.grid import level0_to_model_indices, model_grid_shape, resample_window

    image = iio.imread(DSB / "images" / "fluo_0402a81e.png")
    mosaic = np.hstack([image, image[:, ::-1]])
    src = tmp_path / "fine.tif"
    tifffile.imwrite(src, mosaic, resolution=(1e4 / 0.4, 1e4 / 0.4), resolutionunit="CENTIMETER")
    slide_path = ingest(src, tmp_path / "fine.ome.zarr", chunk=128, tissue="none")
    segment_slide(slide_path, fluo_model, options(workers=1))
    tiled = zarr.open_group(slide_path, mode="r")["labels/cells/0"][...]

    scale = 0.4 / 0.5
    info = open_omezarr_slide(slide_path)
    grid = model_grid_shape(mosaic.shape, scale)
    resampled = resample_window(mosaic[None], (0, 0), (slice(0, grid[0]), slice(0, grid[1])), scale, mosaic.shape)
    labels = Predictor.from_checkpoint(fluo_model, device="cpu").instances(resampled, slide_normalization(info.levels),
                                                                            tile=TILE)
    rows = level0_to_model_indices(0, mosaic.shape[0], scale, grid[0])
    cols = level0_to_model_indices(0, mosaic.shape[1], scale, grid[1])
    whole = labels[np.ix_(rows, cols)]
    assert tiled.shape == mosaic.shape and whole.max() > 100
    assert_same_objects(whole, tiled)


LARGE_MARGIN = 24  # px: nuclei enlarged 3x reach 80 px, more than three times this margin


@pytest.fixture(scope="module")
def large_slide(tmp_path_factory):
    """Real nuclei enlarged 3x (up to ~80 px, far beyond the margin), at the model's pixel size."""
    image = iio.imread(DSB / "images" / "fluo_0402a81e.png")[:200, :240]
    big = np.kron(image, np.ones((3, 3), image.dtype))
    root = tmp_path_factory.mktemp("large")
    tifffile.imwrite(root / "big.tif", big, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    return ingest(root / "big.tif", root / "big.ome.zarr", chunk=128, tissue="none")


@pytest.fixture(scope="module")
def large_runs(large_slide, fluo_model):
    """The whole-image labels, and ``segment`` at a block size, each computed once per module."""
    fields, whole = whole_image_labels(large_slide, fluo_model)
    runs = {"whole": whole, "trimmed": whole_image_trimmed(fields, fluo_model)}

    def tiled(block: int):
        if block not in runs:
            result = segment_slide(large_slide, fluo_model,
                                   options(block=block, margin=LARGE_MARGIN, name=f"b{block}", workers=1))
            runs[block] = result, zarr.open_group(large_slide, mode="r")[f"labels/b{block}/0"][...]
        return runs[block]

    return runs["whole"], tiled, runs["trimmed"]


@pytest.mark.parametrize("block", [96, 256])
def test_objects_larger_than_the_margin_equal_the_whole_image_and_none_is_dropped(large_runs, block):
    whole, tiled_at, trimmed = large_runs
    result, tiled = tiled_at(block)
    extents = [max(b[0].stop - b[0].start, b[1].stop - b[1].start) for b in ndi.find_objects(whole) if b is not None]
    assert sum(e > 2 * LARGE_MARGIN for e in extents) > 10  # many objects more than twice as wide as the margin
    assert result.large_objects > 0 and result.too_large == 0 and result.dropped_objects == 0
    assert_same_objects(whole, tiled)  # F1 at IoU 0.9 is exactly 1: nothing cut, merged, duplicated or dropped
    assert (result.trimmed_objects, result.trimmed_pixels) == trimmed  # large objects' stray pieces counted too


def test_a_run_killed_in_the_large_object_pass_resumes_to_identical_labels(large_slide, large_runs, fluo_model):
    _, reference = large_runs[1](BLOCK)
    large = large_slide / "labels" / ".cells.work" / "large"
    command = [sys.executable, "-m", "sparseseg.cli", "segment", str(large_slide), "--model", str(fluo_model),
               "--block", str(BLOCK), "--tile", str(TILE), "--margin", str(LARGE_MARGIN), "--workers", "1", "-q"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (large.exists() and len(list(large.glob("*.npz"))) >= 2):
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # in the middle of the large-object pass
    process.wait()
    done = len(list(large.glob("*.npz")))
    assert done >= 2 and not (large_slide / "labels" / "cells").exists()
    assert subprocess.run(command + ["--resume"], timeout=600).returncode == 0
    np.testing.assert_array_equal(zarr.open_group(large_slide, mode="r")["labels/cells/0"][...], reference)


def test_large_objects_error_stops_at_an_object_beyond_the_cap(large_slide, fluo_model):
    """--large-objects error: one line naming the cap, raised by the block that met the object; nothing written."""
    from sparseseg.errors import InputError

    with pytest.raises(InputError, match=r"spans \d+x\d+ px, beyond --max-object-um 10"):
        segment_slide(large_slide, fluo_model, options(margin=LARGE_MARGIN, name="capped", workers=1,
                                                       large_objects="error", max_object_um=10))
    assert not (large_slide / "labels" / "capped").exists()
