"""`sparseseg suggest`: where to annotate next, and the QuPath round trip of its proposals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile
import zarr
from conftest import OME_TIFF

from scipy.stats import spearmanr

from sparseseg.cli import main
from sparseseg.ingest import ingest
from sparseseg.instances.doubt import SUM_CHANNELS
from sparseseg.io.omezarr import open_omezarr_slide
from sparseseg.model.normalize import slide_normalization
from sparseseg.model.registry import resolve_model
from sparseseg.segment import SegmentOptions, segment_slide
from sparseseg.suggest import (Candidate, _predictor, candidate_grid, diverse_best, rank_candidates, score_in_process,
                               score_saved_rows)


def cmu_crop(folder, rows: slice, cols: slice):
    """A part of the committed CC0 CMU region (0.499 um/px) ingested as a slide (with its tissue mask)."""
    with tifffile.TiffFile(OME_TIFF) as tif:
        crop = tif.series[0].levels[0].asarray()[rows, cols]
    tifffile.imwrite(folder / "cmu.tif", crop, photometric="rgb", resolution=(1e4 / 0.499, 1e4 / 0.499),
                     resolutionunit="CENTIMETER")
    return ingest(folder / "cmu.tif", folder / "cmu.ome.zarr")


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """1024 x 1024 px of the CMU region, two thirds tissue: 25 squares of 100 um, a fraction of the time."""
    return cmu_crop(tmp_path_factory.mktemp("suggest"), slice(700, 1724), slice(1000, 2024))


def squares(geojson: dict) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of each proposal."""
    out = []
    for feature in geojson["features"]:
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        out.append((int(ring[:, 1].min()), int(ring[:, 1].max()), int(ring[:, 0].min()), int(ring[:, 0].max())))
    return out


def test_suggest_proposes_ranked_squares_in_tissue_and_imports_back_as_fully_known_regions(slide, tmp_path):
    out = tmp_path / "next"
    assert main(["suggest", str(slide), "--regions", "3", "--size", "100", "--out", str(out), "--workers", "1"]) == 0
    geojson = json.loads((out / "cmu.geojson").read_text())
    props = [f["properties"] for f in geojson["features"]]
    assert [p["measurements"]["rank"] for p in props] == [1, 2, 3]
    scores = [p["measurements"]["score"] for p in props]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    assert all(p["classification"]["name"] == "Annotate next" and p["objectType"] == "annotation" for p in props)
    boxes = squares(geojson)
    edge = round(100 / 0.499)
    assert len(set(boxes)) == 3 and all(y1 - y0 == edge and x1 - x0 == edge for y0, y1, x0, x1 in boxes)
    tissue = zarr.open_group(slide, mode="r")["labels/tissue/0"][...]
    assert all(tissue[y0:y1, x0:x1].mean() >= 0.5 for y0, y1, x0, x1 in boxes)
    html = (out / "index.html").read_text()
    assert all(f"thumbnails/cmu_{rank:03d}.png" in html and (out / f"thumbnails/cmu_{rank:03d}.png").is_file()
               for rank in range(1, 4))
    # QuPath round trip: the user draws one nucleus inside proposal #1 and exports everything
    y0, y1, x0, x1 = boxes[0]
    nucleus = [[x0 + 10, y0 + 10], [x0 + 30, y0 + 10], [x0 + 30, y0 + 28], [x0 + 10, y0 + 28], [x0 + 10, y0 + 10]]
    geojson["features"].append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [nucleus]},
                                "properties": {"objectType": "annotation", "classification": {"name": "Nucleus"}}})
    drawn = tmp_path / "drawn.geojson"
    drawn.write_text(json.dumps(geojson))
    assert main(["annotations", "import", str(slide), str(drawn)]) == 0
    known = zarr.open_group(slide, mode="r")["labels/annotations/0"][...]
    inside = np.zeros(known.shape, bool)
    for b0, b1, c0, c1 in boxes:
        inside[b0:b1, c0:c1] = True
    assert (known[inside] > 0).all() and (known[~inside] == 0).all()  # the whole square is known, nothing else
    assert np.unique(known[y0 + 12:y0 + 26, x0 + 12:x0 + 28]).tolist() == [2]  # the drawn object
    assert set(np.unique(known[inside]).tolist()) == {1, 2}  # the rest of the squares: background
    # suggested again (replacing the first output), nothing already annotated is proposed
    assert main(["suggest", str(slide), "--regions", "3", "--size", "100", "--out", str(out), "--workers", "1",
                 "--overwrite"]) == 0
    for b0, b1, c0, c1 in squares(json.loads((out / "cmu.geojson").read_text())):
        assert not inside[b0:b1, c0:c1].any()


