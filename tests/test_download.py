import gzip
import hashlib
import re
import subprocess
import sys
import time

import pytest

from fmnist.pipeline.download import DownloadError, fetch_dataset, fetch_file

from . import faulty_http
from .conftest import ROOT, load_stage, tiny_params, write_params

NAME = "train-labels-idx1-ubyte"


def test_gzipped_and_raw_sources_both_verify(tmp_path, tiny_data):
    raw_dir = tmp_path / "raw-source"
    raw_dir.mkdir()
    for name, content in tiny_data.raw.items():
        (raw_dir / name).write_bytes(content)
    for source in (tiny_data.source, raw_dir):
        dest = tmp_path / f"out-{source.name}"
        used = fetch_dataset([str(source)], tiny_data.sha256, dest, timeout_s=1)
        assert set(used.values()) == {str(source)}
        for name, content in tiny_data.raw.items():
            assert (dest / name).read_bytes() == content
        assert sorted(p.name for p in dest.iterdir()) == sorted(tiny_data.raw)


def test_wrong_content_is_rejected_and_the_next_source_is_used(tmp_path, tiny_data):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / f"{NAME}.gz").write_bytes(gzip.compress(tiny_data.raw[NAME][:-5] + b"xxxxx"))
    dest = tmp_path / "out" / NAME
    used = fetch_file(NAME, tiny_data.sha256[NAME], [str(bad), str(tiny_data.source)], dest, 1)
    assert used == str(tiny_data.source)
    assert dest.read_bytes() == tiny_data.raw[NAME]


def test_file_urls_work_as_mirrors(tmp_path, tiny_data):
    dest = tmp_path / NAME
    used = fetch_file(NAME, tiny_data.sha256[NAME], [tiny_data.source.as_uri()], dest, 1)
    assert used == tiny_data.source.as_uri()
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == tiny_data.sha256[NAME]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (lambda c: gzip.compress(c)[:-20], "unreadable content"),  # truncated archive
        (lambda c: c[:10], "SHA-256 of the content (10 bytes)"),  # truncated raw file
        (lambda c: b"<html>not found</html>", "SHA-256 of the content"),  # wrong kind
        (lambda c: b"\x1f\x8bnot really gzip", "unreadable content"),  # corrupt gzip
    ],
)
def test_every_failure_is_listed_with_its_reason(tmp_path, tiny_data, payload, reason):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / f"{NAME}.gz").write_bytes(payload(tiny_data.raw[NAME]))
    missing = tmp_path / "nowhere"
    dest = tmp_path / "out"
    with pytest.raises(DownloadError) as info:
        fetch_dataset([str(bad), str(missing), "http://127.0.0.1:9/"], tiny_data.sha256, dest, 1)
    message = str(info.value)
    assert f"could not get {NAME} from any source" in message
    assert f"  - {bad}: {reason}" in message
    assert f"  - {missing}: no such directory" in message
    assert "  - http://127.0.0.1:9/: http://127.0.0.1:9/" in message
    assert "apt-get install dataset-fashion-mnist" in message
    # Nothing half-written is left behind, not even temporary files.
    assert list(dest.iterdir()) == []


def test_a_verified_file_already_in_place_is_kept(tmp_path, tiny_data):
    dest = tmp_path / "out"
    fetch_dataset([str(tiny_data.source)], tiny_data.sha256, dest, 1)
    used = fetch_dataset([str(tmp_path / "nowhere")], tiny_data.sha256, dest, 1)
    assert set(used.values()) == {str(dest)}


def test_download_stage_fails_with_one_clear_message(project, tiny_data):
    params = tiny_params(tiny_data)
    params["data"]["sources"] = [str(project / "empty"), "http://127.0.0.1:9/"]
    write_params(project / "params.yaml", params)
    result = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "download.py")],
        capture_output=True,
        text=True,
        cwd=project,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: could not get train-images-idx3-ubyte")
    assert "Traceback" not in result.stderr
    assert "apt-get install dataset-fashion-mnist" in result.stderr


