"""Device choice and seeding: one idiom for every stage that runs a model."""

from __future__ import annotations

import random

import torch

from fmnist.errors import PipelineError


def available_devices() -> list[str]:
    """List the accelerators this machine can use, best first, then cpu."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return [*found, "cpu"]


def resolve_device(name: str) -> torch.device:
    """Turn params' device into a torch.device: `auto` picks cuda, then mps, then cpu."""
    available = available_devices()
    if name == "auto":
        return torch.device(available[0])
    if name not in available:
        raise PipelineError(
            f"runtime.device: {name!r} is not available on this machine "
            f"(available: {', '.join(available)}); set it to auto or one of those"
        )
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed every global generator a stage may touch, so reruns give the same bytes."""
    random.seed(seed)
    torch.manual_seed(seed)
