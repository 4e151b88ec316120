"""Decoding images, for the client and the server alike: the user's files read and checked, in-memory images encoded
as bytes ready to upload, uploaded bytes decoded upright in RGB. EXIF orientation is applied here only (`upright`)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# What Pillow raises on files it cannot decode.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
EXIF_ORIENTATION = 0x0112
JPEG_QUALITY = 95
# Modes kept as they are in the PNG; anything else (CMYK, 16-bit, float) is converted to RGB first.
PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA"})


class UnreadableImage(ValueError):
    """Bytes or a file that cannot be used as an image; the message says why."""


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def upright(image: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: rotated or flipped as its EXIF orientation says."""
    return ImageOps.exif_transpose(image)


def decode_rgb(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """The encoded image decoded upright in RGB; one over ``max_pixels`` is refused from its header, before any
    pixel is decoded (a decompression bomb). Raises UnreadableImage saying why."""
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise UnreadableImage(f"{width}x{height} pixels is over the limit of {max_pixels}")
        return upright(image).convert("RGB")
    except UnreadableImage:
        raise
    except DECODE_ERRORS as exc:
        raise UnreadableImage(f"does not decode as an image ({exc})") from exc


def _png(image: Image.Image) -> bytes:
    if image.mode not in PNG_MODES:
        image = image.convert("RGB")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _rotated(data: bytes) -> bytes | None:
    """The image re-encoded upright when its EXIF orientation asks for a rotation or flip, else None."""
    with Image.open(io.BytesIO(data)) as image:
        if image.getexif().get(EXIF_ORIENTATION, 1) == 1:
            return None
        turned = upright(image)
        if image.format != "JPEG":
            return _png(turned)
        # Phone photos are where EXIF rotations live: a PNG of a 12 MP photo would be ~20 MB.
        out = io.BytesIO()
        turned.convert("RGB").save(out, format="JPEG", quality=JPEG_QUALITY)
        return out.getvalue()


def read_image_file(path: Path) -> bytes:
    """The file's bytes after checking that every pixel decodes; re-encoded upright if EXIF rotates it.

    The file itself is only read.
    """
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.draft(None, (1, 1))  # JPEG: decode at 1/8 scale, which still reads the whole stream
            image.load()
        return _rotated(data) or data
    except UnidentifiedImageError as exc:  # its message names the in-memory buffer, not the file
        raise UnreadableImage(f"{path}: not in an image format Pillow reads") from exc
    except DECODE_ERRORS as exc:
        raise UnreadableImage(f"{path}: {exc}") from exc


def encode_image(image: Image.Image | np.ndarray, index: int) -> bytes:
    """PNG bytes of a PIL image (EXIF orientation applied) or an HxW / HxWx3 uint8 array."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(f"images[{index}]: expected an HxW or HxWx3 uint8 array, got {image.dtype} {image.shape}")
        return _png(Image.fromarray(image))
    if isinstance(image, Image.Image):
        return _png(upright(image))
    raise TypeError(f"images[{index}]: expected a PIL image or a numpy array, got {type(image).__name__}")
