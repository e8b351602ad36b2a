"""Training patches from annotated OME-Zarr slides or image folders, drawn deterministically.

Patch i of step s is drawn with an RNG seeded by (seed, s, i), whatever process draws it: a
data-parallel rank only draws its share of indices, and the union over ranks is exactly the
batch one process would draw. Patches are centred on annotated pixels (weighted by their count),
read lazily, augmented (flips, 90-degree rotations, intensity, stain jitter for RGB) together with
their annotation, and get targets computed on a margin-enlarged window then cropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile
import zarr
from scipy import ndimage as ndi
from skimage.color import hed2rgb, rgb2hed

from sparseseg.annotations.model import FIRST_OBJECT, PatchAnnotation
from sparseseg.annotations.points import (
    CLUSTER_REACH_UM,
    POINT_RADIUS_UM,
    PointSet,
    class_indices,
    cluster_labels,
    point_labels,
    read_points_csv,
)
from sparseseg.annotations.store import ANNOTATIONS, annotation_class_names, read_annotation_patch
from sparseseg.annotations.targets import Targets, compute_targets
from sparseseg.errors import InputError
from sparseseg.geometry.lattice import empty_lattice
from sparseseg.io.labels import coarse_label_level
from sparseseg.io.slide import check_finite, default_channel_names, select_channels
from sparseseg.model.grid import grid_scale, linear_taps
from sparseseg.model.normalize import Normalization, percentile_normalization, slide_normalization

_IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


class CentreSampler:
    """Draws patch centres uniformly over annotated pixels, from a (coarse) annotated-pixel mask.

    The cumulative distribution is computed once, so a draw costs one binary search.
    """

    def __init__(self, annotated: np.ndarray, factor: int):
        self.shape = annotated.shape
        self.factor = factor
        self.cumulative = np.cumsum(annotated.ravel(), dtype=np.int64)

    @property
    def total(self) -> int:
        """Annotated (coarse) pixels: the source's weight among all sources."""
        return int(self.cumulative[-1]) if self.cumulative.size else 0

    def draw(self, rng: np.random.Generator) -> tuple[int, int]:
        """A level-0 (y, x) centre: an annotated coarse pixel, then a random pixel inside it."""
        flat = int(np.searchsorted(self.cumulative, rng.integers(0, self.total), side="right"))
        cy, cx = np.unravel_index(flat, self.shape)
        return (int(cy * self.factor + rng.integers(0, self.factor)),
                int(cx * self.factor + rng.integers(0, self.factor)))


