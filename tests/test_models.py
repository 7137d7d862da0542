import pytest
import torch

from fmnist.pipeline.errors import PipelineError
from fmnist.pipeline.models import build_model, count_parameters


@pytest.mark.parametrize(
    ("arch", "hidden", "expected_params"),
    [
        # 784*10 + 10 + 10*10 + 10
        ("linear", 10, 7960),
        ("linear_relu", 10, 7960),
        # convs: (1*9+1)*10 + 3 * (10*9+1)*10, head: 10*7*7*10 + 10
        ("tinyvgg", 10, 7740),
        ("tinyvgg", 32, 1 * 9 * 32 + 32 + 3 * (32 * 9 * 32 + 32) + 32 * 49 * 10 + 10),
    ],
)
def test_output_shape_and_parameter_count(arch, hidden, expected_params):
    model = build_model(arch, hidden)
    logits = model(torch.rand(5, 1, 28, 28))
    assert logits.shape == (5, 10)
    assert count_parameters(model) == expected_params


def test_layers_follow_the_lesson():
    relu = build_model("linear_relu", 10)
    kinds = [type(layer).__name__ for layer in relu.layer_stack]
    assert kinds == ["Flatten", "Linear", "ReLU", "Linear", "ReLU"]
    vgg = build_model("tinyvgg", 10)
    block = [type(layer).__name__ for layer in vgg.block_1]
    assert block == ["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d"]
    assert vgg.block_1[0].padding == (1, 1) and vgg.block_1[0].kernel_size == (3, 3)


def test_linear_relu_logits_are_never_negative():
    logits = build_model("linear_relu", 10)(torch.randn(16, 1, 28, 28))
    assert (logits >= 0).all()


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(PipelineError, match=r"unknown architecture 'resnet' \(known: linear"):
        build_model("resnet", 10)
