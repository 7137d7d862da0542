"""Tiny Fashion-MNIST-shaped data: IDX files made from a seed, and params that run on them.

The test suite and the benchmarks run the whole pipeline on these in seconds, offline, without
the real data. Each class is a bright horizontal band at its own height, plus noise, so that
every model learns something in two epochs.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fmnist.pipeline.paths import IDX_FILES

N_TRAIN, N_TEST = 240, 60
IDX_NAMES = {
    (split, kind): name
    for split, names in IDX_FILES.items()
    for kind, name in zip(("images", "labels"), names, strict=True)
}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format (magic 0x0000 0x08 ndim, big-endian dims)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def make_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is a bright horizontal band at a class-specific height, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    images = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        top = 2 + 2 * int(label)
        images[i, top : top + 3, 4:24] = 230
    return images, labels


@dataclass(frozen=True)
class TinyData:
    """A directory of gzipped tiny IDX files and the SHA-256 of their content."""

    source: Path
    sha256: dict[str, str]
    raw: dict[str, bytes]


def write_tiny_data(source: Path) -> TinyData:
    """Write the four gzipped IDX files into `source`; the same bytes on every call."""
    source.mkdir(parents=True, exist_ok=True)
    splits = {"train": make_split(N_TRAIN, 1), "test": make_split(N_TEST, 2)}
    raw, sha = {}, {}
    for (split, kind), name in IDX_NAMES.items():
        images, labels = splits[split]
        content = idx_bytes(images if kind == "images" else labels)
        raw[name] = content
        sha[name] = hashlib.sha256(content).hexdigest()
        (source / f"{name}.gz").write_bytes(gzip.compress(content, mtime=0))
    return TinyData(source=source, sha256=sha, raw=raw)


def tiny_params(tiny: TinyData, **model_overrides: dict) -> dict[str, Any]:
    """A params mapping that runs the whole pipeline on the tiny data in seconds."""
    layers = {"model_0": ("linear", 8), "model_1": ("linear_relu", 8), "model_2": ("tinyvgg", 4)}
    models = {
        name: {
            "arch": arch,
            "hidden_units": hidden,
            "lr": 0.1,
            "epochs": 2,
            "batch_size": 16,
            "compute_dtype": "fp32",
        }
        for name, (arch, hidden) in layers.items()
    }
    for name, changes in model_overrides.items():
        models[name] = {**models[name], **changes}
    return {
        "runtime": {
            "device": "cpu",
            "seed": 42,
            "numerics": "portable",
            "threads": 1,
            "processes": 1,
        },
        "data": {"sources": [str(tiny.source)], "sha256": dict(tiny.sha256), "timeout_s": 5},
        "eval": {"batch_size": 25},
        # 15 steps per epoch on the tiny data: a point of the running loss every 5 of them.
        "curves": {"loss_every": 5},
        "gate": {"max_accuracy_drop": 1.0},
        "models": models,
    }