class FolderSource:
    """An image file with a partial-instance annotation file of the same stem (small images, in memory)."""

    def __init__(self, image_path: Path, annotation_path: Path, channels: tuple[str, ...] | None = None,
                 class_table: Path | None = None):
        self.name = image_path.stem
        try:
            pixels = tifffile.imread(image_path) if image_path.suffix.lower() in (".tif", ".tiff") \
                else iio.imread(image_path)
        except Exception as exc:  # a file that is not the image it claims to be
            raise InputError(image_path, f"cannot read the image ({type(exc).__name__}: {exc})") from None
        if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
            pixels = pixels[..., :3].transpose(2, 0, 1)
        elif pixels.ndim == 2:
            pixels = pixels[None]
        elif not (pixels.ndim == 3 and pixels.shape[0] <= 16):  # channel-first (multi-channel TIFF)
            raise InputError(image_path, f"unsupported image shape {pixels.shape}")
        self.channel_names = default_channel_names(pixels.shape[0])
        chosen = select_channels(channels, self.channel_names, image_path)
        if chosen is not None:
            pixels, self.channel_names = pixels[list(chosen)], tuple(self.channel_names[i] for i in chosen)
        check_finite(image_path, pixels)
        self.points: PointSet | None = None
        self.class_map: np.ndarray | None = None
        if annotation_path.suffix.lower() == ".csv":  # classified points: labels made once the pixel size is known
            self.points = read_points_csv(annotation_path, pixels.shape[1:])
            labels = np.zeros(pixels.shape[1:], np.uint32)
        else:
            labels = _read_label_image(annotation_path)
        if labels.shape != pixels.shape[1:]:
            raise InputError(annotation_path, f"annotation is {labels.shape} but the image is {pixels.shape[1:]}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise InputError(annotation_path, f"annotation must hold integers, got {labels.dtype}")
        self.pixels = pixels
        self.partial = labels.astype(np.uint32)
        self.shape = labels.shape
        self.n_channels = pixels.shape[0]
        self.normalization = percentile_normalization(pixels)
        self.centres = CentreSampler(self.partial > 0, 1)
        self.label_classes = read_class_table(class_table) if class_table is not None else {}

    @property
    def class_names(self) -> tuple[str, ...]:
        if self.points is not None:
            return self.points.class_names
        return tuple(sorted(set(self.label_classes.values())))

    def label_points(self, pixel_size_um: float | None, class_ids: dict[str, int]) -> None:
        """Turn a points annotation into disks and Voronoi edges (``annotations.points``), classes numbered by
        ``class_ids``; the disk radius is POINT_RADIUS_UM at ``pixel_size_um`` (3 px when it is unknown)."""
        if self.points is None:
            if self.label_classes:  # labels missing from the table: outline known, class unknown
                lut = np.zeros(int(max(self.partial.max(), max(self.label_classes))) + 1, np.uint8)
                for label, name in self.label_classes.items():
                    lut[label] = class_ids[name] + 1
                self.class_map = lut[self.partial]
            return
        pixel_um = pixel_size_um or 0.5
        radius = POINT_RADIUS_UM / pixel_um
        indices = class_indices(self.points, class_ids)
        if getattr(self, "point_encoding", "voronoi") == "clusters":  # each click's colour cluster, its class on it
            self.partial = cluster_labels(np.moveaxis(self.pixels, 0, -1), self.points.yx, radius,
                                          CLUSTER_REACH_UM / pixel_um)
            classes = np.concatenate([np.zeros(FIRST_OBJECT, np.uint8), (indices + 1).astype(np.uint8)])[self.partial]
        else:
            self.partial, classes = point_labels(self.shape, self.points.yx, radius, indices,
                                                 voronoi=getattr(self, "point_encoding", "voronoi") == "voronoi")
        self.class_map = classes if classes.any() else None
        self.centres = CentreSampler(self.partial > 0, 1)

    def read_image(self, window: tuple[slice, slice]) -> np.ndarray:
        return self.pixels[(slice(None), *window)]

    def read_annotation(self, window: tuple[slice, slice]) -> PatchAnnotation:
        return PatchAnnotation(partial=self.partial[window],
                               classes=None if self.class_map is None else self.class_map[window])


def _read_label_image(path: Path) -> np.ndarray:
    try:
        return tifffile.imread(path) if path.suffix.lower() in (".tif", ".tiff") else iio.imread(path)
    except Exception as exc:
        raise InputError(path, f"cannot read the annotation image ({type(exc).__name__}: {exc})") from None


def class_names_of(sources) -> tuple[str, ...]:
    """The cell classes the sources' annotations name, sorted (their ids in a model's class head)."""
    return tuple(sorted({name for s in sources for name in getattr(s, "class_names", ())}))


#: How clicked cells become labels: disks and the Voronoi edges between them as background (Qu et al.), disks
#: alone, or each click's colour cluster as its object's extent (Qu et al.'s cluster labels; image folders only).
POINT_ENCODINGS = ("voronoi", "disks", "clusters")


def label_point_sources(sources, folder_pixel_um: float | None, class_names: tuple[str, ...],
                        encoding: str = "voronoi") -> None:
    """Give every points-annotated source its disks (and Voronoi edges, by ``encoding``) and class map."""
    if encoding not in POINT_ENCODINGS:
        raise InputError(None, f"--point-encoding must be one of {', '.join(POINT_ENCODINGS)}, got {encoding!r}")
    ids = {name: i for i, name in enumerate(class_names)}
    for source in sources:
        if encoding == "clusters" and getattr(source, "has_points", False):
            raise InputError(source.path, "--point-encoding clusters needs the whole image of each click: use "
                                          "image folders (--images/--annotations), or voronoi / disks for slides")
        if hasattr(source, "label_points"):
            source.point_encoding = encoding
            source.label_points(source_pixel_size(source, folder_pixel_um), ids)


class SlideSource:
    """An OME-Zarr slide with ``labels/annotations``; pixels and annotations are read lazily."""

    def __init__(self, path: Path, coarse_max_px: int = 1024, channels: tuple[str, ...] | None = None):
        root = zarr.open_group(path, mode="r")
        if f"labels/{ANNOTATIONS}" not in root:
            raise InputError(path, "has no labels/annotations (run `sparseseg annotations import` first)")
        from sparseseg.io.omezarr import open_omezarr_slide

        slide = open_omezarr_slide(path)
        self.name = Path(path).name
        self.path = Path(path)
        self.image = root["0"]
        self.shape = tuple(self.image.shape[1:])
        self.channels = select_channels(channels, slide.channel_names, path)
        self.channel_names = slide.channel_names if self.channels is None else \
            tuple(slide.channel_names[i] for i in self.channels)
        self.n_channels = len(self.channel_names)
        self.pixel_size_um = slide.pixel_size_um
        levels = slide.levels if self.channels is None else tuple(lv[list(self.channels)] for lv in slide.levels)
        self.normalization = slide_normalization(levels, source=path)
        coarse, factor = coarse_label_level(root[f"labels/{ANNOTATIONS}"], coarse_max_px)
        annotated = coarse > 0
        self.has_points = "tables/annotations/points" in root
        if self.has_points:  # clicked cells are annotated places too
            points = root["tables/annotations/points"][...]
            annotated[np.minimum((points[:, 0] // factor).astype(int), annotated.shape[0] - 1),
                      np.minimum((points[:, 1] // factor).astype(int), annotated.shape[1] - 1)] = True
        self.centres = CentreSampler(annotated, factor)
        self.class_names = annotation_class_names(path)
        self.class_ids: np.ndarray | None = None   # the model's class index of each of ``class_names``
        self.point_radius = POINT_RADIUS_UM / 0.5

    def label_points(self, pixel_size_um: float | None, class_ids: dict[str, int]) -> None:
        """Number the slide's cell classes as the model does; classified points get disks of POINT_RADIUS_UM."""
        self.class_ids = np.array([class_ids[n] for n in self.class_names], np.int64) if self.class_names else None
        if pixel_size_um:
            self.point_radius = POINT_RADIUS_UM / pixel_size_um

    def read_image(self, window: tuple[slice, slice]) -> np.ndarray:
        channels = slice(None) if self.channels is None else list(self.channels)
        return self.image.get_orthogonal_selection((channels, *window))

    def read_annotation(self, window: tuple[slice, slice]) -> PatchAnnotation:
        return read_annotation_patch(self.path, window, self.class_ids, self.point_radius,
                                     getattr(self, "point_encoding", "voronoi") == "voronoi")

    def read_outlines(self, window: tuple[slice, slice]) -> np.ndarray:
        """The partial instance map as drawn, without the disks made from clicked cells (for calibration)."""
        return read_annotation_patch(self.path, window, cells_from_points=False).partial


def folder_sources(images: Path, annotations: Path, channels: tuple[str, ...] | None = None) -> list[FolderSource]:
    """Pairs ``images/NAME.*`` with ``annotations/NAME.*``: a TIFF/PNG partial-instance map (with, when
    ``NAME.csv`` sits beside it, its class table ``label,class``), or alone a CSV of points ``y,x[,class]``."""
    images, annotations = Path(images), Path(annotations)
    for folder in (images, annotations):
        if not folder.is_dir():
            raise InputError(folder, "is not a directory")
    files = sorted(p for p in annotations.iterdir() if p.suffix.lower() in (*_IMAGE_SUFFIXES, ".csv"))
    tables = {p.stem: p for p in files if p.suffix.lower() == ".csv"}
    labels = {p.stem: p for p in files if p.suffix.lower() != ".csv"}
    labels.update({stem: path for stem, path in tables.items() if stem not in labels})  # points
    pairs = [(p, labels[p.stem]) for p in sorted(images.iterdir())
             if p.suffix.lower() in _IMAGE_SUFFIXES and p.stem in labels]
    if not pairs:
        raise InputError(images, f"no image has an annotation of the same name in {annotations}")
    return [FolderSource(image, label, channels, tables.get(image.stem) if label.suffix.lower() != ".csv" else None)
            for image, label in pairs]


def write_class_table(path: Path, table: dict[int, str]) -> None:
    """A label image's class table (CSV ``label,class``, what ``read_class_table`` reads), rows by label."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["label", "class"])
        writer.writerows(sorted(table.items()))


def read_class_table(path: Path) -> dict[int, str]:
    """A label image's class table (CSV ``label,class``): label value -> cell class."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"not a readable class table ({exc})") from None
    if rows and not {"label", "class"} <= set(rows[0]):
        raise InputError(path, f"a class table beside a label image needs the columns label,class; got "
                               f"{','.join(rows[0])}")
    table = {}
    for line, row in enumerate(rows, start=2):
        try:
            label = int(row["label"])
        except (TypeError, ValueError):
            raise InputError(path, f"line {line}: label must be a whole number, got {row['label']!r}") from None
        if label < 2 or not (row["class"] or "").strip():
            raise InputError(path, f"line {line}: needs an object label (>= 2 in the partial encoding) and a class")
        table[label] = row["class"].strip()
    return table


@dataclass(frozen=True)
class Augment:
    """Random patch transforms; every one keeps the annotation aligned with the image."""

    flips: bool = True
    intensity: float = 0.2        # +- relative scale / shift after normalisation
    stain: float = 0.03           # HED jitter for RGB (x5 on the scale of each stain)
    zoom: float = 1.25            # rescale by a factor in [1/zoom, zoom] (log-uniform); 1 = off
    blur_sigma: float = 1.0       # Gaussian blur with sigma in [0, blur_sigma] px, on a third of the patches
    noise: float = 0.03           # Gaussian noise with std in [0, noise], on a third of the patches

    def __post_init__(self):
        if not (math.isfinite(self.zoom) and 1 <= self.zoom <= 4):
            raise InputError(None, f"--zoom must be between 1 (off) and 4, got {self.zoom}")


@dataclass(frozen=True)
class Patch:
    image: np.ndarray   # (C, P, P) float32, normalised
    targets: Targets
    source: int = 0     # index of the source it was drawn from


def _source_cumulative(sources) -> np.ndarray:
    totals = np.array([s.centres.total for s in sources], np.float64)
    if totals.sum() == 0:
        raise InputError(None, "the training data has no annotated pixel")
    return np.cumsum(totals)


def _transform_annotation(a: PatchAnnotation, k: int, flip: bool) -> PatchAnnotation:
    def t(x):
        if x is None:
            return None
        x = np.rot90(x, k)
        return np.ascontiguousarray(x[:, ::-1] if flip else x)

    h, w = a.shape
    points = a.points.copy()
    for _ in range(k):  # rot90 counter-clockwise: (y, x) -> (W - x, y)
        points = np.column_stack([w - points[:, 1], points[:, 0]]) if len(points) else points
        h, w = w, h
    if flip and len(points):
        points[:, 1] = w - points[:, 1]
    return PatchAnnotation(partial=t(a.partial), boundary=t(a.boundary), points=points,
                           foreground=t(a.foreground), complete=a.complete, classes=t(a.classes))


def _augment_intensity(image: np.ndarray, rng: np.random.Generator, augment: Augment) -> np.ndarray:
    if image.shape[0] == 3 and augment.stain > 0:
        rgb = np.clip(image.transpose(1, 2, 0), 0, 1)
        hed = rgb2hed(rgb)
        hed = hed * rng.uniform(1 - augment.stain * 5, 1 + augment.stain * 5, 3) + rng.uniform(-augment.stain, augment.stain, 3)
        image = np.clip(hed2rgb(hed), 0, 1).transpose(2, 0, 1).astype(np.float32)
    scale = rng.uniform(1 - augment.intensity, 1 + augment.intensity)
    shift = rng.uniform(-augment.intensity, augment.intensity)
    image = image * scale + shift
    blur, noise = rng.uniform(0, augment.blur_sigma), rng.uniform(0, augment.noise)
    if rng.random() < 1 / 3 and blur > 0.1:
        image = ndi.gaussian_filter(image, (0, blur, blur), mode="reflect")
    if rng.random() < 1 / 3 and noise > 0:
        image = image + rng.normal(0, noise, image.shape)
    return image.astype(np.float32)


def _zoom(image: np.ndarray, annotation: PatchAnnotation, zoom: float, size: int
          ) -> tuple[np.ndarray, PatchAnnotation]:
    """Image (bilinear) and annotation (nearest; points scaled) resampled by ``zoom``, at most ``size`` px a side."""
    shape = [min(size, int(n * zoom)) for n in annotation.shape]
    (ny, ly, uy, wy), (nx, lx, ux, wx) = (linear_taps(0, m, zoom, n) for m, n in zip(shape, annotation.shape))
    rows = image[:, ly] + (image[:, uy] - image[:, ly]) * wy[None, :, None]
    image = rows[:, :, lx] + (rows[:, :, ux] - rows[:, :, lx]) * wx[None, None, :]
    nearest = np.ix_(ny, nx)
    partial = annotation.partial[nearest]
    present = set(np.unique(partial).tolist())
    points = annotation.points * zoom
    points = points[(points[:, 0] < shape[0]) & (points[:, 1] < shape[1])] if len(points) else points
    return image.astype(np.float32), PatchAnnotation(
        partial=partial, points=points,
        foreground=None if annotation.foreground is None else annotation.foreground[nearest],
        complete=frozenset(k for k in annotation.complete if k in present),
        classes=None if annotation.classes is None else annotation.classes[nearest])


def draw_patch(sources, normalizations: list[Normalization], patch: int, margin: int, seed: int, step: int,
               index: int, augment: Augment | None = Augment(), cumulative: np.ndarray | None = None) -> Patch:
    """Patch ``index`` of ``step``: the same wherever and whenever it is drawn.

    ``cumulative``: the sources' cumulative annotated-pixel counts (computed here when not given).
    Patches with boundary pieces are never zoomed (a lattice of pieces does not resample exactly).
    """
    rng = np.random.default_rng([seed, step, index])
    cumulative = _source_cumulative(sources) if cumulative is None else cumulative
    which = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    source = sources[min(which, len(sources) - 1)]
    cy, cx = source.centres.draw(rng)
    zoom = float(np.exp(rng.uniform(-np.log(augment.zoom), np.log(augment.zoom)))) if augment and augment.zoom > 1 \
        else 1.0
    scale = getattr(source, "scale", 1.0)  # the source's pixels onto the model's grid (``scale_to_model``)
    zoom *= scale
    size = patch + 2 * margin
    read = int(np.ceil(size / zoom))
    h, w = source.shape
    y0 = int(np.clip(cy - read // 2, 0, max(0, h - read)))
    x0 = int(np.clip(cx - read // 2, 0, max(0, w - read)))
    window = (slice(y0, min(h, y0 + read)), slice(x0, min(w, x0 + read)))
    image = normalizations[min(which, len(sources) - 1)].apply(source.read_image(window))
    annotation = source.read_annotation(window)
    if scale != 1.0 and annotation.boundary is not None:
        raise InputError(getattr(source, "path", None) or source.name,
                         f"has boundary pieces, which cannot be resampled to the model's pixel size (x{scale:.3g}); "
                         "train at the data's own pixel size (without --train-pixel-size)")
    if zoom != 1.0 and annotation.boundary is None:
        image, annotation = _zoom(image, annotation, zoom, size)
    elif zoom != 1.0:  # read for a zoom that is not applied: keep the centred size x size
        image, annotation = image[:, :size, :size], _crop_annotation(annotation, size)
    if image.shape[1] < size or image.shape[2] < size:  # small images: pad, padding unknown
        pad = ((0, 0), (0, size - image.shape[1]), (0, size - image.shape[2]))
        image = np.pad(image, pad)
        annotation = _pad_annotation(annotation, (size, size))
    k, flip = (int(rng.integers(0, 4)), bool(rng.integers(0, 2))) if augment and augment.flips else (0, False)
    image = np.ascontiguousarray(np.rot90(image, k, axes=(1, 2)))
    image = np.ascontiguousarray(image[:, :, ::-1]) if flip else image
    annotation = _transform_annotation(annotation, k, flip)
    if augment:
        image = _augment_intensity(image, rng, augment)
    targets = compute_targets(annotation)
    crop = (slice(margin, margin + patch), slice(margin, margin + patch))
    return Patch(image=np.ascontiguousarray(image[(slice(None), *crop)]), targets=crop_targets(targets, crop),
                 source=min(which, len(sources) - 1))


def source_pixel_size(source, folder_pixel_um: float | None = None) -> float | None:
    """A source's pixel size in um: a slide's own, else ``folder_pixel_um`` (``--pixel-size`` of --images data)."""
    own = getattr(source, "pixel_size_um", None)
    return float(own[0]) if own else folder_pixel_um


def scale_to_model(sources, model_pixel_um: float | None, folder_pixel_um: float | None = None) -> None:
    """Give each source its ``scale`` (model-grid pixels per source pixel: its pixel size / the model's), which
    patches and calibration windows are resampled by; 1 where a size is unknown or within the tolerance."""
    for source in sources:
        own = source_pixel_size(source, folder_pixel_um)
        if own is not None and not getattr(source, "pixel_size_um", None):  # --images data: remember it
            source.pixel_size_um = (own, own)
        source.scale = grid_scale(own, model_pixel_um)


def resample_window(image: np.ndarray, partial: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """A source window (image bilinear, partial labels nearest) on the model's grid, as ``draw_patch`` does."""
    if scale == 1.0:
        return image, partial
    size = int(np.ceil(max(partial.shape) * scale)) + 1
    image, annotation = _zoom(np.asarray(image, np.float32), PatchAnnotation(partial=partial), scale, size)
    return image, annotation.partial


def _crop_annotation(a: PatchAnnotation, size: int) -> PatchAnnotation:
    """The top-left ``size`` x ``size`` (at most) of an annotation without boundary pieces."""
    partial = a.partial[:size, :size]
    present = set(np.unique(partial).tolist())
    points = a.points[(a.points[:, 0] < size) & (a.points[:, 1] < size)] if len(a.points) else a.points
    return PatchAnnotation(partial=partial, points=points,
                           foreground=None if a.foreground is None else a.foreground[:size, :size],
                           boundary=None if a.boundary is None else a.boundary[:2 * size + 1, :2 * size + 1],
                           complete=frozenset(k for k in a.complete if k in present),
                           classes=None if a.classes is None else a.classes[:size, :size])


def _pad_annotation(a: PatchAnnotation, shape: tuple[int, int]) -> PatchAnnotation:
    h, w = a.shape
    partial = np.zeros(shape, np.uint32)
    partial[:h, :w] = a.partial
    boundary = None
    if a.boundary is not None:
        boundary = empty_lattice(shape)
        boundary[: 2 * h + 1, : 2 * w + 1] = a.boundary
    if a.foreground is not None:  # a mask claims every pixel known: padding would read as background
        raise InputError(None, f"image {h}x{w} is smaller than patch + 2 x margin ({shape[0]}) and has a "
                               "foreground mask; use a smaller --patch")
    classes = None
    if a.classes is not None:
        classes = np.zeros(shape, np.uint8)
        classes[:h, :w] = a.classes
    return PatchAnnotation(partial=partial, boundary=boundary, points=a.points, complete=a.complete, classes=classes)


def crop_targets(t: Targets, crop: tuple[slice, slice]) -> Targets:
    """Targets restricted to ``crop`` (pixel arrays and their lattices)."""
    rows, cols = crop
    lattice = (slice(2 * rows.start, 2 * rows.stop + 1), slice(2 * cols.start, 2 * cols.stop + 1))
    values = {}
    for name in Targets.__dataclass_fields__:
        array = getattr(t, name)
        if array.shape[-2:] == t.s0.shape:
            values[name] = array[..., rows, cols]
        else:
            values[name] = array[..., lattice[0], lattice[1]]
    return Targets(**values)


def validation_split(n: int) -> tuple[list[int], list[int]]:
    """(training, validation) indices: every 5th source is held out when there are at least 5."""
    if n < 5:
        return list(range(n)), []
    return [i for i in range(n) if i % 5 != 4], [i for i in range(n) if i % 5 == 4]


def split_sources(sources: list) -> tuple[list, list]:
    """(training sources, validation sources); with fewer than 5 sources, validation patches come from
    the training images (a fixed set drawn at a step training never reaches)."""
    train_idx, val_idx = validation_split(len(sources))
    return [sources[i] for i in train_idx], ([sources[i] for i in val_idx] or [sources[i] for i in train_idx])


def channel_names(sources: list) -> tuple[str, ...] | None:
    """The channel names all sources share, or None where they differ or are unnamed."""
    names = {tuple(getattr(s, "channel_names", ()) or ()) for s in sources}
    return names.pop() if len(names) == 1 and () not in names else None

