"""Save weights as a state_dict with a JSON sidecar that says how to rebuild the model."""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fmnist.pipeline.atomic import atomic_open, read_json, write_json
from fmnist.pipeline.errors import PipelineError
from fmnist.pipeline.models import build_model
from fmnist.pipeline.params import (
    ARCHITECTURES,
    HIDDEN_UNITS_MAX,
    RENAMED_MODEL_KEYS,
    ModelParams,
    int_in,
)

FORMAT_VERSION = 2
ARCH_KEYS = ("arch", "hidden_units", "in_channels", "image_size", "num_classes")
SIDECAR_RANGES = {
    "hidden_units": (1, HIDDEN_UNITS_MAX),
    "in_channels": (1, 4),
    "image_size": (4, 256),  # TinyVGG halves it twice
    "num_classes": (2, 1000),
}


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


def _unpickling_reason(exc: BaseException) -> str:
    """The line of torch's weights_only refusal that says what was refused, without its advice."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = next((line for line in lines if "nsupported" in line), "it holds more than tensors")
    return reason.split(". ", 1)[0].rstrip(".")


def _first(exc: BaseException) -> str:
    """The first informative sentence of an exception's message (torch's run to paragraphs)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]  # the header names the class; the next line says what does not fit
    return lines[0].split(". ", 1)[0].rstrip(".") if lines else type(exc).__name__


def load_metadata(weights: str | Path) -> dict[str, Any]:
    """Read a checkpoint's sidecar and check that it describes a model this code can build."""
    path = sidecar_path(weights)
    meta = read_json(path, f"missing sidecar for {weights}")
    valid = isinstance(meta, dict) and meta.get("format") in (1, FORMAT_VERSION)
    if not valid or any(key not in meta for key in ARCH_KEYS):
        raise PipelineError(f"{path}: not a checkpoint sidecar of format {FORMAT_VERSION}")
    hyperparameters = meta.get("hyperparameters")
    if meta["format"] == 1 and isinstance(hyperparameters, dict):
        for old, new in RENAMED_MODEL_KEYS.items():  # format 1 had the old names
            if old in hyperparameters:
                hyperparameters[new] = hyperparameters.pop(old)
    if meta["arch"] not in ARCHITECTURES:
        raise PipelineError(
            f"{path}: arch: expected one of {', '.join(ARCHITECTURES)}; got {meta['arch']!r}"
        )
    # Checked before anything is allocated: a hostile sidecar's 10**12 hidden units would
    # otherwise take the machine's memory before any shape is compared.
    for key in ARCH_KEYS[1:]:
        int_in(meta[key], f"{path}: {key}", *SIDECAR_RANGES[key])
    return meta


def check_matches_params(
    meta: dict[str, Any], model_params: ModelParams, weights: str | Path
) -> None:
    """Fail unless the sidecar describes the model that params.yaml defines (stale weights)."""
    wanted = {"arch": model_params.arch, "hidden_units": model_params.hidden_units}
    differ = [key for key, value in wanted.items() if meta.get(key) != value]
    if differ:
        found = ", ".join(f"{key}={meta.get(key)!r}" for key in differ)
        name = model_params.name
        expected = ", ".join(f"models.{name}.{key}={wanted[key]!r}" for key in differ)
        raise PipelineError(
            f"{sidecar_path(weights)}: the weights were trained with {found}, but params.yaml "
            f"has {expected}: re-run `dvc repro train@{name}`"
        )


def load_checkpoint(
    weights: str | Path, device: torch.device | str = "cpu", expected: ModelParams | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model its sidecar describes and load the weights without running pickled code."""
    # With `expected`, the sidecar must first agree with that model's params.
    meta = load_metadata(weights)
    if expected is not None:
        check_matches_params(meta, expected, weights)
    model = build_model(**{key: meta[key] for key in ARCH_KEYS})
    try:
        with warnings.catch_warnings():
            # Noise before the refusal of a foreign pickle; the error below says what matters.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PipelineError(f"{weights}: no such checkpoint") from None
    except pickle.UnpicklingError as exc:
        # weights_only=True refuses any object but tensors and plain containers, so nothing in
        # the file ran; torch's own message suggests weights_only=False, which would run it.
        raise PipelineError(
            f"{weights}: not a loadable weights file, refused without running it "
            f"({_unpickling_reason(exc)}); re-create it with `dvc repro "
            f"train@{Path(weights).stem}` and never load an untrusted file with weights_only=False"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise PipelineError(f"{weights}: not a loadable weights file ({_first(exc)})") from None
    if not isinstance(state, dict):
        raise PipelineError(f"{weights}: not a state_dict (it holds a {type(state).__name__})")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # missing, unexpected or misshapen tensors
        raise PipelineError(
            f"{weights}: weights do not fit a {meta['arch']} model with "
            f"hidden_units={meta['hidden_units']}: {_first(exc)}"
        ) from None
    return model.to(device).eval(), meta
