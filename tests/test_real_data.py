"""On the real Fashion-MNIST, when this machine has it: slow, so skipped by default."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from fmnist.pipeline.data import Split, read_raw
from fmnist.pipeline.download import DownloadError, fetch_dataset
from fmnist.pipeline.params import load_params
from fmnist.pipeline.paths import RAW_DIR
from fmnist.pipeline.training import train_model

from .conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_root(tmp_path_factory) -> Path:
    params = load_params(ROOT / "params.yaml")
    local = [s for s in params.data.sources if not s.startswith(("http://", "https://"))]
    root = tmp_path_factory.mktemp("real")
    try:
        fetch_dataset(
            [str(ROOT / RAW_DIR), *local], params.data.sha256, root / RAW_DIR.relative_to("data"), 5
        )
    except DownloadError as exc:
        pytest.skip(f"real Fashion-MNIST not available locally: {str(exc).splitlines()[0]}")
    return root


def test_real_files_read_as_the_known_dataset(real_root):
    splits, classes = read_raw(real_root / "FashionMNIST" / "raw")
    assert splits["train"].images.shape == (60_000, 28, 28)
    assert splits["test"].images.shape == (10_000, 28, 28)
    assert torch.bincount(splits["test"].labels).tolist() == [1000] * 10
    assert len(classes) == 10


def test_linear_model_on_a_subset_learns(real_root):
    splits, _ = read_raw(real_root / "FashionMNIST" / "raw")
    subset = Split(splits["train"].images[:12_000], splits["train"].labels[:12_000])
    model_params = load_params(ROOT / "params.yaml").model("model_0")
    result = train_model(
        dataclasses.replace(model_params, epochs=1),
        subset,
        splits["test"],
        seed=42,
        device=torch.device("cpu"),
        eval_batch_size=1000,
    )
    assert result.history[-1]["test_accuracy"] > 0.75
