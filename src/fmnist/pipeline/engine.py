"""Training and evaluation loops over tensors already on the device.

Batches are cut by index from preloaded tensors instead of going through a DataLoader, but
they are exactly the batches that DataLoader(TensorDataset(...), shuffle=True,
generator=g) would yield, epoch after epoch, so results match the lesson's data order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn import functional as F

from fmnist.pipeline.errors import PipelineError
from fmnist.pipeline.runtime import autocast


class Progress(Protocol):
    """Anything that counts processed batches, shows a short status, and closes (a tqdm bar)."""

    def update(self, n: int = 1) -> object: ...

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> object: ...

    def close(self) -> object: ...


class Optimizer(Protocol):
    """What the loop needs of an optimizer: torch.optim's, or SGD below."""

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def step(self) -> object: ...


# torch.optim's optimizers import torch._dynamo on their first call, which costs the train
# stage over a second of its start-up; this update needs none of it. A test checks that it
# gives the same weights as torch.optim.SGD, bit for bit.
class SGD:
    """Plain SGD, `p -= lr * grad` with no momentum or decay, as torch.optim.SGD computes it."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr = lr

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the gradients, or zero them in place (DDP's, which are views of its buckets)."""
        if set_to_none:
            for p in self.params:
                p.grad = None
            return
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            torch._foreach_zero_(grads)

    @torch.no_grad()
    def step(self) -> None:
        """Move every parameter that has a gradient against it, in one multi-tensor op."""
        with_grad = [p for p in self.params if p.grad is not None]
        if with_grad:
            torch._foreach_add_(with_grad, [p.grad for p in with_grad], alpha=-self.lr)


class NonFiniteLoss(PipelineError):
    """The training loss became NaN or infinite: the weights are ruined, stop now."""

    def __init__(self, value: float, batch: int, n_batches: int) -> None:
        super().__init__(f"training loss became {value} at batch {batch} of {n_batches}")


# How often a training loop reads its running loss back from the device, to show it and to
# stop early on a NaN: often enough to be useful, rarely enough not to stall a GPU.
CHECK_EVERY = 50


@dataclass(frozen=True)
class Shard:
    """This process's part of every batch when `size` processes train together (DDP)."""

    rank: int
    size: int
    local_size: int = 1  # the processes on this machine, which share its cores

    def split(self, batch: torch.Tensor) -> torch.Tensor:
        """Return this rank's slice of a batch: contiguous, sizes differing by at most one."""
        return batch.tensor_split(self.size)[self.rank]

    def sum_(self, totals: torch.Tensor) -> torch.Tensor:
        """Add up `totals` across the processes, in place, where it lives (the training device)."""
        import torch.distributed as dist  # only data-parallel runs pay for this import

        dist.all_reduce(totals)
        return totals


