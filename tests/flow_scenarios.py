"""Runs the Prefect flows in a fresh process (PREFECT_HOME set by the caller): used by test_flows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.pipeline import ingest_slide, process_archive, process_slide, train_model  # noqa: E402

MODEL = ROOT / "sparseseg" / "data" / "models" / "nuclei_he.pt"


def main(work: Path) -> None:
    archive = work / "archive"
    results = {}
    slide = ingest_slide(str(archive / "he_65c8527c.tif"), str(work / "single.ome.zarr"))
    results["ingest"] = slide
    results["segment"] = process_slide(slide, str(MODEL), str(work / "single-out"), regions="grid:50um")
    results["train"] = train_model(str(work / "tuned.pt"), images=str(work / "train" / "images"),
                                   annotations=str(work / "train" / "annotations"), init=str(MODEL), minutes=0.05,
                                   pixel_size_um=0.5)
    threads = work / "threads.yaml"  # the archive runs on in-process workers (process_slide ran the default cluster)
    threads.write_text("kind: local\nn_workers: 1\nthreads_per_worker: 2\nprocesses: false\n")
    for run in ("archive_first", "archive_second"):
        results[run] = process_archive(str(archive), str(work / "out"), str(MODEL), cluster=str(threads),
                                       regions="grid:50um")
    print("RESULTS " + json.dumps(results, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
