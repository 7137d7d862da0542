import copy

import pytest
import yaml

from fmnist.errors import ParamsError
from fmnist.params import ARCHITECTURES, load_params, parse_params

from .conftest import ROOT


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_project_params_load(raw):
    params = parse_params(raw)
    assert list(params.models) == ["model_0", "model_1", "model_2"]
    assert params.model("model_2").arch == "tinyvgg"
    assert params.runtime.seed == 42
    assert {m.lr for m in params.models.values()} == {0.1}
    assert {m.batch_size for m in params.models.values()} == {32}


def _mutate(raw: dict, path: str, value) -> dict:
    raw = copy.deepcopy(raw)
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[last] = value
    return raw


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("models.model_2.lr", -0.1, "models.model_2.lr: expected a number > 0, got -0.1"),
        ("models.model_2.lr", "fast", "models.model_2.lr: expected a number > 0"),
        ("models.model_0.epochs", 0, "models.model_0.epochs: expected an integer > 0, got 0"),
        ("models.model_0.batch_size", 2.5, "models.model_0.batch_size: expected an integer > 0"),
        ("models.model_1.hidden_units", True, "models.model_1.hidden_units: expected an integer"),
        ("models.model_1.arch", "resnet", "models.model_1.arch: expected one of linear"),
        ("runtime.device", "tpu", "runtime.device: expected one of auto, cpu, cuda, mps"),
        ("eval.batch_size", 0, "eval.batch_size: expected an integer > 0"),
        ("data.sources", [], "data.sources: expected a non-empty list"),
        ("data.timeout_s", float("nan"), "data.timeout_s: expected a number > 0"),
        ("data.sha256.t10k-labels-idx1-ubyte", "abc", "data.sha256.t10k-labels-idx1-ubyte"),
        ("models", {}, "models: expected a non-empty mapping"),
    ],
)
def test_bad_values_name_the_key(raw, path, value, message):
    with pytest.raises(ParamsError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        parse_params(_mutate(raw, path, value))


def test_unknown_and_missing_keys(raw):
    with pytest.raises(ParamsError, match=r"^models\.model_0\.momentum: unknown key"):
        parse_params(_mutate(raw, "models.model_0.momentum", 0.9))
    with pytest.raises(ParamsError, match=r"^training: unknown key \(allowed: runtime, data"):
        parse_params({**raw, "training": {}})
    without_seed = copy.deepcopy(raw)
    del without_seed["runtime"]["seed"]
    with pytest.raises(ParamsError, match=r"^runtime\.seed: missing"):
        parse_params(without_seed)


def test_a_fourth_model_is_just_a_section(raw):
    raw["models"]["model_3"] = dict(raw["models"]["model_2"], hidden_units=32)
    assert parse_params(raw).model("model_3").hidden_units == 32
    with pytest.raises(ParamsError, match="unknown model 'model_9'"):
        parse_params(raw).model("model_9")


def test_architectures_match_the_registry():
    from fmnist.models import MODEL_REGISTRY

    assert set(ARCHITECTURES) == set(MODEL_REGISTRY)


def test_load_params_reports_file_problems(tmp_path):
    with pytest.raises(ParamsError, match="no such file"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
