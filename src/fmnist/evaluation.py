"""Score a trained model on the whole test set and check it against training's own record."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fmnist.atomic import atomic_open
from fmnist.data import Split, to_model_input
from fmnist.engine import predict_logits, score_logits
from fmnist.errors import PipelineError

# A reloaded model on the same device and batch size reproduces training's numbers exactly;
# the slack only absorbs kernel differences when evaluation runs on another device.
LOSS_RTOL = 1e-4
ACCURACY_ATOL = 2e-4


@dataclass(frozen=True)
class Evaluation:
    """Test-set results: exact mean loss and accuracy, per-class scores, all predictions."""

    loss: float
    accuracy: float
    predictions: torch.Tensor
    confusion: torch.Tensor
    precision: list[float]
    recall: list[float]


def evaluate_model(
    model: nn.Module,
    test: Split,
    num_classes: int,
    device: torch.device,
    batch_size: int,
    amp: str = "fp32",
) -> Evaluation:
    """Score `model` on every test sample in `amp` (fp32 or bf16); `batch_size` changes nothing."""
    x, y = to_model_input(test.images, device), test.labels.to(device)
    logits = predict_logits(model, x, batch_size, amp)
    scores = score_logits(logits, y)
    predictions = logits.argmax(dim=1)
    confusion = confusion_matrix(predictions, y, num_classes).cpu()
    precision, recall = precision_recall(confusion)
    return Evaluation(
        loss=scores["loss"],
        accuracy=scores["accuracy"],
        predictions=predictions.cpu(),
        confusion=confusion,
        precision=precision,
        recall=recall,
    )


# These two match torchmetrics' multiclass_confusion_matrix, multiclass_precision and
# multiclass_recall (average=None), which the tests check. Importing torchmetrics would cost
# this stage over two seconds: it loads torchvision, scipy and matplotlib on import.
def confusion_matrix(
    predictions: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Count (true, predicted) pairs: rows are true classes, columns predicted ones."""
    flat = torch.bincount(labels * num_classes + predictions, minlength=num_classes**2)
    return flat.reshape(num_classes, num_classes)


def precision_recall(confusion: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-class precision and recall from a confusion matrix; 0 where a class has no samples."""
    hits = confusion.diagonal().double()
    predicted, actual = confusion.sum(dim=0).double(), confusion.sum(dim=1).double()
    precision = torch.where(predicted > 0, hits / predicted.clamp(min=1), 0.0)
    recall = torch.where(actual > 0, hits / actual.clamp(min=1), 0.0)
    return precision.tolist(), recall.tolist()


def check_reproduces(name: str, evaluation: Evaluation, recorded: dict[str, float]) -> None:
    """Fail unless the reloaded model scores what training recorded for its last epoch."""
    loss_ok = math.isclose(evaluation.loss, recorded["test_loss"], rel_tol=LOSS_RTOL)
    acc_ok = abs(evaluation.accuracy - recorded["test_accuracy"]) <= ACCURACY_ATOL
    if not (loss_ok and acc_ok):
        raise PipelineError(
            f"{name}: the reloaded weights score loss {evaluation.loss:.6f}, accuracy "
            f"{evaluation.accuracy:.4%}, but training recorded loss {recorded['test_loss']:.6f}, "
            f"accuracy {recorded['test_accuracy']:.4%}: the saved file does not hold the model "
            "that was trained"
        )


def metrics_record(
    name: str,
    meta: dict,
    evaluation: Evaluation,
    parameters: int,
    device: torch.device,
) -> dict[str, object]:
    """The per-model metrics file: stable keys that `dvc metrics show/diff` compare."""
    # No timing here: the same weights give the same bytes, so DVC sees no change after a
    # re-run that reproduced them. Training time lives in metrics/train/<model>.json. Nested
    # under the model's name, so that DVC names its columns `model_2.accuracy`, not by file.
    return {
        name: {
            "arch": meta["arch"],
            "loss": round(evaluation.loss, 6),
            "accuracy": round(evaluation.accuracy, 6),
            "parameters": parameters,
            "device": device.type,
            "precision": meta["hyperparameters"]["precision"],
        }
    }


def write_per_class(evaluation: Evaluation, classes: list[str], path: str | Path) -> None:
    """Write precision, recall and support per class as CSV, in label order."""
    support = evaluation.confusion.sum(dim=1).tolist()
    with atomic_open(path) as handle:
        handle.write("class,precision,recall,support\n")
        for i, name in enumerate(classes):
            handle.write(
                f"{name},{evaluation.precision[i]:.4f},{evaluation.recall[i]:.4f},{support[i]}\n"
            )


def write_confusion(evaluation: Evaluation, classes: list[str], path: str | Path) -> None:
    """Write every (actual, predicted) cell in label order: its count and share of the row."""
    # All cells, zeros included, in label order: the chart's axes follow the data's order.
    rows = evaluation.confusion.tolist()
    with atomic_open(path) as handle:
        handle.write("actual,predicted,count,share\n")
        for i, actual in enumerate(classes):
            total = sum(rows[i])
            for j, predicted in enumerate(classes):
                share = rows[i][j] / total if total else 0.0
                handle.write(f"{actual},{predicted},{rows[i][j]},{share:.4f}\n")


def write_predictions(
    evaluation: Evaluation, labels: torch.Tensor, classes: list[str], path: str | Path
) -> None:
    """Write one `actual,predicted` row of class names per test image, for compare's figures."""
    with atomic_open(path) as handle:
        handle.write("actual,predicted\n")
        for truth, pred in zip(labels.tolist(), evaluation.predictions.tolist(), strict=True):
            handle.write(f"{classes[truth]},{classes[pred]}\n")
