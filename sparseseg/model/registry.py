"""Bundled models by name: ``--model nuclei_he`` (or a checkpoint path) wherever a model is taken.

The bundled checkpoints live in ``sparseseg/data/models/<name>.pt``; ``models.json`` beside them holds
what the checkpoint itself does not: the data each was trained on, its licence, and its measured accuracy
(docs/models.md has the commands).
"""

from __future__ import annotations

import json
from pathlib import Path

from sparseseg.errors import InputError

BUNDLED = Path(__file__).resolve().parents[1] / "data" / "models"
#: The model ``segment`` uses when none is named.
DEFAULT_MODEL = "nuclei_he"


def bundled_names() -> list[str]:
    """Names of the bundled models, sorted."""
    return sorted(p.stem for p in BUNDLED.glob("*.pt"))


def resolve_model(name_or_path: str | Path | None) -> Path:
    """The checkpoint a ``--model`` value means: an existing file, else a bundled model's name (the default
    when None); anything else is refused naming the bundled ones."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = path.name[:-3] if path.name.endswith(".pt") else path.name
    if path.parent == Path(".") and (BUNDLED / f"{name}.pt").is_file():
        return BUNDLED / f"{name}.pt"
    raise InputError(path, f"no such checkpoint, and not a bundled model ({', '.join(bundled_names()) or 'none'})")


def describe_models() -> list[dict]:
    """One row per bundled model: name, file size, pixel size, input channels, cell classes, parameters, and
    its card (data, licence, measured accuracy)."""
    from sparseseg.model.checkpoint import load_checkpoint

    cards, rows = model_cards(), []
    for name in bundled_names():
        path = BUNDLED / f"{name}.pt"
        state = load_checkpoint(path)
        rows.append({"name": name, "path": str(path), "megabytes": round(path.stat().st_size / 2**20, 1),
                     "pixel_size_um": state.get("pixel_size_um"), "channels": state.get("channels"),
                     "in_channels": state["config"]["in_channels"], "classes": list(state.get("classes") or []),
                     "parameters": int(sum(v.numel() for k, v in state["state_dict"].items()
                                           if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))),
                     "default": name == DEFAULT_MODEL, **cards.get(name, {})})
    return rows


def model_cards() -> dict[str, dict]:
    """{name: card} of the bundled models: data, licence, measured accuracy (``models.json``)."""
    cards = BUNDLED / "models.json"
    return json.loads(cards.read_text()) if cards.is_file() else {}
