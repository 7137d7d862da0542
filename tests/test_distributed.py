"""Data-parallel training: two gloo processes on CPU train each architecture as one process does,
listen on loopback only, and die with their stage; a rank that dies takes the stage down cleanly."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch

from fmnist.pipeline.engine import Shard

from .conftest import ROOT, load_stage, tiny_params, write_params
from .test_faults import temp_files, wait_for

# Real DVC queues, stores or several processes: `make test-system` (and CI) runs these.
pytestmark = pytest.mark.system

MODELS = ("model_0", "model_1", "model_2")  # linear, linear_relu, tinyvgg
# Batches of 7 split 4 + 3 between two ranks, and the last batch (240 % 7 = 2) splits 1 + 1: the
# loss weighting must make unequal slices average to the global batch's mean.
BATCH = 7
# Float32 rounding, not equality: one process sums each batch's gradient in one order, two
# processes sum half-batches and then DDP adds the halves, so each step's gradient differs in
# its last bits (float32's epsilon is 1.2e-7). Over the 2 x 35 steps of SGD at lr 0.1 those
# differences add up to a few 1e-7 on weights of order 0.1-1 (3e-8 measured for TinyVGG). A real
# error, such as averaging slice means instead of weighting them, moves weights by 1e-3 or more.
ATOL, RTOL = 1e-6, 1e-5


@pytest.fixture
def project(tmp_path: Path, prepared_tiny: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(prepared_tiny, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@contextlib.contextmanager
def stage(project: Path, model: str, log: Path) -> Iterator[subprocess.Popen]:
    """Run the train stage as DVC does, in its own session; kill all it started on the way out."""
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "stages" / "train.py"), "--model", model],
            cwd=project,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
        tree: list[psutil.Process] = []
        try:
            yield proc
        finally:
            with contextlib.suppress(psutil.NoSuchProcess):
                tree = psutil.Process(proc.pid).children(recursive=True)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            for leftover in tree:  # ranks run in sessions of their own
                with contextlib.suppress(psutil.NoSuchProcess):
                    leftover.kill()
            proc.wait(timeout=30)


def ranks_of(proc: subprocess.Popen) -> dict[str, psutil.Process]:
    """The stage's training processes by rank, once both have started."""
    return {
        p.environ()["RANK"]: p
        for p in psutil.Process(proc.pid).children(recursive=True)
        if "RANK" in p.environ()
    }


def long_two_process_training(project: Path, tiny_data) -> None:
    """Params for model_2 in 2 processes with epochs enough to still be training when checked."""
    params = tiny_params(tiny_data, model_2={"epochs": 1000})
    params["runtime"]["processes"] = 2
    write_params(project / "params.yaml", params)


def outputs(project: Path) -> dict[str, bytes]:
    """Every file under models/ and plots/, with its bytes."""
    return {
        str(path.relative_to(project)): path.read_bytes()
        for folder in ("models", "plots")
        for path in sorted((project / folder).rglob("*"))
        if path.is_file()
    }


def assert_kept(project: Path, before: dict[str, bytes], model: str) -> None:
    """The weights and sidecar are the earlier run's; the curves, rewritten after each epoch
    while training runs, hold whole rows only; no temporary file is left."""
    after = outputs(project)
    assert {k: v for k, v in after.items() if not k.startswith("plots/")} == {
        k: v for k, v in before.items() if not k.startswith("plots/")
    }
    assert curves(project, model)  # parses: every row complete
    assert temp_files(project) == []


def curves(project: Path, model: str) -> list[dict[str, float]]:
    with open(project / "plots" / "train" / f"{model}.csv") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def test_a_batch_is_split_into_contiguous_slices_that_differ_by_at_most_one():
    batch = torch.arange(7)
    slices = [Shard(rank, 2).split(batch) for rank in range(2)]
    assert [s.tolist() for s in slices] == [[0, 1, 2, 3], [4, 5, 6]]
    assert [len(Shard(r, 3).split(torch.arange(2))) for r in range(3)] == [1, 1, 0]


