"""Time the project's training engine against the lesson's plain DataLoader loop, same work.

Both sides train the same architecture from the same seed with the same SGD learning rate,
batch size and number of epochs, and score the test set after every epoch. The lesson side
runs as the course writes it: torchvision's `FashionMNIST` with `ToTensor()` (one PIL image
converted per sample), `DataLoader(batch_size, shuffle=True)`, a `.item()` per batch for the
accuracy, and evaluation at the training batch size. Its DataLoader shuffles with a generator
seeded as the engine's is, so both sides see the very same batches: model_0 ends with the same
weights either way (a test checks it); model_1, whose ReLU on the logits makes it sensitive to
rounding, drifts when the engine runs it on one thread.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from fmnist.pipeline.data import Split
from fmnist.pipeline.models import build_model
from fmnist.pipeline.params import ModelParams
from fmnist.pipeline.runtime import resolve_compute_dtype, seed_everything
from fmnist.pipeline.training import TrainingResult, train_model


@dataclass(frozen=True)
class Run:
    """One timed training run: wall seconds, throughput and the final test scores."""

    seconds: float
    samples_per_second: float
    test_loss: float
    test_accuracy: float
    threads: int

    def as_dict(self) -> dict[str, float]:
        """Rounded values for the JSON report."""
        return {
            "seconds": round(self.seconds, 3),
            "samples_per_second": round(self.samples_per_second, 1),
            "test_loss": round(self.test_loss, 6),
            "test_accuracy": round(self.test_accuracy, 6),
            "threads": self.threads,
        }


def lesson_datasets(root: str | Path) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
    """The lesson's datasets: torchvision FashionMNIST from `root`, images through ToTensor()."""
    from torchvision import datasets
    from torchvision.transforms import ToTensor

    def load(train: bool) -> torch.utils.data.Dataset:
        return datasets.FashionMNIST(
            root=str(root), train=train, download=False, transform=ToTensor()
        )

    return load(True), load(False)


def lesson_train(
    model_params: ModelParams,
    train_data: torch.utils.data.Dataset,
    test_data: torch.utils.data.Dataset,
    seed: int,
) -> Run:
    """Train as the lesson does: DataLoader batches, per-batch `.item()`, eval at batch size."""
    from torch.utils.data import DataLoader

    seed_everything(seed)
    model = build_model(model_params.arch, model_params.hidden_units)
    optimizer = torch.optim.SGD(model.parameters(), lr=model_params.lr)
    shuffle = torch.Generator().manual_seed(seed)
    batch_size = model_params.batch_size
    train_loader = DataLoader(train_data, batch_size=batch_size, shuffle=True, generator=shuffle)
    test_loader = DataLoader(test_data, batch_size=batch_size, shuffle=False)
    start = time.perf_counter()
    for _ in range(model_params.epochs):
        model.train()
        train_loss, train_acc = 0.0, 0.0
        for x, y in train_loader:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            train_loss += loss
            train_acc += (logits.argmax(dim=1) == y).sum().item() / len(y) * 100
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        test_loss, test_acc = _lesson_test(model, test_loader)
    seconds = time.perf_counter() - start
    return Run(
        seconds=seconds,
        samples_per_second=model_params.epochs * len(train_data) / seconds,
        test_loss=test_loss,
        test_accuracy=test_acc,
        threads=torch.get_num_threads(),
    )


def _lesson_test(model: nn.Module, loader: torch.utils.data.DataLoader) -> tuple[float, float]:
    # Exact per-sample means, so that the reported scores compare with the engine's.
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    with torch.inference_mode():
        for x, y in loader:
            logits = model(x)
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(dim=1) == y).sum().item()
            seen += len(y)
    return total_loss / seen, correct / seen


def engine_run(result: TrainingResult, samples: int) -> Run:
    """Summarise a training by the project's engine that saw `samples` images in all."""
    last = result.history[-1]
    return Run(
        seconds=result.seconds,
        samples_per_second=samples / result.seconds,
        test_loss=last["test_loss"],
        test_accuracy=last["test_accuracy"],
        threads=result.threads,
    )


