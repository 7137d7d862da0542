"""Two clones share results through a real S3 server (SeaweedFS on 127.0.0.1), with `dvc` alone.

Clone A has run the pipeline on tiny data. It pushes, run-cache included; a fresh clone B pulls and
has everything without training, then changes model_0 on a branch and pushes; A checks out that
branch and pulls B's results. Credentials travel in the environment, never in `.dvc/config`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from .conftest import ROOT, make_split, tiny_params, write_params
from .s3_store import REMOTE, URL, Server
from .workflow_repo import (
    BIN,
    MODELS,
    committed_repo,
    copy_repo,
    dvc,
    git,
    ran_stages,
    run,
    run_unchecked,
)

# Real DVC queues, stores or several processes: `make test-system` (and CI) runs these.
pytestmark = pytest.mark.system

BRANCH = "faster-model-0"


def dvc_with(server: Server, *args: str, cwd: Path) -> str:
    """Run DVC with the store's credentials in the environment, as CI and users pass them."""
    return dvc(*args, cwd=cwd, env=server.credentials)


def push(server: Server, cwd: Path) -> str:
    """`fmnist-remote push`: dvc push --run-cache, plus what restoring a run needs."""
    command = [str(BIN / "python"), "-m", "fmnist.experiments.remote", "push"]
    return run(command, cwd, server.credentials)


def status(cwd: Path) -> dict:
    """`dvc status --json`: an empty mapping when the workspace matches dvc.lock."""
    return json.loads(dvc("status", "--json", cwd=cwd))


def weights_and_metrics(root: Path) -> dict[str, bytes]:
    """The bytes of every model's weights, sidecar and test metrics."""
    files = {}
    for m in MODELS:
        for path in (f"models/{m}.pth", f"models/{m}.json", f"data/scores/{m}.json"):
            files[path] = (root / path).read_bytes()
    return files


@pytest.fixture(scope="module")
def clone_a(tmp_path_factory, tiny_data, server) -> Path:
    """The committed tiny-data run, with the team's remote committed and everything pushed."""
    base = committed_repo(tmp_path_factory, tiny_data)
    root = copy_repo(base, tmp_path_factory.mktemp("sharing") / "a")
    dvc("remote", "add", "--default", REMOTE, URL, cwd=root)
    dvc("remote", "modify", REMOTE, "endpointurl", server.store.endpoint, cwd=root)
    dvc("remote", "modify", REMOTE, "verify", "true", cwd=root)
    git("add", ".dvc/config", cwd=root)
    git("commit", "-q", "-m", "Share results through the team's S3 remote", cwd=root)
    (root / ".git" / "push.log").write_text(push(server, root))
    return root


@pytest.fixture(scope="module")
def clone_b(tmp_path_factory, clone_a, server) -> Path:
    """A fresh `git clone` of A that pulled as `make pull` does, run-cache included."""
    root = tmp_path_factory.mktemp("sharing") / "b"
    git("clone", "-q", str(clone_a), str(root), cwd=clone_a.parent)
    git("config", "user.email", "b@example.com", cwd=root)
    git("config", "user.name", "b", cwd=root)
    # `make pull`: dvc pull --run-cache, and the objects of the run-cache's metrics and plots.
    command = [str(BIN / "python"), "-m", "fmnist.experiments.remote", "pull"]
    (root / ".git" / "pull.log").write_text(run(command, root, server.credentials))
    return root


def test_the_committed_config_names_the_remote_but_holds_no_credentials(clone_a, server):
    config = (clone_a / ".dvc" / "config").read_text()
    assert URL in config and server.store.endpoint in config
    assert server.store.access_key not in config and server.store.secret_key not in config


def test_a_push_sends_outputs_run_cache_and_every_object_a_restore_needs(clone_a, server):
    keys = set(server.object_keys())
    assert any(key.startswith("dvc/runs/") for key in keys), "no run-cache entry was pushed"
    entries = list((clone_a / ".dvc" / "cache" / "runs").glob("*/*/*"))
    assert len(entries) == 9  # one per stage
    # Metrics and plots committed to git (cache: false) too: without them no run restores.
    outs = [out for entry in entries for out in yaml.safe_load(entry.read_text())["outs"]]
    recorded = {out["md5"] for out in outs}
    for out in outs:
        if out["md5"].endswith(".dir"):  # a folder: its files are objects of their own
            listing = clone_a / ".dvc/cache/files/md5" / out["md5"][:2] / out["md5"][2:]
            recorded |= {item["md5"] for item in json.loads(listing.read_text())}
    on_server = {key.removeprefix("dvc/files/md5/").replace("/", "", 1) for key in keys}
    assert recorded - on_server == set()