@pytest.mark.parametrize("model", MODELS)
def test_two_gloo_processes_train_as_one_process_does(project, tiny_data, model):
    settings = {"batch_size": BATCH, "epochs": 2}
    params = tiny_params(tiny_data, **{model: settings})
    write_params(project / "params.yaml", params)
    load_stage("train").main(["--model", model])
    one = torch.load(project / "models" / f"{model}.pth", weights_only=True)
    one_curves = curves(project, model)

    params["runtime"]["processes"] = 2
    write_params(project / "params.yaml", params)
    log = project / "train.log"
    with stage(project, model, log) as proc:
        assert proc.wait(timeout=120) == 0, log.read_text()
    two = torch.load(project / "models" / f"{model}.pth", weights_only=True)
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=ATOL, rtol=RTOL)
    two_curves = curves(project, model)
    for a, b in zip(one_curves, two_curves, strict=True):
        assert b["test_accuracy"] == a["test_accuracy"]
        assert b["train_accuracy"] == a["train_accuracy"]
        # The losses, written with 6 decimals, inherit the weights' relative differences.
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-5)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    assert json.loads((project / "models" / f"{model}.json").read_text())["processes"] == 2
    assert temp_files(project) == []
    # One rank told the story: the per-epoch lines appear once.
    assert log.read_text().count(f"{model} epoch 2:") == 1


