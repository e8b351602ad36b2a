"""The end-to-end demo on the bundled CC0 slide (CMU-1 small region, Aperio SVS).

ingest -> segment with the bundled checkpoint as it is -> fine-tune it from sparse annotations of two CC0 H&E
images -> segment -> measure (grid regions, report with both segmentations on one crop) -> QuPath GeoJSON,
then print where everything is.
"""

from __future__ import annotations

import time
from pathlib import Path

import tifffile

from sparseseg.info import describe_slide, format_description
from sparseseg.ingest import ingest

DATA = Path(__file__).parent / "data"
DEMO_SLIDE = DATA / "cmu_small_region.svs"
BUNDLED_MODEL = DATA / "models" / "nuclei_he.pt"


#: DSB2018 records no pixel size: its images are given the one at which their median nucleus is this
#: wide, as in the bundled model's training data (bench/bundled_data.py).
NOMINAL_NUCLEUS_UM = 6.5


def sparse_training_folders(out_dir: Path, fraction: float = 0.25) -> tuple[Path, Path, float]:
    """Partial annotations (GP masks over ``fraction`` of the pixels) of the bundled H&E images, and
    their nominal pixel size (um)."""
    import numpy as np

    from sparseseg.annotations.sparsify import sparsify_dense
    from sparseseg.metrics.sizes import median_diameter_px

    images, annotations = out_dir / "train" / "images", out_dir / "train" / "annotations"
    images.mkdir(parents=True, exist_ok=True)
    annotations.mkdir(parents=True, exist_ok=True)
    diameters = []
    for i, image in enumerate(sorted((DATA / "dsb_he" / "images").glob("*.png"))):
        (images / image.name).write_bytes(image.read_bytes())
        labels = tifffile.imread(DATA / "dsb_he" / "labels" / f"{image.stem}.tif")
        tifffile.imwrite(annotations / f"{image.stem}.tif", sparsify_dense(labels, fraction, seed=i).partial)
        diameters.append(median_diameter_px(labels))
    return images, annotations, NOMINAL_NUCLEUS_UM / float(np.median(diameters))


def run_demo(out_dir: Path, progress: bool = True, train_minutes: float = 1.5) -> dict[str, Path]:
    """Run the whole pipeline into ``out_dir`` and print what was written; returns the outputs."""
    from sparseseg.export.geojson import ObjectClasses, export_geojson
    from sparseseg.io.labels import object_classes
    from sparseseg.measure.run import measure_slide
    from sparseseg.io.labels import resolve_labels
    from sparseseg.segment import SegmentOptions, segment_slide
    from sparseseg.train.loop import TrainConfig
    from sparseseg.train.request import DataSpec, TrainRequest, run_training

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings = {}

    def lap(name):
        timings[name] = time.perf_counter() - sum(timings.values()) - started

    slide = out_dir / "cmu_small_region.ome.zarr"
    print("1/6 ingest the CMU-1 slide into an OME-Zarr pyramid with a tissue mask", flush=True)
    ingest(DEMO_SLIDE, slide, overwrite=True, progress=progress)
    lap("ingest")
    print("2/6 segment with the bundled model as it is (labels/cells_bundled: the report's 'before')", flush=True)
    bundled = segment_slide(slide, BUNDLED_MODEL, SegmentOptions(name="cells_bundled", overwrite=True,
                                                                 progress=progress))
    lap("segment (bundled)")
    print(f"3/6 fine-tune the bundled nuclei model for {train_minutes} min on 25 % sparse annotations", flush=True)
    images, annotations, pixel_size = sparse_training_folders(out_dir)
    model = out_dir / "model.pt"
    request = TrainRequest(DataSpec(images=str(images), annotations=str(annotations)), model, init=BUNDLED_MODEL,
                           config=TrainConfig(lr=5e-4, val_patches=8, val_every=10**9, checkpoint_every=10**9),
                           minutes=train_minutes, pixel_size_um=pixel_size, overwrite=model.exists(),
                           calibrate=False, command="sparseseg demo (fine-tune)")
    result = run_training(request, progress=progress)
    lap("train")
    print("4/6 segment every nucleus with the fine-tuned model (blocks on a Dask LocalCluster, seam-free "
          "stitching)", flush=True)
    segmented = segment_slide(slide, model, SegmentOptions(overwrite=True, progress=progress))
    lap("segment")
    print("5/6 measure objects and 250 um grid regions, write the report (before / after on one crop)", flush=True)
    measure_dir = out_dir / "measure"
    summary = measure_slide(slide, labels="cells", regions="grid:250um", out=measure_dir, progress=progress,
                            compare="cells_bundled")
    lap("measure")
    print("6/6 export QuPath GeoJSON", flush=True)
    info = describe_slide(slide)
    geojson = out_dir / "cells.geojson.gz"
    labels = resolve_labels(slide, "cells", tuple(info["levels"][0]["shape"][1:]))
    names, probabilities = object_classes(slide, "cells", labels)
    export_geojson(labels, geojson, pixel_size_um=tuple(info["pixel_size_um"]),
                   classes=ObjectClasses(names, probabilities) if names else None)
    lap("export")
    print()
    print(format_description(info))
    val = [h["val_loss"] for h in result["history"] if "val_loss" in h]
    print(f"\nfine-tuning: {result['step']} steps, validation loss {val[-1]:.3f}" if val else "")
    print(f"cells: {segmented.n_objects} after fine-tuning, {bundled.n_objects} with the bundled model as it is")
    print(f"cells: {segmented.n_objects} ({summary['density_per_mm2']:.0f} per mm2 of tissue, median area "
          f"{summary['area_median_um2']:.1f} um2)")
    if summary.get("classes"):
        print("cell types: " + ", ".join(f"{name} {v['cells']} ({(v['fraction'] or 0) * 100:.0f} %, "
                                         f"{v['density_per_mm2'] or 0:.0f}/mm2)" for name, v in summary["classes"].items()))
    print("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
          + f"; total {time.perf_counter() - started:.0f} s")
    outputs = {"slide": slide, "model": model, "objects": measure_dir / "objects.parquet",
               "regions": measure_dir / "regions.csv", "report": measure_dir / "report.html", "geojson": geojson}
    print("\noutputs:")
    for name, path in outputs.items():
        print(f"  {name:8s} {path}")
    print("\nview them:")
    print(f"  browser:  sparseseg view {slide}   (neuroglancer on 127.0.0.1, offline)")
    print(f"  napari:   pip install napari[all] napari-ome-zarr && napari --plugin napari-ome-zarr {slide}")
    print(f"  report:   open {measure_dir / 'report.html'} in a browser")
    print(f"  QuPath:   File > Import objects, choose {geojson}")
    return outputs
