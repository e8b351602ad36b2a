"""Training patches from annotated OME-Zarr slides or image folders, drawn deterministically.

Patch i of step s is drawn with an RNG seeded by (seed, s, i), whatever process draws it: a
data-parallel rank only draws its share of indices, and the union over ranks is exactly the
batch one process would draw. Patches are centred on annotated pixels (weighted by their count),
read lazily, augmented (flips, 90-degree rotations, intensity, stain jitter for RGB) together with
their annotation, and get targets computed on a margin-enlarged window then cropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile
import zarr
from skimage.color import hed2rgb, rgb2hed

from sparseseg.annotations.model import PatchAnnotation
from sparseseg.annotations.store import ANNOTATIONS, read_annotation_patch
from sparseseg.annotations.targets import Targets, compute_targets
from sparseseg.errors import InputError
from sparseseg.io.labels import coarse_label_level
from sparseseg.train.normalize import Normalization, percentile_normalization, slide_normalization

_IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


class FolderSource:
    """An image file with a partial-instance annotation file of the same stem (small images, in memory)."""

    def __init__(self, image_path: Path, annotation_path: Path):
        self.name = image_path.stem
        pixels = tifffile.imread(image_path) if image_path.suffix.lower() in (".tif", ".tiff") else iio.imread(image_path)
        if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
            pixels = pixels[..., :3].transpose(2, 0, 1)
        elif pixels.ndim == 2:
            pixels = pixels[None]
        else:
            raise InputError(image_path, f"unsupported image shape {pixels.shape}")
        labels = tifffile.imread(annotation_path) if annotation_path.suffix.lower() in (".tif", ".tiff") \
            else iio.imread(annotation_path)
        if labels.shape != pixels.shape[1:]:
            raise InputError(annotation_path, f"annotation is {labels.shape} but the image is {pixels.shape[1:]}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise InputError(annotation_path, f"annotation must hold integers, got {labels.dtype}")
        self.pixels = pixels
        self.partial = labels.astype(np.uint32)
        self.shape = labels.shape
        self.n_channels = pixels.shape[0]
        self.normalization = percentile_normalization(pixels)
        self.weights = (self.partial > 0).astype(np.float64)

    def read_image(self, window: tuple[slice, slice]) -> np.ndarray:
        return self.pixels[(slice(None), *window)]

    def read_annotation(self, window: tuple[slice, slice]) -> PatchAnnotation:
        return PatchAnnotation(partial=self.partial[window])

    @property
    def coarse_weights(self) -> tuple[np.ndarray, int]:
        return self.weights, 1


class SlideSource:
    """An OME-Zarr slide with ``labels/annotations``; pixels and annotations are read lazily."""

    def __init__(self, path: Path, coarse_max_px: int = 1024):
        root = zarr.open_group(path, mode="r")
        if f"labels/{ANNOTATIONS}" not in root:
            raise InputError(path, "has no labels/annotations (run `sparseseg annotations import` first)")
        from sparseseg.io.omezarr import open_omezarr_slide

        slide = open_omezarr_slide(path)
        self.name = Path(path).name
        self.path = Path(path)
        self.image = root["0"]
        self.shape = tuple(self.image.shape[1:])
        self.n_channels = self.image.shape[0]
        self.pixel_size_um = slide.pixel_size_um
        self.normalization = slide_normalization(slide.levels)
        coarse, factor = coarse_label_level(root[f"labels/{ANNOTATIONS}"], coarse_max_px)
        self._coarse = ((coarse > 0).astype(np.float64), factor)

    def read_image(self, window: tuple[slice, slice]) -> np.ndarray:
        return self.image[(slice(None), *window)]

    def read_annotation(self, window: tuple[slice, slice]) -> PatchAnnotation:
        return read_annotation_patch(self.path, window)

    @property
    def coarse_weights(self) -> tuple[np.ndarray, int]:
        return self._coarse


def folder_sources(images: Path, annotations: Path) -> list[FolderSource]:
    """Pairs ``images/NAME.*`` with ``annotations/NAME.*`` (TIFF/PNG partial-instance maps)."""
    images, annotations = Path(images), Path(annotations)
    for folder in (images, annotations):
        if not folder.is_dir():
            raise InputError(folder, "is not a directory")
    labels = {p.stem: p for p in annotations.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES}
    pairs = [(p, labels[p.stem]) for p in sorted(images.iterdir())
             if p.suffix.lower() in _IMAGE_SUFFIXES and p.stem in labels]
    if not pairs:
        raise InputError(images, f"no image has an annotation of the same name in {annotations}")
    return [FolderSource(image, label) for image, label in pairs]


@dataclass(frozen=True)
class Augment:
    flips: bool = True
    intensity: float = 0.2   # +- relative scale / shift after normalisation
    stain: float = 0.03      # HED jitter for RGB


@dataclass(frozen=True)
class Patch:
    image: np.ndarray   # (C, P, P) float32, normalised
    targets: Targets


def _source_weights(sources) -> np.ndarray:
    totals = np.array([s.coarse_weights[0].sum() for s in sources], np.float64)
    if totals.sum() == 0:
        raise InputError(None, "the training data has no annotated pixel")
    return totals / totals.sum()


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
                           foreground=t(a.foreground), complete=a.complete)


def _augment_intensity(image: np.ndarray, rng: np.random.Generator, augment: Augment) -> np.ndarray:
    if image.shape[0] == 3 and augment.stain > 0:
        rgb = np.clip(image.transpose(1, 2, 0), 0, 1)
        hed = rgb2hed(rgb)
        hed = hed * rng.uniform(1 - augment.stain * 5, 1 + augment.stain * 5, 3) + rng.uniform(-augment.stain, augment.stain, 3)
        image = np.clip(hed2rgb(hed), 0, 1).transpose(2, 0, 1).astype(np.float32)
    scale = rng.uniform(1 - augment.intensity, 1 + augment.intensity)
    shift = rng.uniform(-augment.intensity, augment.intensity)
    return (image * scale + shift).astype(np.float32)


def draw_patch(sources, normalizations: list[Normalization], patch: int, margin: int, seed: int, step: int,
               index: int, augment: Augment | None = Augment()) -> Patch:
    """Patch ``index`` of ``step``: the same wherever and whenever it is drawn."""
    rng = np.random.default_rng([seed, step, index])
    which = rng.choice(len(sources), p=_source_weights(sources))
    source = sources[which]
    weights, factor = source.coarse_weights
    flat = rng.choice(weights.size, p=(weights / weights.sum()).ravel())
    cy, cx = np.unravel_index(flat, weights.shape)
    cy = int(cy * factor + rng.integers(0, factor))
    cx = int(cx * factor + rng.integers(0, factor))
    size = patch + 2 * margin
    h, w = source.shape
    y0 = int(np.clip(cy - size // 2, 0, max(0, h - size)))
    x0 = int(np.clip(cx - size // 2, 0, max(0, w - size)))
    window = (slice(y0, min(h, y0 + size)), slice(x0, min(w, x0 + size)))
    image = normalizations[which].apply(source.read_image(window))
    annotation = source.read_annotation(window)
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
    return Patch(image=np.ascontiguousarray(image[(slice(None), *crop)]), targets=crop_targets(targets, crop))


def _pad_annotation(a: PatchAnnotation, shape: tuple[int, int]) -> PatchAnnotation:
    h, w = a.shape
    partial = np.zeros(shape, np.uint32)
    partial[:h, :w] = a.partial
    boundary = None
    if a.boundary is not None:
        boundary = np.zeros((2 * shape[0] + 1, 2 * shape[1] + 1), bool)
        boundary[: 2 * h + 1, : 2 * w + 1] = a.boundary
    if a.foreground is not None:  # a mask claims every pixel known: padding would read as background
        raise InputError(None, f"image {h}x{w} is smaller than patch + 2 x margin ({shape[0]}) and has a "
                               "foreground mask; use a smaller --patch")
    return PatchAnnotation(partial=partial, boundary=boundary, points=a.points, complete=a.complete)


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
