"""The confusion count, precision and recall against torchmetrics, the lesson's reference."""

import pytest
import torch
from torchmetrics.functional.classification import (
    multiclass_confusion_matrix,
    multiclass_precision,
    multiclass_recall,
)

from fmnist.pipeline.classes import confusion_counts, precision_recall


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_precision_recall_match_torchmetrics(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (500,), generator=g)
    predictions = torch.where(
        torch.rand(500, generator=g) < 0.6, labels, torch.randint(0, 10, (500,), generator=g)
    )
    # A class that is never predicted and one that never occurs: the zero-division cases.
    predictions[predictions == 3] = 4
    labels[labels == 7] = 8
    confusion = confusion_counts(labels.numpy(), predictions.numpy(), 10)
    expected = multiclass_confusion_matrix(predictions, labels, 10)
    assert confusion.tolist() == expected.tolist()
    precision, recall = precision_recall(confusion)
    expected_p = multiclass_precision(predictions, labels, 10, average=None)
    expected_r = multiclass_recall(predictions, labels, 10, average=None)
    assert precision == pytest.approx(expected_p.tolist(), abs=1e-6)
    assert recall == pytest.approx(expected_r.tolist(), abs=1e-6)
    assert precision[3] == 0.0 and recall[7] == 0.0
