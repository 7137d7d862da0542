"""What decides a torch process's bytes besides params and data, fixed before torch is imported.

torch picks its CPU kernels by the machine's vector width (ATen's CPU capability, oneDNN's ISA,
MKL's code path, which also depends on the CPU's vendor) and takes thread counts and math modes
from the environment. Each moves the results' last bits. In the portable mode (the default)
every process that computes with torch sets them to fixed values before its first
`import torch`, which reads them once: the same params then give the same bytes on every x86-64
CPU with AVX2, whatever its cores, vendor or wider vector units. The native mode leaves torch's
own choices, the environment's included: faster on some machines, bytes that are the machine's.
This module imports no torch, except `verify`, which runs after the import.
"""

from __future__ import annotations

import os
import platform
import sys

from fmnist.pipeline.errors import PipelineError
from fmnist.pipeline.params import NATIVE, PORTABLE

# The kernels the portable mode runs: AVX2 with FMA, on every x86-64 CPU since 2013-2015.
CAPABILITY = "AVX2"
PORTABLE_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",  # ATen's own vectorised kernels
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN's convolutions and pooling
    "ONEDNN_DEFAULT_FPMATH_MODE": "STRICT",  # fp32 math in fp32, never implicitly in bf16
    # MKL's GEMMs: the one code path that MKL makes the same on every vendor's CPU. `AVX2` would
    # hold on Intel CPUs only (AMD ones get MKL's AUTO path); these GEMMs are too small to lose
    # measurable time to SSE2.
    "MKL_CBWR": "COMPATIBLE",
    "MKL_DYNAMIC": "FALSE",  # MKL uses exactly the threads it is given ...
    "OMP_DYNAMIC": "FALSE",  # ... and so does OpenMP, whatever the machine's load
}
# Older spellings and other overrides that a caller's environment may hold: they would win
# over, or add to, the settings above.
CLEARED = ("DNNL_MAX_CPU_ISA", "DNNL_DEFAULT_FPMATH_MODE", "MKL_ENABLE_INSTRUCTIONS")
THREADS_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def environment(mode: str, threads: int) -> dict[str, str | None]:
    """The variables a torch process of `mode` needs: each one's value, or None to remove it."""
    if mode == NATIVE:
        return {}
    env: dict[str, str | None] = {**PORTABLE_ENV, **dict.fromkeys(CLEARED)}
    # torch.set_num_threads decides the count in the end; these size the first thread pools.
    env.update(dict.fromkeys(THREADS_ENV, str(threads)))
    return env


def pin(mode: str, threads: int) -> None:
    """Set this process's environment for `mode` before torch is imported; children inherit it."""
    wanted = environment(mode, threads)
    if "torch" in sys.modules:
        # Too late to change anything: only a process that already runs so may go on.
        kernels = {k: v for k, v in wanted.items() if k not in THREADS_ENV}
        wrong = sorted(k for k, v in kernels.items() if os.environ.get(k) != v)
        if wrong:
            raise RuntimeError(
                f"torch was imported before the {mode} numerics were set ({', '.join(wrong)}): "
                "call pin() before anything that imports torch"
            )
        return
    for key, value in wanted.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def verify(mode: str, setting: str = "runtime.numerics") -> str:
    """Check, after torch's import, that it runs the kernels `mode` promises; return them."""
    # `setting` names where the mode came from (params' key, a tool's option) in the error.
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if mode == PORTABLE and capability != CAPABILITY:
        raise PipelineError(
            f"{setting}: portable runs torch's AVX2 kernels, which this CPU "
            f"({platform.machine()}, {capability}) cannot; choose native to run with its own "
            "kernels, whose results differ from other machines' (and the committed dvc.lock)"
        )
    return capability
