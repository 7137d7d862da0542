import gzip
import hashlib
import subprocess
import sys

import pytest

from fmnist.download import DownloadError, fetch_dataset, fetch_file

from .conftest import ROOT, tiny_params, write_params

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
