import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fmnist.engine import epoch_batches, evaluate, train_one_epoch
from fmnist.models import build_model


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
    expected = evaluate(model, x, y, batch_size=40)
    assert result["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert result["accuracy"] == expected["accuracy"]


def test_evaluate_does_not_depend_on_batch_size():
    x, y = _images(53)
    model = build_model("tinyvgg", 4)
    small, large = evaluate(model, x, y, 7), evaluate(model, x, y, 1000)
    assert small["loss"] == pytest.approx(large["loss"], rel=1e-5)
    assert small["accuracy"] == large["accuracy"]
    assert 0 <= small["accuracy"] <= 1
