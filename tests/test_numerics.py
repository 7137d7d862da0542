"""The portable numerics are set before torch loads, in every process that computes with it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fmnist.pipeline import numerics
from fmnist.pipeline.errors import PipelineError

from .conftest import ROOT


def _python(code: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_portable_environment_overrides_the_callers_and_the_native_one_is_empty():
    env = numerics.environment("portable", threads=3)
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
    assert env["DNNL_MAX_CPU_ISA"] is None  # removed: the older spelling would win
    assert numerics.environment("native", threads=3) == {}


def test_a_pinned_process_runs_the_avx2_kernels_whatever_the_caller_asked_for():
    code = (
        "from fmnist.pipeline import numerics; numerics.pin('portable', 2); import torch; "
        "print(numerics.verify('portable'), torch.get_num_threads())"
    )
    out = _python(code, ATEN_CPU_CAPABILITY="default", OMP_NUM_THREADS="7")
    assert out == "AVX2 2"


def test_pinning_after_torch_loaded_is_refused_unless_it_already_runs_so():
    code = (
        "import torch; from fmnist.pipeline import numerics\n"
        "try:\n    numerics.pin('portable', 2)\nexcept RuntimeError as exc:\n    print(exc)"
    )
    out = _python(code, ATEN_CPU_CAPABILITY="default")
    assert out.startswith("torch was imported before the portable numerics were set")
    # This suite's own process was pinned before torch loaded (conftest): nothing to refuse.
    numerics.pin("portable", threads=1)


def test_a_cpu_without_the_portable_kernels_gets_one_line_naming_the_way_out(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    with pytest.raises(PipelineError, match=r"^runtime\.numerics: portable runs torch's AVX2"):
        numerics.verify("portable")
    assert numerics.verify("native") == "DEFAULT"


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_a_stage_module_imports_no_torch_before_it_pins(stage):
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('s', {str(ROOT / 'stages' / stage)!r} "
        "+ '.py')\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print('torch' in sys.modules)"
    )
    assert _python(code) == "False"
