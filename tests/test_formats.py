"""Every slide a lab has: vendor formats through OpenSlide, DICOM WSI through wsidicom, the same pixels as tifffile."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from conftest import DATA, GENERIC_TIFF, SVS

from sparseseg.cli import main
from sparseseg.info import describe_slide
from sparseseg.io.detect import open_slide, sniff_format

DICOM = DATA / "dicom" / "cmu"


def test_openslide_reads_the_svs_pixel_for_pixel_like_tifffile():
    by_openslide, by_tifffile = open_slide(SVS, reader="openslide"), open_slide(SVS)
    assert by_openslide.source_format == "aperio (openslide)" and by_tifffile.source_format == "svs (tifffile)"
    assert by_openslide.pixel_size_um == by_tifffile.pixel_size_um == (0.499, 0.499)
    np.testing.assert_array_equal(np.asarray(by_openslide.levels[0]), np.asarray(by_tifffile.levels[0]))
    generic = open_slide(GENERIC_TIFF, reader="openslide")  # a pyramid as OpenSlide sees it: several levels
    same_by_tifffile = open_slide(GENERIC_TIFF)
    assert len(generic.levels) == len(same_by_tifffile.levels) > 1
    np.testing.assert_array_equal(np.asarray(generic.levels[0]), np.asarray(same_by_tifffile.levels[0]))


def test_reader_choice_is_automatic():
    assert sniff_format(SVS) == "tiff" and sniff_format(DICOM) == "dicom"
    assert sniff_format(next(DICOM.glob("*.dcm"))) == "dicom"


def _made_with_wsidicomizer(tmp_path):
    """The DICOM WSI made from the CMU slide in the test when wsidicomizer can (it needs libturbojpeg);
    otherwise the committed copy made the same way (tests/data/README.md)."""
    try:
        from wsidicomizer import WsiDicomizer

        with WsiDicomizer.open(str(SVS)) as wsi:
            wsi.save(str(tmp_path / "dicom"))
        return tmp_path / "dicom"
    except Exception:  # no libturbojpeg on this machine
        return DICOM


def test_a_dicom_wsi_ingests_to_the_same_pixels_and_pixel_size(tmp_path):
    dicom = _made_with_wsidicomizer(tmp_path)
    assert main(["ingest", str(dicom), str(tmp_path / "d.ome.zarr"), "-q"]) == 0
    assert main(["ingest", str(SVS), str(tmp_path / "s.ome.zarr"), "-q"]) == 0
    d, s = (zarr.open_group(tmp_path / f"{k}.ome.zarr", mode="r") for k in "ds")
    np.testing.assert_array_equal(d["0"][...], s["0"][...])
    info = describe_slide(tmp_path / "d.ome.zarr")
    assert info["pixel_size_um"] == pytest.approx((0.499, 0.499)) and "wsidicom" in info["reader"]
    assert "tifffile" in describe_slide(tmp_path / "s.ome.zarr")["reader"]
