"""What every command shares: one-line errors, `--debug` for a traceback, no import side effects."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
import tomllib

from fmnist.pipeline.cli import entry_point, positive_int_arg
from fmnist.pipeline.errors import PipelineError

from .conftest import ROOT, load_stage


@entry_point
def failing(argv=None):
    raise PipelineError("models/model_9.pth: no such checkpoint")


def test_a_pipeline_error_is_one_line_and_exit_1(capsys, monkeypatch):
    monkeypatch.delenv("FMNIST_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        failing([])
    assert info.value.code == 1
    assert capsys.readouterr().err == "error: models/model_9.pth: no such checkpoint\n"


@pytest.mark.parametrize(("argv", "env"), [(["--debug"], None), ([], "1")])
def test_debug_or_the_environment_raises_the_error_with_its_traceback(monkeypatch, argv, env):
    if env is None:
        monkeypatch.delenv("FMNIST_DEBUG", raising=False)
    else:
        monkeypatch.setenv("FMNIST_DEBUG", env)
    with pytest.raises(PipelineError, match="no such checkpoint"):
        failing(argv)


def test_fmnist_debug_0_keeps_the_one_line(capsys, monkeypatch):
    monkeypatch.setenv("FMNIST_DEBUG", "0")
    with pytest.raises(SystemExit):
        failing([])
    assert capsys.readouterr().err.startswith("error: ")


def test_a_stage_run_with_debug_prints_the_whole_traceback(prepared_tiny):
    command = [sys.executable, str(ROOT / "stages" / "train.py"), "--model", "model_9"]
    plain = subprocess.run(command, cwd=prepared_tiny, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 1
    assert plain.stderr.strip().splitlines()[-1].startswith("error: unknown model 'model_9'")
    assert "Traceback" not in plain.stderr
    debug = subprocess.run(
        [*command, "--debug"], cwd=prepared_tiny, capture_output=True, text=True, timeout=120
    )
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "fmnist.pipeline.errors.PipelineError: unknown model 'model_9'" in debug.stderr


def test_every_stage_takes_debug(capsys):
    for stage in ("download", "prepare", "train", "evaluate", "compare"):
        with pytest.raises(SystemExit):
            load_stage(stage).main(["--help"])
        assert "--debug" in capsys.readouterr().out


@pytest.mark.parametrize(("text", "ok"), [("3", True), ("0", False), ("-1", False), ("x", False)])
def test_a_positive_integer_option(text, ok):
    import argparse

    if ok:
        assert positive_int_arg(text) == int(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="expected an integer > 0"):
            positive_int_arg(text)


IMPORT_ALL = """
import importlib, json, os, pkgutil, signal, sys, threading
os.umask(0o027)
handlers = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)]
import fmnist.experiments, fmnist.pipeline, fmnist.tools
names = [f"{pkg.__name__}.{m.name}" for pkg in (fmnist.pipeline, fmnist.tools, fmnist.experiments)
         for m in pkgutil.iter_modules(pkg.__path__)]
for name in names:
    importlib.import_module(name)
umask = os.umask(0o027)
print(json.dumps({
    "modules": len(names),
    "umask": umask,
    "signals_kept": [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)] == handlers,
    "pyplot": "matplotlib.pyplot" in sys.modules,
    "threads": threading.active_count(),
    "env": sorted(k for k in os.environ if k not in json.loads(sys.argv[1])),
}))
"""


def test_importing_any_module_changes_nothing_in_the_process():
    # No umask, signal handler, pyplot backend, thread or environment variable set on import:
    # importing a module for one function must not change how the rest of a program runs.
    env = dict(os.environ)
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, json.dumps(sorted(env))],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        env=env,
    ).stdout
    found = json.loads(out)
    assert found["modules"] >= 25
    assert found["umask"] == 0o027
    assert found["signals_kept"]
    assert not found["pyplot"]
    assert found["threads"] == 1
    assert found["env"] == []


COMMANDS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_keeps_the_line_breaks_of_its_description(command, capsys, columns):
    module_name, function = COMMANDS[command].split(":")
    module = importlib.import_module(module_name)
    with pytest.raises(SystemExit) as info:
        getattr(module, function)(["--help"])
    assert info.value.code == 0
    shown = [line.rstrip() for line in capsys.readouterr().out.splitlines()]
    described = [line.rstrip() for line in (module.__doc__ or "").strip().splitlines()]
    assert described and all(line in shown for line in described if line)


@pytest.fixture
def columns(monkeypatch):
    """A terminal of 100 columns, so that argparse wraps what it would wrap for a user."""
    monkeypatch.setenv("COLUMNS", "100")
