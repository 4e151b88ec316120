"""What a client-only install lacks to serve a model, said in one line with the pip command that adds it."""

from __future__ import annotations

import importlib.util

# Import names of what the ``server`` extra installs.
SERVER_MODULES = ("torch", "torchvision", "open_clip", "fastapi", "uvicorn", "pydantic_settings", "prometheus_client")
SERVER_EXTRA = "pip install -c constraints.txt 'sharpzo[server]'"


class ServerNotInstalled(RuntimeError):
    """The server extra is missing; the message names what is missing and how to add it."""


def missing_server_modules() -> list[str]:
    return [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]


def require_server(purpose: str) -> None:
    """Raise ``ServerNotInstalled`` naming ``purpose`` when any module of the server extra is missing."""
    missing = missing_server_modules()
    if missing:
        raise ServerNotInstalled(
            f"{purpose} needs the server extra, which is not installed (missing {', '.join(missing)}): "
            f"{SERVER_EXTRA} (constraints.txt pins torch; it is in the repository), "
            "or tune against a hosted model with --server URL"
        )
