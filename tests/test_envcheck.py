"""The environment check's comparison: lock parsing, names, and each kind of difference."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fmnist.tools import envcheck
from fmnist.tools.envcheck import differences, installed, normalize, parse_lock

LOCK_TEXT = """\
# The environment `make setup` installs
#
#    make lock
#
--extra-index-url https://example.invalid/simple

Jinja2==3.1.6 \\
    --hash=sha256:0137fb05990d35f1275a587e9aee6d56da821fc83491a0fb838183be43f66d6d \\
    --hash=sha256:85ece4451f492d0c13c5dd7c13a64681a86afae63a5f347908daf103ce6d2f67
    # via torch
flufl.lock==9.2.0 \\
    --hash=sha256:aaaa
    # via dvc
typing_extensions==4.16.0  # via torch
numpy==2.4.6 \\
    --hash=sha256:bbbb  \\
    --hash=sha256:cccc
dvc[s3]==3.67.1 ; python_version >= "3.10" \\
    --hash=sha256:dddd

# The following packages are considered to be unsafe in a requirements file:
setuptools==84.2.1 \\
    --hash=sha256:eeee
"""


def test_a_lock_with_hashes_continuations_options_and_comments_gives_its_pins():
    assert parse_lock(LOCK_TEXT) == {
        "jinja2": "3.1.6",
        "flufl-lock": "9.2.0",
        "typing-extensions": "4.16.0",
        "numpy": "2.4.6",
        "dvc": "3.67.1",
        "setuptools": "84.2.1",
    }


def test_a_requirement_that_is_not_pinned_is_an_error():
    with pytest.raises(ValueError, match="not pinned with ==: numpy>=2"):
        parse_lock("numpy>=2 \\\n    --hash=sha256:aaaa\n")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("PyYAML", "pyyaml"),
        ("typing_extensions", "typing-extensions"),
        ("zc.lockfile", "zc-lockfile"),
        ("ruamel.yaml", "ruamel-yaml"),
        ("Foo__Bar-.baz", "foo-bar-baz"),
    ],
)
def test_names_are_compared_as_pep_503_normalises_them(name, expected):
    assert normalize(name) == expected


def test_the_same_pins_make_no_difference():
    pins = {"numpy": "2.4.6", "torch": "2.14.1"}
    assert differences(pins, dict(pins)) == []


def test_a_missing_package_is_reported():
    found = differences({"numpy": "2.4.6", "pillow": "13.0.0"}, {"numpy": "2.4.6"})
    assert found == ["pillow==13.0.0 missing"]


def test_an_extra_package_is_reported():
    found = differences({"numpy": "2.4.6"}, {"numpy": "2.4.6", "pip-tools": "7.7.0"})
    assert found == ["pip-tools==7.7.0 not in the lock"]


def test_a_version_mismatch_is_reported_and_equal_spellings_are_not():
    locked = {"numpy": "2.4.6", "python-dateutil": "2.9.0.post0"}
    present = {"numpy": "2.4.5", "python-dateutil": "2.9.0-post0"}
    found = differences(locked, present)
    assert found == ["numpy 2.4.5 installed, 2.4.6 locked"]


def dist_info(site: Path, name: str, version: str, direct_url: str | None = None) -> None:
    """Write a minimal installed distribution's metadata into a fake site-packages."""
    folder = site / f"{name.replace('-', '_')}-{version}.dist-info"
    folder.mkdir(parents=True)
    (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    if direct_url is not None:
        (folder / "direct_url.json").write_text(direct_url)


def test_installed_lists_what_pip_freeze_would(tmp_path):
    site, later = tmp_path / "site-packages", tmp_path / "later"
    dist_info(site, "PyYAML", "6.0.4")
    dist_info(site, "typing_extensions", "4.16.0")
    dist_info(site, "fmnist", "0.1.0", '{"url": "file:///src", "dir_info": {"editable": true}}')
    dist_info(site, "local-wheel", "1.0", '{"url": "file:///w.whl", "archive_info": {}}')
    dist_info(site, "pip", "26.3")
    dist_info(later, "PyYAML", "5.0")  # shadowed by the first on the path
    found = installed([str(site), str(later)])
    assert found == {"pyyaml": "6.0.4", "typing-extensions": "4.16.0", "local-wheel": "1.0"}


def test_setuptools_counts_where_pip_freeze_shows_it(tmp_path, monkeypatch):
    dist_info(tmp_path, "setuptools", "84.2.1")
    monkeypatch.setattr(sys, "version_info", (3, 11, 7))
    assert installed([str(tmp_path)]) == {}
    monkeypatch.setattr(sys, "version_info", (3, 12, 0))
    assert installed([str(tmp_path)]) == {"setuptools": "84.2.1"}


def test_main_prints_the_differences_on_one_line_and_fails(tmp_path, monkeypatch, capsys):
    lock = tmp_path / "requirements.lock"
    lock.write_text(LOCK_TEXT)
    present = parse_lock(LOCK_TEXT) | {"numpy": "2.4.5", "extra-pkg": "1.0"}
    del present["jinja2"]
    monkeypatch.setattr(envcheck, "installed", lambda: present)
    assert envcheck.main(["--lock", str(lock)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and f"differs from {lock}:" in line
    assert "extra-pkg==1.0 not in the lock; jinja2==3.1.6 missing" in line
    assert "numpy 2.4.5 installed, 2.4.6 locked" in line


def test_main_passes_when_the_environment_matches(tmp_path, monkeypatch, capsys):
    lock = tmp_path / "requirements.lock"
    lock.write_text(LOCK_TEXT)
    present = {k: v for k, v in parse_lock(LOCK_TEXT).items() if k != "setuptools"}
    monkeypatch.setattr(sys, "version_info", (3, 11, 7))
    monkeypatch.setattr(envcheck, "installed", lambda: present)
    assert envcheck.main(["--lock", str(lock)]) == 0
    assert f"matches {lock} (5 packages)" in capsys.readouterr().out


def test_main_fails_on_a_missing_lock(tmp_path, capsys):
    assert envcheck.main(["--lock", str(tmp_path / "absent.lock")]) == 1
    assert capsys.readouterr().err.startswith("error: ")
