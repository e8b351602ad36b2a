"""Bad input: one clear error line naming the file, exit code 2, no traceback, nothing left at DST."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import zarr
from conftest import OME_TIFF, SVS

from sparseseg.cli import main


def _leftovers(directory, name):
    """Anything at DST or a staging sibling of it."""
    return [p.name for p in directory.iterdir() if name in p.name]


def _truncated_tiff(tmp_path):
    path = tmp_path / "truncated.ome.tif"
    data = OME_TIFF.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, "truncated TIFF"


def _corrupt_tiles(tmp_path):
    """Intact structure but garbage inside the JPEG tiles: fails mid-stream, after writing began."""
    path = tmp_path / "corrupt-tiles.tif"
    data = bytearray(OME_TIFF.read_bytes())
    with tifffile.TiffFile(OME_TIFF) as tif:
        page = tif.pages[0]
        for offset, count in list(zip(page.dataoffsets, page.databytecounts))[40:80]:
            data[offset: offset + count] = bytes(count)
    path.write_bytes(bytes(data))
    return path, "is corrupt ("


def _corrupt_jpeg_entropy_data(tmp_path):
    """An SVS whose one tile has 300 bytes of its entropy-coded data overwritten, its markers intact: libjpeg
    decodes it with a warning to wrong pixels, which imagecodecs does not pass on (OpenSlide refuses it)."""
    path = tmp_path / "garbled.svs"
    data = bytearray(SVS.read_bytes())
    with tifffile.TiffFile(SVS) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[5], page.databytecounts[5]
    middle = offset + count // 2
    data[middle: middle + 300] = np.random.default_rng(0).integers(0, 255, 300, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path, "JPEG tile 5 (rows 0-240, columns 1200-1440 of its level) is corrupt (Corrupt JPEG data"


def _not_an_image(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("this is a text file, not a slide\n")
    return path, "not a supported image file"


def _zarr_without_multiscales(tmp_path):
    path = tmp_path / "plain.zarr"
    group = zarr.open_group(path, mode="w")
    group.create_array("0", shape=(3, 64, 64), dtype="uint8")
    return path, "no 'multiscales' metadata"


def _unsupported_dtype(tmp_path):
    path = tmp_path / "complex.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.complex64))
    return path, "unsupported pixel type complex64"


def _int64_tiff(tmp_path):
    path = tmp_path / "int64.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.int64))
    return path, "unsupported pixel type int64"


@pytest.mark.parametrize("make_bad", [_truncated_tiff, _corrupt_tiles, _corrupt_jpeg_entropy_data,
                                      _not_an_image, _zarr_without_multiscales,
                                      _unsupported_dtype, _int64_tiff])
def test_bad_input_gives_one_line_error_and_no_output(make_bad, tmp_path, capsys):
    src, problem = make_bad(tmp_path)
    dst = tmp_path / "out" / "slide.ome.zarr"
    dst.parent.mkdir()
    code = main(["ingest", "-q", str(src), str(dst)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert str(src) in err and problem in err
    assert "Traceback" not in err
    assert _leftovers(dst.parent, "slide.ome.zarr") == []


def test_existing_destination_is_kept_without_overwrite(tmp_path, capsys):
    dst = tmp_path / "slide.ome.zarr"
    dst.mkdir()
    (dst / "precious.txt").write_text("keep me")
    code = main(["ingest", "-q", str(SVS), str(dst)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "already exists" in err and str(dst) in err and len(err.splitlines()) == 1
    assert (dst / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slide.ome.zarr"]


def test_failed_overwrite_keeps_the_previous_output(tmp_path, capsys):
    dst = tmp_path / "slide.ome.zarr"
    assert main(["ingest", "-q", str(SVS), str(dst)]) == 0
    before = zarr.open_group(dst, mode="r")["0"][...]
    bad, _ = _corrupt_tiles(tmp_path)
    assert main(["ingest", "-q", "--overwrite", str(bad), str(dst)]) == 2
    np.testing.assert_array_equal(zarr.open_group(dst, mode="r")["0"][...], before)
    assert _leftovers(tmp_path, "slide.ome.zarr") == ["slide.ome.zarr"]


def test_overwrite_replaces_a_complete_output(tmp_path):
    dst = tmp_path / "slide.ome.zarr"
    assert main(["ingest", "-q", "--tissue", "none", str(SVS), str(dst)]) == 0
    assert "labels" not in zarr.open_group(dst, mode="r")
    assert main(["ingest", "-q", "--overwrite", str(SVS), str(dst)]) == 0
    assert "labels" in zarr.open_group(dst, mode="r")


def test_cli_process_prints_no_traceback(tmp_path):
    """The installed entry point, as a user runs it."""
    src = tmp_path / "broken.svs"
    shutil.copy(SVS, src)
    os.truncate(src, 300_000)
    exe = shutil.which("sparseseg", path=os.path.dirname(sys.executable))
    result = subprocess.run([exe, "ingest", str(src), str(tmp_path / "x.ome.zarr")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "truncated or corrupt TIFF" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.ome.zarr").exists()
