"""Property tests on hostile input: random JSON into the GeoJSON importer, random metadata into the slide opener.

Every input either works or is refused with sparseseg's one-line ``InputError``; never another exception
(which the command line would show as a traceback)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparseseg.annotations.geojson import read_qupath_geojson
from sparseseg.errors import InputError
from sparseseg.io.omezarr import open_omezarr_slide

SCALARS = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(["type", "features", "geometry", "coordinates", "properties",
                                                       "classification", "name", "geometries", "x"]), inner,
                                      max_size=4), max_leaves=20)
NUMBERS = st.integers(-5, 80) | st.floats(-5, 80)
POSITIONS = st.lists(NUMBERS | SCALARS, min_size=0, max_size=4)
COORDINATES = st.recursive(POSITIONS, lambda inner: st.lists(inner, max_size=5), max_leaves=12)
GEOMETRY_TYPES = st.sampled_from(["Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon",
                                  "GeometryCollection", "Circle", ""])
GEOMETRIES = st.fixed_dictionaries({"type": GEOMETRY_TYPES, "coordinates": COORDINATES}) | JSON
CLASSIFICATIONS = st.none() | st.text(max_size=6) | st.fixed_dictionaries({"name": SCALARS}) | JSON
FEATURES = st.fixed_dictionaries({"type": st.just("Feature") | SCALARS, "geometry": GEOMETRIES,
                                  "properties": st.fixed_dictionaries({"classification": CLASSIFICATIONS}) | JSON})
DOCUMENTS = (st.fixed_dictionaries({"type": st.just("FeatureCollection"), "features": st.lists(FEATURES, max_size=4)
                                    | JSON}) | st.lists(FEATURES, max_size=4) | FEATURES | JSON)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENTS)
def test_random_geojson_is_imported_or_refused_in_one_line(document):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "hostile.geojson"
        path.write_text(json.dumps(document))
        try:
            read_qupath_geojson(path, (64, 64))
        except InputError as exc:
            assert "\n" not in str(exc)


DATASETS = st.lists(st.fixed_dictionaries({"path": st.sampled_from(["0", "1", "missing", ""]) | SCALARS,
                                           "coordinateTransformations": JSON}) | JSON, max_size=3) | JSON
AXES = st.lists(st.fixed_dictionaries({"name": st.sampled_from(["c", "y", "x", "t", "q"]) | SCALARS,
                                       "type": st.sampled_from(["channel", "space", "time"]) | SCALARS}),
                max_size=4) | JSON
MULTISCALES = st.lists(st.fixed_dictionaries({"version": st.sampled_from(["0.4", "0.5", "9"]) | SCALARS,
                                              "axes": AXES, "datasets": DATASETS}), max_size=2) | JSON


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MULTISCALES, st.sampled_from([(3, 16, 16), (1, 0, 16), (16, 16), (2, 1, 3, 16, 16)]))
def test_random_slide_metadata_opens_or_is_refused_in_one_line(multiscales, shape):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "hostile.ome.zarr"
        group = zarr.open_group(path, mode="w", zarr_format=2)
        group.create_array("0", shape=shape, chunks=tuple(max(1, n) for n in shape), dtype=np.uint8, fill_value=0)
        group.attrs["multiscales"] = multiscales
        try:
            open_omezarr_slide(path, fill_missing=True)
        except InputError as exc:
            assert "\n" not in str(exc)
