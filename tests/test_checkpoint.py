import ast
import contextlib
import json
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from fmnist.pipeline.checkpoint import load_checkpoint, save_checkpoint, sidecar_path
from fmnist.pipeline.errors import PipelineError
from fmnist.pipeline.models import build_model
from fmnist.pipeline.params import ModelParams

from .conftest import ROOT

META = {"arch": "tinyvgg", "hidden_units": 4, "in_channels": 1, "image_size": 28, "num_classes": 10}


def test_round_trip_gives_the_same_model(tmp_path):
    torch.manual_seed(0)
    model = build_model("tinyvgg", 4).eval()
    weights = tmp_path / "models" / "m.pth"
    save_checkpoint(model, weights, {**META, "model": "m"})

    loaded, meta = load_checkpoint(weights)
    x = torch.rand(3, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))
    assert meta["model"] == "m" and meta["arch"] == "tinyvgg"
    assert json.loads(sidecar_path(weights).read_text())["format"] == 2
    assert sorted(p.name for p in weights.parent.iterdir()) == ["m.json", "m.pth"]


def test_a_format_1_sidecar_still_loads_with_its_dtype_renamed(tmp_path):
    model = build_model("tinyvgg", 4)
    weights = tmp_path / "m.pth"
    save_checkpoint(model, weights, {**META, "hyperparameters": {"compute_dtype": "bf16"}})
    old = json.loads(sidecar_path(weights).read_text())
    old.update(format=1, hyperparameters={"precision": "bf16"})
    sidecar_path(weights).write_text(json.dumps(old))
    _, meta = load_checkpoint(weights)
    assert meta["hyperparameters"] == {"compute_dtype": "bf16"}


def test_same_weights_give_the_same_bytes(tmp_path):
    torch.manual_seed(0)
    model = build_model("linear", 8)
    save_checkpoint(model, tmp_path / "a.pth", {**META, "arch": "linear", "hidden_units": 8})
    save_checkpoint(model, tmp_path / "b.pth", {**META, "arch": "linear", "hidden_units": 8})
    assert (tmp_path / "a.pth").read_bytes() == (tmp_path / "b.pth").read_bytes()


def test_shapes_that_do_not_fit_the_sidecar_are_rejected(tmp_path):
    weights = tmp_path / "m.pth"
    save_checkpoint(build_model("tinyvgg", 4), weights, META)
    sidecar_path(weights).write_text(json.dumps({**META, "format": 2, "hidden_units": 8}))
    with pytest.raises(PipelineError, match="do not fit a tinyvgg model with hidden_units=8: size"):
        load_checkpoint(weights)


def test_truncated_file_is_rejected(tmp_path):
    weights = tmp_path / "m.pth"
    save_checkpoint(
        build_model("linear", 4), weights, {**META, "arch": "linear", "hidden_units": 4}
    )
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(PipelineError, match="not a loadable weights file"):
        load_checkpoint(weights)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_malicious_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    weights = tmp_path / "evil.pth"
    torch.save({"layer_stack.1.weight": _Exploit(marker)}, weights)
    sidecar_path(weights).write_text(json.dumps({**META, "format": 2}))
    with pytest.raises(PipelineError, match="not a loadable weights file"):
        load_checkpoint(weights)
    assert not marker.exists()
    # The file is a real exploit: loading it unsafely does run its code.
    torch.load(weights, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("sidecar", ["[1, 2]", '{"format": 2, "arch": "linear"}', "{not json"])
def test_a_bad_sidecar_is_rejected(tmp_path, sidecar):
    weights = tmp_path / "m.pth"
    save_checkpoint(
        build_model("linear", 4), weights, {**META, "arch": "linear", "hidden_units": 4}
    )
    sidecar_path(weights).write_text(sidecar)
    with pytest.raises(PipelineError, match=r"m\.json: not"):
        load_checkpoint(weights)


# --- Untrusted files: nothing in them ever runs ---------------------------------------------------


class _Touch:
    """Unpickling this creates `marker` (without leaving an open file behind)."""

    def __init__(self, marker):
        self.marker = Path(marker)

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _raw_pickle(path, marker):
    path.write_bytes(pickle.dumps({"layer_stack.1.weight": _Touch(marker)}))


def _legacy_torch_file(path, marker):
    torch.save({"w": _Touch(marker)}, path, _use_new_zipfile_serialization=False)


def _zip_with_evil_data_pkl(path, marker):
    """A genuine checkpoint archive whose data.pkl was swapped for a malicious pickle."""
    genuine = path.with_name("genuine.pth")
    save_checkpoint(
        build_model("linear", 4), genuine, {**META, "arch": "linear", "hidden_units": 4}
    )
    with zipfile.ZipFile(genuine) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("/data.pkl"):
                data = pickle.dumps({"layer_stack.1.weight": _Touch(marker)}, protocol=2)
            dst.writestr(item, data)


@pytest.mark.filterwarnings("error")  # the refusal is one clear error, with no warnings around it
@pytest.mark.parametrize("craft", [_raw_pickle, _legacy_torch_file, _zip_with_evil_data_pkl])
def test_no_kind_of_malicious_file_is_ever_executed(tmp_path, craft):
    marker = tmp_path / "pwned"
    weights = tmp_path / "evil.pth"
    craft(weights, marker)
    sidecar_path(weights).write_text(
        json.dumps({**META, "format": 2, "arch": "linear", "hidden_units": 4})
    )
    with pytest.raises(PipelineError) as info:
        load_checkpoint(weights)
    message = str(info.value)
    assert message.startswith(f"{weights}: not a loadable weights file, refused without running")
    assert "Unsupported" in message and "\n" not in message, message
    assert "will likely succeed" not in message  # torch's advice to load it unsafely is dropped
    assert not marker.exists()
    # Each file is a real exploit: an unsafe load does run its code.
    with contextlib.suppress(Exception), warnings.catch_warnings(action="ignore"):
        torch.load(weights, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "not a loadable weights file (EOFError)"), (None, "not a loadable weights file")],
)
def test_an_empty_file_or_a_directory_is_rejected(tmp_path, content, reason):
    weights = tmp_path / "m.pth"
    if content is None:
        weights.mkdir()
    else:
        weights.write_bytes(content)
    sidecar_path(weights).write_text(json.dumps({**META, "format": 2}))
    with pytest.raises(PipelineError, match=re.escape(f"{weights}: {reason}")):
        load_checkpoint(weights)


