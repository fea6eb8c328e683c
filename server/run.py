"""`vitserve serve`: the app under uvicorn, with a shutdown that drains instead of dropping requests.

On SIGTERM / SIGINT: /readyz answers 503 at once, so load balancers stop sending; for `drain_grace_s` the server
keeps reading and serving what reaches it (requests already on the wire are not cut off half-read); then uvicorn
stops accepting connections and waits for the requests in flight (queued ones included) to be answered; then the
lifespan drains the batchers and the process exits. A second signal shuts down without the grace.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading

import uvicorn

from vitserve.errors import VitServeError
from vitserve.server.app import create_app
from vitserve.server.metrics import Metrics
from vitserve.server.repository import Repository
from vitserve.server.settings import Settings

log = logging.getLogger(__name__)


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, repository: Repository, grace_s: float):
        super().__init__(config)
        self._repository = repository
        self._grace_s = grace_s
        self._timer: threading.Timer | None = None

    def handle_exit(self, sig, frame) -> None:
        if self._timer is None and self._grace_s > 0:
            self._repository.draining = True  # readiness fails from the first signal on
            self._timer = threading.Timer(self._grace_s, super().handle_exit, (sig, frame))
            self._timer.daemon = True
            self._timer.start()
            return
        if self._timer is not None:
            self._timer.cancel()
        self._repository.draining = True
        super().handle_exit(sig, frame)


def serve(settings: Settings) -> int:
    """Loads the models (errors surface here, before any port is opened), then serves until a signal."""
    for port in (settings.port, settings.grpc_port):
        check_port_free(settings.host, port)
    repository = Repository(settings, Metrics(settings.max_batch_size))
    repository.load_all()
    app = create_app(settings, repository=repository)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, lifespan="on", log_level="info",
                            timeout_graceful_shutdown=int(settings.timeout_ms / 1000) + 5, access_log=False)
    server = _DrainingServer(config, repository, settings.drain_grace_s)
    server.run()
    return 0 if server.started else 1


def check_port_free(host: str, port: int | None) -> None:
    """VitServeError when `host:port` cannot be listened on (taken, or not an address of this machine), so that
    the command fails at once with the reason instead of after loading the model. (Another process can still take
    the port in between; the servers then fail with their own error.)"""
    if not port:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and gRPC bind
            probe.bind(address)
    except OSError as e:
        hint = "; another process uses it: choose another port" if e.errno == errno.EADDRINUSE else ""
        raise VitServeError(f"cannot listen on {host}:{port}: {e.strerror or e}{hint}") from e
