"""Shared fixtures: tiny Fashion-MNIST-shaped IDX files, made here, never the real data."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import yaml

from fmnist.pipeline import numerics
from fmnist.pipeline.params import PORTABLE
from fmnist.pipeline.paths import IDX_FILES

from .s3_store import Server, running_server

# Tests call the stages' main() in this process too, after torch is loaded: pin the portable
# numerics before anything imports it, as each stage does for itself when DVC runs it.
numerics.pin(PORTABLE, threads=1)

ROOT = Path(__file__).resolve().parents[1]
IDX_NAMES = {
    (split, kind): name
    for split, names in IDX_FILES.items()
    for kind, name in zip(("images", "labels"), names, strict=True)
}
N_TRAIN, N_TEST = 240, 60


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


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> TinyData:
    source = tmp_path_factory.mktemp("tiny-source")
    splits = {"train": make_split(N_TRAIN, 1), "test": make_split(N_TEST, 2)}
    raw, sha = {}, {}
    for (split, kind), name in IDX_NAMES.items():
        images, labels = splits[split]
        content = idx_bytes(images if kind == "images" else labels)
        raw[name] = content
        sha[name] = hashlib.sha256(content).hexdigest()
        (source / f"{name}.gz").write_bytes(gzip.compress(content, mtime=0))
    return TinyData(source=source, sha256=sha, raw=raw)


def tiny_params(tiny: TinyData, **model_overrides: dict) -> dict:
    """A params mapping that runs the whole pipeline on the tiny data in seconds."""
    models = {
        "model_0": {
            "arch": "linear",
            "hidden_units": 8,
            "lr": 0.1,
            "epochs": 2,
            "batch_size": 16,
            "compute_dtype": "fp32",
        },
        "model_1": {
            "arch": "linear_relu",
            "hidden_units": 8,
            "lr": 0.1,
            "epochs": 2,
            "batch_size": 16,
            "compute_dtype": "fp32",
        },
        "model_2": {
            "arch": "tinyvgg",
            "hidden_units": 4,
            "lr": 0.1,
            "epochs": 2,
            "batch_size": 16,
            "compute_dtype": "fp32",
        },
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


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def load_stage(name: str) -> ModuleType:
    """Import a stage script (stages/ is not a package) to call its main(argv)."""
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def copy_project(dest: Path) -> None:
    """Copy what `dvc repro` needs (dvc.yaml, .gitignore, plot templates, stages, library)."""
    # After `dvc init`, which refuses a folder that already has a .dvc.
    shutil.copy(ROOT / "dvc.yaml", dest / "dvc.yaml")
    shutil.copy(ROOT / ".gitignore", dest / ".gitignore")  # timings/ and data/ stay out of git
    shutil.copytree(ROOT / ".dvc" / "plots", dest / ".dvc" / "plots")
    shutil.copytree(ROOT / "stages", dest / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(
        ROOT / "src",
        dest / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )


@pytest.fixture
def project(tmp_path: Path, tiny_data: TinyData, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with tiny params, as stages see it when DVC runs them."""
    write_params(tmp_path / "params.yaml", tiny_params(tiny_data))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def prepared_tiny(tmp_path_factory: pytest.TempPathFactory, tiny_data: TinyData) -> Path:
    """A project where download and prepare ran on the tiny data: copy it, never change it."""
    root = tmp_path_factory.mktemp("prepared")
    write_params(root / "params.yaml", tiny_params(tiny_data))
    cwd = Path.cwd()
    os.chdir(root)
    try:
        load_stage("download").main([])
        load_stage("prepare").main([])
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real SeaweedFS S3 server on 127.0.0.1 for one test module, stopped at its end."""
    with running_server(tmp_path_factory.mktemp("seaweedfs")) as started:
        yield started
