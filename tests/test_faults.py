"""Killed runs: a stage stopped by a signal while downloading, training or saving leaves no
truncated output under an output's name, and no temporary file that outlives the next write."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from fmnist.pipeline.atomic import remove_stale_temps, write_text
from fmnist.pipeline.download import CHUNK
from fmnist.pipeline.training import HISTORY_FIELDS, STEP_FIELDS

from . import faulty_http
from .conftest import ROOT, load_stage, tiny_params, write_params

SIGNALS = [signal.SIGKILL, signal.SIGTERM, signal.SIGINT]
BIG = "train-images-idx3-ubyte"


@pytest.fixture(autouse=True)
def children_receive_sigint():
    """Let child processes see SIGINT even when the suite runs as a background job.

    A shell starts background jobs with SIGINT ignored, and children inherit an ignored signal
    across exec, so a Ctrl-C test would wait for nothing. A handled signal is reset instead.
    """
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*.tmp") if p.is_file()]


def kill(proc: subprocess.Popen, sig: signal.Signals) -> int:
    """Send `sig` to a child that must still be running, and return its exit status."""
    assert proc.poll() is None, "the child finished before it could be killed"
    proc.send_signal(sig)
    return proc.wait(timeout=30)


def killed_by(status: int, sig: signal.Signals) -> bool:
    """SIGKILL ends a process outright; SIGTERM and SIGINT end it through Python's handlers."""
    if sig == signal.SIGKILL:
        return status == -signal.SIGKILL
    return status != 0


# --- The atomic writer itself ------------------------------------------------------------------

SLOW_WRITER = textwrap.dedent(
    """
    import sys, time
    from fmnist.pipeline.atomic import atomic_open
    with atomic_open(sys.argv[1], "wb") as handle:
        handle.write(b"n" * 1_000_000)
        handle.flush()
        print("writing", flush=True)
        time.sleep(60)
    """
)


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_writer_killed_mid_write_leaves_the_old_file_intact(tmp_path, sig):
    target = tmp_path / "out" / "model.pth"
    target.parent.mkdir()
    target.write_bytes(b"old complete content")
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(target)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline() == "writing\n"
    assert len(temp_files(target.parent)) == 1  # the new content is being written beside it
    status = kill(proc, sig)
    assert killed_by(status, sig)
    if sig == signal.SIGTERM:
        assert status == 128 + signal.SIGTERM  # exited through SystemExit, not died
    assert target.read_bytes() == b"old complete content"
    leftovers = temp_files(target.parent)
    if sig == signal.SIGKILL:
        # Nothing can run on SIGKILL: the temporary file stays until the target's next write.
        assert len(leftovers) == 1
        write_text(target, "new")
        assert [p.name for p in target.parent.iterdir()] == ["model.pth"]
    else:
        assert leftovers == []


def test_the_sweep_spares_other_files(tmp_path):
    stale = [tmp_path / ".a.pth.abcd_123.tmp", tmp_path / ".b.json.zz99zz99.tmp"]
    kept = [tmp_path / "a.pth", tmp_path / "x.tmp", tmp_path / ".a.pth.short.tmp"]
    for path in stale + kept:
        path.write_text("")
    assert remove_stale_temps(tmp_path, "b.json") == [stale[1]]
    assert sorted(remove_stale_temps(tmp_path)) == [stale[0]]
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def test_sigterm_handling_is_only_in_place_while_writing(tmp_path):
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    write_text(tmp_path / "x.txt", "x")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# --- The download stage, killed while a mirror dribbles a file in --------------------------------


@pytest.fixture(scope="module")
def big_file() -> bytes:
    """More than one read chunk of content, so the stage is killed with part of it on disk."""
    return np.random.default_rng(0).integers(0, 256, 3 * CHUNK, dtype=np.uint8).tobytes()


def _download_params(project: Path, tiny_data, big: bytes, sources: list[str]) -> None:
    params = tiny_params(tiny_data)
    params["data"]["sources"] = sources
    params["data"]["sha256"][BIG] = hashlib.sha256(big).hexdigest()
    write_params(project / "params.yaml", params)


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_download_stage_killed_mid_file_leaves_nothing_partial(tmp_path, tiny_data, big_file, sig):
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    routes = {
        f"/slow/{BIG}.gz": faulty_http.dribble(big_file, fast=CHUNK + CHUNK // 2, interval_s=0.05),
        f"/fast/{BIG}.gz": faulty_http.serve(big_file),
    }
    with faulty_http.faulty_server(routes) as server:
        _download_params(tmp_path, tiny_data, big_file, [f"{server}slow/"])
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "stages" / "download.py")],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_for(
            lambda: any(p.stat().st_size >= CHUNK for p in temp_files(tmp_path)),
            "the first megabyte on disk",
        )
        status = kill(proc, sig)
        assert killed_by(status, sig)
        stderr = proc.stderr.read().decode()
        proc.stderr.close()
        assert "Traceback" not in stderr or sig == signal.SIGINT

        # No file under its final name: the one being written was still a temporary file.
        assert [p for p in raw.iterdir() if not p.name.startswith(".")] == []
        assert len(temp_files(raw)) == (1 if sig == signal.SIGKILL else 0)

        # The next run sweeps the stale temporary file and completes the folder.
        _download_params(tmp_path, tiny_data, big_file, [f"{server}fast/", str(tiny_data.source)])
        subprocess.run(
            [sys.executable, str(ROOT / "stages" / "download.py")],
            cwd=tmp_path,
            check=True,
            capture_output=True,
        )
    assert sorted(p.name for p in raw.iterdir()) == sorted(tiny_data.raw)
    assert (raw / BIG).read_bytes() == big_file


