from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from sharpzo.client.embedded import EmbeddedServer

from .ledger_backends import ledger_setting  # noqa: F401  (fixtures)
from .postgres_server import postgres_server, postgres_url  # noqa: F401

TINY = {"model": "sharpzo-tiny", "pretrained": "none"}


def encoded_image(seed: int, size: tuple[int, int] = (40, 30), fmt: str = "PNG", mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="session", autouse=True)
def private_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Servers' default ledgers and the client's upload index go to a temporary home, not the user's."""
    root = tmp_path_factory.mktemp("home")
    saved = {name: os.environ.get(name) for name in ("XDG_DATA_HOME", "XDG_CACHE_HOME")}
    os.environ["XDG_DATA_HOME"] = str(root / "data")
    os.environ["XDG_CACHE_HOME"] = str(root / "cache")
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def tiny_server() -> Iterator[EmbeddedServer]:
    """A real server process on loopback with a tiny random-weight open_clip model."""
    with EmbeddedServer(**TINY, env={"SHARPZO_MAX_CANDIDATES": "256", "SHARPZO_MAX_CLASSES": "50",
                                     "SHARPZO_MAX_IMAGES_PER_SET": "64", "SHARPZO_MAX_BODY_BYTES": "2000000",
                                     "SHARPZO_MAX_IMAGE_PIXELS": "250000"}) as server:
        yield server
