"""Training and evaluation loops over tensors already on the device.

Batches are cut by index from preloaded tensors instead of going through a DataLoader, but
they are exactly the batches that DataLoader(TensorDataset(...), shuffle=True,
generator=g) would yield, epoch after epoch, so results match the lesson's data order.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F


class Progress(Protocol):
    """Anything that can count processed batches and be closed (a tqdm bar, for instance)."""

    def update(self, n: int = 1) -> object: ...

    def close(self) -> object: ...


def epoch_batches(
    n: int, batch_size: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> list[torch.Tensor]:
    """Return one epoch of shuffled index batches, drawing from `generator` as DataLoader does.

    `generator` is a CPU generator, as DataLoader's is; the indices are then moved to `device`
    in one transfer.
    """
    # A DataLoader iterator draws an int64 base seed for its workers when it is created, even
    # with no workers; RandomSampler then draws the epoch's permutation and, once exhausted, a
    # second permutation for the `num_samples % n` tail, which it throws away.
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    order = torch.randperm(n, generator=generator)
    torch.randperm(n, generator=generator)
    return list(order.to(device).split(batch_size))


def train_one_epoch(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batches: list[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Run one optimisation pass over `batches`; return mean per-sample loss and accuracy."""
    model.train()
    device = images.device
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    for index in batches:
        x, y = images.index_select(0, index), labels.index_select(0, index)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Accumulated on the device: no host sync per step.
        total_loss += loss.detach() * len(index)
        correct += (logits.detach().argmax(dim=1) == y).sum()
        seen += len(index)
        if progress is not None:
            progress.update(1)
    return {"loss": total_loss.item() / seen, "accuracy": correct.item() / seen}


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Return the logits for every image, computed in batches of `batch_size`."""
    model.eval()
    return torch.cat([model(chunk) for chunk in images.split(batch_size)])


def score_logits(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Return the exact mean cross-entropy and accuracy over all samples."""
    loss = F.cross_entropy(logits, labels, reduction="sum") / len(labels)
    correct = (logits.argmax(dim=1) == labels).sum()
    return {"loss": loss.item(), "accuracy": correct.item() / len(labels)}


def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> dict[str, float]:
    """Score `model` on every sample; `batch_size` changes speed and memory, not the result."""
    return score_logits(predict_logits(model, images, batch_size), labels)
