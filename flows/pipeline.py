"""Prefect flows for sparseseg: thin wiring of library calls (no algorithm lives here).

Tasks are coarse (one per slide and stage); per-block work runs as plain Dask inside them on the
cluster the spec describes (deploy/clusters/*.yaml; default: a LocalCluster, or one worker per GPU).
With no configuration the flows run on Prefect's ephemeral API.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from sparseseg import __version__
from sparseseg.archive import discover_slides, fingerprint, is_done, mark_done
from sparseseg.cluster import dask_client, default_spec, load_spec
from sparseseg.io.names import slide_stem


def _spec(cluster: str | None) -> dict:
    return load_spec(cluster) if cluster else default_spec()


@task(retries=2, retry_delay_seconds=5, task_run_name="ingest {source}")
def ingest_task(source: str, destination: str) -> str:
    from sparseseg.ingest import ingest

    if Path(source).name.endswith(".ome.zarr"):
        return source  # already an OME-Zarr slide: segment it in place
    return str(ingest(source, destination, overwrite=True))


@task(task_run_name="segment {slide}")
def segment_task(slide: str, model: str, cluster: str | None, block: int) -> dict:
    from sparseseg.segment import SegmentOptions, segment_slide

    with dask_client(_spec(cluster)) as client:
        result = segment_slide(slide, model, SegmentOptions(block=block, scheduler=client.scheduler.address,
                                                            overwrite=True, progress=False))
    return {"cells": result.n_objects, "labels": str(result.labels)}


@task(retries=1, retry_delay_seconds=5, task_run_name="measure {slide}")
def measure_task(slide: str, regions: str, out: str) -> dict:
    from sparseseg.measure.run import measure_slide

    return measure_slide(slide, labels="cells", regions=regions, out=out, progress=False)


@task(retries=2, retry_delay_seconds=5, task_run_name="export {slide}")
def export_task(slide: str, out: str) -> str:
    from sparseseg.export.geojson import export_slide_geojson

    # this run's own output (a retry replaces what the failed try wrote); cell classes when the model has them
    export_slide_geojson(Path(slide), "cells", Path(out), overwrite=True)
    return out


@flow(name="ingest-slide")
def ingest_slide(source: str, output: str) -> str:
    """Convert one slide (SVS, TIFF, OME-Zarr) to an OME-Zarr pyramid with a tissue mask."""
    return ingest_task(source, output)


@flow(name="train-model")
def train_model(out: str, data: list[str] | None = None, images: str | None = None, annotations: str | None = None,
                init: str | None = None, minutes: float = 10.0, loss: str = "sketchpose", workers: int | None = None,
                pixel_size_um: float | None = None, overwrite: bool = True) -> str:
    """Train from annotated slides or image folders: fine-tune ``init``, else the bundled model when the data has
    its channels; ``init="none"`` trains from scratch (as `sparseseg train`)."""
    from sparseseg.infer.predictor import default_device
    from sparseseg.train.loop import TrainConfig
    from sparseseg.train.request import DataSpec, TrainRequest, run_training

    call = {k: v for k, v in dict(out=out, data=data, images=images, annotations=annotations, init=init,
                                  minutes=minutes, loss=loss, workers=workers, pixel_size_um=pixel_size_um,
                                  overwrite=overwrite).items() if v is not None}
    request = TrainRequest(data=DataSpec(slides=tuple(data or ()), images=images, annotations=annotations),
                           out=Path(out), config=TrainConfig(loss=loss, device=default_device()),
                           init=Path(init) if init and init != "none" else None, bundled_init=init is None,
                           overwrite=overwrite, minutes=minutes, workers=workers, pixel_size_um=pixel_size_um,
                           command=f"prefect flow train-model {json.dumps(call)}")
    result = run_training(request, progress=False, announce=get_run_logger().info)
    get_run_logger().info("trained %s for %d steps", out, result["step"])
    return out


@flow(name="process-slide")
def process_slide(slide: str, model: str, output_dir: str, cluster: str | None = None,
                  regions: str = "grid:250um", block: int = 2048) -> dict:
    """Segment, measure and export one OME-Zarr slide into ``output_dir``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    segmented = segment_task(slide, model, cluster, block)
    summary = measure_task(slide, regions, str(out / "measure"))
    export_task(slide, str(out / "cells.geojson.gz"))
    return {"cells": segmented["cells"], "density_per_mm2": summary["density_per_mm2"],
            "report": summary["report"]}


@task(task_run_name="slide {source}")
def process_one(source: str, output_dir: str, model: str, cluster: str | None, regions: str, block: int) -> dict:
    """Ingest + segment + measure + export one slide of an archive unless already done."""
    src = Path(source)
    out = Path(output_dir) / slide_stem(src)
    params = {"regions": regions, "block": block, "cluster": cluster}
    print_ = fingerprint(src, Path(model), params)
    if is_done(out, print_):
        return {"slide": src.name, "status": "skipped (done)", "cells": None, "density_per_mm2": None,
                "runtime_s": 0.0, "output": str(out)}
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    slide = ingest_slide(source, str(out / f"{slide_stem(src)}.ome.zarr"))
    summary = process_slide(slide, model, str(out), cluster=cluster, regions=regions, block=block)
    runtime = time.perf_counter() - started
    row = {"slide": src.name, "status": "processed", "cells": summary["cells"],
           "density_per_mm2": summary["density_per_mm2"], "runtime_s": round(runtime, 1), "output": str(out)}
    mark_done(out, print_, {**row, "sparseseg": __version__})
    return row


