"""Load params.yaml into frozen, validated objects: the only place that reads it."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from fmnist.pipeline.errors import PipelineError
from fmnist.pipeline.paths import IDX_FILES

# Kept here rather than imported from models.py so that validating params never imports torch;
# a test checks that the model registry and this tuple agree.
ARCHITECTURES = ("linear", "linear_relu", "tinyvgg")
DEVICES = ("auto", "cpu", "cuda", "mps")
COMPUTE_DTYPES = ("auto", "fp32", "bf16")
# runtime.numerics: what fmnist.pipeline.numerics sets up before torch is imported.
PORTABLE, NATIVE = "portable", "native"
NUMERICS = (PORTABLE, NATIVE)
# The files to checksum, in the order the pipeline fetches them.
DATA_FILES = tuple(name for names in IDX_FILES.values() for name in names)
# The ranges the code can run, checked before any work: a value beyond them would fail deep in
# the allocator, in libgomp or in a float32 cast, with a traceback. Each is far beyond the lesson.
HIDDEN_UNITS_MAX = 1024
EPOCHS_MAX = 1000
BATCH_SIZE_MAX = 8192
EVAL_BATCH_SIZE_MAX = 10_000  # the test set's size
THREADS_MAX = 256
PROCESSES_MAX = 64
LOSS_EVERY_MAX = 100_000
TIMEOUT_S_MAX = 3600.0
# A learning rate becomes a float32 in the SGD step: it must be a normal, finite float32.
FLOAT32_TINY, FLOAT32_MAX = 1.1754943508222875e-38, 3.4028234663852886e38
log = logging.getLogger(__name__)
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading params.yaml as DVC does: 1e-3 a number, no duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Refuse a key given twice (PyYAML would silently keep the last value)."""
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"key {key!r} given twice",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent: `lr: 1e-3` would be
# the string "1e-3" here while DVC (YAML 1.2) tracks it as a number.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@dataclass(frozen=True)
class RuntimeParams:
    """Where and how reproducibly to compute."""

    device: str
    seed: int
    numerics: str  # portable: the same bytes on every x86-64 CPU; native: the machine's kernels
    threads: int  # torch's CPU threads per process; 0 (native only): the machine's cores
    processes: int  # above 1, train@<model> runs data-parallel, one process per share


@dataclass(frozen=True)
class DataParams:
    """Where to fetch the raw dataset from, in order."""

    sources: tuple[str, ...]
    sha256: Mapping[str, str]
    timeout_s: float


@dataclass(frozen=True)
class EvalParams:
    """How to evaluate on the test set (the result does not depend on the batch size)."""

    batch_size: int


@dataclass(frozen=True)
class CurvesParams:
    """How finely training records its loss for the charts."""

    loss_every: int  # training steps per point of the running training loss


@dataclass(frozen=True)
class GateParams:
    """When the change report fails a pull request: read by that tool alone, never by a stage."""

    max_accuracy_drop: float  # percentage points of test accuracy a model may lose


@dataclass(frozen=True)
class ModelParams:
    """One model: its architecture and its own training hyperparameters."""

    name: str
    arch: str
    hidden_units: int
    lr: float
    epochs: int
    batch_size: int
    compute_dtype: str  # fp32, or (native only) bf16 (autocast) or auto, chosen by the CPU

    @property
    def label(self) -> str:
        """The model as charts and legends name it: its name and architecture."""
        return f"{self.name} ({self.arch})"


@dataclass(frozen=True)
class Params:
    """Everything params.yaml configures."""

    runtime: RuntimeParams
    data: DataParams
    eval: EvalParams
    curves: CurvesParams
    gate: GateParams
    models: Mapping[str, ModelParams]

    def model(self, name: str) -> ModelParams:
        """Return one model's params, or fail naming the models that exist."""
        if name not in self.models:
            known = ", ".join(self.models)
            raise PipelineError(f"unknown model {name!r}: params.yaml defines {known}")
        return self.models[name]


Check = Callable[[Any, str], Any]


