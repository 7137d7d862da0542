"""The lesson's three architectures and a registry that builds them by name."""

from __future__ import annotations

from torch import nn

from fmnist.pipeline.errors import PipelineError


class LinearModel(nn.Module):
    """Baseline: flatten, then two linear layers with no non-linearity between them."""

    def __init__(self, in_features: int, hidden_units: int, num_classes: int) -> None:
        super().__init__()
        self.layer_stack = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden_units),
            nn.Linear(hidden_units, num_classes),
        )

    def forward(self, x):
        return self.layer_stack(x)


class LinearReLUModel(nn.Module):
    """The lesson's second model: linear layers with ReLU, including one on the logits."""

    def __init__(self, in_features: int, hidden_units: int, num_classes: int) -> None:
        super().__init__()
        self.layer_stack = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden_units),
            nn.ReLU(),
            nn.Linear(hidden_units, num_classes),
            # Kept from the lesson: a ReLU on the logits clips negative scores to zero, so
            # classes can tie at zero and lose gradient; it usually costs accuracy.
            nn.ReLU(),
        )

    def forward(self, x):
        return self.layer_stack(x)


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=2),
    )


class TinyVGG(nn.Module):
    """The CNN Explainer's TinyVGG: two conv blocks that halve the image, then a linear head."""

    def __init__(self, in_channels: int, image_size: int, hidden_units: int, num_classes: int):
        super().__init__()
        self.block_1 = _conv_block(in_channels, hidden_units)
        self.block_2 = _conv_block(hidden_units, hidden_units)
        reduced = image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(hidden_units * reduced * reduced, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.block_2(self.block_1(x)))


def _linear(cls: type[nn.Module]):
    def build(in_channels: int, image_size: int, hidden_units: int, num_classes: int) -> nn.Module:
        return cls(in_channels * image_size * image_size, hidden_units, num_classes)

    return build


MODEL_REGISTRY = {
    "linear": _linear(LinearModel),
    "linear_relu": _linear(LinearReLUModel),
    "tinyvgg": TinyVGG,
}


def build_model(
    arch: str,
    hidden_units: int,
    in_channels: int = 1,
    image_size: int = 28,
    num_classes: int = 10,
) -> nn.Module:
    """Build an untrained model by architecture name; an unknown name is an error."""
    try:
        factory = MODEL_REGISTRY[arch]
    except KeyError:
        known = ", ".join(MODEL_REGISTRY)
        raise PipelineError(f"unknown architecture {arch!r} (known: {known})") from None
    return factory(
        in_channels=in_channels,
        image_size=image_size,
        hidden_units=hidden_units,
        num_classes=num_classes,
    )


def count_parameters(model: nn.Module) -> int:
    """Count trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
