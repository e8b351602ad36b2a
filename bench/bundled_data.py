"""Build the training folders of the bundled nuclei model from CC0 data only (docs/models.md).

- DSB2018 stage1_train (CC0, ../shared/data/dsb2018): every stained/brightfield RGB image except
  every 10th (held out) and every 4th fluorescence image from index 1, inverted to dark nuclei on a
  bright background and given an H&E-like colour. DSB records no pixel size and its images come from
  many magnifications, so each image is rescaled until its median nucleus is ``--diameter-um`` across
  at ``--pixel-size``: the model then learns one physical scale, and ``segment`` resamples every
  slide to it. Dense labels become complete partial annotations (background 1, object k -> k + 1).
- The CMU-1 region (CC0, bundled, 0.499 um/px) with machine-made incomplete annotations: hematoxylin
  optical density -> nucleus candidates (Otsu, split by distance peaks); the compact, clearly stained
  ones become complete objects, each ringed by background, plus confident background strokes where the
  stain is faint and far from any candidate; everything else is unknown (science.md section 5).

    python bench/bundled_data.py --out /tmp/bundled [--pixel-size 0.5] [--diameter-um 6.5] [--brca]

- With ``--brca``: the 80 BRCA-M2C `train` images (BSD-3-Clause, 20x) with one classified point per cell
  (lymphocyte / stromal / tumour) as ``annotations/brca_<name>.csv``: the points and classes of the
  bundled model v2 (docs/models.md). With ``--pseudo MODEL``, each image's points are filtered through
  MODEL's objects instead (``sparseseg.annotations.points.point_filtered_labels``): an object holding exactly
  one point becomes a whole object of that point's class, the other points disks, the rest background or unknown.
  With ``--clusters``, each point gets the extent of its colour cluster instead (Qu et al. 2019;
  ``sparseseg.annotations.points.cluster_labels``), never a complete object.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile
from scipy import ndimage as ndi
from skimage.color import rgb2hed
from skimage.filters import threshold_otsu
from skimage.measure import regionprops
from skimage.segmentation import watershed
from skimage.transform import resize

from sparseseg.annotations.model import BACKGROUND, FIRST_OBJECT, encode_dense
from sparseseg.annotations.points import (
    CLUSTER_REACH_UM,
    POINT_RADIUS_UM,
    cluster_labels,
    point_filtered_labels,
    read_points_csv,
)
from sparseseg.infer.predictor import Predictor
from sparseseg.train.data import write_class_table
from sparseseg.metrics.sizes import median_diameter_px

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CMU = ROOT / "sparseseg" / "data" / "cmu_small_region.svs"


def rescale(image: np.ndarray, labels: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    shape = (max(16, round(labels.shape[0] * factor)), max(16, round(labels.shape[1] * factor)))
    image = resize(image, shape, order=1, anti_aliasing=factor < 1, preserve_range=True).astype(np.uint8)
    labels = resize(labels, shape, order=0, anti_aliasing=False, preserve_range=True).astype(np.int64)
    return image, labels


def he_like(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A fluorescence image (bright nuclei) as hematoxylin on a pale eosin background, RGB uint8."""
    g = grey.astype(np.float32)
    lo, hi = np.percentile(g, [1, 99.8])
    h = np.clip((g - lo) / max(hi - lo, 1), 0, 1)
    haem = np.array([0.36, 0.23, 0.58]) * rng.uniform(0.8, 1.2)  # dark blue-purple
    background = np.array([0.93, 0.80, 0.88]) * rng.uniform(0.9, 1.05)
    rgb = background[None, None] * (1 - h[..., None]) + haem[None, None] * h[..., None]
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def dsb_pairs(subset: str, rows: list[dict]):
    root = SHARED / "dsb2018" / subset
    for r in rows:
        image = iio.imread(root / "images" / f"{r['id']}.png")
        yield r["id"][:8], image, tifffile.imread(root / "labels" / f"{r['id']}.tif").astype(np.int64)


def cmu_pseudo_annotation(pixels: np.ndarray, pixel_size_um: float) -> np.ndarray:
    """Partial map of the CMU region from its hematoxylin density: confident nuclei (complete, ringed by
    background), confident background strokes, the rest unknown."""
    haem = ndi.gaussian_filter(rgb2hed(pixels)[..., 0], 1.0)
    candidates = haem > threshold_otsu(haem)
    candidates = ndi.binary_opening(candidates, iterations=1)
    distance = ndi.distance_transform_edt(candidates)
    peaks = (distance == ndi.maximum_filter(distance, size=int(round(4 / pixel_size_um)))) & (distance > 1.5)
    markers, _ = ndi.label(peaks)
    objects = watershed(-distance, markers, mask=candidates)
    partial = np.zeros(objects.shape, np.uint32)
    min_area, max_area = (np.pi * (np.array([2.5, 6.0]) / pixel_size_um) ** 2).astype(int)  # 5..12 um across
    next_id = 2
    for region in regionprops(objects, intensity_image=haem):
        if min_area <= region.area <= max_area and region.solidity > 0.9 and region.eccentricity < 0.9 \
                and region.intensity_mean > np.quantile(haem, 0.8):
            rows, cols = region.coords.T
            partial[rows, cols] = next_id
            next_id += 1
    kept = partial >= 2
    ring = ndi.binary_dilation(kept, iterations=3) & ~ndi.binary_dilation(candidates, iterations=1)
    far = ~ndi.binary_dilation(candidates, iterations=int(round(4 / pixel_size_um)))
    faint = haem < np.quantile(haem, 0.35)
    partial[(ring | (far & faint)) & (partial == 0)] = BACKGROUND
    return partial


