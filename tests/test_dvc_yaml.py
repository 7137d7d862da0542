"""dvc.yaml must say exactly what each stage uses, or DVC skips a stage that should re-run."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fmnist.pipeline import paths

from .conftest import ROOT

SRC = ROOT / "src"
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _module_file(module: str) -> Path:
    return SRC / (module.replace(".", "/") + ".py")


def _fmnist_imports(path: Path) -> set[str]:
    """fmnist modules a file imports anywhere (top level or inside functions), packages aside."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "fmnist":
            for alias in node.names:  # `from fmnist.pipeline import paths` imports a module
                module = f"{node.module}.{alias.name}"
                found.add(module if _module_file(module).exists() else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "fmnist"}
    return {module for module in found if _module_file(module).exists()}


def _closure(script: Path) -> set[str]:
    """Every fmnist module a script imports, directly or through other modules, as src/ paths."""
    seen: set[str] = set()
    todo = list(_fmnist_imports(script))
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += _fmnist_imports(_module_file(module))
    return {f"src/{m.replace('.', '/')}.py" for m in seen}


@pytest.mark.parametrize("stage", list(STAGES))
def test_deps_list_the_script_and_exactly_the_library_modules_it_uses(stage):
    spec = STAGES[stage].get("do", STAGES[stage])
    script = f"stages/{stage}.py"
    # exec: the stage replaces the shell DVC runs it through, and so dies with DVC.
    assert spec["cmd"].startswith(f"exec python {script}")
    declared = set(spec["deps"])
    assert script in declared
    library = {dep for dep in declared if dep.startswith("src/")}
    assert library == _closure(ROOT / script)


PIPELINE = SRC / "fmnist" / "pipeline"
TOOLS = SRC / "fmnist" / "tools"
EXPERIMENTS = SRC / "fmnist" / "experiments"


@pytest.mark.parametrize("stage", list(STAGES))
def test_no_stage_imports_a_tool(stage):
    # A tool (predict, the report, the plots page...) is no stage's dependency, so editing one
    # never re-runs the pipeline.
    used = _closure(ROOT / "stages" / f"{stage}.py")
    assert all(dep.startswith("src/fmnist/pipeline/") for dep in used), used


def test_the_pipeline_library_never_imports_the_tools():
    for module in PIPELINE.glob("*.py"):
        imported = _fmnist_imports(module)
        assert not [m for m in imported if not m.startswith("fmnist.pipeline.")], module.name
    tools = {path.stem for path in TOOLS.glob("*.py")} - {"__init__"}
    assert {"predict", "change_report", "plots_page", "benchmark"} <= tools


def test_the_experiments_package_imports_no_tool_and_no_module_imports_back_in_a_loop():
    # The grid, the search and what they share form one package; its modules import the
    # pipeline library and each other, never the tools, and in one direction only.
    graph = {}
    for module in EXPERIMENTS.glob("*.py"):
        imported = _fmnist_imports(module)
        assert not [m for m in imported if m.startswith("fmnist.tools")], module.name
        graph[module.stem] = {
            m.rsplit(".", 1)[1] for m in imported if m.startswith("fmnist.experiments.")
        }

    def reaches(start: str, goal: str, seen: frozenset = frozenset()) -> bool:
        return any(
            nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt}))
            for nxt in graph.get(start, ())
        )

    assert not [name for name in graph if reaches(name, name)]


def test_package_init_files_hold_no_code():
    # They run on every import but are no stage's declared dependency: a docstring alone.
    for init in (SRC / "fmnist" / "__init__.py", PIPELINE / "__init__.py", TOOLS / "__init__.py"):
        body = ast.parse(init.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), init


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
    assert f"{paths.SCORES_DIR}/{key}.json" in outs and str(paths.METRICS_FILE) in outs
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
print(json.dumps(sorted(m for m in sys.modules if "." not in m or m.startswith("fmnist."))))
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
    loaded = json.loads(out)
    assert forbidden.isdisjoint(loaded)
    assert not [m for m in loaded if m.startswith(("fmnist.tools", "fmnist.experiments"))]


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
