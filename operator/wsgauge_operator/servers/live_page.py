"""The live page: ``GET /ui/`` on the operator's stats port, its assets from the package.

The page (``live_assets/index.html``, ``live.js``, ``live.css``) is static; it opens the
operator's ``/stats/ws`` on its own origin (a URL relative to the page, so it works behind
``kubectl port-forward``, an Ingress with a path prefix or the same host) and renders what
:mod:`.live_view` pushes. Nothing is fetched from elsewhere: the Content-Security-Policy
allows only the page's own origin. ``GET /`` redirects to the page.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

ASSETS = {
    "index.html": "text/html",
    "live.js": "text/javascript",
    "live.css": "text/css",
}
"""The page's files and their content types (nothing else is served)."""

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def asset(name: str) -> bytes:
    """The bytes of one of the page's files (``KeyError`` for any other name)."""
    if name not in ASSETS:
        raise KeyError(name)
    return resources.files("wsgauge_operator.servers").joinpath("live_assets", name).read_bytes()


async def _asset(request: web.Request) -> web.Response:
    name = request.match_info.get("name") or "index.html"
    if name not in ASSETS:
        return web.json_response({"error": "no such file"}, status=404)
    return web.Response(
        body=asset(name), content_type=ASSETS[name], charset="utf-8", headers=SECURITY_HEADERS
    )


async def _to_page(request: web.Request) -> web.Response:
    raise web.HTTPFound("ui/")


def add_page_routes(app: web.Application) -> None:
    """Serve the page at ``/ui/`` (and ``/`` redirecting there)."""
    app.router.add_get("/", _to_page)
    app.router.add_get("/ui", _to_page)
    app.router.add_get("/ui/", _asset)
    app.router.add_get("/ui/{name}", _asset)
