"""``python -m sharpzo.server``: load the model, then serve the API with uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys

from .settings import ServerSettings

# settings that also have a flag; each flag's help is its field's description
_FLAGS = (
    "model", "pretrained", "device", "precision", "threads", "max_candidates", "max_classes", "max_images_per_set",
    "max_body_bytes", "image_cache_dir", "auth", "ledger", "api_keys_file",
)


def _settings_help() -> str:
    lines = ["every setting (environment variable, default: meaning):"]
    for name, field in ServerSettings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        lines.append(f"  SHARPZO_{name.upper()} ({default!r}): {field.description or ''}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sharpzo serve",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve a frozen open_clip CLIP over HTTP for black-box prompt tuning. Every option can also "
        "be set as an environment variable SHARPZO_<OPTION> (e.g. SHARPZO_MODEL=ViT-B-32 SHARPZO_PRETRAINED=openai).",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1; 0.0.0.0 in containers)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default: 8000)")
    parser.add_argument("--log-level", default="info", help="uvicorn log level (default: info)")
    for name in _FLAGS:
        field = ServerSettings.model_fields[name]
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, help=field.description)
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> ServerSettings:
    """The flags given override the SHARPZO_* environment; raises pydantic's ValidationError."""
    return ServerSettings(**{name: getattr(args, name) for name in _FLAGS if getattr(args, name) is not None})


def main(argv: list[str] | None = None) -> None:
    engine = argparse.ArgumentParser(add_help=False)
    engine.add_argument("--engine", choices=["uvicorn", "ray"], default="uvicorn")
    chosen, argv = engine.parse_known_args(argv)
    if chosen.engine == "ray":  # replicas on Ray Serve (the scale extra): `sharpzo serve --engine ray --help`
        from .ray_serve import main as serve_on_ray

        return serve_on_ray(argv)
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from pydantic import ValidationError

    from .app import create_app
    from .keys import KeyConfigError
    from .ledger import LedgerError
    from .metrics import configure_access_log
    from .model import UnsupportedModel

    try:
        settings = settings_from(args)
        configure_access_log(settings.access_log)
        app = create_app(settings)
    except (UnsupportedModel, ValidationError, KeyConfigError, LedgerError) as exc:
        print(f"sharpzo serve: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    import uvicorn

    # the app writes its own access line (JSON, with the key and the queries): uvicorn's would be a second one
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
