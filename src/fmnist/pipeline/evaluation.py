"""Score a trained model on the whole test set and check it against training's own record."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fmnist.pipeline.atomic import atomic_open
from fmnist.pipeline.classes import confusion_counts, precision_recall
from fmnist.pipeline.data import Split, to_model_input
from fmnist.pipeline.engine import predict_logits, score_logits
from fmnist.pipeline.errors import PipelineError

# A reloaded model on the same device and batch size reproduces training's numbers exactly;
# the slack only absorbs kernel differences when evaluation runs on another device.
LOSS_RTOL = 1e-4
ACCURACY_ATOL = 2e-4


@dataclass(frozen=True)
class Scorecard:
    """A model on the whole test set: exact loss and accuracy, per-class scores, predictions."""

    loss: float
    accuracy: float
    predictions: np.ndarray  # the predicted label of each test image
    confusion: np.ndarray  # counts: rows are true classes, columns predicted ones
    precision: list[float]  # per class
    recall: list[float]  # per class


def score_test_set(
    model: nn.Module,
    test: Split,
    num_classes: int,
    device: torch.device,
    batch_size: int,
    compute_dtype: str = "fp32",
) -> Scorecard:
    """Score `model` on every test image in `compute_dtype`; `batch_size` changes nothing."""
    x, y = to_model_input(test.images, device), test.labels.to(device)
    logits = predict_logits(model, x, batch_size, compute_dtype)
    scores = score_logits(logits, y)
    predictions = logits.argmax(dim=1).cpu().numpy()
    confusion = confusion_counts(test.labels.numpy(), predictions, num_classes)
    precision, recall = precision_recall(confusion)
    return Scorecard(
        loss=scores["loss"],
        accuracy=scores["accuracy"],
        predictions=predictions,
        confusion=confusion,
        precision=precision,
        recall=recall,
    )


def check_reproduces(name: str, scorecard: Scorecard, recorded: dict[str, float]) -> None:
    """Fail unless the reloaded model scores what training recorded for its last epoch."""
    loss_ok = math.isclose(scorecard.loss, recorded["test_loss"], rel_tol=LOSS_RTOL)
    acc_ok = abs(scorecard.accuracy - recorded["test_accuracy"]) <= ACCURACY_ATOL
    if not (loss_ok and acc_ok):
        raise PipelineError(
            f"{name}: the reloaded weights score loss {scorecard.loss:.6f}, accuracy "
            f"{scorecard.accuracy:.4%}, but training recorded loss {recorded['test_loss']:.6f}, "
            f"accuracy {recorded['test_accuracy']:.4%}: the saved file does not hold the model "
            "that was trained"
        )


def scores_record(meta: dict, scorecard: Scorecard, device: torch.device) -> dict[str, object]:
    """A model's test scores and the facts of its run, for compare's table and metrics file."""
    # The same weights give the same bytes: no timing here (it lives in no DVC output).
    return {
        "loss": round(scorecard.loss, 6),
        "accuracy": round(scorecard.accuracy, 6),
        "arch": meta["arch"],
        "parameters": meta["parameters"],
        "device": device.type,
        "compute_dtype": meta["hyperparameters"]["compute_dtype"],
        "processes": meta["processes"],
        "threads": meta["threads"],
    }


def write_per_class(scorecard: Scorecard, classes: list[str], path: str | Path) -> None:
    """Write precision, recall and support per class as CSV, in label order."""
    support = scorecard.confusion.sum(axis=1).tolist()
    with atomic_open(path) as handle:
        handle.write("class,precision,recall,support\n")
        for i, name in enumerate(classes):
            handle.write(
                f"{name},{scorecard.precision[i]:.4f},{scorecard.recall[i]:.4f},{support[i]}\n"
            )


def write_confusion(scorecard: Scorecard, classes: list[str], path: str | Path) -> None:
    """Write every (actual, predicted) cell in label order: its count and share of the row."""
    # All cells, zeros included, in label order: the chart's axes follow the data's order.
    rows = scorecard.confusion.tolist()
    with atomic_open(path) as handle:
        handle.write("actual,predicted,count,share\n")
        for i, actual in enumerate(classes):
            total = sum(rows[i])
            for j, predicted in enumerate(classes):
                share = rows[i][j] / total if total else 0.0
                handle.write(f"{actual},{predicted},{rows[i][j]},{share:.4f}\n")


def write_predictions(
    scorecard: Scorecard, labels: torch.Tensor, classes: list[str], path: str | Path
) -> None:
    """Write one `actual,predicted` row of class names per test image, for compare's figures."""
    with atomic_open(path) as handle:
        handle.write("actual,predicted\n")
        for truth, pred in zip(labels.tolist(), scorecard.predictions.tolist(), strict=True):
            handle.write(f"{classes[truth]},{classes[pred]}\n")
