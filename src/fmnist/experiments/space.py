"""A search space on the command line, in the spirit of `-S`: one `KEY=SPEC` per param.

    models.model_2.lr=log:0.01:0.3           a float, log-uniform between the bounds
    models.model_2.lr=float:0.01:0.3         a float, uniform
    models.model_2.hidden_units=int:4:16     an integer in the range, both ends included
    models.model_2.batch_size=choice:16,32,64

Every key must be one of params.yaml's, and both ends of a range (each choice) must be values
that params.yaml accepts: a bad space is one line before anything runs.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fmnist.pipeline.errors import PipelineError

KINDS = ("log", "float", "int", "choice")
METRICS = {"accuracy": "maximize", "loss": "minimize"}  # what the metrics file holds per model


@dataclass(frozen=True)
class Dimension:
    """One searched param: its key, its kind, and its range or choices."""

    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple[Any, ...] = ()

    def spec(self) -> str:
        """The `KEY=SPEC` text this dimension was read from (normalised)."""
        if self.kind == "choice":
            return f"{self.key}=choice:{','.join(str(c) for c in self.choices)}"
        return f"{self.key}={self.kind}:{self.low:g}:{self.high:g}"

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial for this param's value."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high))
        return trial.suggest_float(self.key, self.low, self.high, log=self.kind == "log")

    def ends(self) -> list[Any]:
        """The values that bound this dimension: each choice, or both ends of the range."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise PipelineError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise PipelineError(f"{where}: {text!r} is not a finite number")
    return value


def _scalar(text: str) -> Any:
    """A choice as YAML reads it (16 is an int, 0.1 a float, fp32 a string), as `-S` does."""
    value = yaml.safe_load(text)
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise PipelineError(f"choice {text!r}: expected a number or a word")
    return value


def parse_dimension(text: str) -> Dimension:
    """Read one `KEY=KIND:...` option; say in one line what is wrong with it."""
    where = f"--param {text}"
    key, sep, spec = text.partition("=")
    kind, _, rest = spec.partition(":")
    if not sep or not key or kind not in KINDS or not rest:
        raise PipelineError(
            f"{where}: expected KEY=log:LOW:HIGH, KEY=float:LOW:HIGH, KEY=int:LOW:HIGH "
            "or KEY=choice:A,B,..."
        )
    if kind == "choice":
        choices = tuple(_scalar(item) for item in rest.split(","))
        if len(set(map(repr, choices))) != len(choices) or len(choices) < 2:
            raise PipelineError(f"{where}: give two or more different choices")
        return Dimension(key, kind, choices=choices)
    parts = rest.split(":")
    if len(parts) != 2:
        raise PipelineError(f"{where}: expected {kind}:LOW:HIGH")
    low, high = (_number(part, where) for part in parts)
    if kind == "int" and not (low.is_integer() and high.is_integer()):
        raise PipelineError(f"{where}: an int range needs whole numbers")
    if not low < high:
        raise PipelineError(f"{where}: LOW must be below HIGH")
    if kind == "log" and low <= 0:
        raise PipelineError(f"{where}: a log range needs LOW above 0")
    return Dimension(key, kind, low, high)


def _dig(tree: Mapping[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def _set(tree: dict[str, Any], key: str, value: Any) -> None:
    *path, last = key.split(".")
    node = tree
    for part in path:
        node = node[part]
    node[last] = value


def parse_space(texts: Sequence[str], params_file: Path) -> list[Dimension]:
    """Read every `--param`, and check each against params.yaml and its validation."""
    from fmnist.pipeline.params import load_params

    if not texts:
        raise PipelineError("give at least one --param KEY=SPEC to search")
    dimensions = [parse_dimension(text) for text in texts]
    keys = [d.key for d in dimensions]
    if len(set(keys)) != len(keys):
        raise PipelineError(f"--param: a key given twice ({', '.join(sorted(keys))})")
    params = yaml.safe_load(params_file.read_text())
    for d in dimensions:
        try:
            current = _dig(params, d.key)
        except KeyError:
            raise PipelineError(f"--param {d.key}: no such key in {params_file}") from None
        if isinstance(current, Mapping | list):
            raise PipelineError(f"--param {d.key}: a section, not a value")
        # Each end of the range goes through params.yaml's own checks, in a scratch copy.
        for value in d.ends():
            trial = yaml.safe_load(params_file.read_text())
            _set(trial, d.key, value)
            with tempfile.TemporaryDirectory(prefix="fmnist-space-") as scratch:
                copy = Path(scratch) / "params.yaml"
                copy.write_text(yaml.safe_dump(trial, sort_keys=False))
                try:
                    load_params(copy)
                except PipelineError as exc:
                    raise PipelineError(
                        f"--param {d.spec()}: {value!r} is refused: {exc}"
                    ) from None
    return dimensions


def parse_objective(text: str, models: Sequence[str]) -> tuple[str, str]:
    """Read `MODEL.METRIC` (model_2.accuracy); return it and its natural direction."""
    model, _, metric = text.partition(".")
    if model not in models or metric not in METRICS:
        raise PipelineError(
            f"--objective {text}: expected MODEL.METRIC with MODEL one of {', '.join(models)} "
            f"and METRIC one of {', '.join(METRICS)}"
        )
    return text, METRICS[metric]
