"""Shared fixtures: tiny Fashion-MNIST-shaped IDX files, made here, never the real data."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from fmnist.pipeline import numerics
from fmnist.pipeline.params import PORTABLE
from fmnist.tools.tinydata import (  # noqa: F401  (the tests import these from here)
    IDX_NAMES,
    N_TEST,
    N_TRAIN,
    TinyData,
    idx_bytes,
    make_split,
    tiny_params,
    write_tiny_data,
)

from .s3_store import Server, running_server

# Tests call the stages' main() in this process too, after torch is loaded: pin the portable
# numerics before anything imports it, as each stage does for itself when DVC runs it.
numerics.pin(PORTABLE, threads=1)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> TinyData:
    return write_tiny_data(tmp_path_factory.mktemp("tiny-source"))


# The committed params.yaml's header, which points to the docs of every key.
PARAMS_HEADER = (ROOT / "params.yaml").read_text().splitlines()[0]


def write_params(path: Path, params: dict) -> Path:
    """Write `params` as a params.yaml, under the committed file's header."""
    path.write_text(f"{PARAMS_HEADER}\n\n" + yaml.safe_dump(params, sort_keys=False))
    return path


def load_stage(name: str) -> ModuleType:
    """Import a stage script (stages/ is not a package) to call its main(argv)."""
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def copy_project(dest: Path) -> None:
    """Copy what `dvc repro` needs (dvc.yaml, .gitignore, plot templates, stages, library, the
    params docs)."""
    # After `dvc init`, which refuses a folder that already has a .dvc.
    shutil.copy(ROOT / "dvc.yaml", dest / "dvc.yaml")
    shutil.copy(ROOT / ".gitignore", dest / ".gitignore")  # timings/ and data/ stay out of git
    shutil.copytree(ROOT / ".dvc" / "plots", dest / ".dvc" / "plots")
    (dest / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "configuration.md", dest / "docs")  # where params.yaml points
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
