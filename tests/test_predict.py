"""The predict command and image reading, on images and a checkpoint made here, never models/."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import tracemalloc
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFile

from fmnist.pipeline.checkpoint import save_checkpoint
from fmnist.pipeline.models import build_model
from fmnist.tools.images import ImageError, load_image
from fmnist.tools.predict import main

CLASSES = [f"class {i}" for i in range(9)] + ["T-shirt/top"]
ITEM, BACKDROP = 230, 0
# Resampling rings a little next to the item's edges: "black" allows a few levels of it.
NEAR_BLACK = 8


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small untrained TinyVGG saved as the pipeline saves its models."""
    torch.manual_seed(0)
    model = build_model("tinyvgg", hidden_units=4)
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    meta = {"model": "tiny", "arch": "tinyvgg", "hidden_units": 4, "in_channels": 1}
    save_checkpoint(model, path, {**meta, "image_size": 28, "num_classes": 10, "classes": CLASSES})
    return path


def item_image(size: tuple[int, int] = (64, 64), item: int = ITEM, backdrop: int = BACKDROP):
    """A grayscale shirt-like shape: a trapezoid with a collar, not symmetric top to bottom."""
    image = Image.new("L", size, backdrop)
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.polygon(
        [(w * 0.25, h * 0.15), (w * 0.75, h * 0.15), (w * 0.9, h * 0.85), (w * 0.1, h * 0.85)],
        fill=item,
    )
    draw.rectangle([w * 0.4, h * 0.05, w * 0.6, h * 0.15], fill=item)
    return image