# --- Broken mirrors, served by a local HTTP server --------------------------------------------

GZ = f"/{NAME}.gz"


def _mirror_cases(content: bytes) -> dict[str, tuple[faulty_http.Behaviour, str]]:
    """Each way a mirror can fail, with the reason the download must report."""
    gz = gzip.compress(content, mtime=0)
    return {
        "never answers": (faulty_http.silent(), f"{GZ[1:]}: no answer within 1 s"),
        "stalls mid-body": (faulty_http.stall(gz, len(gz) // 2), "stalled: no data for 1 s after"),
        "truncated gzip": (
            faulty_http.truncate(gz, len(gz) // 2),
            f"connection closed after {len(gz) // 2} of {len(gz)} bytes",
        ),
        "truncated raw": (
            faulty_http.truncate(content, 7),
            f"connection closed after 7 of {len(content)} bytes",
        ),
        "not HTTP": (faulty_http.not_http(), "BadStatusLine"),
        "HTML page": (
            faulty_http.serve(b"<html>moved</html>"),
            "SHA-256 of the content (18 bytes, not an IDX file)",
        ),
        "gzip of something else": (
            faulty_http.serve(gzip.compress(b"PK\x03\x04" + bytes(100))),
            "SHA-256 of the content (104 bytes, not an IDX file)",
        ),
        "wrong IDX file": (
            faulty_http.serve(content[:-1] + b"\x00"),
            f"SHA-256 of the content ({len(content)} bytes) is",
        ),
    }


CASES = list(_mirror_cases(b""))


@pytest.mark.parametrize("case", CASES)
def test_a_broken_mirror_is_abandoned_for_the_next_source(tmp_path, tiny_data, case):
    behaviour, _ = _mirror_cases(tiny_data.raw[NAME])[case]
    dest = tmp_path / "raw" / NAME
    with faulty_http.faulty_server({GZ: behaviour}) as mirror:
        start = time.monotonic()
        used = fetch_file(NAME, tiny_data.sha256[NAME], [mirror, str(tiny_data.source)], dest, 1)
        elapsed = time.monotonic() - start
    assert used == str(tiny_data.source)
    assert dest.read_bytes() == tiny_data.raw[NAME]
    assert elapsed < 3  # timeout_s is 1: a hanging mirror is cut off, not waited for
    assert [p.name for p in dest.parent.iterdir()] == [NAME]


def test_when_every_mirror_fails_each_is_listed_with_its_reason(tmp_path, tiny_data):
    cases = _mirror_cases(tiny_data.raw[NAME])
    routes = {f"/{i}{GZ}": behaviour for i, (behaviour, _) in enumerate(cases.values())}
    dest = tmp_path / "raw"
    with faulty_http.faulty_server(routes) as server:
        mirrors = [f"{server}{i}/" for i in range(len(cases))]
        start = time.monotonic()
        with pytest.raises(DownloadError) as info:
            fetch_dataset(mirrors, {NAME: tiny_data.sha256[NAME]}, dest, timeout_s=1)
        elapsed = time.monotonic() - start
    lines = str(info.value).splitlines()
    assert lines[0] == f"could not get {NAME} from any source:"
    for i, (mirror, (_, reason)) in enumerate(zip(mirrors, cases.values(), strict=True)):
        assert lines[1 + i].startswith(f"  - {mirror}: "), lines[1 + i]
        assert reason in lines[1 + i], (reason, lines[1 + i])
    assert "apt-get install dataset-fashion-mnist" in lines[-1]
    assert elapsed < 2 * 1 + 4  # two hanging mirrors at 1 s each, the rest fail at once
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("http://127.0.0.1:http/", "InvalidURL: nonnumeric port"),
        ("http://[::1/", "ValueError: Invalid IPv6 URL"),
    ],
)
def test_a_malformed_mirror_url_is_a_failed_source_not_a_crash(tmp_path, tiny_data, source, reason):
    with pytest.raises(DownloadError, match=re.escape(reason)):
        fetch_file(NAME, tiny_data.sha256[NAME], [source], tmp_path / NAME, 1)


def test_a_mirror_that_answers_404_is_skipped(tmp_path, tiny_data):
    with (
        faulty_http.faulty_server({}) as mirror,
        pytest.raises(DownloadError, match="HTTP Error 404: Not Found"),
    ):
        fetch_file(NAME, tiny_data.sha256[NAME], [mirror], tmp_path / NAME, 1)


def test_a_temporary_file_left_by_a_killed_download_is_swept(tmp_path, tiny_data):
    dest = tmp_path / "raw"
    dest.mkdir()
    stale = dest / f".{NAME}.k1ll3d_x.tmp"
    stale.write_bytes(b"half a file")
    unrelated = dest / "notes.txt"
    unrelated.write_text("kept")
    fetch_dataset([str(tiny_data.source)], tiny_data.sha256, dest, 1)
    assert not stale.exists() and unrelated.exists()
    assert sorted(p.name for p in dest.iterdir()) == sorted([*tiny_data.raw, "notes.txt"])


def test_a_destination_that_cannot_be_written_is_not_blamed_on_the_sources(tmp_path, tiny_data):
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / NAME).mkdir()  # a directory where the file must go: os.replace fails
    with pytest.raises(DownloadError, match=rf"^cannot write {re.escape(str(dest / NAME))}: "):
        fetch_file(NAME, tiny_data.sha256[NAME], [str(tiny_data.source)], dest / NAME, 1)
    assert [p.name for p in dest.iterdir()] == [NAME]


