"""Read IDX files (the format Fashion-MNIST ships in) with numpy alone, for stages without torch."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from fmnist.errors import PipelineError

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
