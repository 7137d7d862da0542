"""Each stage's main(argv) on tiny data, in-process, as DVC would run it."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from fmnist.pipeline.checkpoint import save_checkpoint
from fmnist.pipeline.classes import load_classes
from fmnist.pipeline.data import load_split
from fmnist.pipeline.models import build_model
from fmnist.pipeline.runtime import available_devices

from .conftest import N_TEST, N_TRAIN, load_stage, tiny_params, write_params


@pytest.fixture
def prepared(project):
    load_stage("download").main([])
    load_stage("prepare").main([])
    return project


def test_prepare_writes_tensors_and_counts(prepared):
    train = load_split(prepared / "data/prepared", "train")
    assert train.images.shape == (N_TRAIN, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64
    classes = load_classes(prepared / "data/prepared")
    assert classes[0] == "T-shirt/top" and classes[9] == "Ankle boot"
    counts = (prepared / "plots/data/classes.csv").read_text().splitlines()
    assert counts[0] == "class,train,test"
    assert [row.split(",")[0] for row in counts[1:]] == classes  # label order
    assert sum(int(row.split(",")[1]) for row in counts[1:]) == N_TRAIN
    assert sum(int(row.split(",")[2]) for row in counts[1:]) == N_TEST


def test_raw_files_read_as_torchvision_reads_them(prepared):
    from torchvision.datasets import FashionMNIST

    from fmnist.pipeline.data import read_raw

    splits, classes = read_raw(prepared / "data/FashionMNIST/raw")
    for split in ("train", "test"):
        reference = FashionMNIST(str(prepared / "data"), train=split == "train", download=False)
        assert torch.equal(splits[split].images, reference.data)
        assert torch.equal(splits[split].labels, reference.targets)
        assert splits[split].labels.dtype == torch.int64
        assert classes == reference.classes


def test_model_input_matches_torchvision_to_tensor(prepared):
    from torchvision.transforms.functional import pil_to_tensor, to_pil_image, to_tensor

    from fmnist.pipeline.data import to_model_input

    images = load_split(prepared / "data/prepared", "test").images[:5]
    ours = to_model_input(images, torch.device("cpu"))
    lesson = torch.stack([to_tensor(to_pil_image(img)) for img in images])
    assert torch.equal(ours, lesson)
    assert torch.equal(pil_to_tensor(to_pil_image(images[0])), images[0].unsqueeze(0))


def test_train_evaluate_compare(prepared):
    load_stage("train").main(["--model", "model_0"])
    sidecar = json.loads((prepared / "models/model_0.json").read_text())
    assert sidecar["arch"] == "linear" and sidecar["hyperparameters"]["epochs"] == 2
    assert "seconds" not in json.dumps(sidecar)  # timings live in no DVC output
    assert (sidecar["parameters"], sidecar["processes"], sidecar["threads"]) == (6370, 1, 1)
    timing = json.loads((prepared / "timings/model_0.json").read_text())
    assert timing["train_seconds"] > 0 and timing["samples_per_second"] > 0
    # The running training loss: 15 steps per epoch on the tiny data, a point every 5.
    steps = (prepared / "plots/steps/model_0.csv").read_text().splitlines()
    assert steps[0] == "model,step,epoch,loss"
    assert [row.split(",")[:3] for row in steps[1:]] == [
        ["model_0 (linear)", str(step), f"{step / 15:.4f}"] for step in range(5, 31, 5)
    ]

    curves = (prepared / "plots/train/model_0.csv").read_text().splitlines()
    load_stage("evaluate").main(["--model", "model_0"])
    scores = json.loads((prepared / "data/scores/model_0.json").read_text())
    assert scores["accuracy"] == pytest.approx(sidecar["final"]["test_accuracy"])
    assert "train_seconds" not in scores  # timing in no DVC output
    assert scores["parameters"] == 784 * 8 + 8 + 8 * 10 + 10
    per_class = (prepared / "plots/per_class/model_0.csv").read_text().splitlines()
    assert per_class[0] == "class,precision,recall,support" and len(per_class) == 11
    # Every cell of the confusion matrix, in label order, each row's shares summing to 1.
    cells = (prepared / "plots/confusion/model_0.csv").read_text().splitlines()
    assert cells[0] == "actual,predicted,count,share" and len(cells) == 101
    assert cells[1].startswith("T-shirt/top,T-shirt/top,") and cells[-1].startswith("Ankle boot,A")
    assert sum(int(row.split(",")[2]) for row in cells[1:]) == N_TEST
    pairs = (prepared / "data/predictions/model_0.csv").read_text().splitlines()
    assert pairs[0] == "actual,predicted" and len(pairs) == N_TEST + 1

    params = tiny_params_with_only(prepared, "model_0")
    write_params(prepared / "params.yaml", params)
    load_stage("compare").main([])
    table = (prepared / "plots/comparison/models.csv").read_text().splitlines()
    assert table[0] == (
        "model,arch,loss,accuracy,parameters,device,compute_dtype,processes,threads"
    )
    assert table[1].startswith("model_0,linear,") and len(table) == 2
    # The metrics file: the test scores alone, under the model's name.
    metrics = json.loads((prepared / "metrics/test.json").read_text())
    assert metrics == {"model_0": {"accuracy": scores["accuracy"], "loss": scores["loss"]}}
    epochs = (prepared / "plots/comparison/epochs.csv").read_text().splitlines()
    assert epochs[0] == "model,epoch,train_loss,train_accuracy,test_loss,test_accuracy"
    assert epochs[1:] == [f"model_0 (linear),{row}" for row in curves[1:]]
    assert (prepared / "plots/comparison/steps.csv").read_text().splitlines() == steps
    for png in ("model_0_confusion", "model_0_predictions", "accuracy", "samples"):
        folder = {"accuracy": "comparison", "samples": "data"}.get(png, "images")
        assert (prepared / "plots" / folder / f"{png}.png").read_bytes()[:4] == b"\x89PNG"


def tiny_params_with_only(project, name):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["models"] = {name: params["models"][name]}
    return params


def test_evaluate_fails_loudly_when_the_weights_are_not_the_trained_ones(prepared, capsys):
    load_stage("train").main(["--model", "model_0"])
    torch.manual_seed(123)
    impostor = build_model("linear", 8)
    meta = json.loads((prepared / "models/model_0.json").read_text())
    save_checkpoint(impostor, prepared / "models/model_0.pth", meta)
    with pytest.raises(SystemExit) as exit_info:
        load_stage("evaluate").main(["--model", "model_0"])
    assert exit_info.value.code == 1
    assert "does not hold the model that was trained" in capsys.readouterr().err
    assert not (prepared / "data/scores/model_0.json").exists()


@pytest.mark.skipif("cuda" in available_devices(), reason="needs a machine without CUDA")
def test_a_missing_device_is_an_error_not_a_fallback(prepared, tiny_data, capsys):
    params = tiny_params(tiny_data)
    params["runtime"].update(device="cuda", numerics="native")
    write_params(prepared / "params.yaml", params)
    with pytest.raises(SystemExit):
        load_stage("train").main(["--model", "model_0"])
    err = capsys.readouterr().err
    assert "runtime.device: 'cuda' is not available on this machine" in err
    assert not (prepared / "models").exists()


def test_an_unknown_model_name_is_an_error(prepared, capsys):
    with pytest.raises(SystemExit):
        load_stage("train").main(["--model", "model_9"])
    assert "unknown model 'model_9'" in capsys.readouterr().err


def test_a_damaged_prepared_split_is_a_clear_error(prepared, capsys):
    (prepared / "data/prepared/test.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(SystemExit):
        load_stage("train").main(["--model", "model_0"])
    assert "test.pt: not a prepared split (damaged?)" in capsys.readouterr().err


def test_evaluate_refuses_weights_of_another_configuration(prepared, tiny_data, capsys):
    load_stage("train").main(["--model", "model_0"])
    write_params(prepared / "params.yaml", tiny_params(tiny_data, model_0={"hidden_units": 16}))
    with pytest.raises(SystemExit) as exit_info:
        load_stage("evaluate").main(["--model", "model_0"])
    assert exit_info.value.code == 1
    assert "models.model_0.hidden_units=16" in capsys.readouterr().err
    assert not (prepared / "data/scores").exists()


def test_ctrl_c_ends_a_stage_with_one_line_and_status_130(capsys):
    from fmnist.pipeline.cli import entry_point

    @entry_point
    def main(argv=None):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == "error: interrupted\n"


def test_compare_reads_everything_before_writing_anything(prepared, capsys):
    for model in ("model_0", "model_1", "model_2"):
        load_stage("train").main(["--model", model])
        load_stage("evaluate").main(["--model", model])
    pairs = prepared / "data/predictions/model_1.csv"
    rows = pairs.read_text().splitlines()
    rows[1] = rows[1].split(",")[0] + ",Trousers"  # a name that is not a class
    pairs.write_text("\n".join(rows) + "\n")
    with pytest.raises(SystemExit):
        load_stage("compare").main([])
    assert "predicted class 'Trousers' is not a dataset class" in capsys.readouterr().err
    assert not (prepared / "plots/comparison").exists()
    assert not (prepared / "plots/images").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "data/scores/model_0.json: not valid JSON"),
        ('{"loss": 1.0}', "data/scores/model_0.json: holds no arch of model_0"),
    ],
)
def test_compare_names_a_damaged_scores_file(prepared, capsys, content, message):
    for model in ("model_0", "model_1", "model_2"):
        load_stage("train").main(["--model", model])
        load_stage("evaluate").main(["--model", model])
    (prepared / "data/scores/model_0.json").write_text(content)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        load_stage("compare").main([])
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_prepared_split_that_is_not_a_mapping_is_a_clear_error(prepared, capsys):
    torch.save(torch.zeros(3), prepared / "data/prepared/train.pt")
    with pytest.raises(SystemExit):
        load_stage("train").main(["--model", "model_0"])
    assert "train.pt: not a prepared split (damaged?)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "payload",
    [
        {"images": "not a tensor", "labels": 3},
        {"images": torch.zeros(4, 28, 28), "labels": torch.zeros(4, dtype=torch.int64)},
        {"images": torch.zeros(4, 28, 28, dtype=torch.uint8)},
    ],
    ids=["not tensors", "float images", "no labels"],
)
def test_a_prepared_split_of_the_wrong_kind_is_a_clear_error(prepared, capsys, payload):
    torch.save(payload, prepared / "data/prepared/train.pt")
    with pytest.raises(SystemExit):
        load_stage("train").main(["--model", "model_0"])
    assert "train.pt: not a prepared split (damaged?)" in capsys.readouterr().err
