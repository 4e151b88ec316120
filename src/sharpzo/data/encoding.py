"""Encode 8-bit grayscale arrays as PNG bytes.

A minimal writer (one IDAT chunk, no row filters) instead of Pillow: it is ~15x faster on
28x28 images and its bytes do not change with the Pillow version, so image hashes stay stable.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def gray_png(image: np.ndarray) -> bytes:
    """PNG bytes of one (H, W) uint8 image."""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got {image.dtype} {image.shape}")
    height, width = image.shape
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    rows = np.zeros((height, width + 1), dtype=np.uint8)  # leading 0 per row: filter type "None"
    rows[:, 1:] = image
    pixels = _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
    return _SIGNATURE + _chunk(b"IHDR", header) + pixels + _chunk(b"IEND", b"")


def gray_pngs(images: np.ndarray) -> list[bytes]:
    """PNG bytes of each image of an (N, H, W) uint8 stack."""
    return [gray_png(image) for image in images]
