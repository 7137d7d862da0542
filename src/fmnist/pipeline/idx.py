"""Read IDX files (the format Fashion-MNIST ships in) with numpy alone, for stages without torch."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from fmnist.pipeline.classes import CLASSES
from fmnist.pipeline.errors import PipelineError
from fmnist.pipeline.paths import IDX_FILES

UBYTE = 0x08


def read_idx(path: str | Path) -> np.ndarray:
    """Return an unsigned-byte IDX file's array, checking its header against its size."""
    path = Path(path)
    try:
        # A bytearray, so that the array is writable and torch can share it without a copy.
        data = bytearray(path.read_bytes())
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing; run `dvc repro download` first") from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != UBYTE:
        raise PipelineError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise PipelineError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != math.prod(shape):
        raise PipelineError(f"{path}: {len(data) - header} bytes of data for shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_split(raw_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return one split's uint8 images (N, H, W) and labels (N,), checked against each other."""
    # The arrays torchvision's `FashionMNIST(root).data` and `.targets` hold (a test checks it).
    raw_dir = Path(raw_dir)
    images_file, labels_file = IDX_FILES[split]
    images, labels = read_idx(raw_dir / images_file), read_idx(raw_dir / labels_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise PipelineError(
            f"{raw_dir}: {split} images {images.shape} and labels {labels.shape} do not match"
        )
    if labels.size and int(labels.max()) >= len(CLASSES):
        raise PipelineError(f"{raw_dir}: {split} labels go up to {int(labels.max())}")
    return images, labels
