"""Slide readers: same object whatever the source, picklable levels that workers open themselves."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import GENERIC_TIFF, OME_TIFF, SVS
from distributed import Client, LocalCluster
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseseg.cli import main
from sparseseg.io import open_slide
from sparseseg.pyramid import downsample_mean_2x, pyramid_shapes
from sparseseg.tissue import resample_mask_block


@pytest.mark.parametrize("path,fmt,n_levels", [(SVS, "svs", 1), (OME_TIFF, "ome-tiff", 4),
                                                (GENERIC_TIFF, "tiff", 4)])
def test_tiff_kinds_open_as_the_same_slide(path, fmt, n_levels):
    slide = open_slide(path)
    assert slide.source_format == f"{fmt} (tifffile)"
    assert slide.shape == (3, 2967, 2220) and slide.dtype == np.uint8
    assert len(slide.levels) == n_levels
    np.testing.assert_allclose(slide.pixel_size_um, (0.499, 0.499))
    window = slide.levels[0][:, 1000:1300, 700:1100].compute()
    np.testing.assert_array_equal(window, tifffile.imread(path)[1000:1300, 700:1100].transpose(2, 0, 1))


def test_slide_levels_compute_on_process_workers():
    """tifffile stores do not pickle; our levels carry only the path, so workers re-open the file."""
    slide = open_slide(OME_TIFF, chunk=512)
    restored = pickle.loads(pickle.dumps(slide.levels[1]))
    expected = tifffile.imread(OME_TIFF, level=1).transpose(2, 0, 1).astype(np.int64).sum(axis=(1, 2))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        sums = client.compute(restored.astype(np.int64).sum(axis=(1, 2))).result()
    np.testing.assert_array_equal(sums, expected)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 70), w=st.integers(1, 70), chunk=st.sampled_from([2, 4, 16]), seed=st.integers(0, 9),
       dtype=st.sampled_from(["uint8", "uint16", "int16", "float32"]))
def test_downsample_mean_2x_matches_numpy_reference(h, w, chunk, seed, dtype):
    import dask.array as da

    info = np.iinfo(dtype) if dtype != "float32" else np.iinfo(np.int16)
    pixels = np.random.default_rng(seed).integers(info.min, info.max, (2, h, w), endpoint=True).astype(dtype)
    padded = np.pad(pixels, ((0, 0), (0, h % 2), (0, w % 2)), mode="edge").astype(np.float64)
    expected = padded.reshape(2, padded.shape[1] // 2, 2, padded.shape[2] // 2, 2).mean(axis=(2, 4))
    got = downsample_mean_2x(da.from_array(pixels, chunks=(2, chunk, chunk))).compute()
    assert got.dtype == pixels.dtype and got.shape == (2, (h + 1) // 2, (w + 1) // 2)
    if dtype == "float32":
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    else:  # integers round half up
        np.testing.assert_array_equal(got, np.floor(expected + 0.5).astype(dtype))


@settings(max_examples=80, deadline=None)
@given(mh=st.integers(1, 30), mw=st.integers(1, 30), shift=st.integers(-3, 3), data=st.data())
def test_resample_mask_block_takes_the_mask_pixel_under_each_centre(mh, mw, shift, data):
    mask = np.random.default_rng(mh * 31 + mw).random((mh, mw)) > 0.5
    scale = 2.0**shift  # output pixel size in mask pixels
    height = max(1, int(np.ceil(mh / scale)))
    width = max(1, int(np.ceil(mw / scale)))
    y0 = data.draw(st.integers(0, height - 1))
    x0 = data.draw(st.integers(0, width - 1))
    h = data.draw(st.integers(1, height - y0))
    w = data.draw(st.integers(1, width - x0))
    got = resample_mask_block(mask, shift, (h, w), y0, x0)
    centre_y = np.minimum(((np.arange(y0, y0 + h) + 0.5) * scale).astype(int), mh - 1)
    centre_x = np.minimum(((np.arange(x0, x0 + w) + 0.5) * scale).astype(int), mw - 1)
    np.testing.assert_array_equal(got, mask[np.ix_(centre_y, centre_x)])


def test_pyramid_stops_when_a_level_fits_one_chunk():
    assert pyramid_shapes((2967, 2220), 1024) == [(2967, 2220), (1484, 1110), (742, 555)]
    assert pyramid_shapes((500, 300), 1024) == [(500, 300)]
    assert pyramid_shapes((1025, 10), 1024) == [(1025, 10), (513, 5)]


def test_info_reports_levels_pixel_size_and_labels(tmp_path, capsys):
    dst = tmp_path / "slide.ome.zarr"
    assert main(["ingest", "-q", "--ngff", "0.5", "--chunk", "512", str(SVS), str(dst)]) == 0
    capsys.readouterr()
    assert main(["info", str(dst)]) == 0
    out = capsys.readouterr().out
    assert "NGFF 0.5, zarr v3" in out and "pixel size 0.499 x 0.499 um" in out
    assert "0: shape (3, 2967, 2220) chunks (3, 512, 512)" in out
    assert "3: shape (3, 371, 278)" in out and "pixel 3.992 x 3.992 um" in out
    assert "tissue: uint8 (2967, 2220), 4 levels" in out
    shutil.rmtree(dst / "labels" / "tissue")  # a partial copy: the label list names a group that is gone
    assert main(["info", str(dst)]) == 0
    assert "tissue: listed in labels/ but missing on disk" in capsys.readouterr().out


def test_slide_names_keep_their_inner_dots_so_two_slides_never_share_an_output():
    from sparseseg.io.names import slide_stem

    names = ["TCGA-A7_0.9824.ome.zarr", "TCGA-A7_0.9825.ome.zarr", "case.1.svs", "case.2.ome.tif", "plain.zarr"]
    assert [slide_stem(Path(n)) for n in names] == ["TCGA-A7_0.9824", "TCGA-A7_0.9825", "case.1", "case.2", "plain"]