def test_killing_one_rank_fails_the_stage_stops_the_other_and_writes_nothing(project, tiny_data):
    write_params(project / "params.yaml", tiny_params(tiny_data))
    load_stage("train").main(["--model", "model_2"])  # earlier outputs, which must survive
    before = outputs(project)
    assert "models/model_2.pth" in before and "plots/train/model_2.csv" in before
    long_two_process_training(project, tiny_data)
    log = project / "train.log"
    with stage(project, "model_2", log) as proc:
        wait_for(lambda: "epoch 1/1000" in log.read_text(), "training to start")
        ranks = ranks_of(proc)
        assert sorted(ranks) == ["0", "1"]
        ranks["1"].send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == 1
        _, alive = psutil.wait_procs(list(ranks.values()), timeout=30)
        assert alive == []
    stderr = log.read_text()
    assert "error: rank 1 of 2 was killed by SIGKILL" in stderr
    assert "Traceback" not in stderr  # rank 0's lost connection is one line too
    assert_kept(project, before, "model_2")


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def test_a_two_process_training_listens_on_loopback_only(project, tiny_data):
    # What listens while the ranks train, seen as the kernel's socket tables (/proc/net/tcp and
    # tcp6, which psutil reads) show it for every process of the stage.
    long_two_process_training(project, tiny_data)
    log = project / "train.log"
    with stage(project, "model_2", log) as proc:
        wait_for(lambda: "epoch 1/1000" in log.read_text(), "training to start")
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        assert len(ranks_of(proc)) == 2
        listening = [
            (p.pid, c.laddr.ip, c.laddr.port)
            for p in tree
            for c in p.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
    assert listening, "gloo's ranks listen for each other: the check would see them"
    assert [entry for entry in listening if entry[1] not in LOOPBACK] == []


def test_killing_the_stage_with_sigkill_stops_every_rank_and_writes_nothing(project, tiny_data):
    write_params(project / "params.yaml", tiny_params(tiny_data))
    load_stage("train").main(["--model", "model_2"])  # earlier outputs, which must survive
    before = outputs(project)
    long_two_process_training(project, tiny_data)
    log = project / "train.log"
    with stage(project, "model_2", log) as proc:
        wait_for(lambda: "epoch 1/1000" in log.read_text(), "training to start")
        ranks = list(ranks_of(proc).values())
        assert len(ranks) == 2
        os.kill(proc.pid, signal.SIGKILL)  # the stage process alone, as DVC's parent would see
        assert proc.wait(timeout=10) == -signal.SIGKILL
        _, alive = psutil.wait_procs(ranks, timeout=5)
        assert alive == []
    assert_kept(project, before, "model_2")


def test_every_tensor_handed_to_a_collective_lives_on_the_training_device(monkeypatch):
    # gloo takes CPU tensors and NCCL CUDA ones: a tensor made without naming the training
    # device (on the default device, or the host) fails under NCCL. Here the default device is
    # "meta", so any tensor that a collective receives without having been placed on purpose
    # shows up as meta instead of the training device (cpu).
    import torch.distributed as dist

    from fmnist.pipeline.engine import SGD, epoch_batches, train_one_epoch
    from fmnist.pipeline.models import build_model

    seen: list[torch.device] = []

    def all_reduce(tensor, *args, **kwargs):  # one process: the sum is the tensor itself
        seen.append(tensor.device)

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    images, labels = torch.rand(20, 1, 28, 28), torch.randint(0, 10, (20,))
    batches = epoch_batches(20, 8, torch.Generator().manual_seed(0))
    fits = []
    for shard in (None, Shard(0, 1)):
        torch.manual_seed(0)
        model = build_model("linear", 4)
        with torch.device("meta"):
            optimizer = SGD(model.parameters(), 0.1)
            fits.append(train_one_epoch(model, images, labels, batches, optimizer, shard=shard))
    assert seen and all(device == images.device for device in seen)
    # One process of one: the collective changes nothing, so the results are one process's.
    assert fits[1]["step_losses"] == pytest.approx(fits[0]["step_losses"], rel=1e-6)
    assert fits[1]["accuracy"] == fits[0]["accuracy"]


# The documented two-node recipe, run as written on one machine: two torchrun agents whose
# rendezvous is on 127.0.0.1. torchrun's rendezvous store listens on every interface whatever
# host it is given, so the agents run in a network namespace of their own, whose only interface
# is loopback: nothing they open is reachable from outside the test.
RDZV_PORT = 29400


@pytest.fixture
def private_network() -> Iterator[list[str]]:
    """A command prefix that runs a program in a fresh network namespace with only loopback up."""
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")):
        pytest.skip("a private network namespace needs root, unshare and nsenter")
    holder = subprocess.Popen(
        ["unshare", "--net", "sh", "-c", "ip link set lo up && echo ready && exec sleep 600"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        yield ["nsenter", f"--net=/proc/{holder.pid}/ns/net", "--"]
    finally:
        holder.kill()
        holder.wait(timeout=30)


@contextlib.contextmanager
def two_nodes(project: Path, prefix: list[str], model: str) -> Iterator[list[subprocess.Popen]]:
    """Start the two agents of the documented recipe; kill them and their ranks on the way out."""
    torchrun = str(Path(sys.executable).parent / "torchrun")
    agents = []
    try:
        for node in range(2):
            command = [
                *prefix,
                torchrun,
                "--nnodes", "2",
                "--nproc-per-node", "1",
                "--rdzv-backend", "c10d",
                "--rdzv-endpoint", f"127.0.0.1:{RDZV_PORT}",
                "--rdzv-id", "fmnist",
                str(ROOT / "stages" / "train.py"), "--model", model,
            ]  # fmt: skip
            with open(project / f"node{node}.log", "w") as log:
                agents.append(
                    subprocess.Popen(command, cwd=project, stdout=log, stderr=subprocess.STDOUT)
                )
        yield agents
    finally:
        for agent in agents:
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in psutil.Process(agent.pid).children(recursive=True):
                    child.kill()
            agent.kill()
            agent.wait(timeout=30)


def test_two_torchrun_agents_train_as_one_process_does(project, tiny_data, private_network):
    params = tiny_params(tiny_data, model_0={"batch_size": BATCH, "epochs": 2})
    write_params(project / "params.yaml", params)
    load_stage("train").main(["--model", "model_0"])
    one = torch.load(project / "models" / "model_0.pth", weights_only=True)
    params["runtime"]["processes"] = 2  # in all, over both nodes
    write_params(project / "params.yaml", params)
    with two_nodes(project, private_network, "model_0") as agents:
        statuses = [agent.wait(timeout=180) for agent in agents]
    logs = "\n".join((project / f"node{n}.log").read_text() for n in range(2))
    assert statuses == [0, 0], logs
    two = torch.load(project / "models" / "model_0.pth", weights_only=True)
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=ATOL, rtol=RTOL)
    assert json.loads((project / "models" / "model_0.json").read_text())["processes"] == 2
    assert logs.count("model_0 epoch 2:") == 1  # written by global rank 0 alone


@pytest.mark.parametrize("killed", [0, 1])
def test_when_one_agent_is_killed_the_other_fails_soon_and_nothing_is_written(
    project, tiny_data, private_network, killed
):
    write_params(project / "params.yaml", tiny_params(tiny_data))
    load_stage("train").main(["--model", "model_0"])
    before = outputs(project)
    params = tiny_params(tiny_data, model_0={"epochs": 1000})
    params["runtime"]["processes"] = 2
    write_params(project / "params.yaml", params)
    with two_nodes(project, private_network, "model_0") as agents:
        log = project / "node0.log"
        wait_for(
            lambda: "epoch 1/1000" in log.read_text() + (project / "node1.log").read_text(),
            "training to start",
        )
        ranks = [c for a in agents for c in psutil.Process(a.pid).children(recursive=True)]
        assert len(ranks) == 2
        agents[killed].kill()
        survivor = agents[1 - killed]
        start = time.monotonic()
        status = survivor.wait(timeout=90)
        waited = time.monotonic() - start
        _, alive = psutil.wait_procs(ranks, timeout=5)
    text = (project / f"node{1 - killed}.log").read_text()
    assert status != 0, text
    assert alive == []
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "lost the other processes" in errors[0], text
    assert_kept(project, before, "model_0")
    print(f"the surviving agent exited {waited:.1f} s after the kill")
