"""The end-to-end demo on the bundled CC0 slide (CMU-1 small region, Aperio SVS)."""

from __future__ import annotations

import time
from pathlib import Path

from sparseseg.info import describe_slide, format_description
from sparseseg.ingest import ingest

DEMO_SLIDE = Path(__file__).parent / "data" / "cmu_small_region.svs"


def run_demo(out_dir: Path, progress: bool = True) -> dict[str, Path]:
    """Ingest the demo slide into ``out_dir`` and print what was written; returns the outputs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    slide_zarr = out_dir / "cmu_small_region.ome.zarr"
    ingest(DEMO_SLIDE, slide_zarr, overwrite=True, progress=progress)
    print(format_description(describe_slide(slide_zarr)))
    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s; outputs:")
    print(f"  slide pyramid + tissue mask: {slide_zarr}")
    print(f"  view it: napari --plugin napari-ome-zarr {slide_zarr}")
    return {"slide": slide_zarr}
