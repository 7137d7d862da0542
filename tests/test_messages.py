"""The messages a new user meets first, each one line that says what to run."""

from __future__ import annotations

import pytest

from fmnist.experiments import remote
from fmnist.experiments.share import has_dvc_remote
from fmnist.pipeline.errors import PipelineError


@pytest.fixture
def bare_repo(tmp_path, monkeypatch):
    """An empty DVC repository (no git), with no remote configured, as the working folder."""
    from dvc.repo import Repo

    Repo.init(str(tmp_path), no_scm=True).close()
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("action", [remote.check_remote, remote.push, remote.pull])
def test_no_remote_at_all_is_one_line_that_says_what_to_run(bare_repo, action):
    with pytest.raises(PipelineError) as raised:
        action(None)
    message = str(raised.value)
    assert "\n" not in message
    assert "make storage" in message and "dvc remote add --default" in message


def test_a_remote_that_is_not_configured_is_named_in_one_line(bare_repo):
    with pytest.raises(PipelineError) as raised:
        remote.check_remote("team")
    assert (
        str(raised.value) == "no DVC remote named 'team' (`dvc remote list` shows those there are)"
    )


def test_a_sweep_knows_whether_there_is_a_dvc_remote_for_its_outputs(bare_repo):
    # `dvc remote default` prints "No default remote set" on stdout: the config decides.
    assert not has_dvc_remote(None)
    with pytest.raises(PipelineError) as raised:
        has_dvc_remote("team")  # checked before the sweep runs anything
    assert "\n" not in str(raised.value) and "'team'" in str(raised.value)
    config = bare_repo / ".dvc" / "config"  # DVC's no_scm setting stays
    config.write_text(
        config.read_text().replace("[core]\n", "[core]\n    remote = team\n")
        + "['remote \"team\"']\n    url = /tmp/team-store\n"
    )
    assert has_dvc_remote(None) and has_dvc_remote("team")