# --- The train stage, killed while training and while saving -------------------------------------


@pytest.fixture
def project(tmp_path, prepared_tiny) -> Path:
    shutil.copytree(prepared_tiny, tmp_path, dirs_exist_ok=True)
    return tmp_path


def outputs(project: Path) -> dict[str, bytes]:
    """The weights, sidecars and timings the train stage writes, with their bytes."""
    # Not the curves: they are rewritten after every epoch (whole_curves checks them).
    found = {}
    for folder in ("models", "timings"):
        for path in sorted((project / folder).rglob("*")):
            if path.is_file() and path not in temp_files(project):
                found[str(path.relative_to(project))] = path.read_bytes()
    return found


def whole_curves(project: Path) -> None:
    """Fail unless every curve file the stage left holds whole rows under its header."""
    for folder, header in (("plots/train", HISTORY_FIELDS), ("plots/steps", STEP_FIELDS)):
        for path in (project / folder).glob("*.csv"):
            rows = path.read_text().splitlines()
            assert rows[0] == ",".join(header), path
            assert all(len(row.split(",")) == len(header) for row in rows[1:]), path


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=lambda s: s.name)
def test_train_stage_killed_while_training_writes_nothing(project, tiny_data, sig):
    write_params(project / "params.yaml", tiny_params(tiny_data, model_2={"epochs": 1000}))
    before = outputs(project)
    log = project / "train.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "stages" / "train.py"), "--model", "model_2"],
            cwd=project,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        wait_for(lambda: "training model_2" in log.read_text(), "training to start")
        time.sleep(0.5)
        assert killed_by(kill(proc, sig), sig)
    assert outputs(project) == before
    whole_curves(project)
    left = temp_files(project)
    if sig == signal.SIGKILL:  # a kill mid-way through rewriting a curve leaves its temporary
        left = [path for path in left if not path.name.startswith(".model_2.csv.")]
    assert left == []


# In the child, torch.save (which save_checkpoint calls with the temporary file open) writes the
# whole archive, then pauses: the test kills the real train stage at that moment.
PAUSE_WHILE_SAVING = textwrap.dedent(
    """
    import importlib.util, sys, time
    import torch
    real_save = torch.save
    def save_then_pause(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.flush()
        print("saving", flush=True)
        time.sleep(60)
    torch.save = save_then_pause
    spec = importlib.util.spec_from_file_location("train", sys.argv[1])
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    stage.main(["--model", "model_0"])
    """
)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=lambda s: s.name)
def test_train_stage_killed_while_saving_leaves_no_truncated_weights(project, sig):
    before = outputs(project)
    proc = subprocess.Popen(
        [sys.executable, "-c", PAUSE_WHILE_SAVING, str(ROOT / "stages" / "train.py")],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout.readline() == "saving\n"
    models = project / "models"
    (tmp,) = temp_files(models)
    assert tmp.name.startswith(".model_0.pth.") and tmp.stat().st_size > 0
    assert killed_by(kill(proc, sig), sig)
    proc.stdout.close()
    assert outputs(project) == before  # no model_0.pth, sidecar or timing
    whole_curves(project)
    if sig == signal.SIGKILL:
        assert temp_files(project) == [tmp]
        write_text(models / "model_0.pth", "the next save of the same file")
        assert temp_files(project) == []
    else:
        assert temp_files(project) == []


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 1 MB tmpfs of this test's own (root only), unmounted whatever happens."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)])
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_during_the_save_is_one_line_and_the_old_weights_stay(
    project, small_disk, capsys, monkeypatch
):
    monkeypatch.chdir(project)
    load_stage("train").main(["--model", "model_0"])
    old = {p.name: p.read_bytes() for p in (project / "models").iterdir()}
    # The models folder moves to the small disk, which is then filled to its last 4 KB.
    shutil.copytree(project / "models", small_disk / "models")
    shutil.rmtree(project / "models")
    (project / "models").symlink_to(small_disk / "models")
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * (free - 4096))
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["models"]["model_0"]["lr"] = 0.05  # other weights, so that a write is needed
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        load_stage("train").main(["--model", "model_0"])
    assert exit_info.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(err) == 1 and err[0].startswith("error: models/model_0.pth: no space left"), err
    assert "free); the file was not changed" in err[0]
    assert {p.name: p.read_bytes() for p in (project / "models").iterdir()} == old
