"""dvc.yaml must say exactly what each stage uses, or DVC skips a stage that should re-run."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fmnist import paths

from .conftest import ROOT

SRC = ROOT / "src"
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _fmnist_imports(path: Path) -> set[str]:
    """fmnist modules a file imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "fmnist":
            found |= {f"fmnist.{a.name}" for a in node.names}  # from fmnist import paths
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fmnist."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("fmnist.")}
    return found


def _closure(script: Path) -> set[str]:
    seen: set[str] = set()
    todo = list(_fmnist_imports(script))
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += _fmnist_imports(SRC / (module.replace(".", "/") + ".py"))
    return {f"src/{m.replace('.', '/')}.py" for m in seen}


@pytest.mark.parametrize("stage", list(STAGES))
def test_deps_list_the_script_and_exactly_the_library_modules_it_uses(stage):
    spec = STAGES[stage].get("do", STAGES[stage])
    script = f"stages/{stage}.py"
    assert spec["cmd"].startswith(f"python {script}")
    declared = set(spec["deps"])
    assert script in declared
    library = {dep for dep in declared if dep.startswith("src/")}
    assert library == _closure(ROOT / script)


def test_outputs_match_the_library_paths():
    outs = set()
    for spec in STAGES.values():
        spec = spec.get("do", spec)
        for key in ("outs", "metrics", "plots"):
            for out in spec.get(key, []):
                outs.add(next(iter(out)) if isinstance(out, dict) else out)
    key = "${key}"
    assert str(paths.RAW_DIR) in outs and str(paths.PREPARED_DIR) in outs
    assert str(paths.weights_path(key)) in outs
    for folder in (paths.MODEL_METRICS_DIR, paths.TRAIN_METRICS_DIR):
        assert f"{folder}/{key}.json" in outs
    for folder in (paths.CURVES_DIR, paths.STEPS_DIR, paths.CONFUSION_DIR, paths.PER_CLASS_DIR):
        assert f"{folder}/{key}.csv" in outs
    assert f"{paths.PREDICTIONS_DIR}/{key}.csv" in outs
    assert str(paths.COMPARISON_CSV) in outs and str(paths.CLASS_COUNTS_CSV) in outs


def test_every_stage_keeps_its_run_cache():
    # DVC saves no run-cache for a stage with a plain `outs` entry that is not cached; metrics
    # and plots are exempt, so a file kept in git must be declared as one of those.
    for name, spec in STAGES.items():
        spec = spec.get("do", spec)
        for out in spec.get("outs", []):
            props = next(iter(out.values())) if isinstance(out, dict) else {}
            assert props.get("cache", True), f"{name}: {out} is a plain out kept out of the cache"


def test_the_gate_threshold_is_read_by_no_stage():
    # The report alone reads it: changing it must not re-run anything.
    for spec in STAGES.values():
        spec = spec.get("do", spec)
        assert not any(str(key).startswith("gate") for key in spec.get("params", []))


IMPORT_CHECK = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("stage", sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(json.dumps(sorted(m for m in sys.modules if "." not in m)))
"""


@pytest.mark.parametrize(
    ("stage", "forbidden"),
    [
        ("download", {"torch", "torchvision", "matplotlib", "pandas", "numpy"}),
        ("prepare", {"torchvision", "matplotlib", "pandas"}),
        ("train", {"torchvision", "matplotlib", "pandas", "torchmetrics", "PIL"}),
        ("evaluate", {"torchvision", "matplotlib", "pandas", "torchmetrics", "mlxtend", "PIL"}),
        ("compare", {"torch", "torchvision", "torchmetrics"}),  # mlxtend only when drawing
    ],
)
def test_stages_import_only_what_they_need(stage, forbidden):
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK, str(ROOT / "stages" / f"{stage}.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert forbidden.isdisjoint(json.loads(out))


def test_every_model_is_a_registered_artifact_with_its_weights():
    artifacts = yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"]
    models = yaml.safe_load((ROOT / "params.yaml").read_text())["models"]
    assert set(artifacts) == set(models)
    for name, artifact in artifacts.items():
        assert artifact["path"] == paths.weights_path(name).as_posix()
        assert artifact["type"] == "model"
        assert artifact["desc"] and artifact["labels"]
        assert models[name]["arch"].replace("_", "-") in artifact["labels"] or (
            models[name]["arch"] == "linear" and "linear" in artifact["labels"]
        )