def epoch_batches(
    n: int, batch_size: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> list[torch.Tensor]:
    """Return one epoch of shuffled index batches on `device`, drawn from a CPU `generator`."""
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
    optimizer: Optimizer,
    progress: Progress | None = None,
    compute_dtype: str = "fp32",
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Run one pass; return mean loss, accuracy and each step's loss, or raise NonFiniteLoss."""
    # With `shard`, `model` is wrapped in DistributedDataParallel and this process computes its
    # slice of each global batch; what it returns is over all processes.
    model.train()
    device = images.device
    # One small device write per step for the loss and one for the logits, instead of a chain
    # of tiny reductions: the host reads the losses back every CHECK_EVERY steps, and accuracy
    # is computed once, at the end of the epoch.
    if not batches:
        raise ValueError("an epoch needs at least one batch")
    local = batches if shard is None else [shard.split(index) for index in batches]
    counts = [len(index) for index in local]
    losses = torch.empty(len(batches), device=device)
    sizes = torch.tensor(counts, dtype=torch.float32, device=device)
    outputs: torch.Tensor | None = None
    seen = 0
    for step, index in enumerate(local, start=1):
        x, y = images.index_select(0, index), labels.index_select(0, index)
        with autocast(device, compute_dtype):
            logits = model(x)
            if shard is None:
                loss = F.cross_entropy(logits, y)
            else:
                # DDP averages the processes' gradients. Scaling each slice's summed loss by
                # size / global batch makes that average the gradient of the global batch's
                # mean loss, even when the slices differ in size.
                summed = F.cross_entropy(logits, y, reduction="sum")
                loss = summed * (shard.size / len(batches[step - 1]))
        # DDP's gradients are views of its buckets: zero them in place rather than drop them.
        optimizer.zero_grad(set_to_none=shard is None)
        loss.backward()
        optimizer.step()
        if outputs is None:
            outputs = torch.empty(sum(counts), logits.shape[1], device=device)
        if shard is None:
            losses[step - 1] = loss.detach()
        else:
            losses[step - 1] = summed.detach() / max(len(index), 1)
        outputs[seen : seen + len(index)] = logits.detach()
        seen += len(index)
        if step % CHECK_EVERY == 0 or step == len(batches):
            running = (losses[:step] * sizes[:step]).sum().item() / max(seen, 1)
            if not math.isfinite(running):
                raise NonFiniteLoss(running, step, len(batches))
            if progress is not None:
                progress.set_postfix_str(f"loss {running:.4f}", refresh=False)
        if progress is not None:
            progress.update(1)
    truth = labels.index_select(0, torch.cat(local))
    correct = (outputs.argmax(dim=1) == truth).sum()
    if shard is None:
        # Each step's mean loss too, read back once, for the finer-grained training curve.
        return {"loss": running, "accuracy": correct.item() / seen, "step_losses": losses.tolist()}
    # One collective per epoch, on the training device (gloo on CPU, NCCL on CUDA): each step's
    # summed loss over its slices, then the epoch's correct answers and images, over all ranks.
    counts_here = torch.stack([correct.double(), sizes.double().sum()])
    totals = torch.cat([losses.double() * sizes.double(), counts_here])
    sums = shard.sum_(totals).tolist()
    step_sums, (correct_total, seen_total) = sums[: len(batches)], sums[len(batches) :]
    step_losses = [total / len(batch) for total, batch in zip(step_sums, batches, strict=True)]
    loss = sum(step_sums) / seen_total
    return {"loss": loss, "accuracy": correct_total / seen_total, "step_losses": step_losses}


@torch.inference_mode()
def predict_logits(
    model: nn.Module, images: torch.Tensor, batch_size: int, compute_dtype: str = "fp32"
) -> torch.Tensor:
    """Return the fp32 logits for every image, computed in batches of `batch_size`."""
    model.eval()
    chunks = []
    for chunk in images.split(batch_size):
        with autocast(images.device, compute_dtype):
            chunks.append(model(chunk).float())
    return torch.cat(chunks)


def score_logits(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Return the exact mean cross-entropy and accuracy over all samples."""
    loss = F.cross_entropy(logits, labels, reduction="sum") / len(labels)
    correct = (logits.argmax(dim=1) == labels).sum()
    return {"loss": loss.item(), "accuracy": correct.item() / len(labels)}


def score(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    compute_dtype: str = "fp32",
    shard: Shard | None = None,
) -> dict[str, float]:
    """Score `model` on every sample; `batch_size` changes speed and memory, not the result."""
    if shard is None:
        return score_logits(predict_logits(model, images, batch_size, compute_dtype), labels)
    # Each rank scores its contiguous slice, and one collective adds up the loss and the hits.
    part = shard.split(torch.arange(len(labels), device=images.device))
    logits = predict_logits(model, images.index_select(0, part), batch_size, compute_dtype)
    truth = labels.index_select(0, part)
    loss_sum = F.cross_entropy(logits, truth, reduction="sum").double()
    correct = (logits.argmax(dim=1) == truth).sum().double()
    loss_total, correct_total = shard.sum_(torch.stack([loss_sum, correct])).tolist()
    return {"loss": loss_total / len(labels), "accuracy": correct_total / len(labels)}
