"""Turn the raw IDX files into compact tensors once, and load them fast in later stages.

torchvision is imported only inside `read_raw`, by the prepare stage: training and evaluation
read the prepared tensors and never pay for torchvision's import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from fmnist.atomic import atomic_open, write_json
from fmnist.errors import PipelineError

SPLITS = ("train", "test")
CLASSES_FILE = "classes.json"


@dataclass(frozen=True)
class Split:
    """One split as uint8 images (N, 28, 28) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def read_raw(root: str | Path) -> tuple[dict[str, Split], list[str]]:
    """Read both splits with torchvision's FashionMNIST from `root`/FashionMNIST/raw."""
    from torchvision.datasets import FashionMNIST

    splits = {}
    classes: list[str] = []
    for split in SPLITS:
        try:
            dataset = FashionMNIST(root=str(root), train=split == "train", download=False)
        except RuntimeError as exc:
            raise PipelineError(f"cannot read the raw dataset under {root}: {exc}") from None
        splits[split] = Split(images=dataset.data.contiguous(), labels=dataset.targets.long())
        classes = list(dataset.classes)
    return splits, classes


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
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing; run `dvc repro prepare` first") from None
    return Split(images=payload["images"], labels=payload["labels"])


def load_classes(prepared_dir: str | Path) -> list[str]:
    """Load the class names, in label order."""
    return json.loads((Path(prepared_dir) / CLASSES_FILE).read_text())


def class_counts(split: Split, classes: list[str]) -> dict[str, int]:
    """Count the samples of each class, by name."""
    counts = torch.bincount(split.labels, minlength=len(classes)).tolist()
    return dict(zip(classes, counts, strict=True))


def to_model_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Scale uint8 (N, H, W) images to float (N, 1, H, W) in [0, 1], as ToTensor() does."""
    return images.to(device).unsqueeze(1).float().div_(255)
