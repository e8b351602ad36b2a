"""Import QuPath GeoJSON annotations (level-0 pixel coordinates) into sparse annotation pieces.

Each feature's role comes from its classification name through a configurable mapping:
- ``object``: a completely drawn object (Polygon/MultiPolygon; also any unclassified polygon and
  QuPath detections),
- ``background`` / ``foreground``: brush strokes; a foreground stroke is split into objects by
  the boundary lines drawn across it,
- ``boundary``: LineString/MultiLineString pieces of true boundaries,
- ``point``: Point/MultiPoint seeds, one per object,
- ``ignore``: region annotations that are not labels.
Any other classification name is a *cell class* (QuPath's "Tumor", "Lymphocyte"...): a classified polygon
is a complete object of that class, a classified point a point of that class (``object_classes``,
``point_classes``); only a line with such a name is refused.
Features are rasterised one at a time in their own bounding box, so memory follows the annotated
area, not the slide size.
"""

from __future__ import annotations

import gzip
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from scipy import ndimage as ndi
from shapely.geometry import shape as to_shape

from sparseseg.annotations.model import BACKGROUND, FIRST_OBJECT, boundary_from_polylines
from sparseseg.errors import InputError
from sparseseg.geometry.lattice import empty_lattice
from sparseseg.geometry.polygons import polygon_window, rasterize_polygon

log = logging.getLogger(__name__)

ROLES = ("object", "background", "foreground", "boundary", "point", "ignore", "complete")
DEFAULT_CLASS_ROLES = {
    "background": "background", "glass": "background", "bg": "background",
    "foreground": "foreground", "fg": "foreground",
    "nucleus": "object", "nuclei": "object", "cell": "object", "object": "object",
    "positive": "object", "negative": "object",
    "boundary": "boundary", "edge": "boundary", "contour": "boundary",
    "point": "point", "seed": "point", "centroid": "point",
    "region*": "ignore", "ignore*": "ignore", "region": "ignore", "ignore": "ignore",
    # a `sparseseg suggest` proposal: all of it is known, background under the objects drawn inside
    "annotate next": "complete", "complete": "complete", "complete region": "complete",
}
_POLYGONAL = {"Polygon", "MultiPolygon"}
_LINEAR = {"LineString", "MultiLineString"}
_POINTS = {"Point", "MultiPoint"}


@dataclass
class Piece:
    """A rasterised feature: ``values`` (uint32, 0 = not covered) over a level-0 window."""

    window: tuple[slice, slice]
    values: np.ndarray
    source: str
    fill: bool = False  # a completely annotated region: background wherever no other feature lies

@dataclass
class SlideAnnotations:
    """Sparse annotations of a whole slide at level 0, as pieces plus points and boundary lines."""

    shape: tuple[int, int]
    pieces: list[Piece] = field(default_factory=list)
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # (y, x, object id or 0)
    boundaries: list[np.ndarray] = field(default_factory=list)           # (M, 2) (y, x) polylines
    complete: set[int] = field(default_factory=set)
    n_objects: int = 0
    object_classes: dict[int, str] = field(default_factory=dict)  # object id -> cell class
    point_classes: list[str] = field(default_factory=list)        # per point: its cell class or ''

    def rasterize(self, window: tuple[slice, slice]) -> np.ndarray:
        """The partial instance map (uint32) over ``window``; overlaps of objects become unknown."""
        rows, cols = window
        out = np.zeros((rows.stop - rows.start, cols.stop - cols.start), np.uint32)
        claimed_twice = np.zeros(out.shape, bool)
        regions = [piece for piece in self.pieces if piece.fill]
        for piece in [piece for piece in self.pieces if not piece.fill] + regions:
            r0, r1 = max(rows.start, piece.window[0].start), min(rows.stop, piece.window[0].stop)
            c0, c1 = max(cols.start, piece.window[1].start), min(cols.stop, piece.window[1].stop)
            if r0 >= r1 or c0 >= c1:
                continue
            src = piece.values[r0 - piece.window[0].start: r1 - piece.window[0].start,
                               c0 - piece.window[1].start: c1 - piece.window[1].start]
            dst = out[r0 - rows.start: r1 - rows.start, c0 - cols.start: c1 - cols.start]
            if piece.fill:  # under everything drawn (after it): only pixels no feature covers become background
                dst[(src > 0) & (dst == 0)] = BACKGROUND
                continue
            covered = src > 0
            clash = covered & (dst > 0) & (dst != src)
            fg_bg = clash & ((dst == BACKGROUND) != (src == BACKGROUND))
            if fg_bg.any():
                y, x = np.argwhere(fg_bg)[0] + (r0, c0)
                raise InputError(None, f"{piece.source} overlaps another feature with the opposite role "
                                       f"(foreground vs background) at pixel (y={y}, x={x}): the method needs "
                                       "background strokes outside every object")
            claimed_twice[r0 - rows.start: r1 - rows.start, c0 - cols.start: c1 - cols.start] |= clash
            dst[covered] = src[covered]
        out[claimed_twice] = 0  # two objects claim these pixels: unknown, never guessed
        return out


