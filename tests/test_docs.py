"""The docs' samples against the product: error messages rendered from the code, commands as
the docs write them."""

from __future__ import annotations

import json

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