def test_a_file_holding_a_tensor_not_a_state_dict_is_rejected(tmp_path):
    weights = tmp_path / "m.pth"
    torch.save(torch.zeros(3), weights)
    sidecar_path(weights).write_text(json.dumps({**META, "format": 2}))
    with pytest.raises(PipelineError, match=r"not a state_dict \(it holds a Tensor\)"):
        load_checkpoint(weights)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("arch", "resnet", "arch: expected one of linear, linear_relu, tinyvgg; got 'resnet'"),
        ("hidden_units", -4, "hidden_units: expected an integer from 1 to 1024, got -4"),
        ("hidden_units", "4", "hidden_units: expected an integer from 1 to 1024, got '4'"),
        ("num_classes", True, "num_classes: expected an integer from 2 to 1000, got True"),
    ],
)
def test_a_sidecar_describing_an_impossible_model_is_rejected(tmp_path, key, value, message):
    weights = tmp_path / "m.pth"
    save_checkpoint(build_model("tinyvgg", 4), weights, META)
    sidecar_path(weights).write_text(json.dumps({**META, "format": 2, key: value}))
    with pytest.raises(PipelineError, match=re.escape(f"{sidecar_path(weights)}: {message}")):
        load_checkpoint(weights)


def _model_params(**changes) -> ModelParams:
    fields = {"name": "model_2", "arch": "tinyvgg", "hidden_units": 4, "lr": 0.1, "epochs": 1}
    return ModelParams(**{**fields, "batch_size": 8, "compute_dtype": "fp32", **changes})


def test_weights_that_do_not_match_params_are_refused_before_loading(tmp_path):
    weights = tmp_path / "model_2.pth"
    save_checkpoint(build_model("tinyvgg", 4), weights, META)
    model, _ = load_checkpoint(weights, expected=_model_params())
    assert isinstance(model, type(build_model("tinyvgg", 4)))

    with pytest.raises(PipelineError) as info:
        load_checkpoint(weights, expected=_model_params(arch="linear", hidden_units=10))
    assert str(info.value) == (
        f"{sidecar_path(weights)}: the weights were trained with arch='tinyvgg', "
        "hidden_units=4, but params.yaml has models.model_2.arch='linear', "
        "models.model_2.hidden_units=10: re-run `dvc repro train@model_2`"
    )
    # The check comes first: even a malicious weights file is not opened.
    marker = tmp_path / "pwned"
    _raw_pickle(weights, marker)
    with pytest.raises(PipelineError, match=r"params\.yaml has models\.model_2\.hidden_units=8"):
        load_checkpoint(weights, expected=_model_params(hidden_units=8))
    assert not marker.exists()


def _torch_load_calls(path: Path) -> list[ast.Call]:
    tree = ast.parse(path.read_text())
    aliases = {"torch"}
    direct = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.name == "torch" and a.asname}
        elif isinstance(node, ast.ImportFrom) and node.module == "torch":
            direct |= {a.asname or a.name for a in node.names if a.name == "load"}
    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        by_attribute = (
            isinstance(func, ast.Attribute)
            and func.attr == "load"
            and isinstance(func.value, ast.Name)
            and func.value.id in aliases
        )
        if by_attribute or (isinstance(func, ast.Name) and func.id in direct):
            calls.append(node)
    return calls


def test_every_torch_load_in_the_code_refuses_pickled_code():
    files = sorted((ROOT / "src").rglob("*.py")) + sorted((ROOT / "stages").glob("*.py"))
    found = {}
    for path in files:
        for call in _torch_load_calls(path):
            weights_only = [k for k in call.keywords if k.arg == "weights_only"]
            ok = (
                len(weights_only) == 1
                and isinstance(weights_only[0].value, ast.Constant)
                and weights_only[0].value.value is True
            )
            found[f"{path.relative_to(ROOT)}:{call.lineno}"] = ok
    # checkpoint.py and data.py load files: a scan that finds nothing is a broken scan.
    assert any(key.startswith("src/fmnist/pipeline/checkpoint.py") for key in found)
    assert any(key.startswith("src/fmnist/pipeline/data.py") for key in found)
    assert [where for where, ok in found.items() if not ok] == []
