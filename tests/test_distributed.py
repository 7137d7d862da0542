"""Data-parallel training under the real torchrun: two gloo processes on CPU, bound to 127.0.0.1,
train each architecture as one process does, and a rank that dies takes the stage down cleanly."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch

from fmnist.pipeline.engine import Shard

from .conftest import ROOT, load_stage, tiny_params, write_params
from .test_faults import temp_files, wait_for

MODELS = ("model_0", "model_1", "model_2")  # linear, linear_relu, tinyvgg
# Batches of 7 split 4 + 3 between two ranks, and the last batch (240 % 7 = 2) splits 1 + 1: the
# loss weighting must make unequal slices average to the global batch's mean.
BATCH = 7
# Float32 rounding, not equality: one process sums each batch's gradient in one order, two
# processes sum half-batches and then DDP adds the halves, so each step's gradient differs in
# its last bits (float32's epsilon is 1.2e-7). Over the 2 x 35 steps of SGD at lr 0.1 those
# differences add up to a few 1e-7 on weights of order 0.1-1 (3e-8 measured for TinyVGG). A real
# error, such as averaging slice means instead of weighting them, moves weights by 1e-3 or more.
ATOL, RTOL = 1e-6, 1e-5


@pytest.fixture
def project(tmp_path: Path, prepared_tiny: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(prepared_tiny, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@contextlib.contextmanager
def stage(project: Path, model: str, log: Path) -> Iterator[subprocess.Popen]:
    """Run the train stage as DVC does, in its own session; kill all it started on the way out."""
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "stages" / "train.py"), "--model", model],
            cwd=project,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # torchrun and every rank
            proc.wait(timeout=30)


def outputs(project: Path) -> dict[str, bytes]:
    """Every file under models/ and plots/, with its bytes."""
    return {
        str(path.relative_to(project)): path.read_bytes()
        for folder in ("models", "plots")
        for path in sorted((project / folder).rglob("*"))
        if path.is_file()
    }


def curves(project: Path, model: str) -> list[dict[str, float]]:
    with open(project / "plots" / "train" / f"{model}.csv") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def test_a_batch_is_split_into_contiguous_slices_that_differ_by_at_most_one():
    batch = torch.arange(7)
    slices = [Shard(rank, 2).split(batch) for rank in range(2)]
    assert [s.tolist() for s in slices] == [[0, 1, 2, 3], [4, 5, 6]]
    assert [len(Shard(r, 3).split(torch.arange(2))) for r in range(3)] == [1, 1, 0]


@pytest.mark.parametrize("model", MODELS)
def test_two_gloo_processes_train_as_one_process_does(project, tiny_data, model):
    settings = {"batch_size": BATCH, "epochs": 2}
    params = tiny_params(tiny_data, **{model: settings})
    write_params(project / "params.yaml", params)
    load_stage("train").main(["--model", model])
    one = torch.load(project / "models" / f"{model}.pth", weights_only=True)
    one_curves = curves(project, model)

    params["runtime"]["processes"] = 2
    write_params(project / "params.yaml", params)
    log = project / "train.log"
    with stage(project, model, log) as proc:
        assert proc.wait(timeout=120) == 0, log.read_text()
    two = torch.load(project / "models" / f"{model}.pth", weights_only=True)
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=ATOL, rtol=RTOL)
    two_curves = curves(project, model)
    for a, b in zip(one_curves, two_curves, strict=True):
        assert b["test_accuracy"] == a["test_accuracy"]
        assert b["train_accuracy"] == a["train_accuracy"]
        # The losses, written with 6 decimals, inherit the weights' relative differences.
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-5)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    assert json.loads((project / "models" / f"{model}.json").read_text())["processes"] == 2
    assert temp_files(project) == []
    # One rank told the story: the per-epoch lines appear once.
    assert log.read_text().count(f"{model} epoch 2:") == 1


def test_killing_one_rank_fails_the_stage_stops_the_other_and_writes_nothing(project, tiny_data):
    write_params(project / "params.yaml", tiny_params(tiny_data))
    load_stage("train").main(["--model", "model_2"])  # earlier outputs, which must survive
    before = outputs(project)
    assert "models/model_2.pth" in before and "plots/train/model_2.csv" in before
    params = tiny_params(tiny_data, model_2={"epochs": 1000})
    params["runtime"]["processes"] = 2
    write_params(project / "params.yaml", params)
    log = project / "train.log"
    with stage(project, "model_2", log) as proc:
        wait_for(lambda: "epoch 1/1000" in log.read_text(), "training to start")
        ranks = {
            p.environ()["RANK"]: p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if "RANK" in p.environ()
        }
        assert sorted(ranks) == ["0", "1"]
        ranks["1"].send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == 1
        _, alive = psutil.wait_procs(list(ranks.values()), timeout=30)
        assert alive == []
    stderr = log.read_text()
    assert "error: rank 1 of 2 was killed by SIGKILL" in stderr
    assert "Traceback" not in stderr  # rank 0's lost connection is one line too
    # The weights survive; the curves, rewritten after each epoch, hold whole epochs only.
    after = outputs(project)
    assert {k: v for k, v in after.items() if not k.startswith("plots/")} == {
        k: v for k, v in before.items() if not k.startswith("plots/")
    }
    assert curves(project, "model_2")  # parses: every row complete
    assert temp_files(project) == []
