"""Save weights as a state_dict with a JSON sidecar that says how to rebuild the model."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fmnist.atomic import atomic_open, write_json
from fmnist.errors import PipelineError
from fmnist.models import build_model

FORMAT_VERSION = 1
ARCH_KEYS = ("arch", "hidden_units", "in_channels", "image_size", "num_classes")


def sidecar_path(weights: str | Path) -> Path:
    """Return the JSON sidecar's path for a weights file (models/x.pth -> models/x.json)."""
    return Path(weights).with_suffix(".json")


def save_checkpoint(model: nn.Module, weights: str | Path, meta: dict[str, Any]) -> None:
    """Write the state_dict and its sidecar atomically; `meta` must hold ARCH_KEYS."""
    missing = [key for key in ARCH_KEYS if key not in meta]
    if missing:
        raise ValueError(f"checkpoint metadata lacks {', '.join(missing)}")
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    # Saving through a file handle, not a path: torch names the archive's inner folder after
    # the path, and the temporary path is random, which would make every save differ.
    with atomic_open(weights, "wb") as handle:
        torch.save(state, handle)
    write_json(sidecar_path(weights), {"format": FORMAT_VERSION, **meta})


def load_metadata(weights: str | Path) -> dict[str, Any]:
    """Read a checkpoint's sidecar."""
    path = sidecar_path(weights)
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing sidecar for {weights}") from None
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path}: not valid JSON ({exc})") from None
    valid = isinstance(meta, dict) and meta.get("format") == FORMAT_VERSION
    if not valid or any(key not in meta for key in ARCH_KEYS):
        raise PipelineError(f"{path}: not a checkpoint sidecar of format {FORMAT_VERSION}")
    return meta


def load_checkpoint(
    weights: str | Path, device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model its sidecar describes and load the weights without running pickled code."""
    meta = load_metadata(weights)
    model = build_model(**{key: meta[key] for key in ARCH_KEYS})
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PipelineError(f"{weights}: no such checkpoint") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"{weights}: not a loadable weights file ({first_line})") from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise PipelineError(
            f"{weights}: weights do not fit a {meta['arch']} model with "
            f"hidden_units={meta['hidden_units']}: {str(exc).splitlines()[0]}"
        ) from None
    return model.to(device).eval(), meta
