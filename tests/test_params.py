import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fmnist.pipeline.errors import PipelineError
from fmnist.pipeline.params import ARCHITECTURES, load_params, parse_params

from .conftest import ROOT, load_stage, tiny_params, write_params


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


FLOAT32_LR = "expected a number from 1.175e-38 to 3.403e+38 (a float32 above 0)"


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
        (
            "models.model_2.lr",
            -0.1,
            f"models.model_2.lr: {FLOAT32_LR}, got -0.1",
        ),
        (
            "models.model_2.lr",
            "fast",
            f"models.model_2.lr: {FLOAT32_LR}",
        ),
        (
            "models.model_0.epochs",
            0,
            "models.model_0.epochs: expected an integer from 1 to 1000, got 0",
        ),
        (
            "models.model_0.batch_size",
            2.5,
            "models.model_0.batch_size: expected an integer from 1 to 8192",
        ),
        ("models.model_1.hidden_units", True, "models.model_1.hidden_units: expected an integer"),
        ("models.model_1.arch", "resnet", "models.model_1.arch: expected one of linear"),
        ("runtime.device", "tpu", "runtime.device: expected one of auto, cpu, cuda, mps"),
        ("runtime.processes", 0, "runtime.processes: expected an integer from 1 to 64, got 0"),
        ("eval.batch_size", 0, "eval.batch_size: expected an integer from 1 to 10000"),
        ("curves.loss_every", 0, "curves.loss_every: expected an integer from 1 to 100000, got 0"),
        (
            "gate.max_accuracy_drop",
            -1,
            "gate.max_accuracy_drop: expected a number from 0 to 100, got -1",
        ),
        ("data.sources", [], "data.sources: expected a non-empty list"),
        (
            "data.timeout_s",
            float("nan"),
            "data.timeout_s: expected a number above 0 and up to 3600",
        ),
        ("data.sha256.t10k-labels-idx1-ubyte", "abc", "data.sha256.t10k-labels-idx1-ubyte"),
        ("models", {}, "models: expected a non-empty mapping"),
    ],
)
def test_bad_values_name_the_key(raw, path, value, message):
    with pytest.raises(PipelineError, match="^" + re.escape(message)) as info:
        parse_params(_mutate(raw, path, value))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("runtime.device", "auto", "runtime.device: 'auto' is not portable"),
        ("runtime.device", "cuda", "runtime.device: 'cuda' is not portable"),
        ("runtime.threads", 0, "runtime.threads: 0 takes the machine's cores"),
        ("models.model_2.compute_dtype", "auto", "models.model_2.compute_dtype: 'auto' is not"),
        ("models.model_1.compute_dtype", "bf16", "models.model_1.compute_dtype: 'bf16' is not"),
        ("runtime.numerics", "fast", "runtime.numerics: expected one of portable, native"),
    ],
)
def test_what_the_machine_would_decide_needs_the_native_numerics(raw, path, value, message):
    with pytest.raises(PipelineError, match="^" + re.escape(message)) as info:
        parse_params(_mutate(raw, path, value))
    assert "runtime.numerics" in str(info.value) and "\n" not in str(info.value)
    if path != "runtime.numerics":
        native = parse_params(_mutate(_mutate(raw, path, value), "runtime.numerics", "native"))
        assert native.runtime.numerics == "native"


