"""Train one configured model from scratch: seeding, epochs, per-epoch test metrics, timing."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fmnist.pipeline import distributed
from fmnist.pipeline.atomic import atomic_open
from fmnist.pipeline.data import Split, to_model_input
from fmnist.pipeline.engine import (
    SGD,
    NonFiniteLoss,
    Progress,
    Shard,
    epoch_batches,
    score,
    train_one_epoch,
)
from fmnist.pipeline.errors import PipelineError
from fmnist.pipeline.models import build_model, count_parameters
from fmnist.pipeline.params import ModelParams
from fmnist.pipeline.runtime import cpu_threads, place_model, seed_everything

HISTORY_FIELDS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
STEP_FIELDS = ("model", "step", "epoch", "loss")


@dataclass(frozen=True)
class TrainingResult:
    """A trained model, its per-epoch history and how long training took."""

    model: nn.Module
    history: list[dict[str, float]]
    steps: list[dict[str, float]]  # the running training loss, every `loss_every` steps
    seconds: float
    device: torch.device
    threads: int  # torch's CPU threads during training (per process)
    processes: int = 1


# Called after each scored epoch with the per-epoch history and the running-loss points so far.
EpochCallback = Callable[[list[dict[str, float]], list[dict[str, float]]], None]


def train_model(
    model_params: ModelParams,
    train: Split,
    test: Split,
    *,
    seed: int,
    device: torch.device,
    eval_batch_size: int,
    compute_dtype: str = "fp32",
    threads: int = 1,
    loss_every: int = 50,
    progress: Callable[[int, int], Progress] | None = None,
    shard: Shard | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainingResult:
    """Train the model `model_params` describes with SGD, scoring the test set after each epoch."""
    # `progress(epoch, n_batches)` may return a bar that counts the epoch's batches. With
    # `shard`, this process is one rank of several (DDP): every rank draws the same global
    # batches and trains on its slice of each, and scores its slice of the test set.
    # A NaN or infinite loss stops training with an error. `on_epoch` sees the curves as they
    # grow (the stage rewrites its plot files with them while training runs).
    name = model_params.name
    seed_everything(seed)
    model = place_model(build_model(model_params.arch, model_params.hidden_units), device)
    trained = model if shard is None else distributed.wrap(model, device)
    optimizer = SGD(model.parameters(), lr=model_params.lr)
    generator = torch.Generator().manual_seed(seed)
    history = []
    step_losses: list[float] = []
    step_sizes: list[int] = []
    lost = contextlib.nullcontext() if shard is None else distributed.peers_lost(shard)
    processes = 1 if shard is None else shard.size
    here = 1 if shard is None else shard.local_size
    with cpu_threads(threads, here) as used_threads, lost:
        start = time.perf_counter()
        x_train, y_train = to_model_input(train.images, device), train.labels.to(device)
        x_test, y_test = to_model_input(test.images, device), test.labels.to(device)
        for epoch in range(1, model_params.epochs + 1):
            batches = epoch_batches(len(train), model_params.batch_size, generator, device)
            bar = progress(epoch, len(batches)) if progress else None
            try:
                fit = train_one_epoch(
                    trained, x_train, y_train, batches, optimizer, bar, compute_dtype, shard
                )
            except NonFiniteLoss as exc:
                raise PipelineError(
                    f"{name}: {exc} in epoch {epoch} with lr {model_params.lr}; the model "
                    f"diverged, so nothing was saved. Lower models.{name}.lr and run again"
                ) from None
            finally:
                if bar is not None:
                    bar.close()
            step_losses += fit["step_losses"]
            step_sizes += [len(index) for index in batches]
            steps_per_epoch = len(step_losses) // epoch
            scores = score(model, x_test, y_test, eval_batch_size, compute_dtype, shard)
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": fit["loss"],
                    "train_accuracy": fit["accuracy"],
                    "test_loss": scores["loss"],
                    "test_accuracy": scores["accuracy"],
                }
            )
            if on_epoch is not None:
                points = running_loss(step_losses, step_sizes, loss_every, steps_per_epoch)
                on_epoch(history, points)
    seconds = time.perf_counter() - start
    return TrainingResult(
        model=model,
        history=history,
        steps=running_loss(step_losses, step_sizes, loss_every, steps_per_epoch),
        seconds=seconds,
        device=device,
        threads=used_threads,
        processes=processes,
    )


def running_loss(
    losses: list[float], sizes: list[int], every: int, steps_per_epoch: int
) -> list[dict[str, float]]:
    """Mean training loss over each run of `every` steps (weighted by batch size), by step."""
    points = []
    for end in range(every, len(losses) + 1, every):
        window = range(end - every, end)
        total = sum(losses[i] * sizes[i] for i in window)
        points.append(
            {
                "step": end,
                "epoch": end / steps_per_epoch,
                "loss": total / sum(sizes[i] for i in window),
            }
        )
    return points


def checkpoint_metadata(
    model_params: ModelParams,
    result: TrainingResult,
    classes: list[str],
    seed: int,
    eval_batch_size: int,
    compute_dtype: str,
    numerics: tuple[str, str],
) -> dict[str, object]:
    """Describe a trained model for its sidecar: how to rebuild it and what it scored."""
    mode, kernels = numerics
    return {
        "model": model_params.name,
        "arch": model_params.arch,
        "hidden_units": model_params.hidden_units,
        "in_channels": 1,
        "image_size": 28,
        "num_classes": len(classes),
        "classes": classes,
        "hyperparameters": {
            "lr": model_params.lr,
            "epochs": model_params.epochs,
            "batch_size": model_params.batch_size,
            "optimizer": "SGD",
            "seed": seed,
            "compute_dtype": compute_dtype,
        },
        # What the run was: the facts a reader compares runs by, beside the weights they made.
        "trained_on": result.device.type,
        "parameters": count_parameters(result.model),
        "processes": result.processes,
        "threads": result.threads,
        "numerics": mode,
        "kernels": kernels,  # torch's CPU capability: what the portable mode pins
        "torch": torch.__version__,
        # What the last epoch scored on the test set: evaluation checks the reloaded weights
        # against it.
        "final": {
            "test_loss": result.history[-1]["test_loss"],
            "test_accuracy": result.history[-1]["test_accuracy"],
            "eval_batch_size": eval_batch_size,
        },
    }


def write_history(history: list[dict[str, float]], path: str | Path) -> None:
    """Write per-epoch metrics as CSV, one row per epoch, for the per-model chart."""
    with atomic_open(path, "w") as handle:
        handle.write(",".join(HISTORY_FIELDS) + "\n")
        for row in history:
            values = [str(int(row["epoch"]))] + [f"{row[k]:.6f}" for k in HISTORY_FIELDS[1:]]
            handle.write(",".join(values) + "\n")


def write_steps(steps: list[dict[str, float]], label: str, path: str | Path) -> None:
    """Write the running training loss as CSV, each row labelled with the model (for legends)."""
    with atomic_open(path, "w") as handle:
        handle.write(",".join(STEP_FIELDS) + "\n")
        for row in steps:
            handle.write(f"{label},{int(row['step'])},{row['epoch']:.4f},{row['loss']:.6f}\n")


def timing_record(result: TrainingResult, images: int) -> dict[str, float]:
    """How long training took and its throughput: a record of this run, not of the model."""
    # Kept out of every DVC output: it differs on every run, and an output that differs could
    # not be restored from the run-cache where dvc.lock came from another run.
    return {
        "train_seconds": round(result.seconds, 3),
        "samples_per_second": round(images / result.seconds, 1),
    }
