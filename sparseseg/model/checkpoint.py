"""Checkpoints: weights + everything inference and resumption need, loadable with weights_only=True.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled classes),
so ``torch.load(path, weights_only=True)`` reads it without executing code.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import torch

from sparseseg.errors import InputError
from sparseseg.files.atomic import check_output_file, staged_file
from sparseseg.model.unet import UNet, UNetConfig

FORMAT = "sparseseg-checkpoint-v1"


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    **metadata: Any) -> None:
    """Write atomically (temporary file, then rename): a crash never leaves a truncated checkpoint."""
    net = model.module if hasattr(model, "module") else model
    state = {"format": FORMAT, "config": net.config.to_dict(),
             "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
             "halo": net.halo, "downsampling": net.downsampling, **metadata}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    with staged_file(Path(path)) as tmp:
        torch.save(state, tmp)


def update_checkpoint(path: Path, out: Path, **values: Any) -> None:
    """Write ``path``'s checkpoint with ``values`` added or replaced to ``out`` (atomically; may be ``path``)."""
    state = load_checkpoint(path)
    state.update(values)
    with staged_file(Path(out)) as tmp:
        torch.save(state, tmp)


def check_checkpoint_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that writing the checkpoint would wrongly replace, before any work: a folder, a device or
    pipe, an existing file without ``overwrite``, or with it a file that is not a sparseseg checkpoint."""
    check_output_file(out, overwrite, example="model.pt")
    if out.exists():
        try:
            load_checkpoint(out)
        except InputError:
            raise InputError(out, "exists and is not a sparseseg checkpoint; --overwrite only replaces those") \
                from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights-only refused it: it holds code or objects to execute
        message = str(exc)
        detail = "it holds Python objects that loading would have to execute" if "GLOBAL" in message \
            else "not a torch file, or a damaged one"
        raise InputError(path, f"not a loadable sparseseg checkpoint ({detail}; sparseseg loads weights only)") \
            from None
    except Exception:  # torch raises several types for foreign, truncated or corrupt files
        raise InputError(path, "not a loadable sparseseg checkpoint (not a torch file, or a damaged or truncated "
                               "one)") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(path, f"not a sparseseg checkpoint (expected format {FORMAT!r})")
    check_values(path, state)
    return state


def check_values(path: Path, state: dict[str, Any]) -> None:
    """Refuse what would silently give nothing: NaN or infinite weights, a pixel size that is not a positive number."""
    weights = state.get("state_dict")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise InputError(path, "not a sparseseg checkpoint (no weights)")
    bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise InputError(path, f"holds NaN or infinite weights ({bad[0]}{' and more' if len(bad) > 1 else ''}): "
                               "a diverged training; use an earlier checkpoint")
    size = state.get("pixel_size_um")
    if size is not None and not (isinstance(size, (int, float)) and math.isfinite(size) and size > 0):
        raise InputError(path, f"records pixel size {size!r}, not a positive number of um")


def model_from_checkpoint(state: dict[str, Any]) -> UNet:
    model = UNet(UNetConfig.from_dict(state["config"]))
    model.load_state_dict(state["state_dict"])
    return model