M = "models.model_0"


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (f"{M}.hidden_units", 0, f"{M}.hidden_units: expected an integer from 1 to 1024, got 0"),
        (
            "models.model_2.lr",
            0,
            f"models.model_2.lr: {FLOAT32_LR}, got 0",
        ),
        (
            "models.model_2.lr",
            float("inf"),
            f"models.model_2.lr: {FLOAT32_LR}, got inf",
        ),
        (f"{M}.epochs", -3, f"{M}.epochs: expected an integer from 1 to 1000, got -3"),
        (f"{M}.batch_size", "32", f"{M}.batch_size: expected an integer from 1 to 8192, got '32'"),
        (
            f"{M}.arch",
            "resnet",
            f"{M}.arch: expected one of linear, linear_relu, tinyvgg; got 'resnet'",
        ),
        ("runtime.device", "cuda:0", "runtime.device: expected one of auto, cpu, cuda, mps; got"),
        ("runtime.seed", -1, "runtime.seed: expected an integer from 0 to 2**64 - 1, got -1"),
        (
            "runtime.seed",
            2**64,
            f"runtime.seed: expected an integer from 0 to 2**64 - 1, got {2**64}",
        ),
        ("data.timeout_s", 0, "data.timeout_s: expected a number above 0 and up to 3600, got 0"),
        (
            "data.sources",
            "/srv/data",
            "data.sources: expected a non-empty list of directories or URLs, got '/srv/data'",
        ),
        ("data.sources", ["/srv", 3], "data.sources[1]: expected a directory or URL, got 3"),
        ("models", None, "models: expected a non-empty mapping of model sections, got None"),
        (
            "models.model_1",
            None,
            "models.model_1: expected a mapping with keys arch, hidden_units, lr, epochs, "
            "batch_size, compute_dtype, got None",
        ),
        ("eval", [], "eval: expected a mapping with keys batch_size, got []"),
    ],
)
def test_each_message_is_one_line_with_path_value_and_what_is_allowed(raw, path, value, message):
    with pytest.raises(PipelineError) as info:
        parse_params(_mutate(raw, path, value))
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_unknown_and_missing_keys(raw):
    with pytest.raises(PipelineError, match=r"^models\.model_0\.momentum: unknown key"):
        parse_params(_mutate(raw, "models.model_0.momentum", 0.9))
    with pytest.raises(PipelineError, match=r"^training: unknown key \(allowed: runtime, data"):
        parse_params({**raw, "training": {}})
    without_seed = copy.deepcopy(raw)
    del without_seed["runtime"]["seed"]
    with pytest.raises(PipelineError, match=r"^runtime\.seed: missing"):
        parse_params(without_seed)


def test_a_fourth_model_is_just_a_section(raw):
    raw["models"]["model_3"] = dict(raw["models"]["model_2"], hidden_units=32)
    assert parse_params(raw).model("model_3").hidden_units == 32
    with pytest.raises(PipelineError, match="unknown model 'model_9'"):
        parse_params(raw).model("model_9")


def test_the_old_precision_key_is_read_as_compute_dtype_with_a_warning(raw, caplog):
    section = raw["models"]["model_2"]
    section["precision"] = section.pop("compute_dtype")
    with caplog.at_level("WARNING", logger="fmnist"):
        params = parse_params(raw)
    assert params.model("model_2").compute_dtype == section["precision"]
    assert "models.model_2.precision is deprecated: rename it compute_dtype" in caplog.text
    section["compute_dtype"] = "fp32"
    with pytest.raises(PipelineError, match=r"^models\.model_2: precision and compute_dtype"):
        parse_params(raw)


def test_architectures_match_the_registry():
    from fmnist.pipeline.models import MODEL_REGISTRY

    assert set(ARCHITECTURES) == set(MODEL_REGISTRY)


