"""Turn the raw IDX files into compact tensors once, and load them fast in later stages."""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from fmnist.pipeline.atomic import atomic_open, write_json
from fmnist.pipeline.classes import CLASSES
from fmnist.pipeline.errors import PipelineError
from fmnist.pipeline.idx import read_split
from fmnist.pipeline.paths import CLASSES_FILE, IDX_FILES

SPLITS = tuple(IDX_FILES)


@dataclass(frozen=True)
class Split:
    """One split as uint8 images (N, 28, 28) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def read_raw(raw_dir: str | Path) -> tuple[dict[str, Split], list[str]]:
    """Read both splits from the IDX files in `raw_dir`, as torchvision would."""
    # Read with numpy, which spares this stage torchvision's import.
    splits = {}
    for split in SPLITS:
        images, labels = read_split(raw_dir, split)
        splits[split] = Split(
            images=torch.from_numpy(images), labels=torch.from_numpy(labels.astype("int64"))
        )
    return splits, list(CLASSES)


def save_prepared(splits: dict[str, Split], classes: list[str], out_dir: str | Path) -> None:
    """Write each split as a .pt of plain tensors, and the class names as JSON."""
    out_dir = Path(out_dir)
    for name, split in splits.items():
        # Through a handle so that the archive's inner name, hence its bytes, is stable.
        with atomic_open(out_dir / f"{name}.pt", "wb") as handle:
            torch.save({"images": split.images, "labels": split.labels}, handle)
    write_json(out_dir / CLASSES_FILE, classes)


def load_split(prepared_dir: str | Path, split: str) -> Split:
    """Load one prepared split; only plain tensors are accepted (weights_only=True)."""
    path = Path(prepared_dir) / f"{split}.pt"
    damaged = f"{path}: not a prepared split (damaged?); run `dvc repro -f prepare`"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing; run `dvc repro prepare` first") from None
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, RuntimeError):
        # What torch.load raises for a truncated, foreign or refused file; RuntimeError is its
        # "failed reading zip archive".
        raise PipelineError(damaged) from None
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read ({exc.strerror})") from None
    if not isinstance(payload, dict) or set(payload) != {"images", "labels"}:
        raise PipelineError(damaged)
    images, labels = payload["images"], payload["labels"]
    tensors = isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)
    if not tensors or images.dtype != torch.uint8 or labels.dtype != torch.int64:
        raise PipelineError(damaged)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise PipelineError(damaged)
    return Split(images=images, labels=labels)


def class_counts(split: Split, classes: list[str]) -> dict[str, int]:
    """Count the samples of each class, by name."""
    counts = torch.bincount(split.labels, minlength=len(classes)).tolist()
    return dict(zip(classes, counts, strict=True))


def write_class_counts(splits: dict[str, Split], classes: list[str], path: str | Path) -> None:
    """Write the images per class of each split as CSV, in label order, for a bar chart."""
    counts = {name: class_counts(split, classes) for name, split in splits.items()}
    with atomic_open(path) as handle:
        handle.write(",".join(["class", *counts]) + "\n")
        for name in classes:
            handle.write(",".join([name, *(str(c[name]) for c in counts.values())]) + "\n")


def to_model_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Scale uint8 (N, H, W) images to float (N, 1, H, W) in [0, 1], as ToTensor() does."""
    return images.to(device).unsqueeze(1).float().div_(255)
