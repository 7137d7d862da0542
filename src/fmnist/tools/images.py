"""Read untrusted image files safely and turn them into Fashion-MNIST-like 28x28 inputs.

Reading is bounded: the file size is capped, only common formats are tried, and the pixel
count is checked from the header before anything is decoded. Conversion follows the steps
Zalando used to make Fashion-MNIST from product photos: trim the background, fit the longest
edge to 28 pixels, centre on the background, and negate light backgrounds so the item is light
on black.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from fmnist.pipeline.errors import PipelineError

MAX_FILE_BYTES = 50 * 1024 * 1024
# Pixels actually decoded (after JPEG draft scaling): at most about 100 MB as RGBA, far below
# Pillow's own limit of about 89 million pixels, which only warns.
MAX_PIXELS = 25_000_000
# Only what photos come in; Pillow opens multi-picture camera JPEGs (MPO) through "JPEG".
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
# Larger images are shrunk to this longest side before any arithmetic; plenty for 28x28.
WORK_SIZE = 512
# Fashion-MNIST's trimming kept pixels further than 5% of full intensity from the background.
TRIM_THRESHOLD = 0.05

_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageError(PipelineError):
    """A file that cannot be used as an image; the message says why, without the file name."""


@dataclass(frozen=True)
class Converted:
    """An image as the models see it: uint8 (size, size), a light item on a dark background."""

    pixels: np.ndarray
    inverted: bool
    original_size: tuple[int, int]
    format: str


def read_image(
    path: str | Path, max_bytes: int = MAX_FILE_BYTES, max_pixels: int = MAX_PIXELS
) -> tuple[Image.Image, tuple[int, int], str]:
    """Decode an untrusted file into a small upright L, LA, RGB or RGBA image, within limits.

    Returns the image (longest side at most WORK_SIZE), the size the header declared, and the
    format. Raises ImageError for anything unreadable, oversized, truncated or not an image.
    """
    data = _read_capped(Path(path), max_bytes)
    webp = _webp_canvas(data)
    if webp is not None:
        _check_pixels(webp, webp, max_pixels)
    # Pillow's own limit only warns below twice its size; make the warning a refusal too.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(f"refusing to decode a possible decompression bomb ({exc})") from None
        except UnidentifiedImageError:
            raise ImageError(
                f"not an image, or not in a supported format ({', '.join(FORMATS)})"
            ) from None
        except Exception as exc:
            raise ImageError(f"unreadable image header ({_describe(exc)})") from None
        declared, fmt = image.size, image.format or "unknown"
        if fmt in ("JPEG", "MPO"):
            # libjpeg can decode at 1/2, 1/4 or 1/8 scale: far less memory for big photos.
            image.draft("L" if image.mode == "RGB" else None, (WORK_SIZE, WORK_SIZE))
        _check_pixels(declared, image.size, max_pixels)
        try:
            image.load()
        except Exception as exc:
            # Pillow's decoders raise many types on malformed data (OSError, SyntaxError,
            # ValueError, struct.error, ...); any of them means this one file is unusable.
            raise ImageError(f"truncated or corrupt image data ({_describe(exc)})") from None
    # Read after load, never before the size check: PNG's getexif() decodes every pixel.
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation)
    except Exception:
        orientation = None  # a broken EXIF block costs only the orientation
    try:
        image = _small_upright(_plain_mode(image), orientation)
    except Exception as exc:
        raise ImageError(f"unsupported image data ({_describe(exc)})") from None
    return image, declared, fmt


def convert(
    image: Image.Image, invert: bool | None = None, trim: bool = True, size: int = 28
) -> tuple[np.ndarray, bool]:
    """Turn an image from `read_image` into uint8 (size, size) pixels and whether it was negated.

    `invert=None` negates when the border is light, since Fashion-MNIST items are light on black.
    """
    gray = _composite_gray(image)
    background = _border_level(gray)
    inverted = background > 0.5 if invert is None else invert
    if inverted:
        gray = 1.0 - gray
        background = 1.0 - background
    if trim:
        gray = _trim(gray, background)
    peak = float(gray.max())
    if background < 0.5 and peak > background:
        # Stretch levels so a grey backdrop becomes the dataset's pure black.
        gray = np.clip((gray - background) / (peak - background), 0.0, 1.0)
        background = 0.0
    pixels = _fit(gray, size, background)
    return np.rint(pixels * 255).astype(np.uint8), bool(inverted)


def load_image(
    path: str | Path,
    invert: bool | None = None,
    trim: bool = True,
    size: int = 28,
    max_bytes: int = MAX_FILE_BYTES,
    max_pixels: int = MAX_PIXELS,
) -> Converted:
    """Read an untrusted image file and convert it to a model input; ImageError if unusable."""
    image, declared, fmt = read_image(path, max_bytes=max_bytes, max_pixels=max_pixels)
    pixels, inverted = convert(image, invert=invert, trim=trim, size=size)
    return Converted(pixels=pixels, inverted=inverted, original_size=declared, format=fmt)


def _read_capped(path: Path, max_bytes: int) -> bytes:
    # Non-blocking, or opening a named pipe would wait forever for a writer.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        with os.fdopen(os.open(path, flags), "rb") as handle:
            info = os.fstat(handle.fileno())
            if stat.S_ISDIR(info.st_mode):
                raise ImageError("is a directory")
            if not stat.S_ISREG(info.st_mode):
                raise ImageError("not a regular file")
            if info.st_size > max_bytes:
                raise ImageError(f"file is over the limit of {max_bytes:,} bytes")
            # read(n) allocates n bytes up front, so ask for what the file holds, not the cap.
            data = handle.read(info.st_size + 1)
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except IsADirectoryError:
        raise ImageError("is a directory") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except OSError as exc:
        raise ImageError(f"cannot read ({exc.strerror or exc})") from None
    if not data:
        raise ImageError("empty file")
    if len(data) > min(info.st_size, max_bytes):
        raise ImageError("file changed while being read")
    return data


def _check_pixels(declared: tuple[int, int], decoded: tuple[int, int], max_pixels: int) -> None:
    if decoded[0] * decoded[1] > max_pixels:
        scaled = "" if decoded == declared else f", decoded at {decoded[0]}x{decoded[1]}"
        raise ImageError(
            f"image is {declared[0]}x{declared[1]} pixels{scaled}: "
            f"over the limit of {max_pixels:,} pixels"
        )


def _webp_canvas(data: bytes) -> tuple[int, int] | None:
    """A WebP's canvas size from its header: libwebp allocates the canvas as the file opens."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: 24-bit width - 1 and height - 1
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L":  # lossless: 14-bit width - 1 and height - 1, packed
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":  # lossy: 14-bit width and height after the key frame's start code
        width = int.from_bytes(data[26:28], "little") & 0x3FFF
        return width, int.from_bytes(data[28:30], "little") & 0x3FFF
    return None