def positive_int(value: Any, where: str) -> int:
    """Return `value` if it is an integer above 0 (a bool is not), or fail naming `where`."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PipelineError(f"{where}: expected an integer > 0, got {value!r}")
    return value


def int_in(value: Any, where: str, low: int, high: int) -> int:
    """Return `value` if it is an integer from `low` to `high` (a bool is not), or fail."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PipelineError(f"{where}: expected an integer from {low} to {high}, got {value!r}")
    return value


def _ints(low: int, high: int) -> Check:
    return lambda value, path: int_in(value, path, low, high)


def _learning_rate(value: Any, path: str) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not FLOAT32_TINY <= value <= FLOAT32_MAX:
        raise PipelineError(
            f"{path}: expected a number from {FLOAT32_TINY:.4g} to {FLOAT32_MAX:.4g} "
            f"(a float32 above 0), got {value!r}"
        )
    return float(value)


def _seed(value: Any, path: str) -> int:
    # torch.manual_seed takes at most 64 bits; a larger seed would fail deep inside training.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise PipelineError(f"{path}: expected an integer from 0 to 2**64 - 1, got {value!r}")
    return value


def _floats(low: float, high: float, above_low: bool = False) -> Check:
    def check(value: Any, path: str) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if (
            not ok
            or not math.isfinite(value)
            or not low <= value <= high
            or (above_low and value == low)
        ):
            kind = f"above {low:g} and up to {high:g}" if above_low else f"from {low:g} to {high:g}"
            raise PipelineError(f"{path}: expected a number {kind}, got {value!r}")
        return float(value)

    return check


def _choice(*allowed: str) -> Check:
    def check(value: Any, path: str) -> str:
        if value not in allowed:
            raise PipelineError(f"{path}: expected one of {', '.join(allowed)}; got {value!r}")
        return value

    return check


