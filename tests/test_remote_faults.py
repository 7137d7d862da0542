"""Faults of a real S3 remote: a server killed mid-push and mid-pull, bad credentials, a missing
bucket and an object altered in the store. Nothing corrupt may reach the cache or the workspace.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from fmnist.experiments.remote import s3_client

from .s3_store import BUCKET, REMOTE, URL, Server, corrupt_cache_files
from .test_faults import wait_for
from .workflow_repo import BIN, dvc, git, run, run_unchecked

# Real DVC queues, stores or several processes: `make test-system` (and CI) runs these.
pytestmark = pytest.mark.system

N_FILES, FILE_BYTES = 600, 16 * 1024  # enough objects that a transfer is still going on at a kill
TRANSFER_TIMEOUT_S = 180


def snapshot(folder: Path) -> dict[str, str]:
    """The SHA-256 of every file under `folder`, by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def origin(tmp_path_factory, server) -> Path:
    """A repository tracking N_FILES random files with DVC, its remote committed, not pushed."""
    root = tmp_path_factory.mktemp("faults") / "origin"
    root.mkdir()
    git("init", "-q", "-b", "main", cwd=root)
    git("config", "user.email", "test@example.com", cwd=root)
    git("config", "user.name", "test", cwd=root)
    dvc("init", "-q", cwd=root)
    blobs = root / "blobs"
    blobs.mkdir()
    rng = random.Random(0)
    for i in range(N_FILES):
        (blobs / f"{i:03d}.bin").write_bytes(rng.randbytes(FILE_BYTES))
    dvc("add", "-q", "blobs", cwd=root)
    dvc("remote", "add", "--default", REMOTE, URL, cwd=root)
    dvc("remote", "modify", REMOTE, "endpointurl", server.store.endpoint, cwd=root)
    dvc("remote", "modify", REMOTE, "verify", "true", cwd=root)
    git("add", "-A", cwd=root)
    git("commit", "-q", "-m", "Track blobs", cwd=root)
    return root