def _describe(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _plain_mode(image: Image.Image) -> Image.Image:
    """Bring any mode to L, LA, RGB or RGBA, keeping transparency and 16-bit range."""
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        if "transparency" in image.info and mode in ("L", "RGB"):
            return image.convert(mode + "A")
        return image
    if mode in ("P", "PA"):
        transparent = mode == "PA" or "transparency" in image.info
        return image.convert("RGBA" if transparent else "RGB")
    if mode == "1":
        return image.convert("L")
    if mode in ("La", "RGBa"):
        return image.convert(mode[:-1] + "A")
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16"):
            values = values / 65535.0
        else:
            # 32-bit images have no fixed white point; use their own range.
            low, high = float(values.min()), float(values.max())
            values = (values - low) / (high - low) if high > low else np.zeros_like(values)
        return Image.fromarray(np.rint(values * 255).astype(np.uint8))
    return image.convert("RGB")


def _small_upright(image: Image.Image, orientation: object) -> Image.Image:
    """Shrink to WORK_SIZE before rotating, so the transpose copies a small image."""
    width, height = image.size
    if max(width, height) > WORK_SIZE:
        # Pillow resamples RGBA and LA premultiplied, so transparent colours do not bleed.
        image = image.resize(_scaled(width, height, WORK_SIZE), Image.Resampling.LANCZOS, None, 3.0)
    method = _ORIENTATION.get(orientation) if isinstance(orientation, int) else None
    return image.transpose(method) if method is not None else image


def _scaled(width: int, height: int, longest: int) -> tuple[int, int]:
    scale = longest / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _composite_gray(image: Image.Image) -> np.ndarray:
    """Grayscale in [0, 1]; transparency becomes black or white, whichever contrasts the item."""
    gray = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    if image.mode not in ("LA", "RGBA"):
        return gray
    alpha = np.asarray(image.getchannel("A"), dtype=np.float32) / 255.0
    weight = float(alpha.sum())
    item_level = float((gray * alpha).sum() / weight) if weight > 0 else 1.0
    backdrop = 0.0 if item_level > 0.5 else 1.0
    return gray * alpha + backdrop * (1.0 - alpha)


def _border_level(gray: np.ndarray) -> float:
    """Median of a thin frame around the edge: the background, as photographed."""
    height, width = gray.shape
    ring = max(1, min(height, width) // 50)
    if 2 * ring >= min(height, width):
        return float(np.median(gray))
    frame = np.concatenate(
        [
            gray[:ring].ravel(),
            gray[-ring:].ravel(),
            gray[ring:-ring, :ring].ravel(),
            gray[ring:-ring, -ring:].ravel(),
        ]
    )
    return float(np.median(frame))


def _trim(gray: np.ndarray, background: float) -> np.ndarray:
    """Crop to the box of pixels that differ from the background, as Fashion-MNIST was made."""
    rows, cols = np.nonzero(np.abs(gray - background) > TRIM_THRESHOLD)
    if rows.size == 0:
        return gray
    return gray[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def _fit(gray: np.ndarray, size: int, background: float) -> np.ndarray:
    """Scale the longest edge to `size`, centre it and pad with the background."""
    height, width = gray.shape
    new_width, new_height = _scaled(width, height, size)
    resized = Image.fromarray(gray.astype(np.float32)).resize(
        (new_width, new_height), Image.Resampling.LANCZOS
    )
    canvas = np.full((size, size), background, dtype=np.float32)
    top, left = (size - new_height) // 2, (size - new_width) // 2
    canvas[top : top + new_height, left : left + new_width] = np.asarray(resized)
    return np.clip(canvas, 0.0, 1.0)
