"""The server on Ray Serve: the same `create_app()` behind Ray's HTTP proxy, as N replicas that each load the model
once and keep their own micro-batcher (``pip install 'sharpzo[scale]'``).

Started by ``sharpzo serve --engine ray --replicas N``. Replicas share the ledger and the image features through
PostgreSQL (``SHARPZO_LEDGER=postgresql://...``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

# Ray on one host keeps every address on loopback (it reads this on import), and sends nothing home.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
# Serve kills an HTTP proxy whose start-up check takes over 5 s three times, and serve.start() then fails: on a
# host whose cores are busy (seen at a load of 10 on 2 cores) the proxy's first start takes longer than that. A local
# cluster started here inherits this; on a `ray start` cluster, set it where `ray start` runs.
STARTUP_ENV = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30"}
for _name, _value in {**LOOPBACK_ENV, **STARTUP_ENV}.items():
    os.environ.setdefault(_name, _value)

from ray import serve  # noqa: E402
from ray.exceptions import RayError  # noqa: E402
from ray.serve import Application  # noqa: E402
from starlette.types import ASGIApp, Message, Receive, Scope, Send  # noqa: E402

from .app import create_app  # noqa: E402
from .metrics import configure_access_log  # noqa: E402
from .settings import ServerSettings  # noqa: E402

REPLICA_HEADER = "sharpzo-replica"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplicaOptions:
    replicas: int = 1
    cpus: float = 1.0  # Ray CPUs reserved per replica; also its torch threads on the CPU unless SHARPZO_THREADS is set
    gpus: float | None = None  # None: 1 when the model runs on CUDA, else 0
    max_ongoing_requests: int = 32  # Ray's default of 5 would starve the micro-batcher
    max_replicas_per_node: int | None = None


class _ReplicaHeader:
    """Names the replica that answered on every response, so a client or a test can tell replicas apart."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, send_named if scope["type"] == "http" else send)


@serve.ingress()
class SharpZOReplica:
    """One replica: its own model, micro-batcher and model thread, loaded before Ray routes it any request (so
    ``/v1/health`` through the proxy answers only from a replica whose model is loaded)."""

    def __init__(self, settings: ServerSettings) -> None:
        configure_access_log(settings.access_log)
        self._app = create_app(settings)
        self._app.add_middleware(_ReplicaHeader, replica=serve.get_replica_context().replica_id.unique_id)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self._app

    def check_health(self) -> None:
        """Ray restarts a replica whose micro-batcher has died."""
        task = self._app.state.services.batcher._task
        if task is not None and task.done():
            raise RuntimeError("the micro-batcher stopped")


def replica_settings(settings: ServerSettings, options: ReplicaOptions) -> ServerSettings:
    if settings.threads == 0 and options.cpus >= 1:
        return settings.model_copy(update={"threads": int(options.cpus)})
    return settings


def _default_gpus(settings: ServerSettings) -> float:
    """One GPU a replica when the model runs on CUDA: asked for, or 'auto' on a cluster that has GPUs."""
    import ray

    if settings.device == "auto" and ray.is_initialized():
        return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    return 1.0 if settings.device == "cuda" else 0.0


def sharpzo_app(settings: ServerSettings, options: ReplicaOptions) -> Application:
    gpus = options.gpus if options.gpus is not None else _default_gpus(settings)
    placement: dict[str, Any] = {}
    if options.max_replicas_per_node is not None:
        placement["max_replicas_per_node"] = options.max_replicas_per_node
    deployment = serve.deployment(
        name="sharpzo",
        num_replicas=options.replicas,
        max_ongoing_requests=options.max_ongoing_requests,
        ray_actor_options={"num_cpus": options.cpus, "num_gpus": gpus},
        **placement,
    )(SharpZOReplica)
    return deployment.bind(replica_settings(settings, options))


class ServeStartError(RuntimeError):
    """Ray or its HTTP proxy could not start: the cluster or the host, not the settings."""


