"""The docs' samples against the product: error messages rendered from the code, commands as
the docs write them."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from fmnist.pipeline.errors import PipelineError
from fmnist.pipeline.params import load_params

from .conftest import ROOT

TROUBLESHOOTING = (ROOT / "docs" / "troubleshooting.md").read_text()
PARAMS = (ROOT / "params.yaml").read_text()


def _changed(edit) -> dict:
    params = yaml.safe_load(PARAMS)
    edit(params)
    return params


CASES = {
    "bad value": lambda p: p["models"]["model_2"].update(lr=-0.1),
    "unknown key": lambda p: p["runtime"].update(colour="red"),
    "missing key": lambda p: p["models"]["model_0"].pop("epochs"),
    "unknown arch": lambda p: p["models"]["model_1"].update(arch="resnet"),
    "not portable": lambda p: p["runtime"].update(device="cuda"),
}


@pytest.mark.parametrize("case", CASES)
def test_each_documented_params_error_is_what_the_code_says(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_changed(CASES[case]), sort_keys=False))
    with pytest.raises(PipelineError) as raised:
        load_params("params.yaml")
    assert f"`error: {raised.value}`" in TROUBLESHOOTING


def test_the_documented_duplicate_key_is_at_the_line_todays_params_would_have_it(
    tmp_path, monkeypatch
):
    # A second `lr` right after model_2's, in the committed params.yaml.
    head, tail = PARAMS.split("  model_2:\n")
    first_lr = tail.index("    lr: ")
    end = tail.index("\n", first_lr) + 1
    text = head + "  model_2:\n" + tail[:end] + "    lr: 0.05\n" + tail[end:]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(PipelineError) as raised:
        load_params("params.yaml")
    assert f"`error: {raised.value}`" in TROUBLESHOOTING
    line = text[: text.index("    lr: 0.05")].count("\n") + 1
    assert f"line {line}, column 5" in str(raised.value)
    assert (
        f'found duplicate key "lr" with value "0.05" (original value: "0.1") ... line {line}'
        in (TROUBLESHOOTING)
    )


def test_the_benchmark_table_in_the_docs_is_what_the_benchmark_prints_for_its_report():
    from fmnist.tools.benchmark import format_numerics_table

    report = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    table = format_numerics_table(report["numerics"])
    assert table in (ROOT / "docs" / "performance.md").read_text()


CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()


def documented_keys(text: str) -> list[str]:
    """The keys that docs/configuration.md's table has a row for, in order."""
    return re.findall(r"^\| `([a-z0-9_.<>]+)` \|", text, re.M)


def params_keys(params: dict, prefix: str = "") -> list[str]:
    """Every key of a params mapping down to its values, a model's under `models.<name>`."""
    keys = []
    for key, value in params.items():
        path = f"{prefix}{key}"
        if path.startswith("models.") and path.count(".") == 1:
            path = "models.<name>"
        if isinstance(value, dict) and path != "data.sha256":
            keys += params_keys(value, f"{path}.")
        else:
            keys.append(path)
    return list(dict.fromkeys(keys))


def test_params_yaml_points_to_the_docs_and_they_explain_every_key_on_one_line():
    header = PARAMS.splitlines()[0]
    assert header.startswith("# ") and "docs/configuration.md" in header
    documented = documented_keys(CONFIGURATION)
    assert len(documented) == len(set(documented))  # one row per key
    assert documented == params_keys(yaml.safe_load(PARAMS))


def test_dvc_exp_run_set_changes_only_the_line_of_the_key_it_sets(tmp_path):
    # The rewrite `dvc exp run -S` does (DVC's own function, as `exp run` calls it) leaves the
    # committed file as it is but for that key: header, order, layout and the other values.
    from dvc.utils.hydra import apply_overrides

    copy = tmp_path / "params.yaml"
    copy.write_text(PARAMS)
    apply_overrides(str(copy), ["models.model_1.lr=0.05", "runtime.threads=1"])
    changed = [
        (old, new)
        for old, new in zip(PARAMS.splitlines(), copy.read_text().splitlines(), strict=True)
        if old != new
    ]
    assert changed == [("  threads: 2", "  threads: 1"), ("    lr: 0.1", "    lr: 0.05")]