def test_a_fresh_clone_pulls_everything_and_has_nothing_to_run(clone_a, clone_b):
    assert status(clone_b) == {}
    assert weights_and_metrics(clone_b) == weights_and_metrics(clone_a)
    assert ran_stages(dvc("repro", cwd=clone_b)) == []


def test_predict_works_in_the_fresh_clone_with_the_pulled_weights(clone_b):
    images, _ = make_split(1, 7)
    path = clone_b / "item.png"
    Image.fromarray(np.asarray(images[0])).save(path)
    command = [str(BIN / "python"), "-m", "fmnist.tools.predict", "--model", "model_2", str(path)]
    shown = run(command, clone_b)
    assert "item.png" in shown and "%" in shown


def test_a_commit_whose_results_no_one_pushed_pulls_with_allow_missing_and_runs_its_change(
    clone_a, server, tmp_path, tiny_data
):
    # As CI on a new commit: everything else comes from the remote, the change runs.
    ahead = copy_repo(clone_a, tmp_path / "ahead")
    write_params(ahead / "params.yaml", tiny_params(tiny_data, model_0={"lr": 0.05}))
    dvc("repro", cwd=ahead)
    git("add", "-A", cwd=ahead)
    git("commit", "-q", "-m", "Halve model_0's learning rate", cwd=ahead)  # not pushed
    clone = tmp_path / "clone"
    git("clone", "-q", str(ahead), str(clone), cwd=tmp_path)
    command = [str(BIN / "python"), "-m", "fmnist.experiments.remote", "pull"]
    plain = run_unchecked(command, clone, server.credentials)
    assert plain.returncode == 1, plain.stdout + plain.stderr
    assert plain.stderr.strip().splitlines()[-1].endswith("--allow-missing goes on past them")
    run([*command, "--allow-missing"], clone, server.credentials)
    pulled = (clone / "models/model_2.pth").read_bytes()
    assert pulled == (ahead / "models/model_2.pth").read_bytes()
    # compare's inputs come out as committed, bit for bit: its committed outputs stand.
    assert sorted(ran_stages(dvc("repro", cwd=clone))) == ["evaluate@model_0", "train@model_0"]
    assert status(clone) == {}
    assert weights_and_metrics(clone) == weights_and_metrics(ahead)


def test_a_pulled_clone_restores_a_failed_stage_once_its_param_is_back(clone_b, tiny_data):
    # The troubleshooting page's promise, on a clone that only pulled: a bad lr fails the stage
    # after DVC removed its outputs; with the value back, `dvc repro` restores, never trains.
    weights = (clone_b / "models/model_2.pth").read_bytes()
    curves = {
        p: (clone_b / p).read_bytes()
        for p in ("plots/train/model_2.csv", "plots/steps/model_2.csv")
    }
    write_params(clone_b / "params.yaml", tiny_params(tiny_data, model_2={"lr": -0.1}))
    failed = run_unchecked([str(BIN / "dvc"), "repro"], clone_b)
    assert failed.returncode != 0 and "models.model_2.lr" in failed.stdout + failed.stderr
    assert not (clone_b / "models/model_2.pth").exists()  # DVC removed the outputs first

    git("checkout", "params.yaml", cwd=clone_b)
    output = dvc("repro", cwd=clone_b)
    assert ran_stages(output) == []
    assert "Stage 'train@model_2' is cached - skipping run, checking out outputs" in output
    assert (clone_b / "models/model_2.pth").read_bytes() == weights
    assert {p: (clone_b / p).read_bytes() for p in curves} == curves
    assert git("status", "--porcelain", "--untracked-files=no", cwd=clone_b) == ""