def serve_on_ray(
    settings: ServerSettings, options: ReplicaOptions, host: str, port: int, address: str | None,
    proxy_location: str = "EveryNode", node_ip_address: str = "127.0.0.1",
) -> None:
    """Serve until interrupted: on the Ray cluster at ``address`` (``auto``: the one ``ray start`` made here), or on
    a new single-node one on loopback; ``node_ip_address`` is this host's Ray node."""
    import ray

    from .ledger import open_ledger

    open_ledger(settings.ledger).close()  # a bad ledger fails here, not in every replica Ray retries
    if not settings.feature_store_url():
        log.warning("ledger %s is not PostgreSQL: replicas on other hosts cannot share it or image sets",
                    settings.ledger)
    try:
        dashboard: dict[str, Any] = {} if address else {"include_dashboard": False}
        ray.init(address=address, _node_ip_address=node_ip_address, **dashboard)
        serve.start(proxy_location=proxy_location, http_options={"host": host, "port": port})
    except (RayError, ConnectionError, TimeoutError) as exc:  # serve.start waits 60 s for its proxy, then times out
        detail = " ".join(str(exc).strip().splitlines()[-2:])
        raise ServeStartError(f"Ray Serve did not start ({type(exc).__name__}): {detail}") from exc
    # Serve's blocking loop ends on KeyboardInterrupt only: SIGTERM (docker stop, systemd) must end it too, and so
    # must SIGINT when this was started as a background job, which inherits SIGINT ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    serve.run(sharpzo_app(settings, options), name="sharpzo", route_prefix="/", blocking=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> None:
    """``sharpzo serve --engine ray``: the Ray flags here, every other ``sharpzo serve`` flag as there."""
    from pydantic import ValidationError

    from . import __main__ as plain
    from .keys import KeyConfigError
    from .ledger import LedgerError

    parser = argparse.ArgumentParser(prog="sharpzo serve --engine ray", add_help=False)
    parser.add_argument("--replicas", type=int, default=1, help="replicas, each with its own model (default: 1)")
    parser.add_argument("--replica-cpus", type=float, default=1.0,
                        help="Ray CPUs per replica, also its torch threads on the CPU (default: 1)")
    parser.add_argument("--replica-gpus", type=float, default=None,
                        help="GPUs per replica (default: 1 when the model runs on CUDA, else 0)")
    parser.add_argument("--max-replicas-per-node", type=int, default=None, help="spread replicas over nodes")
    parser.add_argument("--max-ongoing-requests", type=int, default=ReplicaOptions.max_ongoing_requests,
                        help="requests Ray sends one replica at once")
    parser.add_argument("--ray-address", default=None,
                        help="a running cluster (auto: the one `ray start` made on this host); unset: a new local one")
    parser.add_argument("--node-ip-address", default="127.0.0.1", help="this host's Ray node (default: 127.0.0.1)")
    parser.add_argument("--proxy-location", default="EveryNode", choices=["EveryNode", "HeadOnly", "Disabled"])
    ours, rest = parser.parse_known_args(argv)
    if {"-h", "--help"} & set(rest):
        parser.print_help()  # then the flags of plain `sharpzo serve`, which also apply
    args = plain.parse_args(rest)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    options = ReplicaOptions(ours.replicas, ours.replica_cpus, ours.replica_gpus, ours.max_ongoing_requests,
                             ours.max_replicas_per_node)
    try:
        settings = plain.settings_from(args)
        serve_on_ray(settings, options, args.host, args.port, ours.ray_address, ours.proxy_location,
                     ours.node_ip_address)
    except (ValidationError, KeyConfigError, LedgerError) as exc:
        print(f"sharpzo serve: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    except ServeStartError as exc:
        print(f"sharpzo serve: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
    except KeyboardInterrupt as stop:
        # exiting stops a local Ray cluster started here (Ray's exit hook)
        print(f"sharpzo serve: stopped by {stop}", file=sys.stderr)


if __name__ == "__main__":
    main()
