"""Same params, same bytes, whatever the machine: cores, thread settings and the kernels that the
caller's environment asks for change nothing in the portable mode.

Each configuration runs the real train stage in its own process, as DVC does, on the suite's
tiny data. The golden digests below were made by the pinned AVX2 kernels with torch 2.14.1; they
move only when the training code, the tiny data or torch itself changes."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import ROOT, tiny_params, write_params

MODELS = ("model_0", "model_1", "model_2")
# md5 of models/<name>.pth trained on the tiny data with tiny_params and runtime.threads 2.
GOLDEN = {
    "model_0": "403cc958c5e86300ff0a07ee3109b8cd",
    "model_1": "fdb96635fa6a824555efb026c94bb429",
    "model_2": "10d405b0901df872709a8bba46b4c133",
}
# What a caller's environment might hold to steer torch's kernels and threads.
STEERING = {
    "OMP_NUM_THREADS": "7",
    "MKL_NUM_THREADS": "5",
    "OMP_DYNAMIC": "TRUE",
    "MKL_DYNAMIC": "TRUE",
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "AUTO",
}
OTHER_ISA = {
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "DNNL_MAX_CPU_ISA": "AVX512_CORE",
    "ONEDNN_DEFAULT_FPMATH_MODE": "BF16",
    "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
}
CONFIGURATIONS = {
    "1 core": (["taskset", "-c", "0"], {}),
    "2 cores, threads and kernels from the environment": (["taskset", "-c", "0,1"], STEERING),
    "another oneDNN ISA and MKL path": ([], OTHER_ISA),
}


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    # The suite's own process pinned itself: each configuration starts from a bare environment.
    for key in {*STEERING, *OTHER_ISA, "ONEDNN_MAX_CPU_ISA", "ONEDNN_DEFAULT_FPMATH_MODE"}:
        env.pop(key, None)
    return env


def _train_all(root: Path, prefix: list[str], extra: dict[str, str]) -> dict[str, str]:
    """Train every model with the stage's own command; return the md5 of each weights file."""
    env = {**_clean_env(), **extra}
    digests = {}
    for name in MODELS:
        cmd = [*prefix, sys.executable, str(ROOT / "stages" / "train.py"), "--model", name]
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        digests[name] = hashlib.md5((root / "models" / f"{name}.pth").read_bytes()).hexdigest()
    return digests


def _project(prepared_tiny: Path, dest: Path, tiny_data, **runtime: object) -> Path:
    shutil.copytree(prepared_tiny, dest)
    params = tiny_params(tiny_data)
    params["runtime"].update(threads=2, **runtime)
    write_params(dest / "params.yaml", params)
    return dest


@pytest.mark.skipif(
    not shutil.which("taskset") or len(os.sched_getaffinity(0)) < 2,
    reason="needs taskset and two cores",
)
def test_every_machine_setting_gives_the_golden_bytes(tmp_path, prepared_tiny, tiny_data):
    roots = {
        label: _project(prepared_tiny, tmp_path / f"run{i}", tiny_data)
        for i, label in enumerate(CONFIGURATIONS)
    }
    with ThreadPoolExecutor(max_workers=len(roots)) as pool:
        futures = {
            label: pool.submit(_train_all, roots[label], *CONFIGURATIONS[label])
            for label in CONFIGURATIONS
        }
        results = {label: future.result() for label, future in futures.items()}
    for label, digests in results.items():
        assert digests == GOLDEN, label


def test_the_native_mode_follows_the_environment_so_the_pins_matter(
    tmp_path, prepared_tiny, tiny_data
):
    # The control: without the pins, the scalar kernels that the caller asks for give other
    # bytes, so the test above would see a setting that leaked through.
    root = _project(prepared_tiny, tmp_path / "native", tiny_data, numerics="native")
    digests = _train_all(root, [], {"ATEN_CPU_CAPABILITY": "default"})
    assert digests != GOLDEN
    assert [name for name in MODELS if digests[name] == GOLDEN[name]] == []