def save(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


def png_header(width: int, height: int) -> bytes:
    """A valid PNG whose header claims width x height RGBA pixels over a few bytes of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def bright_box(pixels: np.ndarray, level: int = 128) -> tuple[int, int, int, int]:
    """Top, bottom, left, right (inclusive) of the pixels above `level`."""
    rows, cols = np.nonzero(pixels > level)
    return rows.min(), rows.max(), cols.min(), cols.max()


def border(pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])


def run(argv: list, capsys: pytest.CaptureFixture) -> tuple[int, list[str], list[str]]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.splitlines()


def test_prints_top_three_classes_per_image(weights, tmp_path, capsys):
    shirt = save(item_image(), tmp_path / "shirt.png")
    wide = save(item_image((90, 40), item=20, backdrop=250).convert("RGB"), tmp_path / "wide.jpg")
    cutout = Image.new("RGBA", (48, 64), (90, 60, 40, 255))
    cutout.putalpha(item_image((48, 64), item=255, backdrop=0))
    webp = save(cutout, tmp_path / "cutout.webp")
    gif = save(item_image(item=40, backdrop=255).convert("P"), tmp_path / "old.gif")
    code, out, err = run(["--weights", weights, shirt, wide, webp, gif], capsys)
    assert code == 0 and err == []
    assert [line.split(": ", 1)[0] for line in out] == [str(p) for p in (shirt, wide, webp, gif)]
    for line in out:
        shown = [entry.rsplit(" ", 1) for entry in line.split(": ", 1)[1].split(", ")]
        assert len(shown) == 3
        assert all(label in CLASSES for label, _ in shown)
        percents = [float(value.rstrip("%")) for _, value in shown]
        assert percents == sorted(percents, reverse=True)
        assert 0 < sum(percents) <= 100.2


def test_json_has_every_class_with_probabilities_summing_to_one(weights, tmp_path, capsys):
    shirt = save(item_image(), tmp_path / "shirt.png")
    code, out, _ = run(["--weights", weights, "--json", "--top-k", "50", shirt], capsys)
    document = json.loads("\n".join(out))
    assert code == 0
    assert document["model"] == "tiny" and document["weights"] == str(weights)
    (record,) = document["images"]
    assert set(record) == {"file", "format", "size", "inverted", "predictions"}
    assert (record["file"], record["format"], record["size"]) == (str(shirt), "PNG", [64, 64])
    predictions = record["predictions"]
    assert len(predictions) == len(CLASSES)  # --top-k beyond the class count shows them all
    assert all(CLASSES[p["index"]] == p["class"] for p in predictions)
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)


def test_light_background_is_inverted_to_match_the_dataset(tmp_path):
    dark_on_white = save(item_image(item=255 - ITEM, backdrop=255), tmp_path / "a.png")
    light_on_black = save(item_image(), tmp_path / "b.png")
    # Untrimmed, so that the border shows the background rather than the item's edges.
    inverted, kept = load_image(dark_on_white, trim=False), load_image(light_on_black, trim=False)
    assert inverted.inverted and not kept.inverted
    for converted in (inverted, kept):
        assert border(converted.pixels).max() <= NEAR_BLACK
        assert converted.pixels[14, 14] > 200
    # One is the other's negative, so after auto-inversion they give the same input.
    for trim in (False, True):
        difference = load_image(dark_on_white, trim=trim).pixels.astype(int) - load_image(
            light_on_black, trim=trim
        ).pixels.astype(int)
        assert np.abs(difference).max() <= 1


def test_invert_flags_override_the_detected_background(weights, tmp_path, capsys):
    dark_on_white = save(item_image(item=25, backdrop=255), tmp_path / "a.png")
    light_on_black = save(item_image(), tmp_path / "b.png")
    kept = load_image(dark_on_white, invert=False, trim=False)
    assert not kept.inverted and border(kept.pixels).min() >= 250 and kept.pixels[14, 14] < 60
    assert border(load_image(light_on_black, invert=True, trim=False).pixels).min() >= 250

    code, out, _ = run(["--weights", weights, "--json", "--no-invert", dark_on_white], capsys)
    assert code == 0 and json.loads("\n".join(out))["images"][0]["inverted"] is False
    code, out, _ = run(["--weights", weights, "--json", "--invert", light_on_black], capsys)
    assert code == 0 and json.loads("\n".join(out))["images"][0]["inverted"] is True


@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 255, 255), (200, 30, 30)])
def test_transparency_is_filled_to_contrast_with_the_item(tmp_path, colour):
    """Cut-outs often keep the item's colour under transparent pixels: only alpha tells."""
    rgba = Image.new("RGBA", (64, 64), (*colour, 255))
    rgba.putalpha(item_image(item=255, backdrop=0))
    converted = load_image(save(rgba, tmp_path / "cutout.png"), trim=False)
    assert border(converted.pixels).max() <= NEAR_BLACK
    assert converted.pixels[14, 14] > 200


def test_16_bit_grayscale_keeps_its_range(tmp_path):
    levels = np.asarray(item_image(item=10, backdrop=255), dtype=np.uint16) * 257
    path = save(Image.fromarray(levels), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    converted = load_image(path, trim=False)
    assert converted.inverted and border(converted.pixels).max() <= NEAR_BLACK
    assert converted.pixels[14, 14] > 200


def test_non_square_item_fills_the_longest_edge_and_is_centred(tmp_path):
    image = Image.new("L", (90, 60), 0)
    ImageDraw.Draw(image).rectangle([10, 30, 69, 49], fill=255)  # a 60x20 bar, off centre
    path = save(image, tmp_path / "bar.png")

    top, bottom, left, right = bright_box(load_image(path).pixels)
    assert (left, right) == (0, 27)  # trimmed, then the long edge scaled to 28
    assert bottom - top + 1 in (9, 10) and abs((top + bottom) / 2 - 13.5) <= 1

    top, bottom, left, right = bright_box(load_image(path, trim=False).pixels)
    assert 17 <= right - left + 1 <= 20 and 5 <= bottom - top + 1 <= 8


def test_jpeg_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (90, 60), (255, 255, 255))
    ImageDraw.Draw(image).rectangle([10, 20, 79, 39], fill=(30, 30, 30))
    exif = Image.Exif()
    exif[274] = 6  # stored landscape, shown rotated a quarter turn: portrait
    plain = save(image, tmp_path / "plain.jpg", quality=95)
    rotated = save(image, tmp_path / "rotated.jpg", quality=95, exif=exif.tobytes())

    top, bottom, left, right = bright_box(load_image(plain).pixels)
    assert right - left > 2 * (bottom - top)
    top, bottom, left, right = bright_box(load_image(rotated).pixels)
    assert bottom - top > 2 * (right - left)


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path):
    """The pixel cap applies to what is decoded; libjpeg's draft mode halves this JPEG."""
    big = item_image((2048, 1536), item=20, backdrop=250)
    jpeg = save(big, tmp_path / "big.jpg", quality=80)
    png = save(big, tmp_path / "big.png")
    assert load_image(jpeg, max_pixels=1_000_000).inverted
    with pytest.raises(ImageError, match=r"2048x1536 pixels: over the limit of 1,000,000"):
        load_image(png, max_pixels=1_000_000)


def test_bad_files_are_reported_and_good_ones_still_classified(weights, tmp_path, capsys):
    good = save(item_image(), tmp_path / "good.png")
    text = tmp_path / "notes.png"
    text.write_text("not a picture\n")
    missing = tmp_path / "missing.jpg"
    also_good = save(item_image(item=30, backdrop=240), tmp_path / "also.jpg")
    code, out, err = run(["--weights", weights, good, text, missing, also_good], capsys)
    assert code == 1
    assert [line.split(": ", 1)[0] for line in out] == [str(good), str(also_good)]
    assert err == [
        f"error: {text}: not an image, or not in a supported format "
        "(PNG, JPEG, GIF, BMP, WEBP, TIFF)",
        f"error: {missing}: no such file",
    ]


def test_missing_weights_is_one_line(tmp_path, capsys, monkeypatch):
    image = save(item_image(), tmp_path / "shirt.png")
    code, out, err = run(["--weights", tmp_path / "none.pth", image], capsys)
    assert code == 1 and out == []
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'none.pth'}: no such weights")

    monkeypatch.chdir(tmp_path)
    code, _, err = run(["--model", "model_9", image], capsys)
    assert code == 1 and err[0].startswith("error: models/model_9.pth: no such weights file")