def test_prepare_without_the_raw_files_says_to_download_first(project, capsys):
    with pytest.raises(SystemExit) as info:
        load_stage("prepare").main([])
    assert info.value.code == 1
    assert capsys.readouterr().err == (
        "error: data/FashionMNIST/raw/train-images-idx3-ubyte: missing; "
        "run `dvc repro download` first\n"
    )
    assert [p.name for p in project.iterdir()] == ["params.yaml"]


def test_a_mirror_that_does_not_answer_is_waited_for_once_not_per_file(tmp_path, tiny_data):
    routes = {f"/{name}.gz": faulty_http.silent() for name in tiny_data.raw}
    dest = tmp_path / "raw"
    with faulty_http.faulty_server(routes) as mirror:
        start = time.monotonic()
        used = fetch_dataset([mirror, str(tiny_data.source)], tiny_data.sha256, dest, 1)
        elapsed = time.monotonic() - start
    assert set(used.values()) == {str(tiny_data.source)}
    assert elapsed < 1 + 1.5  # one timeout, not four

    dead = "http://127.0.0.1:9/"  # the discard port: nothing listens, the connection is refused
    with (
        faulty_http.faulty_server({}) as server,  # no routes: every file is a 404
        pytest.raises(DownloadError) as info,
    ):
        fetch_dataset([dead, server], tiny_data.sha256, tmp_path / "none", 1)
    lines = str(info.value).splitlines()
    assert lines[1].startswith(f"  - {dead}: ") and "Connection refused" in lines[1]
    assert "HTTP Error 404" in lines[2]  # a 404 is about one file: the mirror is tried again
    skipped = [line for line in lines if "skipped" in line]
    assert skipped == [f"  - {dead}: skipped, it did not answer for an earlier file"] * 3
    assert sum("HTTP Error 404" in line for line in lines) == 4


def test_a_file_mirror_missing_one_file_still_serves_the_others(tmp_path, tiny_data):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in tiny_data.raw:
        if name != NAME:
            (mirror / f"{name}.gz").write_bytes((tiny_data.source / f"{name}.gz").read_bytes())
    sources = [mirror.as_uri(), str(tiny_data.source)]
    used = fetch_dataset(sources, tiny_data.sha256, tmp_path / "raw", 1)
    # The missing file comes from the next source; the mirror is not written off for the rest.
    assert used[NAME] == str(tiny_data.source)
    assert {used[name] for name in tiny_data.raw if name != NAME} == {mirror.as_uri()}