@pytest.fixture(scope="module")
def branch_pushed(clone_b, server, tiny_data) -> Path:
    """B halves model_0's learning rate on a branch, reproduces, commits and pushes."""
    git("checkout", "-q", "-b", BRANCH, cwd=clone_b)
    write_params(clone_b / "params.yaml", tiny_params(tiny_data, model_0={"lr": 0.05}))
    (clone_b / ".git" / "repro.log").write_text(dvc("repro", cwd=clone_b))
    git("add", "-A", cwd=clone_b)
    git("commit", "-q", "-m", "Halve model_0's learning rate", cwd=clone_b)
    push(server, clone_b)
    git("push", "-q", "origin", BRANCH, cwd=clone_b)
    return clone_b


def test_b_retrained_only_model_0(branch_pushed):
    ran = ran_stages((branch_pushed / ".git" / "repro.log").read_text())
    assert sorted(ran) == ["compare", "evaluate@model_0", "train@model_0"]


def test_a_checks_out_bs_branch_and_pulls_bs_results_without_training(
    clone_a, branch_pushed, server
):
    git("checkout", "-q", BRANCH, cwd=clone_a)
    try:
        dvc_with(server, "pull", cwd=clone_a)
        assert status(clone_a) == {}
        assert weights_and_metrics(clone_a) == weights_and_metrics(branch_pushed)
        assert ran_stages(dvc("repro", cwd=clone_a)) == []
        diff = json.loads(dvc("metrics", "diff", "main", "--json", cwd=clone_a))
        changed = {key for values in diff.values() for key in values}
        assert changed and all(key.startswith("model_0.") for key in changed)
    finally:
        git("checkout", "-q", "main", cwd=clone_a)
        dvc("checkout", "-q", cwd=clone_a)


def test_a_result_computed_in_one_clone_is_restored_in_another_from_the_run_cache(
    clone_a, branch_pushed, server, tmp_path_factory
):
    # A runs an experiment and pushes its run-cache; a third clone runs the same experiment
    # and DVC restores every stage it needs (`--pull` fetches what they need) instead of training.
    experiment = "models.model_1.lr=0.05"
    dvc("exp", "run", "-S", experiment, cwd=clone_a)
    push(server, clone_a)
    git("reset", "-q", "--hard", cwd=clone_a)
    dvc("checkout", "-q", "--force", cwd=clone_a)

    root = tmp_path_factory.mktemp("sharing") / "c"
    git("clone", "-q", str(clone_a), str(root), cwd=clone_a.parent)
    dvc_with(server, "pull", "--run-cache", cwd=root)
    output = dvc_with(server, "exp", "run", "--pull", "-S", experiment, cwd=root)
    assert ran_stages(output) == []
    for stage in ("train@model_1", "evaluate@model_1", "compare"):
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in output
    produced = json.loads((root / "metrics/test.json").read_text())["model_1"]
    assert produced != json.loads((clone_a / "metrics/test.json").read_text())["model_1"]


def registry_commands() -> list[str]:
    """The commands docs/sharing.md gives for fetching a registered model, one per line."""
    text = (ROOT / "docs" / "sharing.md").read_text()
    block = text.split("fetches that model without cloning:")[1].split("```bash\n")[1]
    return [line.split("#")[0].strip() for line in block.split("```")[0].splitlines()]


def test_a_registered_model_is_fetched_and_used_as_the_docs_say_in_an_empty_folder(
    clone_a, server, tmp_path
):
    # A version is a git tag that the model registry (GTO, installed with DVC) writes.
    run([str(BIN / "gto"), "register", "model_2", "--version", "v1.0.0"], clone_a)
    images, _ = make_split(1, 7)
    Image.fromarray(np.asarray(images[0])).save(tmp_path / "shoe.png")
    commands = registry_commands()
    assert [c.split()[:2] for c in commands] == [
        ["dvc", "artifacts"],
        ["dvc", "get"],
        ["fmnist-predict", "--model"],
    ]
    for command in commands:
        argv = command.replace("https://github.com/YOU/fmnist", str(clone_a)).split()
        if argv[0] == "dvc":
            dvc_with(server, *argv[1:], cwd=tmp_path)
        else:
            shown = run([str(BIN / "python"), "-m", "fmnist.tools.predict", *argv[1:]], tmp_path)
    assert (tmp_path / "models/model_2.pth").read_bytes() == (
        clone_a / "models/model_2.pth"
    ).read_bytes()
    assert "shoe.png" in shown and "%" in shown
