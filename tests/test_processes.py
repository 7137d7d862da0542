"""The process helper every launcher uses: children die with their starter, even by SIGKILL, and
a recorded pid is signalled only while it is still the process that was recorded."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from fmnist.pipeline.processes import Owned, kill_all, spawn, stop_group, tagged

from .test_faults import wait_for

SLEEP = [sys.executable, "-c", "import time; time.sleep(300)"]


def alive(pid: int) -> bool:
    owned = Owned.of(pid)
    return owned is not None


def test_a_spawned_child_dies_when_its_starter_is_killed(tmp_path):
    # The starter spawns a child through the helper, prints its pid, then waits; SIGKILL it.
    script = (
        "import sys, time\n"
        "from fmnist.pipeline.processes import spawn\n"
        f"child = spawn({SLEEP!r})\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    starter = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child = int(starter.stdout.readline())
        assert alive(child)
        starter.kill()
        starter.wait(timeout=10)
        wait_for(lambda: not alive(child), "the orphan to die", timeout_s=5)
    finally:
        starter.kill()
        starter.wait(timeout=10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_a_tied_stage_dies_with_the_starter_of_the_shell_that_runs_it(sig):
    # As DVC runs a stage where $SHELL is unset: `sh -c CMD`, and a shell that stays the stage's
    # parent (dash does; `; true` makes any shell stay). Killing DVC leaves the shell alive.
    stage = (
        "from fmnist.pipeline.processes import tie_to_parent; import os, time; "
        "tie_to_parent(); print(os.getpid(), flush=True); time.sleep(300)"
    )
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(stage)}; true"
    dvc = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen(['/bin/sh', '-c', {command!r}])\n"
        "time.sleep(300)\n"
    )
    starter = subprocess.Popen([sys.executable, "-c", dvc], stdout=subprocess.PIPE, text=True)
    try:
        child = int(starter.stdout.readline())
        assert alive(child)
        starter.send_signal(sig)
        starter.wait(timeout=10)
        wait_for(lambda: not alive(child), "the stage to die with its starter", timeout_s=5)
    finally:
        starter.kill()
        starter.wait(timeout=10)


def test_stop_group_ends_the_child_and_what_it_started():
    script = f"import subprocess, time; subprocess.Popen({SLEEP!r}); time.sleep(300)"
    proc = spawn([sys.executable, "-c", script])
    wait_for(lambda: len(_group(proc.pid)) == 2, "the grandchild to start")
    members = _group(proc.pid)
    assert stop_group(proc, grace=2) == -signal.SIGTERM
    wait_for(lambda: not any(alive(pid) for pid in members), "the group to end", timeout_s=5)


def _group(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid and alive(int(entry)):
                    found.append(int(entry))
            except ProcessLookupError:
                pass
    return found


def test_an_owned_identity_is_not_fooled_by_a_reused_pid(tmp_path):
    proc = subprocess.Popen(SLEEP)
    try:
        # Read right after the fork, the command line can be empty until exec: wait for it.
        wait_for(lambda: bool(Owned.of(proc.pid).cmdline), "the child to exec")
        me = Owned.of(proc.pid)
        me.save(tmp_path / "pid.json")
        assert Owned.load(tmp_path / "pid.json") == me and me.running()
        # The same pid with another start time or command line is another process.
        for other in (
            Owned(me.pid, me.start_ticks + 1, me.cmdline),
            Owned(me.pid, me.start_ticks, ("weed", "server")),
        ):
            assert not other.running()
            assert other.signal(signal.SIGKILL) is False
            assert other.stop() is False
        assert proc.poll() is None  # untouched
        assert me.stop(grace=2) is True
        assert proc.wait(timeout=5) == -signal.SIGTERM
        assert not me.running()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("content", ["", "1234\n", "{not json", '{"pid": 1}'])
def test_a_damaged_or_old_pid_file_names_no_process(tmp_path, content):
    (tmp_path / "pid.json").write_text(content)
    assert Owned.load(tmp_path / "pid.json") is None
    assert Owned.load(tmp_path / "missing.json") is None


def test_processes_are_found_by_their_tag_and_killed_even_when_they_ignore_sigterm():
    tag = uuid.uuid4().hex
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
    env = {**os.environ, "FMNIST_TEST_TAG": tag}
    procs = [
        subprocess.Popen(SLEEP, env=env),
        subprocess.Popen([sys.executable, "-c", stubborn], env=env),
    ]
    bystander = subprocess.Popen(SLEEP)
    try:
        time.sleep(0.5)  # let the stubborn one install its handler
        assert sorted(tagged("FMNIST_TEST_TAG", tag)) == sorted(p.pid for p in procs)
        assert kill_all(tagged("FMNIST_TEST_TAG", tag), grace=1) == []
        assert [p.wait(timeout=5) for p in procs] == [-signal.SIGTERM, -signal.SIGKILL]
        assert bystander.poll() is None
    finally:
        for p in [*procs, bystander]:
            p.kill()
            p.wait()


def _start_with_pid(pid: int, argv: list[str], attempts: int = 50) -> subprocess.Popen | None:
    """Start `argv` under the number `pid` (root only: the kernel's next-pid knob), or None."""
    knob = "/proc/sys/kernel/ns_last_pid"
    for _ in range(attempts):
        try:
            with open(knob, "w") as handle:
                handle.write(str(pid - 1))
        except OSError:
            return None
        proc = subprocess.Popen(argv, start_new_session=True)
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="reusing a pid on purpose needs root")
def test_a_process_that_took_a_reaped_childs_pid_survives_the_childs_stop():
    child = spawn([sys.executable, "-c", "pass"])
    child.wait()  # reaped, as a rank that failed is reaped before the group is stopped
    sleeper = _start_with_pid(child.pid, ["sleep", "30"])
    if sleeper is None:
        pytest.skip("another process took the pid first")
    try:
        assert stop_group(child) == 0
        time.sleep(0.2)
        assert sleeper.poll() is None, "the process that reused the pid was signalled"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_command_line_that_is_not_utf8_is_read_and_its_process_stopped():
    tag = f"FMNIST_TEST_TAG_{uuid.uuid4().hex}"
    argv = [sys.executable, "-c", "import time; time.sleep(30)", b"\xff\xfe-not-utf8"]
    proc = subprocess.Popen(argv, env={**os.environ, tag: "1"})
    try:
        wait_for(
            lambda: Owned.of(proc.pid) is not None and len(Owned.of(proc.pid).cmdline) == 4,
            "the child to exec",
        )
        assert Owned.of(proc.pid).cmdline[-1] == os.fsdecode(b"\xff\xfe-not-utf8")
        assert kill_all(tagged(tag, "1"), grace=1) == []
        assert proc.wait(timeout=10) != 0
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root, setpriv")
def test_another_users_process_with_the_tag_is_not_ours():
    tag = f"FMNIST_TEST_TAG_{uuid.uuid4().hex}"
    other = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "30"],
        env={**os.environ, tag: "1"},
    )
    mine = subprocess.Popen(["sleep", "30"], env={**os.environ, tag: "1"})
    try:
        # Until exec, a child's environment is its parent's: wait for both to carry the tag.
        for proc in (other, mine):
            wait_for(
                lambda proc=proc: (
                    Owned.of(proc.pid) is not None and Owned.of(proc.pid).cmdline[:1] == ("sleep",)
                ),
                "the children to exec",
            )
        assert tagged(tag, "1") == [mine.pid]
        assert kill_all(tagged(tag, "1"), grace=1) == []
        assert other.poll() is None  # neither waited for nor signalled
    finally:
        for proc in (other, mine):
            proc.kill()
            proc.wait()