def write_pseudo_labels(predictor: Predictor, image: np.ndarray, points_csv: Path, stem: Path,
                        pixel_size: float) -> str:
    """Point-filtered pseudo-labels of one image (``stem``.tif + its class table ``stem``.csv); says how many
    clicked cells became whole objects."""
    points = read_points_csv(points_csv, image.shape[:2])
    objects = predictor.instances(np.moveaxis(image, -1, 0))
    pseudo = point_filtered_labels(objects, points.yx, POINT_RADIUS_UM / pixel_size)
    tifffile.imwrite(stem.parent / f"{stem.name}.tif", pseudo.partial)
    write_class_table(stem.parent / f"{stem.name}.csv",
                      {k: points.classes[i] for k, i in pseudo.point_of.items() if points.classes[i]})
    return f"{len(pseudo.complete)} / {len(points.yx)}"


def write_cluster_labels(image: np.ndarray, points_csv: Path, stem: Path, pixel_size: float) -> None:
    """Colour-cluster labels of one image (``stem``.tif) and its class table (``stem``.csv)."""
    points = read_points_csv(points_csv, image.shape[:2])
    partial = cluster_labels(image, points.yx, POINT_RADIUS_UM / pixel_size, CLUSTER_REACH_UM / pixel_size)
    tifffile.imwrite(stem.parent / f"{stem.name}.tif", partial)
    write_class_table(stem.parent / f"{stem.name}.csv",
                      {FIRST_OBJECT + i: c for i, c in enumerate(points.classes) if c})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pixel-size", type=float, default=0.5, help="model pixel size (um)")
    parser.add_argument("--diameter-um", type=float, default=6.5, help="median nucleus diameter after rescaling")
    parser.add_argument("--no-cmu", action="store_true", help="DSB only")
    parser.add_argument("--no-fluo", action="store_true", help="no inverted fluorescence images")
    parser.add_argument("--brca", action="store_true",
                        help="add the BRCA-M2C train images with their classified points (CSV; BSD-3-Clause)")
    parser.add_argument("--pseudo", type=Path, default=None, metavar="MODEL",
                        help="with --brca: point-filtered pseudo-labels of MODEL instead of disks + Voronoi edges")
    parser.add_argument("--clusters", action="store_true",
                        help="with --brca: Qu et al.'s colour-cluster labels instead of disks + Voronoi edges")
    args = parser.parse_args()
    images, annotations = args.out / "images", args.out / "annotations"
    images.mkdir(parents=True, exist_ok=True)
    annotations.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    predictor = Predictor.from_checkpoint(args.pseudo, device="cpu") if args.pseudo else None
    target_px = args.diameter_um / args.pixel_size
    count = 0
    he_rows = list(csv.DictReader(open(SHARED / "dsb2018" / "brightfield_or_he" / "index.csv")))
    he_rows = [r for i, r in enumerate(he_rows) if i % 10 and r["gray"] == "False"]
    fluo_rows = [] if args.no_fluo else list(csv.DictReader(open(SHARED / "dsb2018" / "fluo" / "index.csv")))[1::4]
    sources = [("he", r, "brightfield_or_he") for r in he_rows] + [("fluo", r, "fluo") for r in fluo_rows]
    for kind, row, subset in sources:
        (name, image, labels), = dsb_pairs(subset, [row])
        diameter = median_diameter_px(labels)
        if diameter == 0:
            continue
        image = image[..., :3] if image.ndim == 3 else image
        if kind == "fluo":
            image = he_like(image if image.ndim == 2 else image.mean(-1), rng)
        image, labels = rescale(image, labels, target_px / diameter)
        iio.imwrite(images / f"{kind}_{name}.png", image)
        tifffile.imwrite(annotations / f"{kind}_{name}.tif", encode_dense(labels))
        count += 1
    if not args.no_cmu:
        pixels = tifffile.imread(CMU)[..., :3]
        factor = 0.499 / args.pixel_size
        if abs(factor - 1) > 0.02:
            pixels = resize(pixels, [round(n * factor) for n in pixels.shape[:2]], order=1,
                            preserve_range=True).astype(np.uint8)
        partial = cmu_pseudo_annotation(pixels, args.pixel_size)
        iio.imwrite(images / "cmu.png", pixels)
        tifffile.imwrite(annotations / "cmu.tif", partial)
        print(f"CMU: {int(partial.max()) - 1} machine-made nuclei, {100 * (partial > 0).mean():.1f} % annotated")
        count += 1
    if args.brca:  # BSD-3: the official train split, one classified point per cell (brca_<name>.png + .csv)
        brca = SHARED / "brca_m2c"
        for row in csv.DictReader(open(brca / "index.csv")):
            if row["split"] == "train" and abs(float(row["microns_per_pixel"]) - args.pixel_size) < 0.02:
                (images / f"brca_{row['name']}.png").write_bytes((brca / "images" / f"{row['name']}.png").read_bytes())
                points = brca / "points" / f"{row['name']}.csv"
                if args.clusters:
                    write_cluster_labels(iio.imread(brca / "images" / f"{row['name']}.png")[..., :3], points,
                                         annotations / f"brca_{row['name']}", args.pixel_size)
                elif args.pseudo is None:
                    (annotations / f"brca_{row['name']}.csv").write_text(points.read_text())
                else:
                    image = iio.imread(brca / "images" / f"{row['name']}.png")[..., :3]
                    kept = write_pseudo_labels(predictor, image, points, annotations / f"brca_{row['name']}",
                                               args.pixel_size)
                    print(f"brca_{row['name']}: {kept} of the clicked cells kept as the model's objects")
                count += 1
    print(f"{count} training images in {args.out} at {args.pixel_size} um/px (median nucleus {args.diameter_um} um)")


if __name__ == "__main__":
    main()