def build_deferred_prefect_models() -> None:
    """Build Prefect's deferred pydantic models now, in one thread, before subflows start in several.

    pydantic < 2.13 (ome-zarr-models pins it) rebuilds a deferred model unsafely when two threads use it
    first at the same moment (pydantic issue 11849): one thread then validates with the parent class and
    the subflow fails with "ValidationError ... _FlowRunFilterBaseModel ... Extra inputs are not permitted".
    Building the ~260 models takes about 0.2 s.
    """
    import pydantic

    pending = list(pydantic.BaseModel.__subclasses__())
    while pending:
        model = pending.pop()
        pending.extend(model.__subclasses__())
        if model.__module__.startswith("prefect") and not model.__dict__.get("__pydantic_complete__", True):
            model.model_rebuild(raise_errors=False)


@flow(name="process-archive", task_runner=ThreadPoolTaskRunner(max_workers=2))
def process_archive(input_dir: str, output_dir: str, model: str, cluster: str | None = None,
                    regions: str = "grid:250um", block: int = 2048, max_concurrent_slides: int = 2) -> list[dict]:
    """Every slide of ``input_dir`` not yet processed with this model and these parameters.

    Slides run as concurrent per-slide subflows (at most ``max_concurrent_slides`` at a time);
    a table artifact lists slide, cells, density, runtime and output path.
    """
    logger = get_run_logger()
    build_deferred_prefect_models()  # the per-slide subflows below start in threads
    slides = discover_slides(input_dir)
    logger.info("%d slides in %s", len(slides), input_dir)
    rows = []
    for start in range(0, len(slides), max_concurrent_slides):  # waves bound the concurrency
        futures = [process_one.submit(str(s), output_dir, model, cluster, regions, block)
                   for s in slides[start:start + max_concurrent_slides]]
        rows.extend(f.result() for f in futures)
    create_table_artifact(key="process-archive", table=rows,
                          description=f"sparseseg {__version__}: {len(rows)} slides from {input_dir}")
    return rows


@task(task_run_name="import {drawn}")
def import_task(slide: str, drawn: str) -> dict:
    from sparseseg.annotations.importer import import_annotations

    return import_annotations(slide, drawn, overwrite=True)  # the export holds every earlier round's squares too


@task(task_run_name="suggest {out}")
def suggest_task(slides: list[str], model: str, out: str, regions: int, size_um: float) -> list[dict]:
    from sparseseg.suggest import SuggestOptions, suggest

    proposals = suggest([Path(s) for s in slides], Path(model), Path(out),
                        SuggestOptions(regions=regions, size_um=size_um, overwrite=True))
    return [{"slide": c.slide, "rank": c.rank, "y": c.y, "x": c.x, "score": c.score} for c in proposals]


@task(task_run_name="score {slide}")
def score_task(slide: str, model: str, truth: str, out: str, cluster: str | None, block: int) -> dict:
    from sparseseg.measure.run import measure_slide
    from sparseseg.segment import SegmentOptions, segment_slide

    with dask_client(_spec(cluster)) as client:
        segment_slide(slide, model, SegmentOptions(name="active-learning", block=block, overwrite=True,
                                                   scheduler=client.scheduler.address, progress=False))
    summary = measure_slide(slide, labels="active-learning", truth=truth, out=out, progress=False, report=False)
    return {k: summary["accuracy"][k] for k in ("f1@0.5", "aji")}


@flow(name="active-learning-round")
def active_learning_round(slides: list[str], model: str, workdir: str, round_number: int,
                          drawn: list[str] | None = None, minutes: float = 5.0, regions: int = 10,
                          size_um: float = 100.0, evaluation: dict[str, str] | None = None,
                          cluster: str | None = None, block: int = 2048) -> dict:
    """One round of the annotate -> train loop, the human step between rounds.

    Round 0 only scores ``model`` and proposes regions. Round n > 0 imports ``drawn`` (QuPath exports, one
    per slide of ``slides``, in order: the proposals with the cells drawn inside them). It then fine-tunes
    the previous round's model on the annotated slides for ``minutes``, scores it (``evaluation``: slide ->
    truth label image, through segment + measure) and proposes the next ``regions``. Everything a round
    makes is kept in ``workdir/round_<n>``: model.pt, proposals/ (GeoJSON per slide, index.html), round.json
    with the scores and the gain over the previous round.
    """
    logger = get_run_logger()
    root = Path(workdir)
    folder = root / f"round_{round_number}"
    (folder / "scores").mkdir(parents=True, exist_ok=True)
    current = model
    if round_number > 0:
        previous = json.loads((root / f"round_{round_number - 1}" / "round.json").read_text())
        if not drawn or len(drawn) != len(slides):
            raise ValueError("a round after 0 needs one drawn GeoJSON per slide (the exported proposals)")
        for slide, path in zip(slides, drawn):
            import_task(slide, path)
        current = train_model(str(folder / "model.pt"), data=list(slides), init=previous["model"], minutes=minutes)
    scores = {slide: score_task(slide, current, truth, str(folder / "scores" / slide_stem(Path(slide))),
                                cluster, block)
              for slide, truth in (evaluation or {}).items()}
    mean = {k: sum(s[k] for s in scores.values()) / len(scores) for k in ("f1@0.5", "aji")} if scores else {}
    record = {"round": round_number, "model": current, "scores": scores, "mean": mean,
              "proposals": suggest_task(list(slides), current, str(folder / "proposals"), regions, size_um)}
    if round_number > 0 and mean and previous.get("mean"):
        record["gain"] = {k: mean[k] - previous["mean"][k] for k in mean}
        logger.info("round %d: F1@0.5 %.3f (%+.3f), AJI %.3f (%+.3f)", round_number, mean["f1@0.5"],
                    record["gain"]["f1@0.5"], mean["aji"], record["gain"]["aji"])
    (folder / "round.json").write_text(json.dumps(record, indent=1))
    return record
