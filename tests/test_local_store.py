"""`fmnist-remote start/stop` on a real SeaweedFS: it signals only its own server, never hides a
team's default remote, and keeps its credentials out of other users' reach and out of messages."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fmnist.pipeline.processes import Owned, kill_all, spawn, stop_group
from fmnist.tools import remote

from .conftest import ROOT
from .workflow_repo import dvc, git

SLEEP = [sys.executable, "-c", "import time; time.sleep(300)"]
TEAM = "team"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Iterator[Path]:
    """A DVC repository whose committed default remote is the team's, as the current folder."""
    git("init", "-q", "-b", "main", cwd=tmp_path)
    dvc("init", "-q", cwd=tmp_path)
    dvc("remote", "add", "--default", TEAM, "s3://team-bucket/dvc", cwd=tmp_path)
    monkeypatch.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        store = remote.load_store(remote.STORE_DIR)
        server = remote.running_server(store) if store else None
        if server is not None:  # whatever the test did, the store stops
            server.stop()
        # And any server of this folder that a failing test left unrecorded: its -dir names it.
        kill_all(
            o.pid
            for o in (Owned.of(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit())
            if o is not None
            and o.cmdline[:2] == (remote.weed_binary(), "server")
            and any(str(tmp_path) in part for part in o.cmdline)
        )


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    """An unrelated process, which no store command may touch."""
    process = spawn(SLEEP)
    try:
        yield process
    finally:
        stop_group(process)


def test_a_stale_pid_file_is_removed_and_its_process_left_alone(repo, sleeper, capsys):
    store = remote.new_store(remote.STORE_DIR)
    for content in (f"{sleeper.pid}\n", None):  # an old bare pid, then the sleeper's identity
        if content is None:
            Owned.of(sleeper.pid).save(store.pid_file)  # pid and start time right, not weed
        else:
            store.pid_file.write_text(content)
        assert remote.stop() is False
        assert "removed the stale pid file" in capsys.readouterr().err
        assert sleeper.poll() is None and not store.pid_file.exists()

    store.pid_file.write_text(f"{sleeper.pid}\n")
    started = remote.start()
    assert "removed the stale pid file" in capsys.readouterr().err
    server = remote.running_server(started)
    assert server is not None and server.pid != sleeper.pid
    assert remote.check_remote(remote.REMOTE_NAME).endswith("is reachable")
    assert remote.which() == remote.REMOTE_NAME
    started.pid_file.write_text(f"{server.pid}\n")  # an older version's bare pid: still ours
    assert remote.running_server(started) == server

    assert remote.stop() is True
    assert not server.running() and sleeper.poll() is None
    assert remote.which() is None


def test_the_store_is_a_named_remote_and_the_teams_default_stays(repo):
    remote.start()
    default = dvc("remote", "default", cwd=repo).strip()
    assert default == TEAM
    listed = dvc("remote", "list", cwd=repo)
    assert remote.REMOTE_NAME in listed and TEAM in listed
    remote.stop()
    # An older version made the store the --local default: a start undoes that.
    dvc("remote", "default", "--local", remote.REMOTE_NAME, cwd=repo)
    remote.start()
    assert dvc("remote", "default", cwd=repo).strip() == TEAM


def test_every_file_holding_the_secret_is_0600_and_no_argv_or_message_shows_it(
    repo, monkeypatch, capsys
):
    commands: list[list[str]] = []
    real_popen = subprocess.Popen

    def recording_popen(args, *rest, **kwargs):
        commands.append([str(arg) for arg in args])
        return real_popen(args, *rest, **kwargs)

    (repo / ".dvc" / "config.local").write_text("")  # an existing file, made by the umask
    (repo / ".dvc" / "config.local").chmod(0o644)
    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    store = remote.start()
    monkeypatch.setattr(subprocess, "Popen", real_popen)
    secret = store.secret_key
    assert commands and not any(secret in arg for cmd in commands for arg in cmd)

    files = [path for path in (repo / ".storage").rglob("*") if path.is_file()]
    holding = [path for path in files if secret.encode() in path.read_bytes()]
    local = repo / ".dvc" / "config.local"
    assert secret in local.read_text() and secret not in (repo / ".dvc" / "config").read_text()
    assert sorted(p.name for p in holding) == ["s3.json", "store.json"]
    for path in [*holding, local]:
        assert mode(path) == 0o600, path
    assert mode(repo / ".storage") == 0o700

    # A remote command that fails (the store is down) says why, without the secret.
    remote.stop()
    capsys.readouterr()
    result = subprocess.run(
        [sys.executable, "-m", "fmnist.tools.remote", "check", remote.REMOTE_NAME],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "cannot connect" in result.stderr
    assert secret not in result.stdout + result.stderr


def test_the_secret_files_are_0600_from_the_first_byte(tmp_path, monkeypatch):
    # store.json and s3.json: each file is 0600 when it is created, before a byte is written.
    made: list[tuple[str, int]] = []
    real_open = remote.os.open

    def watching_open(path, flags, mode=0o777, *args, **kwargs):
        fd = real_open(path, flags, mode, *args, **kwargs)
        if flags & remote.os.O_CREAT:
            made.append((str(path), stat.S_IMODE(remote.os.fstat(fd).st_mode)))
        return fd

    monkeypatch.setattr(remote.os, "open", watching_open)
    remote.new_store(tmp_path / "store")
    assert len(made) == 2 and all(mode == 0o600 for _, mode in made), made


def test_a_tests_store_dies_with_the_process_that_started_it(tmp_path):
    # Even when the test run is killed outright, before any teardown.
    script = (
        "import sys, time\n"
        "from tests.s3_store import Server\n"
        "server = Server(__import__('pathlib').Path(sys.argv[1]))\n"
        "server.start()\n"
        "print(server.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    starter = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "store")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pid = int(starter.stdout.readline())
        assert psutil.pid_exists(pid)
        starter.kill()
        starter.wait(timeout=10)
        deadline = time.monotonic() + 10
        while psutil.pid_exists(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not psutil.pid_exists(pid), "the store outlived the process that started it"
    finally:
        starter.kill()
        starter.wait()
