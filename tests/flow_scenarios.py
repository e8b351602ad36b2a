"""Runs the Prefect flows in a fresh process (PREFECT_HOME set by the caller): used by test_flows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.pipeline import (active_learning_round, ingest_slide, process_archive, process_slide,  # noqa: E402
                            train_model)

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
    results["active_learning"] = active_learning(work)
    print("RESULTS " + json.dumps(results, default=str))


def active_learning(work: Path) -> list[dict]:
    """Round 0 (score, propose), the simulated human (a nucleus drawn in proposal #1), round 1 (import, tune)."""
    slide = ingest_slide(str(work / "archive" / "he_65c8527c.tif"), str(work / "al.ome.zarr"))
    truth = str(ROOT / "tests" / "data" / "dsb2018" / "labels" / "he_65c8527c.tif")
    common = dict(regions=2, size_um=30.0, evaluation={slide: truth}, block=256)
    first = active_learning_round([slide], str(MODEL), str(work / "al"), 0, **common)
    proposals = json.loads((work / "al" / "round_0" / "proposals" / "al.geojson").read_text())
    x, y = proposals["features"][0]["geometry"]["coordinates"][0][0]
    nucleus = [[x + 20, y + 20], [x + 32, y + 20], [x + 32, y + 31], [x + 20, y + 31], [x + 20, y + 20]]
    proposals["features"].append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [nucleus]},
                                  "properties": {"objectType": "annotation", "classification": {"name": "Nucleus"}}})
    drawn = work / "drawn.geojson"
    drawn.write_text(json.dumps(proposals))
    second = active_learning_round([slide], str(MODEL), str(work / "al"), 1, drawn=[str(drawn)], minutes=0.05,
                                   **common)
    return [first, second]


if __name__ == "__main__":
    main(Path(sys.argv[1]))
