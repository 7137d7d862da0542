"""Fashion-MNIST's ten classes: their names, the class list prepare writes, counts by class.

numpy alone, so that both evaluate (with torch) and compare (without) count the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmnist.pipeline.atomic import read_json
from fmnist.pipeline.errors import PipelineError
from fmnist.pipeline.paths import CLASSES_FILE

# Labels 0-9, named as the dataset and torchvision's FashionMNIST.classes name them.
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def load_classes(prepared_dir: str | Path) -> list[str]:
    """Read the class names that prepare wrote beside the tensors, in label order."""
    path = Path(prepared_dir) / CLASSES_FILE
    classes = read_json(path, "missing; run `dvc repro prepare`")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise PipelineError(f"{path}: expected a list of class names")
    return classes


# These two match torchmetrics' multiclass_confusion_matrix, multiclass_precision and
# multiclass_recall (average=None), which the tests check. Importing torchmetrics would cost a
# stage over two seconds: it loads torchvision, scipy and matplotlib on import.
def confusion_counts(actual: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Count (actual, predicted) label pairs: rows are true classes, columns predictions."""
    flat = np.bincount(actual * num_classes + predicted, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def precision_recall(confusion: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-class precision and recall from a confusion matrix; 0 where a class has no samples."""
    hits = confusion.diagonal().astype(np.float64)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, actual, out=np.zeros_like(hits), where=actual > 0)
    return precision.tolist(), recall.tolist()