def _candidate(components: tuple[float, float, float, float], descriptor) -> Candidate:
    keys = ("disagreement", "flow_error", "near_threshold", "class_doubt")
    return Candidate("s", 0, 0, 10, dict(zip(keys, components)), np.asarray(descriptor, float), 1)


def test_the_score_ranks_doubt_and_the_proposals_cover_diverse_tissue():
    """The candidate with the most doubt on every component scores highest; with two kinds of tissue, the two
    proposals come one from each even when the two best scores are of one kind."""
    rng = np.random.default_rng(0)
    kind_a = [_candidate(tuple(rng.random(4) * 0.5 + 0.5), [0.0, 0.0] + rng.normal(0, 0.01, 2)) for _ in range(30)]
    kind_b = [_candidate(tuple(rng.random(4) * 0.5), [5.0, 5.0] + rng.normal(0, 0.01, 2)) for _ in range(30)]
    top = _candidate((2.0, 2.0, 2.0, 2.0), [0.0, 0.0])
    candidates = kind_a + kind_b + [top]
    rank_candidates(candidates)
    assert max(candidates, key=lambda c: c.score) is top and top.score == 1.0
    best_two = sorted(candidates, key=lambda c: -c.score)[:2]
    assert all(c.descriptor[0] < 1 for c in best_two)  # both of kind a: plain ranking would not diversify
    chosen = diverse_best(candidates, 2)
    assert [c.rank for c in chosen] == [1, 2] and chosen[0] is top
    assert {c.descriptor[0] > 1 for c in chosen} == {False, True}


def test_suggest_over_an_archive_folder_is_repeatable_and_qupath_shaped(slide, tmp_path):
    """A folder of two slides: proposals across both, every feature a closed QuPath annotation polygon in the slide,
    and a second run with the same model gives the same proposals."""
    archive = tmp_path / "archive"
    archive.mkdir()
    for name in ("a", "b"):
        shutil.copytree(slide, archive / f"{name}.ome.zarr", ignore=shutil.ignore_patterns("annotations"))
    runs = []
    for out in (tmp_path / "first", tmp_path / "second"):
        assert main(["suggest", str(archive), "--regions", "4", "--size", "100", "--out", str(out)]) == 0
        runs.append({name: json.loads((out / f"{name}.geojson").read_text()) for name in ("a", "b")})
    assert runs[0] == runs[1]
    features = runs[0]["a"]["features"] + runs[0]["b"]["features"]
    assert sorted(f["properties"]["measurements"]["rank"] for f in features) == [1, 2, 3, 4]
    shape = zarr.open_group(slide, mode="r")["0"].shape[1:]
    for feature in features:
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        ring = feature["geometry"]["coordinates"][0]
        assert len(ring) == 5 and ring[0] == ring[-1]
        assert all(0 <= x <= shape[1] and 0 <= y <= shape[0] for x, y in ring)
        assert set(feature["properties"]) >= {"objectType", "classification", "measurements", "name"}


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    """The same crop as ``slide``, its own copy (never annotated), segmented with the bundled model: labels/cells
    and the doubt map saved beside them."""
    crop = cmu_crop(tmp_path_factory.mktemp("segmented"), slice(700, 1724), slice(1000, 2024))
    return crop, segment_slide(crop, None, SegmentOptions(progress=False, workers=1))


