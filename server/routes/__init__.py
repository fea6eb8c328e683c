"""The server's routes, one APIRouter per area; create_app includes every router in ROUTERS. Adding a route: a
function on the router of its area, or a new module here with its router added to ROUTERS. The try-it page
(ui.py) is included by create_app unless --no-ui."""

from __future__ import annotations

from vitserve.server.routes import classify, health, v2

ROUTERS = (health.router, classify.router, v2.router)