def load_features(path: Path) -> list[dict]:
    """Features of a GeoJSON FeatureCollection, a bare Feature list (QuPath), or one Feature."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a readable GeoJSON file ({exc})") from None
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise InputError(path, f"\"features\" must be a list of Features, got {json.dumps(features)[:60]}")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        raise InputError(path, "GeoJSON must be a FeatureCollection, a Feature or a list of Features")
    if not features:
        raise InputError(path, "holds no feature: nothing to import")
    for index, feature in enumerate(features):
        check_feature(feature, f"feature {index}", path)
    return features


def _check_coordinates(value, depth: int, label: str, path: Path) -> None:
    """Nested lists ``depth`` deep ending in positions: lists of 2 or 3 numbers (never booleans or strings)."""
    if not isinstance(value, list):
        raise InputError(path, f"{label}: coordinates must be nested lists of numbers, got {json.dumps(value)[:60]}")
    if depth == 0:
        if len(value) not in (2, 3) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                for v in value):
            raise InputError(path, f"{label}: a position must be 2 or 3 numbers, got {json.dumps(value)[:60]}")
        return
    for item in value:
        _check_coordinates(item, depth - 1, label, path)


#: Nesting depth of each geometry type's coordinates above its positions.
_COORDINATE_DEPTH = {"Point": 0, "MultiPoint": 1, "LineString": 1, "MultiLineString": 2, "Polygon": 2,
                     "MultiPolygon": 3}


def check_feature(feature, label: str, path: Path) -> None:
    """The members a Feature must have, with their JSON types: one error line naming the feature otherwise."""
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise InputError(path, f"{label}: not a GeoJSON Feature ({json.dumps(feature)[:60]})")
    props = feature.get("properties")
    if props is not None and not isinstance(props, dict):
        raise InputError(path, f"{label}: \"properties\" must be an object, got {json.dumps(props)[:60]}")
    cls = (props or {}).get("classification")
    if cls is not None and not isinstance(cls, str) and not (isinstance(cls, dict)
                                                              and isinstance(cls.get("name"), (str, type(None)))):
        raise InputError(path, f"{label}: \"classification\" must be a name or an object with a \"name\" "
                               f"string, got {json.dumps(cls)[:60]}")
    if isinstance(feature.get("geometry"), dict):  # a missing one is reported where it is read, with the name
        _check_geometry(feature["geometry"], label, path)


def _check_geometry(geometry, label: str, path: Path) -> None:
    kind = geometry.get("type") if isinstance(geometry, dict) else None
    if kind == "GeometryCollection":
        parts = geometry.get("geometries")
        if not isinstance(parts, list):
            raise InputError(path, f"{label}: a GeometryCollection needs a \"geometries\" list")
        for part in parts:
            _check_geometry(part, label, path)
        return
    if not isinstance(kind, str) or kind not in _COORDINATE_DEPTH:
        raise InputError(path, f"{label}: unknown geometry type {json.dumps(kind)[:40]} (use one of "
                               f"{', '.join(_COORDINATE_DEPTH)}, GeometryCollection)")
    _check_coordinates(geometry.get("coordinates"), _COORDINATE_DEPTH[kind], label, path)


def _class_name(feature: dict) -> str | None:
    props = feature.get("properties") or {}
    cls = props.get("classification")
    if isinstance(cls, dict):
        return cls.get("name")
    return cls if isinstance(cls, str) else None


def _role(feature: dict, geometry_type: str, class_roles: dict[str, str], label: str, path: Path
          ) -> tuple[str, str]:
    """(role, cell class or ''): a classification that names no role is a cell class of an object or a point."""
    name = _class_name(feature)
    if name is None or not name.strip():
        if geometry_type in _LINEAR:
            return "boundary", ""
        if geometry_type in _POINTS:
            return "point", ""
        return "object", ""
    key = name.strip().lower()
    role = class_roles.get(key)
    if role is None:
        role = next((r for pattern, r in class_roles.items() if pattern.endswith("*")
                     and key.startswith(pattern[:-1])), None)
    if role is None and geometry_type in _POLYGONAL:
        return "object", name.strip()
    if role is None and geometry_type in _POINTS:
        return "point", name.strip()
    if role is None:
        raise InputError(path, f"{label}: unknown class {name!r} on a {geometry_type} (a cell class needs a point or "
                               f"a polygon); map it with --class-map '{name}=ROLE' (ROLE one of {', '.join(ROLES)})")
    if (role in ("object", "background", "foreground", "complete") and geometry_type not in _POLYGONAL) or \
            (role == "boundary" and geometry_type not in _LINEAR) or (role == "point" and geometry_type not in _POINTS):
        raise InputError(path, f"{label}: class {name!r} means {role} but the geometry is a {geometry_type}")
    return role, ""


def _polygonal(geometry, label: str, path: Path):
    if geometry.is_valid:
        return geometry
    repaired = shapely.make_valid(geometry)
    parts = [g for g in getattr(repaired, "geoms", [repaired]) if g.geom_type in _POLYGONAL and g.area > 0]
    if not parts:
        raise InputError(path, f"{label}: self-intersecting polygon that cannot be repaired "
                               f"({shapely.is_valid_reason(geometry)})")
    log.warning("%s: %s: repaired an invalid polygon (%s)", path, label, shapely.is_valid_reason(geometry))
    return shapely.union_all(parts)


def _check_inside(geometry, shape: tuple[int, int], label: str, path: Path) -> None:
    minx, miny, maxx, maxy = geometry.bounds
    if minx < 0 or miny < 0 or maxx > shape[1] or maxy > shape[0]:
        raise InputError(path, f"{label}: geometry bounds x {minx:g}..{maxx:g}, y {miny:g}..{maxy:g} fall outside "
                               f"the {shape[1]}x{shape[0]} (width x height) image")


def _split_stroke(mask: np.ndarray, cuts: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of a stroke where 4-neighbours are not separated by a drawn boundary.

    ``cuts`` is the stroke window's half-pixel lattice; two pixels connect through the lattice
    point between them unless that point lies on a boundary line.
    """
    h, w = mask.shape
    lattice = empty_lattice((h, w))
    lattice[1::2, 1::2] = mask
    lattice[2:-1:2, 1::2] = mask[:-1] & mask[1:] & ~cuts[2:-1:2, 1::2]
    lattice[1::2, 2:-1:2] = mask[:, :-1] & mask[:, 1:] & ~cuts[1::2, 2:-1:2]
    labelled, n = ndi.label(lattice)
    return labelled[1::2, 1::2], n


