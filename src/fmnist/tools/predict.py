"""Classify your own images with a trained model: `fmnist-predict shoe.png coat.jpg`.

Each image is read within safe limits and converted like Fashion-MNIST (see fmnist.tools.images);
a file that fails is reported on stderr and the others still run. torch is imported only once
there is a model to load, so `--help` and argument errors stay quick.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fmnist.pipeline import numerics, paths
from fmnist.pipeline.cli import command_parser, debugging, positive_int_arg
from fmnist.pipeline.errors import PipelineError
from fmnist.pipeline.params import NUMERICS, PORTABLE
from fmnist.tools.images import ImageError, load_image

DEFAULT_MODEL = "model_2"


@dataclass(frozen=True)
class Classifier:
    """A loaded model with what prediction needs from its sidecar."""

    name: str
    model: Any  # torch.nn.Module; typed loosely so this module imports without torch
    classes: list[str]
    image_size: int
    device: Any  # torch.device


@dataclass(frozen=True)
class Prediction:
    """One class and its softmax probability."""

    label: str
    index: int
    probability: float


def build_parser() -> argparse.ArgumentParser:
    """Return the command's argument parser."""
    parser = command_parser(__doc__, prog="fmnist-predict")
    parser.add_argument(
        "images", nargs="+", metavar="IMAGE", help="image files: PNG, JPEG, GIF, BMP, WebP, TIFF"
    )
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model name under models/ (default {DEFAULT_MODEL})"
    )
    parser.add_argument("--weights", type=Path, help="weights file to use instead of --model's")
    parser.add_argument(
        "--device", default="cpu", help="cpu (default), cuda, mps, or auto for the best one"
    )
    parser.add_argument(
        "--numerics",
        choices=NUMERICS,
        default=PORTABLE,
        help="torch's AVX2 kernels, the same probabilities on every x86-64 CPU (portable, the "
        "default), or the machine's own (native), as runtime.numerics in params.yaml",
    )
    parser.add_argument(
        "--top-k", type=positive_int_arg, default=3, help="classes to show per image (default 3)"
    )
    polarity = parser.add_mutually_exclusive_group()
    polarity.add_argument(
        "--invert",
        dest="invert",
        action="store_const",
        const=True,
        help="always negate the image (dark item on a light background)",
    )
    polarity.add_argument(
        "--no-invert",
        dest="invert",
        action="store_const",
        const=False,
        help="never negate the image (light item on a dark background)",
    )
    parser.set_defaults(invert=None)
    parser.add_argument(
        "--no-trim", dest="trim", action="store_false", help="keep the margins around the item"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    return parser


def load_classifier(
    weights: str | Path, device: str = "cpu", numerics_mode: str = PORTABLE
) -> Classifier:
    """Load weights as their sidecar describes, without running pickled code."""
    weights = Path(weights)
    if not weights.is_file():
        raise PipelineError(
            f"{weights}: no such weights file (train the models with `dvc repro`, "
            "or point --weights at one)"
        )
    # One image at a time: one thread, and the kernels set before torch is first imported.
    numerics.pin(numerics_mode, threads=1)
    from fmnist.pipeline.checkpoint import load_checkpoint
    from fmnist.pipeline.runtime import resolve_device

    numerics.verify(numerics_mode, setting="--numerics")
    torch_device = resolve_device(device, setting="--device")
    model, meta = load_checkpoint(weights, torch_device)
    classes = meta.get("classes")
    if meta["in_channels"] != 1:
        raise PipelineError(f"{weights}: expects {meta['in_channels']} channels; images give 1")
    if not isinstance(classes, list) or len(classes) != meta["num_classes"]:
        raise PipelineError(f"{weights}: its sidecar lacks a list of {meta['num_classes']} classes")
    return Classifier(
        name=str(meta.get("model", weights.stem)),
        model=model,
        classes=[str(label) for label in classes],
        image_size=int(meta["image_size"]),
        device=torch_device,
    )


def classify(classifier: Classifier, pixels: np.ndarray, top_k: int) -> list[Prediction]:
    """Return the `top_k` most probable classes for uint8 (H, W) pixels, most probable first."""
    import torch

    from fmnist.pipeline.data import to_model_input

    batch = to_model_input(torch.from_numpy(pixels).unsqueeze(0), classifier.device)
    with torch.inference_mode():
        probabilities = torch.softmax(classifier.model(batch).float(), dim=1)[0].cpu()
    values, indices = torch.topk(probabilities, min(top_k, len(classifier.classes)))
    return [
        Prediction(classifier.classes[index], index, value)
        for value, index in zip(values.tolist(), indices.tolist(), strict=True)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Print the top classes of each image; return 1 if any file or the model failed."""
    args = build_parser().parse_args(argv)
    weights = args.weights or paths.weights_path(args.model)
    debug = debugging(argv)
    try:
        classifier = load_classifier(weights, args.device, args.numerics)
    except PipelineError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1

    records, failed = [], False
    for name in args.images:
        try:
            converted = load_image(
                name, invert=args.invert, trim=args.trim, size=classifier.image_size
            )
        except ImageError as exc:
            if debug:  # the other files still run
                traceback.print_exc()
            print(f"error: {name}: {exc}", file=sys.stderr)
            records.append({"file": name, "error": str(exc)})
            failed = True
            continue
        predictions = classify(classifier, converted.pixels, args.top_k)
        records.append(
            {
                "file": name,
                "format": converted.format,
                "size": list(converted.original_size),
                "inverted": converted.inverted,
                "predictions": [
                    {"class": p.label, "index": p.index, "probability": round(p.probability, 6)}
                    for p in predictions
                ],
            }
        )
        if not args.json:
            shown = ", ".join(f"{p.label} {p.probability:.1%}" for p in predictions)
            print(f"{name}: {shown}", flush=True)

    if args.json:
        document = {"model": classifier.name, "weights": str(weights), "images": records}
        print(json.dumps(document, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
