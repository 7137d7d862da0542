"""Curves that follow a run: the train stage rewrites its plot files whole after every epoch."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from fmnist.pipeline.live import SIGNAL_FILE
from fmnist.pipeline.training import HISTORY_FIELDS, STEP_FIELDS

from .conftest import load_stage, tiny_params, write_params
from .test_distributed import stage


@pytest.fixture
def project(tmp_path: Path, prepared_tiny: Path, tiny_data) -> Path:
    shutil.copytree(prepared_tiny, tmp_path, dirs_exist_ok=True)
    # Long enough to be read mid-run: the tiny data trains an epoch in milliseconds, and one-image
    # batches make each epoch 240 steps.
    model_2 = {"epochs": 1000, "batch_size": 1}
    write_params(tmp_path / "params.yaml", tiny_params(tiny_data, model_2=model_2))
    (tmp_path / ".dvc").mkdir()  # a repository for DVC's step signal, as DVC_ROOT names it
    return tmp_path


def rows(text: str, fields: tuple[str, ...]) -> list[dict[str, float]]:
    """Parse a curve file; fail on a wrong header, a short row or a value that is no number."""
    reader = csv.DictReader(io.StringIO(text))
    assert tuple(reader.fieldnames or ()) == fields
    parsed = []
    for row in reader:
        assert None not in row.values() and None not in row, row  # every field, no extra
        parsed.append({k: v if k == "model" else float(v) for k, v in row.items()})
    return parsed


def test_curves_are_readable_and_whole_while_training_runs(project, monkeypatch):
    curves, steps = project / "plots/train/model_2.csv", project / "plots/steps/model_2.csv"
    monkeypatch.setenv("DVC_ROOT", str(project))
    with stage(project, "model_2", project / "train.log") as proc:
        deadline, epochs, reads = time.monotonic() + 120, [], 0
        while time.monotonic() < deadline and proc.poll() is None and len(epochs) < 3:
            if curves.exists() and steps.exists():  # the first epoch writes one, then the other
                epochs = rows(curves.read_text(), HISTORY_FIELDS)  # whole at every read
                rows(steps.read_text(), STEP_FIELDS)
                reads += 1
            time.sleep(0.01)
        running = proc.poll() is None
        signal = json.loads((project / SIGNAL_FILE).read_text()) if running else {}
    assert running, (project / "train.log").read_text()
    assert len(epochs) >= 3 and [row["epoch"] for row in epochs[:3]] == [1, 2, 3]
    assert reads >= 1
    assert signal["pid"] > 0 and signal["step"] >= 0  # DVCLive's file, for VS Code


def test_the_signal_goes_when_training_ends(prepared_tiny, tmp_path, tiny_data, monkeypatch):
    shutil.copytree(prepared_tiny, tmp_path, dirs_exist_ok=True)
    (tmp_path / ".dvc").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    load_stage("train").main(["--model", "model_0"])
    assert not (tmp_path / SIGNAL_FILE).exists()
    assert (tmp_path / SIGNAL_FILE).parent.is_dir()
    history = rows((tmp_path / "plots/train/model_0.csv").read_text(), HISTORY_FIELDS)
    assert [row["epoch"] for row in history] == [1, 2]
    assert os.listdir(tmp_path / "plots/train") == ["model_0.csv"]  # no temporary file left


def test_training_goes_on_when_the_signals_folder_cannot_be_written(
    prepared_tiny, tmp_path, tiny_data, monkeypatch
):
    # Queued experiments side by side share the signal's folder, and DVC removes it when one of
    # them ends: a signal that cannot be written must not fail the others' training.
    shutil.copytree(prepared_tiny, tmp_path, dirs_exist_ok=True)
    blocked = tmp_path / SIGNAL_FILE.parent
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a folder")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    load_stage("train").main(["--model", "model_0"])
    assert (tmp_path / "models" / "model_0.pth").is_file()
