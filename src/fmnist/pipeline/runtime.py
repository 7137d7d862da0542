"""Device, compute dtype, threads and seeding: one idiom for every stage that runs a model."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import torch
from torch import nn

from fmnist.pipeline.errors import PipelineError


def available_devices() -> list[str]:
    """List the accelerators this machine can use, best first, then cpu."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return [*found, "cpu"]


def resolve_device(name: str, setting: str = "runtime.device") -> torch.device:
    """Turn a device name into a torch.device: `auto` picks cuda, then mps, then cpu."""
    # `setting` names where the name came from (params' key, a tool's option) in the error.
    available = available_devices()
    if name == "auto":
        return torch.device(available[0])
    if name not in available:
        raise PipelineError(
            f"{setting}: {name!r} is not available on this machine "
            f"(available: {', '.join(available)}); use auto or one of those"
        )
    return torch.device(name)


def has_convolutions(model: nn.Module) -> bool:
    """Tell a convolutional model from the linear ones."""
    return any(isinstance(module, nn.Conv2d) for module in model.modules())


def cores() -> int:
    """The CPU cores this process may run on (its affinity, which containers and taskset set)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_threads(requested: int, processes: int = 1) -> int:
    """torch's CPU threads for one process: `requested`, or (0) the cores shared out."""
    # 0 is allowed with `runtime.numerics: native` alone: the thread count moves TinyVGG's last
    # bits, so in the portable mode only what DVC tracks decides it, never the machine.
    return requested or max(1, cores() // processes)


@contextlib.contextmanager
def cpu_threads(requested: int, processes: int = 1) -> Iterator[int]:
    """Run the block with the resolved number of CPU threads, then restore the count."""
    before = torch.get_num_threads()
    threads = resolve_threads(requested, processes)
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def native_bf16(device: torch.device) -> bool:
    """Tell whether `device` is a CPU that computes bf16 natively (AVX512-BF16 or AMX)."""
    if device.type != "cpu":
        return False
    # Private torch helpers: should a release drop them, fall back to fp32 rather than fail.
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def resolve_compute_dtype(name: str, device: torch.device) -> str:
    """Turn a model's compute dtype into fp32 or bf16: `auto` is bf16 on CPUs with native bf16."""
    # Elsewhere bf16 is emulated on CPUs (several times slower) and, on GPUs, models this small
    # are bound by kernel launches: autocast's casts only add kernels.
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return name


def autocast(device: torch.device, compute_dtype: str) -> contextlib.AbstractContextManager:
    """Return the context that runs one step's forward pass in `compute_dtype` (fp32 or bf16)."""
    # Enter it around each step, not around a whole epoch: autocast caches its low-precision
    # copies of the weights until the context exits, so a long-lived context would keep using
    # the weights of the first step.
    if compute_dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move `model` to `device`, in channels-last layout when it has convolutions (faster)."""
    # Channels-last lets oneDNN (CPU) and cuDNN (GPU) pick their faster convolution kernels; it
    # changes no result beyond floating-point rounding.
    model = model.to(device)
    if has_convolutions(model) and device.type in ("cpu", "cuda"):
        model = model.to(memory_format=torch.channels_last)
    return model


def seed_everything(seed: int) -> None:
    """Seed every global generator a stage may touch, so reruns give the same bytes."""
    random.seed(seed)
    torch.manual_seed(seed)
