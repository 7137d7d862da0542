"""Turn the raw IDX files into compact tensors once, and load them fast in later stages."""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from fmnist.atomic import atomic_open, write_json
from fmnist.errors import PipelineError
from fmnist.idx import read_idx
from fmnist.paths import CLASSES_FILE

SPLITS = ("train", "test")
# Fashion-MNIST's labels 0-9, named as the dataset and torchvision's FashionMNIST.classes name them.
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@dataclass(frozen=True)
class Split:
    """One split as uint8 images (N, 28, 28) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def read_raw(root: str | Path) -> tuple[dict[str, Split], list[str]]:
    """Read both splits from the IDX files in `root`/FashionMNIST/raw, as torchvision would."""
    # The arrays are the ones torchvision's `FashionMNIST(root).data` and `.targets` hold (a
    # test checks it); reading them with numpy spares this stage torchvision's import.
    raw = Path(root) / "FashionMNIST" / "raw"
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(raw / f"{prefix}-images-idx3-ubyte")
        labels = read_idx(raw / f"{prefix}-labels-idx1-ubyte")
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise PipelineError(
                f"{raw}: {split} images {images.shape} and labels {labels.shape} do not match"
            )
        if labels.size and int(labels.max()) >= len(CLASSES):
            raise PipelineError(f"{raw}: {split} labels go up to {int(labels.max())}")
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
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict):
            raise TypeError(type(payload).__name__)
        split_data = Split(images=payload["images"], labels=payload["labels"])
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing; run `dvc repro prepare` first") from None
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        OSError,
        zipfile.BadZipFile,
        KeyError,
        TypeError,
    ):
        raise PipelineError(
            f"{path}: not a prepared split (damaged?); run `dvc repro -f prepare`"
        ) from None
    return split_data


def load_classes(prepared_dir: str | Path) -> list[str]:
    """Load the class names, in label order."""
    return json.loads((Path(prepared_dir) / CLASSES_FILE).read_text())


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