def _sources(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise PipelineError(
            f"{path}: expected a non-empty list of directories or URLs, got {value!r}"
        )
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise PipelineError(f"{path}[{i}]: expected a directory or URL, got {item!r}")
    return tuple(value)


def _keep(value: Any, path: str) -> Any:
    return value


def _checksums(value: Any, path: str) -> Mapping[str, str]:
    if not isinstance(value, dict):
        raise PipelineError(f"{path}: expected a mapping of file name to SHA-256, got {value!r}")
    unknown = sorted(set(value) - set(DATA_FILES), key=str)
    if unknown:
        raise PipelineError(f"{path}.{unknown[0]}: unknown file (expected {', '.join(DATA_FILES)})")
    for name in DATA_FILES:
        digest = value.get(name)
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise PipelineError(f"{path}.{name}: expected 64 hexadecimal digits, got {digest!r}")
    return MappingProxyType({name: value[name].lower() for name in DATA_FILES})


def _section(raw: Any, path: str, checks: Mapping[str, Check]) -> dict[str, Any]:
    """Check one mapping: every key known, every key present, every value valid."""
    if not isinstance(raw, dict):
        where = path or "params.yaml"
        keys = ", ".join(checks)
        raise PipelineError(f"{where}: expected a mapping with keys {keys}, got {raw!r}")

    def key_path(key: Any) -> str:
        return f"{path}.{key}" if path else str(key)

    unknown = sorted(set(raw) - set(checks), key=str)
    if unknown:
        allowed = ", ".join(checks)
        raise PipelineError(f"{key_path(unknown[0])}: unknown key (allowed: {allowed})")
    missing = [key for key in checks if key not in raw]
    if missing:
        raise PipelineError(f"{key_path(missing[0])}: missing (required: {', '.join(checks)})")
    return {key: check(raw[key], key_path(key)) for key, check in checks.items()}


def _renamed_keys(raw: Any, path: str, renamed: Mapping[str, str]) -> Any:
    """Read a section's old key names as their new ones, warning once per key."""
    if not isinstance(raw, dict):
        return raw
    section = dict(raw)
    for old, new in renamed.items():
        if old not in section:
            continue
        if new in section:
            raise PipelineError(f"{path}: {old} and {new} are the same setting; keep {new} only")
        log.warning("%s.%s is deprecated: rename it %s (same values)", path, old, new)
        section[new] = section.pop(old)
    return section


_MODEL_CHECKS: Mapping[str, Check] = {
    "arch": _choice(*ARCHITECTURES),
    "hidden_units": _ints(1, HIDDEN_UNITS_MAX),
    "lr": _learning_rate,
    "epochs": _ints(1, EPOCHS_MAX),
    "batch_size": _ints(1, BATCH_SIZE_MAX),
    "compute_dtype": _choice(*COMPUTE_DTYPES),
}
# Keys params.yaml once used, and what replaced them: still read, with a warning.
RENAMED_MODEL_KEYS = {"precision": "compute_dtype"}


def _portable(runtime: RuntimeParams, models: Mapping[str, ModelParams]) -> None:
    """Refuse, in the portable mode, each setting whose result would be the machine's choice."""
    native = "set runtime.numerics: native to allow it (results then differ between machines)"
    if runtime.device != "cpu":
        raise PipelineError(
            f"runtime.device: {runtime.device!r} is not portable (a GPU's results depend on its "
            f"model, and auto on the machine); {native}"
        )
    if runtime.threads == 0:
        raise PipelineError(
            "runtime.threads: 0 takes the machine's cores, which change the results; give a "
            f"number of threads, or {native}"
        )
    for name, model in models.items():
        if model.compute_dtype != "fp32":
            raise PipelineError(
                f"models.{name}.compute_dtype: {model.compute_dtype!r} is not portable (the CPU "
                f"decides how bf16 is computed); use fp32, or {native}"
            )


def parse_params(raw: Any) -> Params:
    """Validate a params mapping, naming the exact key path of the first problem."""
    top = _section(
        raw,
        "",
        {
            "runtime": _keep,
            "data": _keep,
            "eval": _keep,
            "curves": _keep,
            "gate": _keep,
            "models": _keep,
        },
    )
    runtime = RuntimeParams(
        **_section(
            top["runtime"],
            "runtime",
            {
                "device": _choice(*DEVICES),
                "seed": _seed,
                "numerics": _choice(*NUMERICS),
                "threads": _ints(0, THREADS_MAX),
                "processes": _ints(1, PROCESSES_MAX),
            },
        )
    )
    data = DataParams(
        **_section(
            top["data"],
            "data",
            {
                "sources": _sources,
                "sha256": _checksums,
                "timeout_s": _floats(0, TIMEOUT_S_MAX, above_low=True),
            },
        )
    )
    eval_params = EvalParams(
        **_section(top["eval"], "eval", {"batch_size": _ints(1, EVAL_BATCH_SIZE_MAX)})
    )
    curves = CurvesParams(
        **_section(top["curves"], "curves", {"loss_every": _ints(1, LOSS_EVERY_MAX)})
    )
    gate = GateParams(**_section(top["gate"], "gate", {"max_accuracy_drop": _floats(0, 100)}))
    models_raw = top["models"]
    if not isinstance(models_raw, dict) or not models_raw:
        raise PipelineError(
            f"models: expected a non-empty mapping of model sections, got {models_raw!r}"
        )
    models = {}
    for name, section in models_raw.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise PipelineError(f"models.{name}: a model name must be a plain identifier")
        section = _renamed_keys(section, f"models.{name}", RENAMED_MODEL_KEYS)
        models[name] = ModelParams(name=name, **_section(section, f"models.{name}", _MODEL_CHECKS))
    if runtime.numerics == PORTABLE:
        _portable(runtime, models)
    return Params(
        runtime=runtime,
        data=data,
        eval=eval_params,
        curves=curves,
        gate=gate,
        models=MappingProxyType(models),
    )


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)
    except FileNotFoundError:
        raise PipelineError(f"{path}: no such file") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise PipelineError(f"{path}: not valid YAML{where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: cannot read ({exc})") from None
    return parse_params(raw)
