"""`vitserve serve`: the app under uvicorn, with a shutdown that drains instead of dropping requests.

On SIGTERM / SIGINT: /readyz answers 503 at once; uvicorn stops accepting connections and waits for the requests
in flight (queued ones included) to be answered; then the lifespan drains the batcher and the process exits.
"""

from __future__ import annotations

import logging

import uvicorn

from vitserve.server.app import create_app, load_service
from vitserve.server.settings import Settings

log = logging.getLogger(__name__)


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service):
        super().__init__(config)
        self._service = service

    def handle_exit(self, sig, frame) -> None:
        self._service.draining = True  # readiness fails from the first signal on
        super().handle_exit(sig, frame)


def serve(settings: Settings) -> int:
    """Loads the model (errors surface here, before any port is opened), then serves until a signal."""
    service = load_service(settings)
    app = create_app(settings, service=service)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, lifespan="on", log_level="info",
                            timeout_graceful_shutdown=int(settings.timeout_ms / 1000) + 5, access_log=False)
    server = _DrainingServer(config, service)
    server.run()
    return 0 if server.started else 1