def test_unknown_device_is_one_line(weights, tmp_path, capsys):
    image = save(item_image(), tmp_path / "shirt.png")
    code, out, err = run(["--weights", weights, "--device", "tpu", image], capsys)
    assert code == 1 and out == []
    assert len(err) == 1
    assert err[0].startswith("error: --device: 'tpu' is not available on this machine")


def _error_of(path: Path) -> str:
    try:
        load_image(path)
    except ImageError as exc:
        return str(exc)
    return "accepted"


def truncated(fmt: str) -> bytes:
    buffer = BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, fmt)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def webp_claiming(width: int, height: int) -> bytes:
    """A real extended-format WebP whose header is edited to claim a width x height canvas."""
    buffer = BytesIO()
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(buffer, "WEBP")
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"VP8X"
    data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(data)


HOSTILE = {
    "empty": (b"", "empty file"),
    "text": (b"hello, world\n" * 10, "not an image"),
    "random": (np.random.default_rng(1).bytes(4096), "not an image"),
    "truncated-png": (truncated("PNG"), "truncated or corrupt image data"),
    "truncated-jpeg": (truncated("JPEG"), "truncated or corrupt image data"),
    # Pillow's own limits: over twice its maximum it raises, between the two it warns.
    "bomb": (png_header(100_000, 100_000), "refusing to decode a possible decompression bomb"),
    "bomb-warning": (png_header(10_000, 10_000), "refusing to decode a possible decompression"),
    # Below Pillow's limits, above ours.
    # libwebp allocates the whole canvas when the file is opened, before any size check.
    "webp-bomb": (webp_claiming(16_000, 16_000), "image is 16000x16000 pixels: over the limit"),
    "over-cap": (
        png_header(6_000, 5_000),
        "image is 6000x5000 pixels: over the limit of 25,000,000",
    ),
}


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_files_are_rejected_with_a_reason(weights, tmp_path, capsys, kind):
    content, reason = HOSTILE[kind]
    path = tmp_path / f"{kind}.png"
    path.write_bytes(content)
    code, out, err = run(["--weights", weights, path], capsys)
    assert code == 1 and out == []
    assert len(err) == 1 and err[0].startswith(f"error: {path}: {reason}")


def test_directories_devices_pipes_and_oversized_files_are_rejected(tmp_path):
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="not a regular file"):
        load_image("/dev/zero")
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    outcome = []
    # In a thread: a blocking open of a pipe with no writer would hang the test run.
    reader = threading.Thread(target=lambda: outcome.append(_error_of(pipe)), daemon=True)
    reader.start()
    reader.join(timeout=5)
    assert outcome == ["not a regular file"]
    path = save(item_image(), tmp_path / "shirt.png")
    with pytest.raises(ImageError, match="file is over the limit of 100 bytes"):
        load_image(path, max_bytes=100)


@pytest.mark.parametrize("size", [(100_000, 100_000), (6_000, 5_000)])
def test_bombs_are_refused_before_any_pixel_memory(tmp_path, monkeypatch, size):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(*size))
    loads = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self))
    images_before = Image.core.get_stats()["new_count"]
    tracemalloc.start()
    try:
        with pytest.raises(ImageError):
            load_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert loads == []  # never asked to decode
    assert Image.core.get_stats()["new_count"] == images_before  # no pixel buffer allocated
    assert peak < 1_000_000
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_webp_bomb_is_refused_before_pillow_opens_it(tmp_path, monkeypatch):
    path = tmp_path / "bomb.webp"
    path.write_bytes(webp_claiming(16_000, 16_000))
    opened = []
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: opened.append(args))
    with pytest.raises(ImageError, match="over the limit"):
        load_image(path)
    assert opened == []


def test_help_runs_and_importing_does_not_load_torch():
    command = [sys.executable, "-m", "fmnist.tools.predict", "--help"]
    shown = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "--top-k" in shown and "--no-invert" in shown and "--json" in shown
    probe = "import sys, fmnist.tools.predict; print('torch' in sys.modules)"
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert imported.stdout.strip() == "False"


def test_a_hostile_sidecar_is_refused_before_anything_is_allocated(weights, tmp_path):
    # 10**12 hidden units would take the machine's memory before any shape is compared.
    hostile = tmp_path / "model.pth"
    hostile.write_bytes(weights.read_bytes())
    meta = json.loads(weights.with_suffix(".json").read_text())
    hostile.with_suffix(".json").write_text(json.dumps({**meta, "hidden_units": 10**12}))
    image = save(item_image(), tmp_path / "item.png")
    done = subprocess.run(
        [sys.executable, "-m", "fmnist.tools.predict", "--weights", str(hostile), str(image)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr == (
        f"error: {hostile.with_suffix('.json')}: hidden_units: expected an integer from 1 to "
        "1024, got 1000000000000\n"
    )