def read_qupath_geojson(path: str | Path, image_shape: tuple[int, int],
                        class_roles: dict[str, str] | None = None) -> SlideAnnotations:
    """Parse, validate and rasterise a QuPath GeoJSON export against a (height, width) image."""
    path = Path(path)
    roles = {k.lower(): v for k, v in (class_roles or DEFAULT_CLASS_ROLES).items()}
    bad = {v for v in roles.values() if v not in ROLES}
    if bad:
        raise InputError(None, f"unknown roles {sorted(bad)} in the class map (use {', '.join(ROLES)})")
    features = load_features(path)
    result = SlideAnnotations(shape=tuple(image_shape))
    parsed = []
    for index, feature in enumerate(features):
        label = f"feature {index}" + (f" ({feature['properties']['name']})"
                                      if (feature.get("properties") or {}).get("name") else "")
        if not isinstance(feature.get("geometry"), dict):
            raise InputError(path, f"{label}: has no geometry (\"geometry\": {json.dumps(feature.get('geometry'))})")
        try:
            geometry = to_shape(feature["geometry"])
        except (KeyError, TypeError, ValueError, AttributeError, shapely.errors.GEOSException) as exc:
            raise InputError(path, f"{label}: invalid geometry ({exc})") from None
        if geometry.is_empty or not np.isfinite(shapely.get_coordinates(geometry)).all():
            raise InputError(path, f"{label}: the geometry is empty or has NaN or infinite coordinates")
        role, cell_class = _role(feature, geometry.geom_type, roles, label, path)
        if role == "ignore":
            continue
        _check_inside(geometry, result.shape, label, path)
        if geometry.geom_type in _POLYGONAL:
            geometry = _polygonal(geometry, label, path)
        parsed.append((label, role, geometry, cell_class))

    lines = [g for _, role, g, _ in parsed if role == "boundary"]
    for line in lines:
        for part in getattr(line, "geoms", [line]):
            result.boundaries.append(np.asarray(part.coords)[:, ::-1].copy())  # (x, y) -> (y, x)
    next_id = FIRST_OBJECT
    # background first, then objects: ids follow the feature order
    for label, role, geometry, cell_class in sorted(parsed, key=lambda item: item[1] != "background"):
        if role not in ("object", "background", "foreground", "complete"):
            continue
        window = polygon_window(geometry, result.shape)
        mask = rasterize_polygon(geometry, window)
        if not mask.any():
            log.warning("%s covers no pixel centre; skipped", label)
            continue
        if role in ("background", "complete"):
            values = mask.astype(np.uint32) * BACKGROUND
        elif role == "object":
            values = mask.astype(np.uint32) * next_id
            result.complete.add(next_id)
            if cell_class:
                result.object_classes[next_id] = cell_class
            next_id += 1
        else:  # a foreground stroke: objects separated by the boundary lines crossing it
            local_lines = [b - (window[0].start, window[1].start) for b in result.boundaries]
            crossing = [b for b in local_lines if _bbox_overlaps(b, mask.shape)]
            cuts = boundary_from_polylines(crossing, mask.shape, clip=True)
            components, n = _split_stroke(mask, cuts)
            values = np.where(components > 0, components.astype(np.uint32) + (next_id - 1), 0).astype(np.uint32)
            next_id += n
        result.pieces.append(Piece(window=window, values=values, source=f"{path}: {label}", fill=role == "complete"))
    result.n_objects = next_id - FIRST_OBJECT

    points = []
    for label, role, geometry, cell_class in parsed:
        if role != "point":
            continue
        for pt in getattr(geometry, "geoms", [geometry]):
            y, x = pt.y, pt.x
            i, j = min(int(y), result.shape[0] - 1), min(int(x), result.shape[1] - 1)
            owner = int(result.rasterize((slice(i, i + 1), slice(j, j + 1)))[0, 0])
            if owner == BACKGROUND:
                raise InputError(path, f"{label}: point (x={x:g}, y={y:g}) lies on a background stroke")
            points.append((y, x, owner))
            result.point_classes.append(cell_class)
    if points:
        result.points = np.asarray(points, np.float64)
    return result


def _bbox_overlaps(line: np.ndarray, shape: tuple[int, int]) -> bool:
    """Whether a (y, x) polyline's bounding box meets the window [0, H] x [0, W]."""
    (y0, x0), (y1, x1) = line.min(0), line.max(0)
    return bool(y1 >= 0 and x1 >= 0 and y0 <= shape[0] and x0 <= shape[1])
