import copy
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fmnist.pipeline.engine import SGD, epoch_batches, score, train_one_epoch
from fmnist.pipeline.models import build_model


@pytest.mark.parametrize(("n", "batch_size"), [(100, 32), (96, 32), (10, 32), (7, 1)])
def test_batches_equal_dataloader_over_several_epochs(n, batch_size):
    dataset = TensorDataset(torch.arange(n))
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(7)
    )
    ours = torch.Generator().manual_seed(7)
    for _ in range(4):
        expected = [batch[0] for batch in loader]
        got = epoch_batches(n, batch_size, ours)
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            assert torch.equal(a, b)
    # Both generators must end in the same state, or later epochs would drift apart.
    assert torch.equal(ours.get_state(), loader.generator.get_state())


def _images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("arch", ["linear", "tinyvgg"])
def test_training_matches_a_plain_dataloader_loop(arch):
    x, y = _images(70)
    torch.manual_seed(0)
    reference = build_model(arch, 4)
    torch.manual_seed(0)
    ours = build_model(arch, 4)

    loader = DataLoader(
        TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(3)
    )
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    reference.train()
    for _ in range(2):
        for xb, yb in loader:
            loss = torch.nn.functional.cross_entropy(reference(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    generator = torch.Generator().manual_seed(3)
    optimizer = torch.optim.SGD(ours.parameters(), lr=0.1)
    for _ in range(2):
        train_one_epoch(ours, x, y, epoch_batches(len(y), 16, generator), optimizer)

    for (name, a), b in zip(
        reference.state_dict().items(), ours.state_dict().values(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6), name


def test_train_one_epoch_reports_mean_loss_and_accuracy():
    x, y = _images(40)
    model = build_model("linear", 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the model stays fixed
    result = train_one_epoch(model, x, y, epoch_batches(40, 16, torch.Generator()), optimizer)
    expected = score(model, x, y, batch_size=40)
    assert result["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert result["accuracy"] == expected["accuracy"]
    # One loss per step (batches of 16, 16 and 8), whose weighted mean is the epoch's loss.
    steps = result["step_losses"]
    assert len(steps) == 3
    assert (16 * steps[0] + 16 * steps[1] + 8 * steps[2]) / 40 == pytest.approx(result["loss"])


def test_evaluate_does_not_depend_on_batch_size():
    x, y = _images(53)
    model = build_model("tinyvgg", 4)
    small, large = score(model, x, y, 7), score(model, x, y, 1000)
    assert small["loss"] == pytest.approx(large["loss"], rel=1e-5)
    assert small["accuracy"] == large["accuracy"]
    assert 0 <= small["accuracy"] <= 1


@pytest.mark.parametrize("arch", ["linear_relu", "tinyvgg"])
def test_our_sgd_gives_torch_optim_sgds_weights_bit_for_bit(arch):
    x, y = _images(48)
    torch.manual_seed(1)
    reference = build_model(arch, 4)
    ours = copy.deepcopy(reference)
    batches = epoch_batches(48, 16, torch.Generator().manual_seed(2))
    train_one_epoch(reference, x, y, batches, torch.optim.SGD(reference.parameters(), lr=0.05))
    train_one_epoch(ours, x, y, batches, SGD(ours.parameters(), lr=0.05))
    for (name, a), b in zip(
        reference.state_dict().items(), ours.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_training_does_not_import_torch_dynamo():
    # torch.optim's first call imports torch._dynamo: over a second of every train stage.
    code = (
        "import sys, torch; "
        "from fmnist.pipeline.engine import SGD, epoch_batches, train_one_epoch; "
        "from fmnist.pipeline.models import build_model; m = build_model('linear', 4); "
        "x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,)); "
        "batches = epoch_batches(8, 4, torch.Generator()); "
        "train_one_epoch(m, x, y, batches, SGD(m.parameters(), 0.1)); "
        "print('torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
