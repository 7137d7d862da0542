"""Benchmark: where a data-parallel training step's time goes, against one process.

    python benchmarks/data_parallel.py                          # TinyVGG as params.yaml sets it
    python benchmarks/data_parallel.py --batch-size 256 --hidden-units 32 --output out.json

Times the project's own training loop (`train_one_epoch`) on the first `--steps` batches of an
epoch of random Fashion-MNIST-shaped images, on the CPU:

- `1 process`: one process with every core;
- `2 local`: two processes, each training its slice of every batch with half the cores, but
  exchanging nothing (not a real training: it is the cost of the compute alone when split);
- `2 DDP`: the real data-parallel step, with DistributedDataParallel's gradient all-reduce;
- `all-reduce`: one gloo all-reduce of the model's gradients between the two, alone.

`2 DDP` minus `2 local` is what the exchange costs per step; `2 local` minus `1 process` is what
splitting a batch costs (or saves). Ranks start as the train stage starts them, with the
portable numerics (`--numerics native` for the machine's own kernels).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fmnist.pipeline import numerics
from fmnist.pipeline.params import NUMERICS, PORTABLE

if TYPE_CHECKING:
    import torch

    from fmnist.pipeline.engine import Shard

RESULT_ENV = "FMNIST_BENCH_RESULT"
N_IMAGES = 60_000
REPEATS = 3


def data(steps: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Random images and labels shaped like Fashion-MNIST, and `steps` shuffled index batches."""
    import torch

    from fmnist.pipeline.engine import epoch_batches

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(N_IMAGES, 1, 28, 28, generator=generator)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (N_IMAGES,), generator=generator)
    batches = epoch_batches(N_IMAGES, batch_size, generator)[:steps]
    return images, labels, batches


def step_ms(args: argparse.Namespace, shard: Shard | None, exchange: bool) -> float:
    """Median over REPEATS of the wall time per step of `args.steps` training steps, in ms."""
    import torch

    from fmnist.pipeline import distributed
    from fmnist.pipeline.engine import SGD, train_one_epoch
    from fmnist.pipeline.models import build_model
    from fmnist.pipeline.runtime import cpu_threads, place_model, resolve_compute_dtype

    images, labels, batches = data(args.steps, args.batch_size)
    device = torch.device("cpu")
    dtype = resolve_compute_dtype(args.compute_dtype, device)
    processes = 1 if shard is None else shard.size
    torch.manual_seed(0)
    model = place_model(build_model(args.arch, args.hidden_units), device)
    trained = distributed.wrap(model, device) if exchange else model
    optimizer = SGD(model.parameters(), lr=0.01)
    # Without an exchange, each rank trains alone on its slice: a shard it uses only to split.
    split = shard if exchange else None
    local_batches = batches if exchange or shard is None else [shard.split(b) for b in batches]
    times = []
    with cpu_threads(0, processes):  # the cores shared out between the processes
        train_one_epoch(trained, images, labels, local_batches[:20], optimizer, None, dtype, split)
        for _ in range(REPEATS):
            if shard is not None:
                torch.distributed.barrier()
            start = time.perf_counter()
            train_one_epoch(trained, images, labels, local_batches, optimizer, None, dtype, split)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / len(batches)


def all_reduce_us(numel: int, repeats: int = 2000) -> float:
    """Median time of one gloo all-reduce of `numel` float32 values between the ranks, in µs."""
    import torch

    tensor = torch.zeros(numel)
    for _ in range(50):
        torch.distributed.all_reduce(tensor)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.distributed.all_reduce(tensor)
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times)


def rank_main(args: argparse.Namespace) -> None:
    """One rank of the 2-process runs: time both, and rank 0 records them."""
    from fmnist.pipeline import distributed
    from fmnist.pipeline.models import build_model, count_parameters

    shard, _ = distributed.join(2, "cpu")
    numel = count_parameters(build_model(args.arch, args.hidden_units))
    result = {
        "2 local": step_ms(args, shard, exchange=False),
        "2 DDP": step_ms(args, shard, exchange=True),
        "all-reduce": all_reduce_us(numel) / 1000,
    }
    distributed.leave()
    if shard.rank == 0:
        Path(os.environ[RESULT_ENV]).write_text(json.dumps(result))


def main(argv: Sequence[str] | None = None) -> None:
    """Time one process, then two, and print the per-step table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="tinyvgg")
    parser.add_argument("--hidden-units", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--compute-dtype", default="fp32", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--numerics", default=PORTABLE, choices=NUMERICS)
    parser.add_argument("--steps", type=int, default=300, help="training steps timed per run")
    parser.add_argument("--output", type=Path, help="write the figures as JSON here too")
    args = parser.parse_args(argv)
    if args.numerics == PORTABLE and args.compute_dtype != "fp32":
        parser.error("the portable numerics compute in fp32 only")
    numerics.pin(args.numerics, len(os.sched_getaffinity(0)))  # before torch loads
    from fmnist.pipeline import distributed

    if distributed.launched():
        rank_main(args)
        return
    one = step_ms(args, None, exchange=False)
    with tempfile.TemporaryDirectory() as scratch:
        os.environ[RESULT_ENV] = str(Path(scratch) / "result.json")
        distributed.launch(__file__, sys.argv[1:] if argv is None else list(argv), 2)
        two = json.loads(Path(os.environ.pop(RESULT_ENV)).read_text())
    figures = {"1 process": one, **two}
    figures["exchange"] = two["2 DDP"] - two["2 local"]
    figures["overhead"] = two["2 DDP"] - one
    setting = {k: getattr(args, k) for k in ("arch", "hidden_units", "batch_size", "compute_dtype")}
    setting["cores"] = len(os.sched_getaffinity(0))
    print(
        f"{args.arch}, {args.hidden_units} hidden units, batch {args.batch_size}, "
        f"{args.compute_dtype} compute dtype, {setting['cores']} cores; ms per step:"
    )
    for name, value in figures.items():
        print(f"  {name:<10} {value:8.3f}")
    if args.output:
        args.output.write_text(
            json.dumps({"setting": setting, "ms_per_step": figures}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
