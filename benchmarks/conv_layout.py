"""Benchmark: TinyVGG's training step with its tensors in torch's default layout (NCHW) and in
channels_last (NHWC), with the portable numerics and the machine's native ones.

    python benchmarks/conv_layout.py                    # params.yaml's model_2, both modes
    python benchmarks/conv_layout.py --rounds 7 --steps 300

A step is one SGD step (forward, cross-entropy, backward, update) on a fixed random batch of
model_2's batch size, with runtime.threads threads. oneDNN picks other convolution kernels for
NHWC (its brgemm ones) than for NCHW (its direct jit ones). Each mode runs in a process of its
own, since torch reads its kernel settings once, when it loads. Prints milliseconds per step,
the median of the rounds and the best one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

from fmnist.pipeline import numerics
from fmnist.pipeline.params import NUMERICS, load_params

LAYOUTS = ("contiguous", "channels_last")
WARMUP_STEPS = 30


def time_layouts(model_name: str, params_file: str, rounds: int, steps: int) -> dict:
    """Milliseconds per training step of `model_name` in each layout, in this process's mode."""
    import torch
    from torch import nn

    from fmnist.pipeline.models import build_model

    params = load_params(params_file)
    model_params = params.model(model_name)
    results = {}
    for layout in LAYOUTS:
        torch.manual_seed(params.runtime.seed)
        model = build_model(model_params.arch, model_params.hidden_units)
        x = torch.randn(model_params.batch_size, 1, 28, 28)
        y = torch.randint(0, 10, (model_params.batch_size,))
        if layout == "channels_last":
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=model_params.lr)
        per_step = step_times(model, x, y, optimizer, nn.CrossEntropyLoss(), rounds, steps)
        results[layout] = {"median_ms": statistics.median(per_step), "best_ms": min(per_step)}
    return results


def step_times(model, x, y, optimizer, loss_fn, rounds: int, steps: int) -> list[float]:
    """Milliseconds per SGD step, one figure per round of `steps`, after a warm-up."""

    def step() -> None:
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()

    for _ in range(WARMUP_STEPS):
        step()
    per_step = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        per_step.append((time.perf_counter() - start) / steps * 1000)
    return per_step


def main(argv: Sequence[str] | None = None) -> int:
    """Time both layouts in each numerics mode (each mode in its own process); print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file")
    parser.add_argument("--model", default="model_2", help="a model whose arch is tinyvgg")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per layout")
    parser.add_argument("--steps", type=int, default=200, help="steps per round")
    parser.add_argument("--numerics", choices=NUMERICS, help="one mode, in this process")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be > 0")
    if args.numerics:
        numerics.pin(args.numerics, load_params(args.params).runtime.threads)  # before torch
        kernels = numerics.verify(args.numerics, setting="--numerics")
        report = time_layouts(args.model, args.params, args.rounds, args.steps)
        print(json.dumps({"kernels": kernels, "layouts": report}))
        return 0
    rows = ["| numerics | layout | ms per step (median) | best |", "|---|---|--:|--:|"]
    for mode in NUMERICS:
        options = ["--params", args.params, "--model", args.model, "--numerics", mode]
        command = [sys.executable, __file__, *options]
        command += ["--rounds", str(args.rounds), "--steps", str(args.steps)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        report = json.loads(done.stdout.strip().splitlines()[-1])
        for layout, timing in report["layouts"].items():
            rows.append(
                f"| {mode} ({report['kernels']}) | {layout} | {timing['median_ms']:.2f} | "
                f"{timing['best_ms']:.2f} |"
            )
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
