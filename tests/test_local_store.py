"""`fmnist-remote start/stop` on a real SeaweedFS: it signals only its own server, never hides a
team's default remote, and keeps its credentials out of other users' reach and out of messages."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fmnist.experiments import remote
from fmnist.pipeline.errors import PipelineError
from fmnist.pipeline.processes import Owned, kill_all, spawn, stop_group

from .conftest import ROOT
from .workflow_repo import dvc, git

# Real DVC queues, stores or several processes: `make test-system` (and CI) runs these.
pytestmark = pytest.mark.system

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
        [sys.executable, "-m", "fmnist.experiments.remote", "check", remote.REMOTE_NAME],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "cannot connect" in result.stderr
    assert secret not in result.stdout + result.stderr


def test_the_secret_files_are_0600_from_the_first_byte(tmp_path, monkeypatch):
    # store.json, s3.json and the TLS key and certificates: each file is 0600 when it is
    # created, before a byte is written.
    made: list[tuple[str, int]] = []
    real_open = remote.os.open

    def watching_open(path, flags, mode=0o777, *args, **kwargs):
        fd = real_open(path, flags, mode, *args, **kwargs)
        if flags & remote.os.O_CREAT:
            made.append((str(path), stat.S_IMODE(remote.os.fstat(fd).st_mode)))
        return fd

    monkeypatch.setattr(remote.os, "open", watching_open)
    remote.new_store(tmp_path / "store")
    assert len(made) == 5 and all(mode == 0o600 for _, mode in made), made


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


def _as_nobody(*command: str) -> subprocess.CompletedProcess[str]:
    """Run `command` as the unprivileged user `nobody`, as a hostile local user would."""
    who = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    return subprocess.run([*who, *command], capture_output=True, text=True, timeout=30)


def _http_status(*curl: str) -> str:
    """The HTTP status curl gets as `nobody` (000: no HTTP answer at all)."""
    done = _as_nobody("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5", *curl)
    return done.stdout.strip() or "000"


@pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("setpriv") and shutil.which("curl")),
    reason="needs root, setpriv and curl to act as another local user",
)
def test_no_port_but_s3_with_its_credentials_serves_another_local_user(repo):
    store = remote.start()
    client = remote.s3_client(store)
    key = "dvc/files/md5/0a/bcdef"
    client.put_object(Bucket=remote.BUCKET, Key=key, Body=b"the team's object")
    p, host = store.ports, f"http://{remote.HOST}"
    refused = {
        "filer list": _http_status(f"{host}:{p['filer']}/buckets/{remote.BUCKET}/dvc/"),
        "filer read": _http_status(f"{host}:{p['filer']}/buckets/{remote.BUCKET}/{key}"),
        "filer write": _http_status(
            "-F", "file=@/etc/hostname", f"{host}:{p['filer']}/buckets/{remote.BUCKET}/{key}"
        ),
        "master delete": _http_status(
            f"{host}:{p['master']}/col/delete?collection={remote.BUCKET}"
        ),
        "master assign": _http_status(f"{host}:{p['master']}/dir/assign"),
        "volume write": _http_status(
            "-F", "file=@/etc/hostname", f"{host}:{p['volume']}/1,01637037d6"
        ),
        "volume read": _http_status(f"{host}:{p['volume']}/1,01637037d6"),
        "s3 without credentials": _http_status(f"{host}:{p['s3']}/{remote.BUCKET}/{key}"),
    }
    for name in ("master_grpc", "volume_grpc", "filer_grpc", "s3_grpc"):
        grpc = f"{remote.HOST}:{p[name]}/filer_pb.SeaweedFiler/ListEntries"
        refused[f"{name} plain"] = _http_status("--http2-prior-knowledge", f"http://{grpc}")
        refused[f"{name} tls"] = _http_status("-k", "--http2", f"https://{grpc}")
    assert not [what for what, code in refused.items() if code.startswith("2")], refused
    # What the owner keeps: the object as it was, through S3 with the credentials.
    body = client.get_object(Bucket=remote.BUCKET, Key=key)["Body"].read()
    assert body == b"the team's object"
    assert stat.S_IMODE(store.tls_dir.stat().st_mode) == 0o700
    assert mode(store.tls_dir / "store.key") == 0o600


def test_a_forged_object_in_the_store_is_refused_by_dvc_pull(repo):
    (repo / "data.txt").write_text("the real content\n")
    dvc("add", "data.txt", cwd=repo)
    store = remote.start()
    assert "verify = True" in (repo / ".dvc" / "config.local").read_text()
    dvc("push", "-r", remote.REMOTE_NAME, "data.txt", cwd=repo)
    digest = yaml_md5(repo / "data.txt.dvc")
    remote.s3_client(store).put_object(
        Bucket=remote.BUCKET, Key=f"dvc/files/md5/{digest[:2]}/{digest[2:]}", Body=b"forged\n"
    )
    (repo / "data.txt").unlink()
    dvc("cache", "dir", cwd=repo)
    shutil.rmtree(repo / ".dvc" / "cache")
    pulled = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "pull", "-r", remote.REMOTE_NAME, "data.txt"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pulled.returncode != 0, pulled.stdout + pulled.stderr
    assert not (repo / "data.txt").exists() or (repo / "data.txt").read_text() != "forged\n"


def yaml_md5(path: Path) -> str:
    """The md5 a .dvc file records for its one output."""
    import yaml

    return yaml.safe_load(path.read_text())["outs"][0]["md5"]


def test_stop_is_graceful_and_leaves_no_socket_files(repo, monkeypatch):
    store = remote.start()
    sent: list[int] = []
    real_signal = Owned.signal

    def recording(self, sig):
        sent.append(sig)
        return real_signal(self, sig)

    monkeypatch.setattr(Owned, "signal", recording)
    assert remote.stop()
    assert sent == [remote.signal.SIGTERM]  # weed ended on its own, within the grace
    ports = {str(port) for port in store.ports.values()}
    left = [s for s in Path("/tmp").glob("seaweedfs-*.sock") if s.stem.rsplit("-", 1)[-1] in ports]
    assert left == []


def test_a_damaged_store_record_is_one_line_saying_how_to_recover(tmp_path):
    store = remote.new_store(tmp_path / "store")
    text = store.state_file.read_text()
    for damaged in (text[: len(text) // 2], text.replace('"ports"', '"ports", "colour": 1, "x"')):
        store.state_file.write_text(damaged)
        with pytest.raises(PipelineError, match=r"store\.json is damaged .*remove .*make storage"):
            remote.load_store(store.root)