def test_load_params_reports_file_problems(tmp_path):
    with pytest.raises(PipelineError, match="no such file"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed")
    with pytest.raises(PipelineError, match="not valid YAML"):
        load_params(bad)


def test_params_yaml_is_read_as_dvc_reads_it(tmp_path, raw):
    text = yaml.safe_dump(raw, sort_keys=False)
    path = tmp_path / "params.yaml"
    # YAML 1.1 would read 1e-3 as a string; DVC (YAML 1.2) reads a number.
    path.write_text(text.replace("lr: 0.1", "lr: 1e-3", 1))
    assert load_params(path).model("model_0").lr == 0.001
    path.write_text(text.replace("lr: 0.1", "lr: '1e-3'", 1))
    with pytest.raises(
        PipelineError, match=r"^models\.model_0\.lr: expected a number from .*, got '1e-3'"
    ):
        load_params(path)
    # A key given twice is an error, not a silent "last one wins".
    path.write_text(text.replace("lr: 0.1", "lr: 0.1\n    lr: 0.5", 1))
    twice = r"not valid YAML at line \d+, column 5: key 'lr' given"
    with pytest.raises(PipelineError, match=twice):
        load_params(path)
    with pytest.raises(PipelineError, match="cannot read"):
        load_params(tmp_path)


# --- Bad params stop every stage before it writes anything ---------------------------------------

STAGES = {
    "download": [],
    "prepare": [],
    "train": ["--model", "model_0"],
    "evaluate": ["--model", "model_0"],
    "compare": [],
}
BAD = {
    "negative lr": (
        "models.model_0.lr",
        -0.1,
        f"models.model_0.lr: {FLOAT32_LR}, got -0.1",
    ),
    "unknown arch": (
        "models.model_0.arch",
        "resnet",
        "models.model_0.arch: expected one of linear, linear_relu, tinyvgg; got 'resnet'",
    ),
    "unknown key": ("runtime.colour", "blue", "runtime.colour: unknown key (allowed: device, seed"),
    "no models": ("models", {}, "models: expected a non-empty mapping of model sections, got {}"),
    "zero epochs": (
        "models.model_0.epochs",
        0,
        "models.model_0.epochs: expected an integer from 1 to 1000",
    ),
}


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def run_in_process(stage: str, project: Path, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        load_stage(stage).main(STAGES[stage])
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_with_bad_params_exits_with_one_line_and_writes_nothing(
    tmp_path, prepared_tiny, tiny_data, monkeypatch, capsys, stage, case
):
    shutil.copytree(prepared_tiny, tmp_path, dirs_exist_ok=True)
    path, value, message = BAD[case]
    write_params(tmp_path / "params.yaml", _mutate(tiny_params(tiny_data), path, value))
    before = tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, err = run_in_process(stage, tmp_path, capsys)
    assert code == 1
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert tree(tmp_path) == before


def _missing_device() -> str:
    from fmnist.pipeline.runtime import available_devices

    return next(d for d in ("cuda", "mps") if d not in available_devices())


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_a_device_this_machine_lacks_stops_the_stage_before_it_writes(
    tmp_path, prepared_tiny, tiny_data, monkeypatch, capsys, stage
):
    shutil.copytree(prepared_tiny, tmp_path, dirs_exist_ok=True)
    if stage == "evaluate":  # give evaluate weights to score, so the device is all that is wrong
        monkeypatch.chdir(tmp_path)
        load_stage("train").main(STAGES["train"])
        capsys.readouterr()
    device = _missing_device()
    native = _mutate(tiny_params(tiny_data), "runtime.numerics", "native")
    write_params(tmp_path / "params.yaml", _mutate(native, "runtime.device", device))
    before = tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, err = run_in_process(stage, tmp_path, capsys)
    assert code == 1
    assert err.startswith(f"error: runtime.device: {device!r} is not available on this machine")
    assert "use auto or one of those" in err and err.count("\n") == 1
    assert tree(tmp_path) == before


def test_stage_processes_with_bad_params_print_one_line_and_exit_1(tmp_path, tiny_data):
    """The real scripts, as DVC runs them (logging configured, no pytest capture)."""
    params = _mutate(tiny_params(tiny_data), "models.model_0.lr", -0.1)
    procs = {}
    for stage in ("download", "train"):  # one stage without torch, one with
        argv = STAGES[stage]
        folder = tmp_path / stage
        folder.mkdir()
        write_params(folder / "params.yaml", params)
        procs[stage] = subprocess.Popen(
            [sys.executable, str(ROOT / "stages" / f"{stage}.py"), *argv],
            cwd=folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    for stage, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, (stage, err)
        assert err == f"error: models.model_0.lr: {FLOAT32_LR}, got -0.1\n", (stage, err)
        assert out == ""
        assert [p.name for p in (tmp_path / stage).iterdir()] == ["params.yaml"], stage


# Values that passed validation once and then failed deep inside torch, libgomp or a float32
# cast, with a traceback (or, for the threads, an out-of-memory abort and no `error:` line).
BEYOND = {
    "hidden_units": ("models.model_0.hidden_units", 10**12, "an integer from 1 to 1024"),
    "lr": ("models.model_0.lr", 1e308, FLOAT32_LR.removeprefix("expected ")),
    "threads": ("runtime.threads", 10**9, "an integer from 0 to 256"),
    "processes": ("runtime.processes", 100_000, "an integer from 1 to 64"),
}


@pytest.mark.parametrize("case", BEYOND)
def test_a_value_beyond_what_the_code_can_run_is_one_line_before_any_work(
    case, tmp_path, prepared_tiny, tiny_data
):
    key, value, allowed = BEYOND[case]
    shutil.copytree(prepared_tiny, tmp_path, dirs_exist_ok=True)
    write_params(tmp_path / "params.yaml", _mutate(tiny_params(tiny_data), key, value))
    before = tree(tmp_path)
    done = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "train.py"), "--model", "model_0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr == f"error: {key}: expected {allowed}, got {value!r}\n"
    assert tree(tmp_path) == before
