"""Data-parallel training: launch a stage under torchrun, join its process group, fail as one.

torchrun's launcher is imported only when several processes train; a single-process stage
runs none of this module's code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator, Sequence
from datetime import timedelta

import torch
from torch import nn

from fmnist.pipeline.engine import Shard
from fmnist.pipeline.errors import PipelineError
from fmnist.pipeline.runtime import resolve_device

# A collective that waits longer than this for a peer raises instead of hanging forever (a
# peer on another node that froze, say; one that dies is noticed by torchrun within a second).
# It must exceed the longest stretch between two collectives: rank 0's test pass each epoch.
TIMEOUT_S = 600.0


def launched() -> bool:
    """Tell whether torchrun (or a launcher that sets the same variables) started this process."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def threads_per_process(processes: int, threads: int) -> int:
    """CPU threads for each of `processes` on this machine: `threads`, or the cores shared out."""
    if threads:
        return threads
    return max(1, len(os.sched_getaffinity(0)) // processes)


def launch(script: str, argv: Sequence[str], processes: int, threads: int) -> None:
    """Run `script argv` in `processes` processes on this machine under torchrun, and wait."""
    # torchrun's own entry point, called in this process: it starts the ranks, watches them
    # every 0.1 s, and stops them all when one fails; here its failure becomes one line.
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # torchrun logs each step of its shutdown; the one line raised below says what matters.
    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)
    # Each rank's torch threads: the cores shared out, unless set (torchrun would pick 1).
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_process(processes, threads)))
    args = get_args_parser().parse_args(
        [
            "--nnodes=1",
            f"--nproc-per-node={processes}",
            "--rdzv-backend=c10d",
            "--rdzv-endpoint=127.0.0.1:0",  # a free port on the loopback interface
            f"--rdzv-id={uuid.uuid4()}",
            "--max-restarts=0",
            script,
            *argv,
        ]
    )
    try:
        run(args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode < 0:
            how = f"was killed by {failure.signal_name()}"
        else:
            how = f"exited with status {failure.exitcode} (its error is above)"
        raise PipelineError(
            f"rank {rank} of {processes} {how}; torchrun stopped the others and nothing was saved"
        ) from None
    except SignalException as exc:
        raise PipelineError(
            f"stopped by {exc.sigval.name}; torchrun stopped the ranks and nothing was saved"
        ) from None


def join(processes: int, device_name: str) -> tuple[Shard, torch.device]:
    """Join torchrun's process group as this rank: gloo on CPU, NCCL with one GPU per rank."""
    import torch.distributed as dist

    size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    if size != processes:
        raise PipelineError(
            f"runtime.processes is {processes} but torchrun started {size} processes in all; "
            "make them agree"
        )
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise PipelineError(
            f"runtime.device: {device.type} cannot train in several processes; use cpu or cuda"
        )
    dist.init_process_group(backend, timeout=timedelta(seconds=TIMEOUT_S))
    if rank != 0:
        logging.getLogger("fmnist").setLevel(logging.WARNING)  # rank 0 tells the story
    return Shard(rank=rank, size=size), device


@contextlib.contextmanager
def peers_lost(shard: Shard) -> Iterator[None]:
    """Turn a collective that failed because a peer died or timed out into one line."""
    try:
        yield
    except RuntimeError as exc:
        # gloo and NCCL raise RuntimeError (DistBackendError, or plain when it surfaces through
        # autograd's backward pass) whose text names the backend's transport.
        text = str(exc)
        if not isinstance(exc, torch.distributed.DistError) and not any(
            word in text for word in ("gloo", "nccl", "NCCL", "Connection", "timed out")
        ):
            raise
        reason = text.strip().splitlines()[0].split(". ")[0] if text.strip() else type(exc).__name__
        raise PipelineError(
            f"rank {shard.rank}: lost the other processes mid-training ({reason})"
        ) from None


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """Wrap `model` in DistributedDataParallel, which averages gradients across the ranks."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def leave() -> None:
    """Leave the process group (once every rank is done with its collectives)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