def start_dvc(server: Server, args: list[str], cwd: Path) -> subprocess.Popen[str]:
    """Start a DVC command with the store's credentials, in the background."""
    # botocore retries each object against a dead endpoint with growing pauses, which takes
    # minutes over hundreds of objects: one attempt each makes the failure quick.
    env = dict(os.environ, DVC_NO_ANALYTICS="1", AWS_MAX_ATTEMPTS="1", **server.credentials)
    return subprocess.Popen(
        [str(BIN / "dvc"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    """Wait (bounded) for a background command; return its exit status and output."""
    try:
        output, _ = process.communicate(timeout=TRANSFER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"{process.args} still ran after {TRANSFER_TIMEOUT_S} s")
    return process.returncode, output


def objects_on_server(server: Server) -> int:
    """How many cache objects the store holds."""
    return sum(key.startswith("dvc/files/md5/") for key in server.object_keys())


def test_a_push_cut_by_a_server_crash_fails_clearly_and_succeeds_once_it_is_back(origin, server):
    before = snapshot(origin / "blobs")
    push = start_dvc(server, ["push", "-j", "2"], origin)
    try:
        wait_for(server.has_objects, "the push to start")
        server.freeze()  # at once, so that the push cannot finish before the kill
        server.kill()
    finally:
        code, output = finish(push)
        server.ensure_running()
    assert code != 0, output
    assert "failed to push data to the cloud" in output or "Could not connect" in output, output
    assert corrupt_cache_files(origin) == []
    assert snapshot(origin / "blobs") == before

    assert objects_on_server(server) < N_FILES  # the crash did cut the push short
    dvc("push", cwd=origin, env=server.credentials)
    assert objects_on_server(server) == N_FILES + 1  # every file, and the folder's listing


@pytest.fixture(scope="module")
def pushed(origin, server) -> Path:
    """The origin with everything pushed (whatever the push test left)."""
    server.ensure_running()
    dvc("push", cwd=origin, env=server.credentials)
    return origin


def fresh_clone(origin: Path, dest: Path) -> Path:
    """A `git clone` of `origin`: its remote config, but no DVC cache."""
    git("clone", "-q", str(origin), str(dest), cwd=origin.parent)
    return dest


def test_a_pull_cut_by_a_server_crash_leaves_nothing_corrupt_and_succeeds_again(
    pushed, server, tmp_path
):
    clone = fresh_clone(pushed, tmp_path / "clone")
    cache = clone / ".dvc" / "cache" / "files" / "md5"
    pull = start_dvc(server, ["pull", "-j", "2"], clone)
    try:
        wait_for(lambda: any(cache.glob("*/*")), "the pull to start")
        server.freeze()
        server.kill()
    finally:
        code, output = finish(pull)
        server.ensure_running()
    assert code != 0, output
    assert "failed to pull data from the cloud" in output, output
    assert corrupt_cache_files(clone) == []
    # Whatever reached the workspace is right: no partial or foreign file under a blob's name.
    expected = snapshot(pushed / "blobs")
    if (clone / "blobs").exists():
        got = snapshot(clone / "blobs")
        assert len(got) < N_FILES
        assert all(expected[name] == digest for name, digest in got.items())

    dvc("pull", cwd=clone, env=server.credentials)
    assert snapshot(clone / "blobs") == expected
    assert json_status(clone) == {}


def json_status(root: Path) -> dict:
    """`dvc status --json`: empty when the workspace matches what is tracked."""
    return json.loads(dvc("status", "--json", cwd=root))


def remote_check(root: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m fmnist.experiments.remote check` in `root`."""
    command = [sys.executable, "-m", "fmnist.experiments.remote", "check"]
    return run_unchecked(command, root, env, timeout=60)


def test_wrong_credentials_are_refused_with_the_remotes_name(pushed, server, tmp_path):
    clone = fresh_clone(pushed, tmp_path / "clone")
    wrong = {**server.credentials, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    pull = run_unchecked([str(BIN / "dvc"), "pull"], clone, wrong, timeout=TRANSFER_TIMEOUT_S)
    assert pull.returncode != 0
    assert "Forbidden" in pull.stderr + pull.stdout
    assert not (clone / "blobs").exists()

    check = remote_check(clone, wrong)
    assert check.returncode == 1
    assert check.stderr.startswith(f"error: DVC remote '{REMOTE}' ({URL}): the store refused")
    assert "Traceback" not in check.stderr

    assert remote_check(clone, server.credentials).stdout.startswith(
        f"DVC remote '{REMOTE}' ({URL}) is reachable"
    )


def test_a_missing_bucket_is_named(pushed, server, tmp_path):
    clone = fresh_clone(pushed, tmp_path / "clone")
    dvc("remote", "modify", "--local", REMOTE, "url", "s3://no-such-bucket/dvc", cwd=clone)
    pull = run_unchecked([str(BIN / "dvc"), "pull"], clone, server.credentials, timeout=60)
    assert pull.returncode != 0, pull.stdout
    assert "failed to pull data from the cloud" in pull.stderr, pull.stderr
    check = remote_check(clone, server.credentials)
    assert check.returncode == 1
    assert f"DVC remote '{REMOTE}' (s3://no-such-bucket/dvc): bucket 'no-such-bucket'" in (
        check.stderr
    )


def test_an_object_altered_in_the_store_is_never_checked_out(pushed, server, tmp_path):
    client = s3_client(server.store)
    victim = next(key for key in server.object_keys() if not key.endswith(".dir"))
    original = client.get_object(Bucket=BUCKET, Key=victim)["Body"].read()
    client.put_object(Bucket=BUCKET, Key=victim, Body=b"tampered with")
    try:
        clone = fresh_clone(pushed, tmp_path / "clone")
        pull = run_unchecked(
            [str(BIN / "dvc"), "pull"], clone, server.credentials, timeout=TRANSFER_TIMEOUT_S
        )
        assert pull.returncode != 0
        assert corrupt_cache_files(clone) == []
        expected = snapshot(pushed / "blobs")
        got = snapshot(clone / "blobs") if (clone / "blobs").exists() else {}
        assert all(expected[name] == digest for name, digest in got.items())
        assert len(got) < N_FILES
    finally:
        client.put_object(Bucket=BUCKET, Key=victim, Body=original)
    run([str(BIN / "dvc"), "pull"], clone, server.credentials)
    assert snapshot(clone / "blobs") == expected


def test_a_directory_remote_is_checked_created_by_the_first_push_and_pulled(origin, tmp_path):
    clone = fresh_clone(origin, tmp_path / "clone")
    folder = tmp_path / "shared-disk" / "fmnist-dvc"
    for root in (origin, clone):
        dvc("remote", "add", "--local", "--force", "--default", "disk", str(folder), cwd=root)
    try:
        check = remote_check(clone, {})
        assert check.returncode == 0, check.stderr
        assert check.stdout.startswith("DVC remote 'disk'") and "and empty" in check.stdout
        dvc("push", cwd=origin)
        dvc("pull", cwd=clone)
        assert snapshot(clone / "blobs") == snapshot(origin / "blobs")
    finally:
        dvc("remote", "remove", "--local", "disk", cwd=origin)
