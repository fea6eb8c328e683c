"""The try-it page: GET / and its assets under /ui/ (server/ui/). A static page that calls the same POST /classify a
program calls; the server fetches nothing for it, and everything it loads is served from here (no CDN, no external
fonts). Left out with --no-ui."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

UI = Path(__file__).resolve().parent.parent / "ui"
ASSETS = {"app.js": "text/javascript", "app.css": "text/css", "icon.svg": "image/svg+xml"}

# The page loads its own script and style and shows images the browser itself holds (blob: URLs); it talks only to
# this server. A page that tries more (an injected script, an external image) is stopped by the browser.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
       "form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}

router = APIRouter(tags=["ui"], include_in_schema=False)


@router.get("/")
def page() -> FileResponse:
    """The try-it page."""
    return FileResponse(UI / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/ui/{name}")
def asset(name: str) -> FileResponse:
    if name not in ASSETS:  # only the named files: no path from the request reaches the file system
        raise HTTPException(404, f"no asset {name!r}")
    return FileResponse(UI / name, media_type=ASSETS[name], headers=HEADERS)
