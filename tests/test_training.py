"""Training beyond the loop itself: divergence, progress, compute dtype and memory layout."""

from __future__ import annotations

import json
import os

import pytest
import torch

from fmnist.pipeline.engine import NonFiniteLoss, epoch_batches, train_one_epoch
from fmnist.pipeline.models import build_model
from fmnist.pipeline.runtime import autocast, cpu_threads, place_model, resolve_compute_dtype

from .conftest import load_stage, tiny_params, write_params


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


class RecordingBar:
    """A stand-in for a tqdm bar that remembers what it was told."""

    def __init__(self) -> None:
        self.updates, self.postfixes, self.closed = 0, [], False

    def update(self, n: int = 1) -> None:
        self.updates += n

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfixes.append((s, refresh))

    def close(self) -> None:
        self.closed = True


def test_a_diverging_loss_stops_the_epoch():
    x, y = _data()
    model = build_model("linear", 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e12)
    with pytest.raises(NonFiniteLoss, match=r"training loss became (nan|inf)"):
        train_one_epoch(model, x * 1e6, y, epoch_batches(64, 8, torch.Generator()), optimizer)


def test_progress_counts_batches_and_shows_the_running_loss_without_redrawing():
    x, y = _data(80)
    model = build_model("linear", 8)
    bar = RecordingBar()
    batches = epoch_batches(80, 16, torch.Generator())
    result = train_one_epoch(model, x, y, batches, torch.optim.SGD(model.parameters(), 0.1), bar)
    assert bar.updates == len(batches)
    # The last postfix is the epoch's mean loss; refresh=False keeps CI logs to tqdm's pace.
    text, refresh = bar.postfixes[-1]
    assert text == f"loss {result['loss']:.4f}" and refresh is False


def test_bf16_training_learns_step_after_step():
    # autocast caches its bf16 copies of the weights until the context exits: a context held
    # over the whole epoch would keep training the first step's weights and learn nothing.
    x, y = _data(256)
    y = y % 2
    x = x * 0.5 + y.view(-1, 1, 1, 1) * 0.5  # brighter images are class 1: learnable fast
    torch.manual_seed(0)
    model = build_model("linear", 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(0)
    losses = [
        train_one_epoch(model, x, y, epoch_batches(256, 16, generator), optimizer, None, "bf16")[
            "loss"
        ]
        for _ in range(4)
    ]
    assert losses[-1] < 0.6 * losses[0]


def test_compute_dtype_auto_resolves_to_fp32_or_bf16():
    assert resolve_compute_dtype("fp32", torch.device("cpu")) == "fp32"
    assert resolve_compute_dtype("bf16", torch.device("cpu")) == "bf16"
    assert resolve_compute_dtype("auto", torch.device("cpu")) in ("fp32", "bf16")
    with autocast(torch.device("cpu"), "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert torch.is_autocast_enabled("cpu")
    with autocast(torch.device("cpu"), "fp32"):
        assert not torch.is_autocast_enabled("cpu")


def test_convolutional_models_train_in_channels_last():
    cnn = place_model(build_model("tinyvgg", 4), torch.device("cpu"))
    weight = cnn.block_1[2].weight  # 4 in, 4 out: layouts differ
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert not weight.is_contiguous()
    linear = place_model(build_model("linear", 4), torch.device("cpu"))
    assert all(p.is_contiguous() for p in linear.parameters())


@pytest.fixture
def prepared(project):
    load_stage("download").main([])
    load_stage("prepare").main([])
    return project


def test_a_diverging_model_names_model_epoch_and_lr_and_writes_nothing(prepared, tiny_data, capsys):
    params = tiny_params(tiny_data, model_0={"lr": 1e30})
    write_params(prepared / "params.yaml", params)
    with pytest.raises(SystemExit) as exit_info:
        load_stage("train").main(["--model", "model_0"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: model_0: training loss became ")
    assert "in epoch 1 with lr 1e+30" in err and "Lower models.model_0.lr" in err
    for folder in ("models", "timings", "plots/train", "plots/steps"):
        assert not (prepared / folder).exists()


def test_bf16_models_are_evaluated_in_the_compute_dtype_they_were_trained_in(prepared, tiny_data):
    params = tiny_params(tiny_data, model_2={"compute_dtype": "bf16"})
    params["runtime"]["numerics"] = "native"
    write_params(prepared / "params.yaml", params)
    load_stage("train").main(["--model", "model_2"])
    sidecar = json.loads((prepared / "models/model_2.json").read_text())
    assert sidecar["hyperparameters"]["compute_dtype"] == "bf16"
    # evaluate re-scores the reloaded weights and fails unless they match training's record.
    load_stage("evaluate").main(["--model", "model_2"])
    metrics = json.loads((prepared / "data/scores/model_2.json").read_text())
    assert metrics["accuracy"] == pytest.approx(sidecar["final"]["test_accuracy"], abs=2e-4)


def test_the_thread_count_is_the_param_and_restored(monkeypatch):
    before = torch.get_num_threads()
    with cpu_threads(3) as threads:
        assert threads == torch.get_num_threads() == 3
    assert torch.get_num_threads() == before
    # 0, allowed with the native numerics only: the cores this process may use, shared out.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    with cpu_threads(0, processes=2) as threads:
        assert threads == 2
    assert torch.get_num_threads() == before


def test_progress_in_a_ci_log_is_a_few_lines_per_epoch(monkeypatch):
    import io
    import sys
    import time

    from fmnist.pipeline.progress import epoch_bars

    log = io.StringIO()  # not a terminal, as in CI
    monkeypatch.setattr(sys, "stderr", log)
    bar = epoch_bars("model_0", 1)(1, 5000)
    for step in range(5000):  # about a second: a terminal's bar would redraw several times
        time.sleep(0.0002)
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix_str(f"loss {1 / (step + 1):.4f}", refresh=False)
    bar.close()
    # tqdm separates redraws with carriage returns: a start line and a final line, no more.
    redraws = [line for line in log.getvalue().replace("\r", "\n").splitlines() if line.strip()]
    assert len(redraws) <= 3
    assert redraws[-1].startswith("model_0 epoch 1/1: 100%") and "loss " in redraws[-1]


def test_the_train_stage_logs_what_it_read_wrote_and_how_long_it_took(prepared, caplog):
    caplog.set_level("INFO", logger="fmnist")
    load_stage("train").main(["--model", "model_0"])
    text = caplog.text
    assert "read data/prepared: 240 training and 60 test images" in text
    assert "wrote models/model_0.pth" in text
    assert "done in" in text and "peak memory" in text