def cpu_name() -> str:
    """The processor's model name, as /proc/cpuinfo gives it where it exists."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, object]:
    """What the timings depend on: torch, threads, CPU and device."""
    info: dict[str, object] = {
        "torch": torch.__version__,
        "default_threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "device": device.type,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def compare_model(
    model_params: ModelParams,
    lesson_data: tuple[torch.utils.data.Dataset, torch.utils.data.Dataset],
    splits: tuple[Split, Split],
    *,
    seed: int,
    device: torch.device,
    eval_batch_size: int,
    threads: int = 1,
) -> dict[str, object]:
    """Train a model both ways; report each run and the ratio project/lesson of wall time."""
    # The engine goes first: a process runs faster once its allocator and caches are warm, and
    # that advantage should go to the lesson's loop, not to the engine.
    # The engine trains exactly as the train stage does, without saving.
    compute_dtype = resolve_compute_dtype(model_params.compute_dtype, device)
    train, test = splits
    result = train_model(
        model_params,
        train,
        test,
        seed=seed,
        device=device,
        eval_batch_size=eval_batch_size,
        compute_dtype=compute_dtype,
        threads=threads,
    )
    engine = engine_run(result, model_params.epochs * len(train))
    lesson = lesson_train(model_params, *lesson_data, seed)
    return {
        "model": model_params.name,
        "arch": model_params.arch,
        "epochs": model_params.epochs,
        "batch_size": model_params.batch_size,
        "lr": model_params.lr,
        "compute_dtype": compute_dtype,
        "lesson": lesson.as_dict(),
        "project": engine.as_dict(),
        "time_ratio": round(engine.seconds / lesson.seconds, 4),
        "speedup": round(lesson.seconds / engine.seconds, 2),
    }


def splits_from(datasets: Sequence[torch.utils.data.Dataset]) -> tuple[Split, Split]:
    """The same images as the lesson's datasets, as the uint8 tensors the engine trains on."""
    train, test = (Split(images=d.data.contiguous(), labels=d.targets.long()) for d in datasets)
    return train, test


def format_table(results: list[dict[str, object]]) -> str:
    """A Markdown table of the comparison, one row per model (docs/performance.md quotes it)."""
    lines = [
        "| model | compute dtype | lesson loop (s) | project (s) | project/lesson | speed-up "
        "| lesson accuracy | project accuracy |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        lesson, project = r["lesson"], r["project"]
        lines.append(
            f"| {r['model']} ({r['arch']}) | {r['compute_dtype']} | {lesson['seconds']:.1f} "
            f"| {project['seconds']:.1f} | {r['time_ratio']:.3f} | {r['speedup']:.1f}x "
            f"| {lesson['test_accuracy']:.2%} | {project['test_accuracy']:.2%} |"
        )
    return "\n".join(lines)


def format_numerics_table(reports: dict[str, dict[str, object]]) -> str:
    """A Markdown table of the portable and native runs side by side, one row per model."""
    # The lesson's loop as the course runs it (torch's own kernels, the native process), and
    # in the portable process, with the AVX2 kernels that an AVX2-only CPU would run.
    runs = {mode: {r["model"]: r for r in report["models"]} for mode, report in reports.items()}
    portable, native = runs.get("portable", {}), runs.get("native", {})
    lines = [
        "| model | compute dtype | lesson loop, native (s) | lesson loop, AVX2 (s) | native (s) "
        "| portable (s) | portable/native | portable speed-up over the AVX2 lesson "
        "| native accuracy | portable accuracy |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]

    def seconds(run: dict | None, side: str) -> str:
        return f"{run[side]['seconds']:.1f}" if run else "-"

    for name in dict.fromkeys([*native, *portable]):
        p, n = portable.get(name), native.get(name)
        row = p or n
        both = p is not None and n is not None
        cells = [
            f"{name} ({row['arch']})",
            str(row["compute_dtype"]),
            seconds(n, "lesson"),
            seconds(p, "lesson"),
            seconds(n, "project"),
            seconds(p, "project"),
            f"{p['project']['seconds'] / n['project']['seconds']:.2f}" if both else "-",
            f"{p['lesson']['seconds'] / p['project']['seconds']:.1f}x" if p else "-",
            f"{n['project']['test_accuracy']:.2%}" if n else "-",
            f"{p['project']['test_accuracy']:.2%}" if p else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def median_run(reports: list[dict[str, object]]) -> dict[str, object]:
    """Of several reports of the same runs, each model's run with the median project time."""
    chosen = []
    for i, first in enumerate(reports[0]["models"]):
        rows = sorted((r["models"][i] for r in reports), key=lambda r: r["project"]["seconds"])
        median = rows[(len(rows) - 1) // 2]
        seconds = [r["project"]["seconds"] for r in rows]
        chosen.append({**median, "project_seconds_all": seconds, "model": first["model"]})
    return {**reports[0], "models": chosen}