def test_segment_saves_its_doubt_per_cell_where_its_labels_are(segmented, capsys):
    """The saved map's cells sit where the labels are (object pixels per cell as the labels have them), and its
    sums are consistent: every count at most the cell's pixels, the class mix summing to the foreground."""
    slide, result = segmented
    group = zarr.open_group(slide / "labels" / "cells", mode="r")
    doubt = group["uncertainty"][...].astype(np.float64)
    attrs = group["uncertainty"].attrs["sparseseg"]
    cell = attrs["cell"]
    labels = group["0"][...]
    assert attrs["scale"] == 1.0 and attrs["channels"][:len(SUM_CHANNELS)] == list(SUM_CHANNELS)
    assert doubt.shape == (len(attrs["channels"]), -(-labels.shape[0] // cell), -(-labels.shape[1] // cell))
    pixels, near, foreground, _, object_pixels, _, objects, disagreement = doubt[:len(SUM_CHANNELS)]
    assert pixels.max() == cell * cell and (near <= pixels).all() and (object_pixels <= pixels).all()
    assert np.allclose(doubt[len(SUM_CHANNELS):].sum(0), foreground, atol=0.05 * cell * cell)
    h, w = doubt.shape[1] * cell, doubt.shape[2] * cell
    padded = np.zeros((h, w), bool)
    padded[:labels.shape[0], :labels.shape[1]] = labels > 0
    from_labels = padded.reshape(doubt.shape[1], cell, doubt.shape[2], cell).sum((1, 3))
    looked = pixels > 0
    assert looked.mean() > 0.5 and (from_labels[~looked] == 0).all()
    assert np.mean(from_labels[looked] == object_pixels[looked]) > 0.98
    assert abs(objects.sum() - result.n_objects) <= 0.01 * result.n_objects
    assert not attrs["tta"] and not disagreement.any()  # no views ran: nothing to disagree
    assert main(["info", str(slide)]) == 0
    listed = {line.split(":")[0].strip(): line for line in capsys.readouterr().out.splitlines()}
    assert "doubt map saved" in listed["cells"] and "doubt map" not in listed["tissue"]


def test_suggest_from_a_segmentation_ranks_like_the_network_without_running_it(segmented, tmp_path):
    """Each candidate's flow error, near-threshold share and class doubt from the saved map match the network
    path's on the same squares (rank correlation, size), so the two rank alike; the saved path loads no model."""
    slide, _ = segmented
    info = open_omezarr_slide(slide)
    edge = round(100 / info.pixel_size_um[0])
    normalization = slide_normalization(info.levels)
    origins = candidate_grid(slide, tuple(info.shape[1:]), edge, 0.5)
    network = score_in_process(slide, resolve_model(None), origins, edge, 1.0, normalization, "cpu")
    loads = _predictor.cache_info().misses
    saved = score_saved_rows(slide, "cells", origins, edge, normalization)
    assert len(origins) >= 15 and all(s is not None for s in saved)
    for key in ("flow_error", "near_threshold", "class_doubt"):
        a, b = np.array([n[0][key] for n in network]), np.array([s[0][key] for s in saved])
        assert spearmanr(a, b)[0] > 0.9, key
        assert np.median(np.abs(a - b) / np.abs(a)) < 0.1, key
    assert spearmanr([n[2] for n in network], [s[2] for s in saved])[0] > 0.9  # objects per square
    ranked = []
    for scored in (network, saved):
        candidates = [Candidate(str(slide), y, x, edge, {k: v for k, v in components.items() if k != "disagreement"},
                                descriptor, objects) for (y, x), (components, descriptor, objects) in zip(origins, scored)]
        rank_candidates(candidates)
        ranked.append(candidates)
    assert spearmanr([c.score for c in ranked[0]], [c.score for c in ranked[1]])[0] > 0.9
    top = [{(c.y, c.x) for c in sorted(candidates, key=lambda c: -c.score)[:5]} for candidates in ranked]
    assert len(top[0] & top[1]) >= 3
    out = tmp_path / "next"
    assert main(["suggest", str(slide), "--from-segmentation", "cells", "--regions", "3", "--out", str(out)]) == 0
    props = [f["properties"] for f in json.loads((out / "cmu.geojson").read_text())["features"]]
    assert [p["measurements"]["rank"] for p in props] == [1, 2, 3]
    assert all("disagreement" not in p["measurements"] and "flow_error" in p["measurements"] for p in props)
    assert _predictor.cache_info().misses == loads  # no model was loaded for the saved path


def test_a_tta_segmentation_saves_its_views_disagreement_and_suggest_ranks_by_it(tmp_path):
    """`segment --tta` saves the 8 views' disagreement (over the foreground only), and `suggest
    --from-segmentation` then scores by all four components."""
    slide = cmu_crop(tmp_path, slice(800, 1312), slice(1100, 1612))
    segment_slide(slide, None, SegmentOptions(progress=False, workers=1, tta=True))
    array = zarr.open_group(slide / "labels" / "cells", mode="r")["uncertainty"]
    doubt = array[...]
    assert array.attrs["sparseseg"]["tta"]
    foreground, disagreement = doubt[SUM_CHANNELS.index("foreground")], doubt[SUM_CHANNELS.index("disagreement")]
    assert (disagreement[foreground == 0] == 0).all() and (disagreement[foreground > 0] > 0).mean() > 0.9
    out = tmp_path / "next"
    assert main(["suggest", str(slide), "--from-segmentation", "cells", "--regions", "2", "--size", "50",
                 "--out", str(out)]) == 0
    props = [f["properties"] for f in json.loads((out / "cmu.geojson").read_text())["features"]]
    assert len(props) == 2 and all(p["measurements"]["disagreement"] > 0 for p in props)
