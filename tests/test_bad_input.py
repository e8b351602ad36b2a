"""Bad input and faults against every command: one stderr line naming the file or option, exit code 2, no
traceback, no new file, and every output that existed before byte-identical afterwards."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch
import zarr
from conftest import DSB, SVS

from sparseseg.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) with a hash of its bytes; special files (FIFOs) by their
    type, so one replaced by a regular file shows."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file()
            else f"special {stat.S_IFMT(p.lstat().st_mode):o}"
            for p in sorted(folder.rglob("*")) if not p.is_dir()}


@pytest.fixture(scope="module")
def work(tmp_path_factory, fluo_model, fluo_training_folders) -> Path:
    """A workspace as a user has it: a source image, its slide with a segmentation, a model, training data."""
    root = tmp_path_factory.mktemp("bad-input")
    pixels = iio.imread(DSB / "images" / "fluo_0402a81e.png")
    tifffile.imwrite(root / "fluo.tif", pixels, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    shutil.copy(fluo_model, root / "model.pt")
    shutil.copytree(fluo_training_folders["images"], root / "images")
    shutil.copytree(fluo_training_folders["annotations"], root / "annotations")
    assert main(["ingest", str(root / "fluo.tif"), str(root / "slide.ome.zarr"), "-q", "--chunk", "128"]) == 0
    assert main(["segment", str(root / "slide.ome.zarr"), "--model", str(root / "model.pt"), "--block", "128",
                 "-q"]) == 0
    shutil.copytree(root / "slide.ome.zarr" / "labels" / "tissue", root / "slide.ome.zarr" / "labels" / "manual")
    (root / "notes.txt").write_text("a text file, not an image\n")
    (root / "folder").mkdir()
    os.mkfifo(root / "pipe")  # a special file as an output: never written through or replaced
    (root / "measured-pipe").mkdir()
    os.mkfifo(root / "measured-pipe" / "objects.parquet")
    nan = np.full((64, 64), np.nan, np.float32)
    tifffile.imwrite(root / "nan.tif", nan)
    bad_images = root / "bad-annotations"
    (bad_images / "images").mkdir(parents=True)
    (bad_images / "annotations").mkdir()
    shutil.copy(root / "images" / "fluo_0402a81e.png", bad_images / "images")
    (bad_images / "annotations" / "fluo_0402a81e.tif").write_text("not a TIFF at all\n")
    for name, geometry in (("null", None),
                           ("nan", {"type": "Polygon", "coordinates": [[[1, 1], [float("nan"), 2], [2, 2], [1, 1]]]})):
        (root / f"{name}.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
            {"type": "Feature", "geometry": geometry, "properties": {"classification": {"name": "Nucleus"}}}]}))
    for name, (data, _) in HOSTILE_GEOJSON.items():
        (root / f"{name}.geojson").write_text(json.dumps(data))
    tifffile.imwrite(root / "small-labels.tif", np.zeros((10, 10), np.uint16))
    for name, width, height, layout in (("lie-tiled", 60000, 60000, {"tile": (64, 64)}),
                                        ("lie-strips", 60000, 60000, {"rowsperstrip": 16}),
                                        ("width-zero", 0, 64, {})):  # headers that declare what is not there
        tifffile.imwrite(root / f"{name}.tif", np.full((128, 128), 7, np.uint8), **layout)
        with tifffile.TiffFile(root / f"{name}.tif", mode="r+b") as tif:
            tif.pages[0].tags["ImageWidth"].overwrite(width)
            tif.pages[0].tags["ImageLength"].overwrite(height)
    # a copy of the slide with a chunk missing (a damaged copy) and one with a corrupt chunk
    shutil.copytree(root / "slide.ome.zarr", root / "missing.ome.zarr")
    (root / "missing.ome.zarr" / "0" / "0" / "1" / "1").unlink()
    shutil.copytree(root / "slide.ome.zarr", root / "missing-label.ome.zarr")
    (root / "missing-label.ome.zarr" / "labels" / "cells" / "0" / "1" / "1").unlink()  # background or not: stored
    for name in ("datasets-string", "empty-level"):  # hostile metadata: a string for datasets, an empty level
        shutil.copytree(root / "slide.ome.zarr", root / f"{name}.ome.zarr")
        group = zarr.open_group(root / f"{name}.ome.zarr", mode="r+")
        multiscales = group.attrs["multiscales"]
        if name == "datasets-string":
            multiscales[0]["datasets"] = "0"
        else:
            group.create_array("e", shape=(1, 0, 347), chunks=(1, 1, 128), dtype=np.uint8, fill_value=0)
            multiscales[0]["datasets"][0]["path"] = "e"
        group.attrs["multiscales"] = multiscales
    # a table measured on the slide's labels, and a copy of the slide segmented again (other labels)
    assert main(["measure", str(root / "slide.ome.zarr"), "--out", str(root / "measured"), "-q", "--no-report"]) == 0
    shutil.copytree(root / "slide.ome.zarr", root / "resegmented.ome.zarr")
    assert main(["segment", str(root / "resegmented.ome.zarr"), "--model", str(root / "model.pt"), "--block", "128",
                 "--overwrite", "-q"]) == 0
    shutil.copytree(root / "slide.ome.zarr", root / "corrupt.ome.zarr")
    (root / "corrupt.ome.zarr" / "0" / "0" / "1" / "1").write_bytes(b"\x00" * 100)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, root / "evil.pt")
    (root / "junk.pt").write_bytes(b"garbage" * 100)
    state = torch.load(root / "model.pt", weights_only=True)
    first = next(iter(state["state_dict"]))
    torch.save({**state, "state_dict": {**state["state_dict"], first: state["state_dict"][first] * float("nan")}},
               root / "nan-weights.pt")
    torch.save({**state, "pixel_size_um": float("nan")}, root / "nan-pixel.pt")
    tifffile.imwrite(root / "float-labels.tif", np.zeros((260, 347), np.float32))
    tifffile.imwrite(root / "big-labels.tif", np.full((260, 347), 2**33, np.uint64))
    tifffile.imwrite(root / "neg-labels.tif", np.full((260, 347), -3, np.int16))
    tifffile.imwrite(root / "rgb-labels.tif", np.zeros((260, 347, 3), np.uint8))
    (root / "semicolon.csv").write_text("y;x\n1;2\n")
    (root / "binary.csv").write_bytes(b"\xff\xfe\x00binary")
    (root / "points.csv").write_text("y,x,class\n1,2,tumour\n")
    (root / "empty.svs").write_bytes(b"")
    (root / "empty.png").write_bytes(b"")
    (root / "junk.parquet").write_bytes(b"PAR0" + b"\x07" * 3000)
    rgb = iio.imread(DSB / "images" / "he_65c8527c.png")[..., :3]
    tifffile.imwrite(root / "rgb.tif", rgb, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER",
                     photometric="rgb")
    assert main(["ingest", str(root / "rgb.tif"), str(root / "rgb.ome.zarr"), "-q"]) == 0
    return root


S, M = "slide.ome.zarr", "model.pt"


def _feature(geometry, properties=None) -> dict:
    return {"type": "Feature", "geometry": geometry, "properties": {} if properties is None else properties}


_SQUARE = [[[10, 10], [40, 10], [40, 40], [10, 40], [10, 10]]]
HOSTILE_GEOJSON = {  # name: (GeoJSON, text of the one error line)
    "list-empty": ([], "holds no feature"),
    "collection-empty": ({"type": "FeatureCollection", "features": []}, "holds no feature"),
    "features-string": ({"type": "FeatureCollection", "features": "abc"}, '"features" must be a list'),
    "features-null": ({"type": "FeatureCollection", "features": None}, '"features" must be a list'),
    "feature-not-object": ({"type": "FeatureCollection", "features": [5]}, "not a GeoJSON Feature"),
    "bool-coordinates": ({"type": "FeatureCollection", "features": [_feature(
        {"type": "Polygon", "coordinates": [[[True, 1], [5, 2], [2, 9], [True, 1]]]})]}, "2 or 3 numbers"),
    "string-coordinates": ({"type": "FeatureCollection", "features": [_feature(
        {"type": "Polygon", "coordinates": [[["1", "1"], ["5", "2"], ["2", "9"], ["1", "1"]]]})]}, "2 or 3 numbers"),
    "flat-coordinates": ({"type": "FeatureCollection", "features": [_feature(
        {"type": "Polygon", "coordinates": [1, 2, 3]})]}, "nested lists of numbers"),
    "point-one-number": ([_feature({"type": "Point", "coordinates": [5]})], "2 or 3 numbers"),
    "unknown-geometry": ([_feature({"type": "Hexagon", "coordinates": [1, 2]})], "unknown geometry type"),
    "collection-without-geometries": ([_feature({"type": "GeometryCollection"})], '"geometries" list'),
    "properties-string": ([_feature({"type": "Point", "coordinates": [5, 5]}, "x")], '"properties" must be'),
    "classification-number": ([_feature({"type": "Point", "coordinates": [5, 5]}, {"classification": 5})],
                              '"classification" must be'),
    "classification-name-list": ([_feature({"type": "Polygon", "coordinates": _SQUARE},
                                           {"classification": {"name": ["a"]}})], '"classification" must be'),
}

_TRAIN = ["train", "--images", "{w}/images", "--annotations", "{w}/annotations", "--out", "{w}/t.pt"]
_CALIBRATE = ["calibrate", "--model", "{w}/" + M, "--images", "{w}/images", "--annotations", "{w}/annotations"]

CASES = [  # (id, argv with {w} for the workspace, text the one error line must contain)
    ("ingest-missing-source", ["ingest", "{w}/nope.tif", "{w}/x.ome.zarr"], "nope.tif"),
    ("ingest-text-file", ["ingest", "{w}/notes.txt", "{w}/x.ome.zarr"], "notes.txt"),
    ("ingest-nan-pixels", ["ingest", "{w}/nan.tif", "{w}/x.ome.zarr"], "NaN"),
    ("ingest-pixel-size-nan", ["ingest", "{w}/fluo.tif", "{w}/x.ome.zarr", "--pixel-size", "nan"], "--pixel-size"),
    ("ingest-pixel-size-inf", ["ingest", "{w}/fluo.tif", "{w}/x.ome.zarr", "--pixel-size", "inf"], "--pixel-size"),
    ("ingest-pixel-size-negative", ["ingest", "{w}/fluo.tif", "{w}/x.ome.zarr", "--pixel-size", "-1"], "--pixel-size"),
    ("ingest-chunk", ["ingest", "{w}/fluo.tif", "{w}/x.ome.zarr", "--chunk", "100"], "--chunk"),
    ("ingest-exists", ["ingest", "{w}/fluo.tif", "{w}/" + S], "already exists"),
    ("ingest-overwrite-source-folder", ["ingest", "{w}/images/fluo_0402a81e.png", "{w}/images", "--overwrite"],
     "holds the source"),
    ("ingest-overwrite-plain-file", ["ingest", "{w}/fluo.tif", "{w}/notes.txt", "--overwrite"], "is a file"),
    ("ingest-overwrite-other-folder", ["ingest", "{w}/fluo.tif", "{w}/annotations", "--overwrite"],
     "not a slide written by"),
    ("ingest-missing-parent", ["ingest", "{w}/fluo.tif", "{w}/no/such/x.ome.zarr"], "does not exist"),
    ("ingest-tiff-declares-60000-px-in-4-tiles", ["ingest", "{w}/lie-tiled.tif", "{w}/x.ome.zarr"],
     "tables list only 4"),
    ("ingest-tiff-declares-60000-px-in-8-strips", ["ingest", "{w}/lie-strips.tif", "{w}/x.ome.zarr"],
     "strips tables list only 8"),
    ("ingest-tiff-width-zero", ["ingest", "{w}/width-zero.tif", "{w}/x.ome.zarr"], "ImageWidth 0"),
    ("ingest-missing-chunk", ["ingest", "{w}/missing.ome.zarr", "{w}/x.ome.zarr"], "missing 1 of"),
    ("ingest-unwritable", ["ingest", "{w}/fluo.tif", "/proc/sparseseg-x.ome.zarr"], "/proc"),
    ("info-missing", ["info", "{w}/nope.ome.zarr"], "nope.ome.zarr"),
    ("info-not-a-slide", ["info", "{w}/folder"], "folder"),
    ("info-datasets-string", ["info", "{w}/datasets-string.ome.zarr"], "'datasets' must be"),
    ("segment-empty-level", ["segment", "{w}/empty-level.ome.zarr", "--model", "{w}/" + M], "is empty"),
    ("ingest-datasets-string", ["ingest", "{w}/datasets-string.ome.zarr", "{w}/x.ome.zarr"], "'datasets' must be"),
    ("annotations-null-geometry", ["annotations", "import", "{w}/" + S, "{w}/null.geojson"], "has no geometry"),
    ("annotations-nan-coordinate", ["annotations", "import", "{w}/" + S, "{w}/nan.geojson"], "NaN"),
    ("annotations-wrong-shape", ["annotations", "import", "{w}/" + S, "{w}/small-labels.tif"], "small-labels.tif"),
    ("annotations-missing-file", ["annotations", "import", "{w}/" + S, "{w}/nope.tif"], "nope.tif"),
    ("annotations-class-map", ["annotations", "import", "{w}/" + S, "{w}/null.geojson", "--class-map", "x"],
     "--class-map"),
    ("annotations-not-a-slide", ["annotations", "import", "{w}/folder", "{w}/null.geojson"], "folder"),
    ("annotations-text-as-labels", ["annotations", "import", "{w}/" + S, "{w}/notes.txt"], "notes.txt"),
    ("train-patch", ["train", "--images", "{w}/images", "--annotations", "{w}/annotations", "--out", "{w}/new.pt",
                     "--patch", "7"], "--patch"),
    ("train-batch", ["train", "--images", "{w}/images", "--annotations", "{w}/annotations", "--out", "{w}/new.pt",
                     "--batch", "0"], "--batch"),
    ("train-lr", ["train", "--images", "{w}/images", "--annotations", "{w}/annotations", "--out", "{w}/new.pt",
                  "--lr", "-1"], "--lr"),
    ("train-minutes", ["train", "--images", "{w}/images", "--annotations", "{w}/annotations", "--out", "{w}/new.pt",
                       "--minutes", "0"], "--minutes"),
    ("train-out-exists", ["train", "--images", "{w}/images", "--annotations", "{w}/annotations", "--out", "{w}/" + M,
                          "--minutes", "0.01"], "already exists"),
    ("train-out-folder", ["train", "--images", "{w}/images", "--annotations", "{w}/annotations", "--out", "{w}/folder"],
     "is a folder"),
    ("train-out-missing-folder", ["train", "--images", "{w}/images", "--annotations", "{w}/annotations", "--out",
                                  "{w}/no/such/m.pt"], "does not exist"),
    ("train-overwrite-not-checkpoint", ["train", "--images", "{w}/images", "--annotations", "{w}/annotations",
                                        "--out", "{w}/notes.txt", "--overwrite"], "not a sparseseg checkpoint"),
    ("train-text-annotation", ["train", "--images", "{w}/bad-annotations/images", "--annotations",
                               "{w}/bad-annotations/annotations", "--out", "{w}/new.pt"], "fluo_0402a81e.tif"),
    ("train-images-without-annotations", ["train", "--images", "{w}/images", "--out", "{w}/new.pt"], "--annotations"),
    ("train-resume-nothing", ["train", "--images", "{w}/images", "--annotations", "{w}/annotations", "--out",
                              "{w}/new.pt", "--resume"], "--resume"),
    ("segment-block-not-multiple", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--block", "7"], "--block"),
    ("segment-block-zero", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--block", "0"], "--block"),
    ("segment-block-negative", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--block", "-256"], "--block"),
    ("segment-margin", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--margin", "-1"], "--margin"),
    ("segment-workers", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--workers", "-2"], "--workers"),
    ("segment-threads", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--threads", "-1"], "--threads"),
    ("segment-name-escapes", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--name", "../../evil"], "--name"),
    ("segment-name-nested", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--name", "a/b"], "--name"),
    ("segment-name-reserved", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--name", "tissue", "--overwrite"],
     "reserved"),
    ("segment-exists", ["segment", "{w}/" + S, "--model", "{w}/" + M], "already exists"),
    ("segment-overwrite-foreign", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--name", "manual", "--overwrite"],
     "not written by `sparseseg segment`"),
    ("segment-model-missing", ["segment", "{w}/" + S, "--model", "{w}/nope.pt", "--name", "x"], "nope.pt"),
    ("segment-model-junk", ["segment", "{w}/" + S, "--model", "{w}/junk.pt", "--name", "x"], "junk.pt"),
    ("segment-model-evil", ["segment", "{w}/" + S, "--model", "{w}/evil.pt", "--name", "x"], "weights only"),
    ("segment-channels-mismatch", ["segment", "{w}/rgb.ome.zarr", "--model", "{w}/" + M], "--channels"),
    ("segment-channel-unknown", ["segment", "{w}/rgb.ome.zarr", "--model", "{w}/" + M, "--channels", "DAPI"], "DAPI"),
    ("segment-missing-chunk", ["segment", "{w}/missing.ome.zarr", "--model", "{w}/" + M, "--name", "x"], "missing"),
    ("segment-corrupt-chunk", ["segment", "{w}/corrupt.ome.zarr", "--model", "{w}/" + M, "--name", "x",
                               "--block", "128"], "corrupt.ome.zarr"),
    ("segment-max-object", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--max-object-um", "0"], "--max-object-um"),
    ("segment-working-pixel-size-zero", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--working-pixel-size", "0"],
     "--working-pixel-size"),
    ("segment-working-pixel-size-nan", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--working-pixel-size", "nan"],
     "--working-pixel-size"),
    ("measure-threads", ["measure", "{w}/" + S, "--threads", "0"], "--threads"),
    ("measure-regions", ["measure", "{w}/" + S, "--regions", "hexagons", "--out", "{w}/m"], "hexagons"),
    ("measure-labels-missing", ["measure", "{w}/" + S, "--labels", "nope", "--out", "{w}/m"], "nope"),
    ("measure-out-file", ["measure", "{w}/" + S, "--out", "{w}/notes.txt"], "notes.txt"),
    ("measure-out-parent", ["measure", "{w}/" + S, "--out", "{w}/no/such/m"], "does not exist"),
    ("measure-truth-missing", ["measure", "{w}/" + S, "--truth", "nope", "--out", "{w}/m"], "nope"),
    ("export-missing-folder", ["export", "geojson", "{w}/" + S, "--out", "{w}/no/such/c.geojson"], "does not exist"),
    ("export-onto-folder", ["export", "geojson", "{w}/" + S, "--out", "{w}/folder"], "is a folder"),
    ("export-labels-missing", ["export", "geojson", "{w}/" + S, "--labels", "nope", "--out", "{w}/c.geojson"], "nope"),
    ("segment-nan-weights", ["segment", "{w}/" + S, "--model", "{w}/nan-weights.pt", "--name", "n"], "NaN"),
    ("segment-nan-pixel-size", ["segment", "{w}/" + S, "--model", "{w}/nan-pixel.pt", "--name", "n"], "pixel size"),
    ("measure-float-labels", ["measure", "{w}/" + S, "--labels", "{w}/float-labels.tif", "--out", "{w}/m"],
     "must hold integers"),
    ("measure-uint64-labels", ["measure", "{w}/" + S, "--labels", "{w}/big-labels.tif", "--out", "{w}/m"], "uint64"),
    ("measure-grid-nan", ["measure", "{w}/" + S, "--regions", "grid:nanum", "--out", "{w}/m"], "grid:nanum"),
    ("view-port", ["view", "{w}/" + S, "--port", "70000", "--no-browser"], "--port"),
    ("export-onto-existing", ["export", "geojson", "{w}/" + S, "--out", "{w}/notes.txt"], "--overwrite"),
    ("export-onto-device", ["export", "geojson", "{w}/" + S, "--out", "/dev/null", "--overwrite"], "regular file"),
    ("measure-missing-label-chunk", ["measure", "{w}/missing-label.ome.zarr", "--out", "{w}/m"], "missing 1 of"),
    ("export-missing-label-chunk", ["export", "geojson", "{w}/missing-label.ome.zarr", "--out", "{w}/c.geojson"],
     "missing 1 of"),
    ("view-missing-label-chunk", ["view", "{w}/missing-label.ome.zarr", "--no-browser"], "missing 1 of"),
    ("export-measurements-of-other-labels", ["export", "geojson", "{w}/resegmented.ome.zarr", "--measurements",
                                             "{w}/measured/objects.parquet", "--out", "{w}/c.geojson"],
     "measured on other labels"),
    ("suggest-out-exists", ["suggest", "{w}/" + S, "--model", "{w}/" + M, "--out", "{w}/folder"], "already exists"),
    ("suggest-overwrite-foreign-folder", ["suggest", "{w}/" + S, "--model", "{w}/" + M, "--out", "{w}/images",
                                          "--overwrite"], "not a folder `sparseseg suggest` wrote"),
    ("suggest-size-larger-than-slide", ["suggest", "{w}/" + S, "--model", "{w}/" + M, "--size", "100000", "--out",
                                        "{w}/next"], "smaller than one --size"),
    ("suggest-folder-without-slides", ["suggest", "{w}/folder", "--model", "{w}/" + M, "--out", "{w}/next"],
     "without OME-Zarr slides"),
    ("suggest-regions-zero", ["suggest", "{w}/" + S, "--regions", "0", "--out", "{w}/next"], "--regions"),
    ("suggest-min-tissue", ["suggest", "{w}/" + S, "--min-tissue", "2", "--out", "{w}/next"], "--min-tissue"),
    ("suggest-model-missing", ["suggest", "{w}/" + S, "--model", "{w}/nope.pt", "--out", "{w}/next"], "nope.pt"),
    ("suggest-from-segmentation-missing", ["suggest", "{w}/" + S, "--from-segmentation", "nope", "--out", "{w}/next"],
     "labels/nope"),
    ("suggest-from-segmentation-without-uncertainty", ["suggest", "{w}/" + S, "--from-segmentation", "manual",
                                                       "--out", "{w}/next"], "no saved uncertainty"),
    ("suggest-from-segmentation-and-model", ["suggest", "{w}/" + S, "--from-segmentation", "cells", "--model",
                                             "{w}/" + M, "--out", "{w}/next"], "exclude each other"),
    ("suggest-from-segmentation-path", ["suggest", "{w}/" + S, "--from-segmentation", "../cells", "--out",
                                        "{w}/next"], "--from-segmentation"),
    ("calibrate-model-missing", ["calibrate", "--model", "{w}/nope.pt", "--images", "{w}/images", "--annotations",
                                 "{w}/annotations"], "nope.pt"),
    # outputs: an existing one only with --overwrite, never a special file (calibrate replaced both, 2026-12-07)
    ("calibrate-out-existing", _CALIBRATE + ["--out", "{w}/notes.txt"], "--overwrite"),
    ("calibrate-out-not-checkpoint", _CALIBRATE + ["--out", "{w}/notes.txt", "--overwrite"],
     "not a sparseseg checkpoint"),
    ("calibrate-out-pipe", _CALIBRATE + ["--out", "{w}/pipe", "--overwrite"], "regular file"),
    ("calibrate-out-device", _CALIBRATE + ["--out", "/dev/null", "--overwrite"], "regular file"),
    ("calibrate-out-folder", _CALIBRATE + ["--out", "{w}/folder"], "is a folder"),
    ("export-onto-pipe", ["export", "geojson", "{w}/" + S, "--out", "{w}/pipe", "--overwrite"], "regular file"),
    ("train-out-pipe", ["train", "--images", "{w}/images", "--annotations", "{w}/annotations", "--out", "{w}/pipe",
                        "--overwrite"], "regular file"),
    ("measure-out-holds-pipe", ["measure", "{w}/" + S, "--out", "{w}/measured-pipe"], "regular file"),
    # round three: every option's range and every input kind's wrong file, one line each (issue 26)
    ("ingest-chunk-zero", ["ingest", "{w}/fluo.tif", "{w}/x.ome.zarr", "--chunk", "0"], "--chunk"),
    ("ingest-chunk-48", ["ingest", "{w}/fluo.tif", "{w}/x.ome.zarr", "--chunk", "48"], "multiple of 16"),
    ("ingest-chunk-text", ["ingest", "{w}/fluo.tif", "{w}/x.ome.zarr", "--chunk", "abc"], "--chunk"),
    ("ingest-pixel-size-zero", ["ingest", "{w}/fluo.tif", "{w}/x.ome.zarr", "--pixel-size", "0"], "--pixel-size"),
    ("ingest-pixel-size-text", ["ingest", "{w}/fluo.tif", "{w}/x.ome.zarr", "--pixel-size", "abc"], "--pixel-size"),
    ("ingest-ngff-unknown", ["ingest", "{w}/fluo.tif", "{w}/x.ome.zarr", "--ngff", "0.3"], "--ngff"),
    ("ingest-tissue-unknown", ["ingest", "{w}/fluo.tif", "{w}/x.ome.zarr", "--tissue", "weird"], "--tissue"),
    ("ingest-folder-not-a-slide", ["ingest", "{w}/folder", "{w}/x.ome.zarr"], "neither a zarr group"),
    ("ingest-empty-svs", ["ingest", "{w}/empty.svs", "{w}/x.ome.zarr"], "empty.svs"),
    ("ingest-empty-png", ["ingest", "{w}/empty.png", "{w}/x.ome.zarr"], "empty.png"),
    ("ingest-csv-as-image", ["ingest", "{w}/points.csv", "{w}/x.ome.zarr"], "points.csv"),
    ("ingest-onto-itself", ["ingest", "{w}/" + S, "{w}/" + S, "--overwrite"], "destination is the source"),
    ("segment-tile-zero", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--name", "t", "--tile", "0"], "--tile"),
    ("segment-tile-not-multiple", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--name", "t", "--tile", "101"],
     "--tile"),
    ("segment-block-101", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--name", "t", "--block", "101"], "--block"),
    ("segment-batch-zero", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--name", "t", "--batch", "0"], "--batch"),
    ("segment-precision-fp8", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--name", "t", "--precision", "fp8"],
     "--precision"),
    ("segment-steps-zero", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--name", "t", "--steps", "0"], "--steps"),
    ("segment-min-size-negative", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--name", "t", "--min-size", "-1"],
     "--min-size"),
    ("segment-distance-threshold-nan", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--name", "t",
                                        "--distance-threshold", "nan"], "--distance-threshold"),
    ("segment-flow-error-negative", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--name", "t",
                                     "--flow-error-threshold", "-1"], "--flow-error-threshold"),
    ("segment-model-device-file", ["segment", "{w}/" + S, "--model", "/dev/null", "--name", "t"], "/dev/null"),
    ("segment-model-folder", ["segment", "{w}/" + S, "--model", "{w}/folder", "--name", "t"], "folder"),
    ("segment-model-unknown-name", ["segment", "{w}/" + S, "--model", "no_such_model", "--name", "t"],
     "not a bundled model"),
    ("segment-large-objects-unknown", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--name", "t",
                                       "--large-objects", "bogus"], "--large-objects"),
    ("segment-device-unknown", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--name", "t", "--device", "tpu"],
     "--device"),
    ("segment-max-object-negative", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--name", "t",
                                     "--max-object-um", "-5"], "--max-object-um"),
    ("segment-workers-zero", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--name", "t", "--workers", "0"],
     "--workers"),
    ("segment-threads-zero", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--name", "t", "--threads", "0"],
     "--threads"),
    ("segment-name-dotdot", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--name", ".."], "--name"),
    ("segment-name-empty", ["segment", "{w}/" + S, "--model", "{w}/" + M, "--name", ""], "--name"),
    ("segment-text-file-as-slide", ["segment", "{w}/notes.txt", "--model", "{w}/" + M, "--name", "t"], "notes.txt"),
    ("measure-grid-zero", ["measure", "{w}/" + S, "--regions", "grid:0um", "--out", "{w}/m"], "grid size"),
    ("measure-grid-negative", ["measure", "{w}/" + S, "--regions", "grid:-5um", "--out", "{w}/m"], "grid size"),
    ("measure-truth-text-file", ["measure", "{w}/" + S, "--truth", "{w}/notes.txt", "--out", "{w}/m"], "notes.txt"),
    ("measure-truth-negative-labels", ["measure", "{w}/" + S, "--truth", "{w}/neg-labels.tif", "--out", "{w}/m"],
     "negative values"),
    ("measure-negative-labels", ["measure", "{w}/" + S, "--labels", "{w}/neg-labels.tif", "--out", "{w}/m"],
     "negative values"),
    ("measure-rgb-labels", ["measure", "{w}/" + S, "--labels", "{w}/rgb-labels.tif", "--out", "{w}/m"], "2D"),
    ("measure-points-text-file", ["measure", "{w}/" + S, "--truth-points", "{w}/notes.txt", "--out", "{w}/m"],
     "y,x"),
    ("measure-points-semicolons", ["measure", "{w}/" + S, "--truth-points", "{w}/semicolon.csv", "--out",
                                   "{w}/m"], "y,x"),
    ("measure-points-binary", ["measure", "{w}/" + S, "--truth-points", "{w}/binary.csv", "--out", "{w}/m"],
     "not a readable points CSV"),
    ("measure-points-missing", ["measure", "{w}/" + S, "--truth-points", "{w}/nope.csv", "--out", "{w}/m"],
     "nope.csv"),
    ("measure-match-negative", ["measure", "{w}/" + S, "--match-um", "-1", "--out", "{w}/m"], "--match-um"),
    ("export-measurements-missing", ["export", "geojson", "{w}/" + S, "--measurements", "{w}/nope.parquet", "--out",
                                     "{w}/c.geojson"], "nope.parquet"),
    ("export-measurements-junk", ["export", "geojson", "{w}/" + S, "--measurements", "{w}/junk.parquet", "--out",
                                  "{w}/c.geojson"], "junk.parquet"),
    ("export-negative-labels", ["export", "geojson", "{w}/" + S, "--labels", "{w}/neg-labels.tif", "--out",
                                "{w}/c.geojson"], "negative values"),
    ("export-text-file-as-slide", ["export", "geojson", "{w}/notes.txt", "--out", "{w}/c.geojson"], "notes.txt"),
    ("export-format-unknown", ["export", "shapefile", "{w}/" + S, "--out", "{w}/c.shp"], "shapefile"),
    ("train-epochs-zero", [*_TRAIN, "--epochs", "0"], "--epochs"),
    ("train-images-missing", ["train", "--images", "{w}/nope", "--annotations", "{w}/annotations", "--out",
                              "{w}/t.pt"], "nope"),
    ("train-annotations-a-file", ["train", "--images", "{w}/images", "--annotations", "{w}/notes.txt", "--out",
                                  "{w}/t.pt"], "notes.txt"),
    ("train-depth-zero", [*_TRAIN, "--depth", "0"], "--depth"),
    ("train-width-zero", [*_TRAIN, "--width", "0"], "--width"),
    ("train-pixel-size-zero", [*_TRAIN, "--train-pixel-size", "0"], "--train-pixel-size"),
    ("train-class-weight-negative", [*_TRAIN, "--class-weight", "-1"], "--class-weight"),
    ("train-zoom-below-one", [*_TRAIN, "--zoom", "0.5"], "--zoom"),
    ("train-zoom-nan", [*_TRAIN, "--zoom", "nan"], "--zoom"),
    ("train-workers-zero", [*_TRAIN, "--workers", "0"], "--workers"),
    ("train-init-missing", [*_TRAIN, "--init", "{w}/nope.pt"], "nope.pt"),
    ("train-point-encoding-unknown", [*_TRAIN, "--point-encoding", "blobs"], "--point-encoding"),
    ("train-lr-nan", [*_TRAIN, "--lr", "nan"], "--lr"),
    ("train-minutes-inf", [*_TRAIN, "--minutes", "inf"], "--minutes"),
    ("train-loss-unknown", [*_TRAIN, "--loss", "magic"], "--loss"),
    ("info-text-file", ["info", "{w}/notes.txt"], "notes.txt"),
    ("info-unknown-option", ["info", "{w}/" + S, "--bogus"], "--bogus"),
    ("suggest-size-zero", ["suggest", "{w}/" + S, "--model", "{w}/" + M, "--size", "0", "--out", "{w}/next"],
     "--size"),
    ("suggest-regions-negative", ["suggest", "{w}/" + S, "--model", "{w}/" + M, "--regions", "-1", "--out",
                                  "{w}/next"], "--regions"),
    ("suggest-model-text-file", ["suggest", "{w}/" + S, "--model", "{w}/notes.txt", "--out", "{w}/next"],
     "notes.txt"),
    ("suggest-text-file-as-slide", ["suggest", "{w}/notes.txt", "--model", "{w}/" + M, "--out", "{w}/next"],
     "notes.txt"),
    ("suggest-min-tissue-negative", ["suggest", "{w}/" + S, "--min-tissue", "-1", "--out", "{w}/next"],
     "--min-tissue"),
    ("view-port-negative", ["view", "{w}/" + S, "--port", "-1", "--no-browser"], "--port"),
    ("view-labels-unknown", ["view", "{w}/" + S, "--labels", "nope", "--no-browser"], "nope"),
    ("view-text-file", ["view", "{w}/notes.txt", "--no-browser"], "notes.txt"),
    ("annotations-negative-labels", ["annotations", "import", "{w}/" + S, "{w}/neg-labels.tif"], "negative"),
    ("annotations-rgb-labels", ["annotations", "import", "{w}/" + S, "{w}/rgb-labels.tif"], "2D"),
    ("annotations-empty-png", ["annotations", "import", "{w}/" + S, "{w}/empty.png"], "empty.png"),
    ("annotations-missing-geojson", ["annotations", "import", "{w}/" + S, "{w}/nope.geojson"], "nope.geojson"),
    ("calibrate-images-missing", ["calibrate", "--model", "{w}/" + M, "--images", "{w}/nope", "--annotations",
                                  "{w}/annotations"], "nope"),
] + [(f"annotations-geojson-{name}", ["annotations", "import", "{w}/" + S, f"{{w}}/{name}.geojson"], text)
     for name, (_, text) in HOSTILE_GEOJSON.items()]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, work, capsys):
    _, argv, expected = case
    before = _snapshot(work)
    quiet = ["-q"] if argv[0] in ("ingest", "train", "segment", "measure") else []  # no progress bars on stderr
    code = main([a.format(w=work) for a in argv] + quiet)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expected in lines[0], lines[0]
    assert "weights_only=False" not in err
    assert _snapshot(work) == before, "files were created, changed or removed"


def test_a_closed_pipe_is_one_line_not_a_traceback(work):
    reader = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read(1)"], stdin=subprocess.PIPE)
    writer = subprocess.run([sys.executable, "-m", "sparseseg.cli", "info", str(work / S)], stdout=reader.stdin,
                            stderr=subprocess.PIPE, text=True, timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    reader.wait(timeout=30)
    assert "Traceback" not in writer.stderr and len(writer.stderr.strip().splitlines()) <= 1


def test_an_error_inside_a_dask_worker_is_one_line_naming_the_log_that_keeps_the_details(tmp_path):
    """Dask's worker logging ("Compute Failed" and a traceback) and multiprocessing's shutdown warnings stay in a
    log file that the one error line names; the terminal gets that line only."""
    slide = tmp_path / "cmu.ome.zarr"  # large enough that segment plans from a coarser level: level 0 is
    assert main(["ingest", str(SVS), str(slide), "-q"]) == 0  # first read by a worker
    (slide / "0" / "0" / "0" / "1").write_bytes(b"garbage" * 20)
    run = subprocess.run([sys.executable, "-m", "sparseseg.cli", "segment", str(slide), "--workers", "1", "-q"],
                         stderr=subprocess.PIPE, text=True, timeout=300,
                         env={**os.environ, "SPARSESEG_LOG_DIR": str(tmp_path / "logs"), "OMP_NUM_THREADS": "1"})
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert "cmu.ome.zarr" in lines[0] and "Dask log: " in lines[0]
    log = Path(lines[0].split("Dask log: ")[1].rstrip(")"))
    assert log.parent == tmp_path / "logs" and "Compute Failed" in log.read_text()


def _with_file_size_limit(limit: int):
    """For a subprocess: writing past ``limit`` bytes fails with EFBIG, as a full disk fails with ENOSPC."""
    import resource
    import signal

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("command", ["ingest", "export", "measure"])
def test_a_full_disk_names_the_output_and_replaces_nothing(command, work, tmp_path):
    """Out of room while writing: one line naming the output (not the source), exit 2, the existing output
    byte-identical and no partial sibling left."""
    out = tmp_path / {"ingest": "slide.ome.zarr", "export": "cells.geojson", "measure": "measured"}[command]
    argv = {"ingest": ["ingest", str(SVS), str(out), "-q"],
            "export": ["export", "geojson", str(work / S), "--overwrite", "--out", str(out)],
            "measure": ["measure", str(work / S), "-q", "--out", str(out)]}[command]
    if command == "export":
        out.write_text("an earlier export")
    before = _snapshot(tmp_path), _snapshot(work / S)
    run = subprocess.run([sys.executable, "-m", "sparseseg.cli", *argv], stderr=subprocess.PIPE, text=True, timeout=300,
                         preexec_fn=_with_file_size_limit(2048), env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert lines[0].split(": error: ")[1].startswith(f"{out}: cannot be written: File too large"), lines[0]
    assert (_snapshot(tmp_path), _snapshot(work / S)) == before


def test_a_killed_export_leaves_no_debris_for_the_next_run(work, tmp_path):
    out = tmp_path / "cells.geojson"
    (tmp_path / ".cells.geojson.partial-deadbeef").write_text("half written by a run that was killed")
    assert main(["export", "geojson", str(work / S), "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.geojson"]


def test_concurrent_segments_on_one_slide_never_corrupt_each_other(work, tmp_path):
    """The second writer fails at once with one line naming the holder; the first one's labels are exact."""
    slide = tmp_path / "slide.ome.zarr"
    shutil.copytree(work / S, slide)
    reference = zarr.open_group(slide, mode="r")["labels/cells/0"][...]
    command = [sys.executable, "-m", "sparseseg.cli", "segment", str(slide), "--model", str(work / M), "-q",
               "--overwrite"]
    rounds = int(os.environ.get("SPARSESEG_CONCURRENT_ROUNDS", "1"))  # 20 for a stress run
    for _ in range(rounds):
        first = subprocess.Popen(command + ["--block", "128"], stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not (slide / ".sparseseg.lock").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        second = subprocess.run(command + ["--block", "256"], stderr=subprocess.PIPE, text=True, timeout=120)
        assert first.wait(timeout=300) == 0, first.stderr.read()
        assert second.returncode == 2 and "another sparseseg command (segment" in second.stderr, second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        np.testing.assert_array_equal(zarr.open_group(slide, mode="r")["labels/cells/0"][...], reference)
        debris = [p.name for p in (slide / "labels").iterdir() if p.name.startswith(".") and p.name not in
                  (".zattrs", ".zgroup")]
        assert not debris and not (slide / ".sparseseg.lock").exists()


def test_missing_label_chunks_are_accepted_as_background_only_when_asked(work, tmp_path):
    """Labels are written with every chunk stored, so a missing one is damage: refused above; --fill-missing reads
    it as background and measures fewer cells than the intact slide (what used to happen silently)."""
    intact, damaged = tmp_path / "intact", tmp_path / "damaged"
    assert main(["measure", str(work / "slide.ome.zarr"), "--out", str(intact), "-q", "--no-report"]) == 0
    assert main(["measure", str(work / "missing-label.ome.zarr"), "--out", str(damaged), "-q", "--no-report",
                 "--fill-missing"]) == 0
    cells = [json.loads((folder / "metrics.json").read_text())["cells"] for folder in (intact, damaged)]
    assert cells[0] > cells[1] > 0
    level = zarr.open_group(work / "slide.ome.zarr", mode="r")["labels/cells/0"]
    assert level.nchunks_initialized == level.nchunks  # background chunks are stored too


def test_a_self_intersecting_polygon_is_repaired_with_a_warning_naming_it(work, tmp_path, caplog):
    """A bow-tie outline is imported as its repaired (valid) polygon, and the user is told which feature it was."""
    slide = tmp_path / "slide.ome.zarr"
    shutil.copytree(work / "slide.ome.zarr", slide)
    bowtie = tmp_path / "bowtie.geojson"
    bowtie.write_text(json.dumps([_feature({"type": "Polygon",
                                            "coordinates": [[[10, 10], [50, 50], [50, 10], [10, 50], [10, 10]]]},
                                           {"name": "bow tie"})]))
    assert main(["annotations", "import", str(slide), str(bowtie)]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("bowtie.geojson" in m and "feature 0 (bow tie): repaired an invalid polygon (Self-intersection" in m
               for m in warnings), warnings


def test_a_declared_size_lie_is_refused_at_once(work):
    """A header declaring 60000 x 60000 px over a few tiles or strips used to run for minutes (and write a 616 MB
    partial folder); it is refused from the header alone."""
    for name in ("lie-tiled", "lie-strips"):
        start = time.perf_counter()
        assert main(["ingest", str(work / f"{name}.tif"), str(work / "lie.ome.zarr"), "-q"]) == 2
        assert time.perf_counter() - start < 5 and not (work / "lie.ome.zarr").exists()
