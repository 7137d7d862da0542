"""Data-parallel training: start a stage's ranks, join their process group, fail as one.

On one machine the stage starts its ranks itself. Each is a child that the kernel kills when the
stage dies, by any signal, and they meet through a file store in a private temporary folder: no
rendezvous server listens anywhere, and gloo's own connections are bound to the loopback
interface. Across machines torchrun starts the ranks on every node, and its rendezvous store
must listen on the network that links them (docs/experiments.md); each rank then ties its life
to its torchrun agent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path

import torch
from torch import nn

from fmnist.pipeline.engine import Shard
from fmnist.pipeline.errors import PipelineError
from fmnist.pipeline.processes import die_with_launcher, spawn, stop_group
from fmnist.pipeline.runtime import resolve_device

# A collective that waits longer than this for a peer raises instead of hanging forever (a
# peer on another node that froze, say; one that dies is noticed within a second).
# It must exceed the longest stretch between two collectives: a slow rank's step or test pass.
TIMEOUT_S = 600.0
# Where the ranks of a stage-launched group find its file store; torchrun's ranks have none.
STORE_ENV = "FMNIST_RANKS_STORE"
POLL_S = 0.05


def launched() -> bool:
    """Tell whether a launcher (this module's, or torchrun) started this process as a rank."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def loopback_interface() -> str:
    """The name of the loopback network interface (`lo` on Linux, `lo0` on macOS)."""
    names = [name for _, name in socket.if_nameindex()]
    return next((name for name in names if name.startswith("lo")), "lo")


def launch(script: str, argv: Sequence[str], processes: int) -> None:
    """Run `script argv` as `processes` ranks on this machine, wait, and fail as one."""
    loopback = loopback_interface()
    env = {
        **os.environ,
        "WORLD_SIZE": str(processes),
        "LOCAL_WORLD_SIZE": str(processes),
        # One machine needs no other interface; gloo would otherwise bind the address its host
        # name resolves to, and NCCL's bootstrap the first interface that is up.
        "GLOO_SOCKET_IFNAME": loopback,
        "NCCL_SOCKET_IFNAME": loopback,
    }
    with tempfile.TemporaryDirectory(prefix="fmnist-ranks-") as private:  # mode 0700
        env[STORE_ENV] = str(Path(private) / "store")
        ranks: list[subprocess.Popen] = []
        try:
            for rank in range(processes):
                rank_env = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}
                ranks.append(spawn([sys.executable, script, *argv], env=rank_env))
            failed = _first_failure(ranks)
        finally:
            for process in ranks:
                stop_group(process)
    if failed is not None:
        rank, status = failed
        if status < 0:
            how = f"was killed by {signal.Signals(-status).name}"
        else:
            how = f"exited with status {status} (its error is above)"
        raise PipelineError(
            f"rank {rank} of {processes} {how}; the others were stopped and nothing was saved"
        )


def _first_failure(ranks: Sequence[subprocess.Popen]) -> tuple[int, int] | None:
    """Wait until every rank succeeds, or one fails: then return its rank and exit status."""
    while True:
        statuses = [process.poll() for process in ranks]
        failed = [(rank, s) for rank, s in enumerate(statuses) if s not in (None, 0)]
        if failed:
            # A rank killed by a signal is the cause; the others then fail on the lost peer.
            return min(failed, key=lambda item: (item[1] >= 0, item[0]))
        if all(s == 0 for s in statuses):
            return None
        time.sleep(POLL_S)


def join(processes: int, device_name: str) -> tuple[Shard, torch.device]:
    """Join the ranks' process group as this rank: gloo on CPU, NCCL with one GPU per rank."""
    import torch.distributed as dist

    size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    if size != processes:
        raise PipelineError(
            f"runtime.processes is {processes} but {size} processes were started in all; "
            "make them agree"
        )
    store = os.environ.get(STORE_ENV)
    if store is None:
        # torchrun's agent gives its ranks no parent-death signal: without one, a rank whose
        # agent was killed would train on, and rank 0 would write outputs nobody waits for.
        die_with_launcher()
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
    init = "env://" if store is None else Path(store).as_uri()
    dist.init_process_group(
        backend, init_method=init, rank=rank, world_size=size, timeout=timedelta(seconds=TIMEOUT_S)
    )
    if rank != 0:
        logging.getLogger("fmnist").setLevel(logging.WARNING)  # rank 0 tells the story
    local = int(os.environ.get("LOCAL_WORLD_SIZE", size))
    return Shard(rank=rank, size=size, local_size=local), device


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

    # Gradients that are views of DDP's buckets, in the parameters' own memory layout (channels
    # last for convolutions): backward accumulates into the buckets, with no copy per step and
    # none of the "grad strides do not match bucket view strides" copies. The training loop
    # zeroes them in place instead of dropping them.
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    return DistributedDataParallel(
        model,
        device_ids=[device] if device.type == "cuda" else None,
        gradient_as_bucket_view=True,
    )


def leave() -> None:
    """Leave the process group (once every rank is done with its collectives)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
