"""The bot's HTTP server: webhook receivers, `GET /healthz`, `GET /livez` and `GET /metrics`.

Anything a client sends is answered with a 4xx that says what is wrong; the handlers of
FastAPI's own validation and of unknown routes are replaced to keep every answer JSON.

A signal's webhook is the one route on the way to an order. Declared as a `DirectRoute`, its
POST is served ahead of FastAPI's middleware, routing and dependency resolution (100-200 us
of CPU per request here, about what the webhook's own work takes): the endpoint gets the
`Request`, and its answer is counted as every other route's is. It stays in the OpenAPI
document, and everything else at its path (another method, a trailing slash) goes the usual
way.

`GET /metrics` renders every series on the event loop (a few ms): scrapes that come while one
is being refreshed and rendered share its body, so fifty at once cost one rendering, not fifty
back to back in front of every signal's 202.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bot import metrics
from bot.admin import AdminRoutes
from bot.coalesce import Coalesced
from bot.logs import logger

__all__ = ["DirectRoute", "create_app"]

HealthCheck = Callable[[], Awaitable[dict[str, Any]]]
Endpoint = Callable[[Request], Awaitable[Response]]


class DirectRoute(APIRoute):
    """A POST route, at a fixed path, whose endpoint takes only the `Request`: served ahead
    of the app's middleware and routing (see the module's notes)."""


def create_app(
    routers: Iterable[APIRouter],
    health: HealthCheck,
    admin: AdminRoutes | None = None,
    *,
    refresh_metrics: Callable[[], Awaitable[None]] | None = None,
) -> ASGIApp:
    """`health()` returns the /healthz body; a false `ready` in it makes the answer 503.
    `/livez` answers 200 while the event loop does. The admin routes are served only when
    `admin` is given (an admin secret exists); `refresh_metrics()` runs before each scrape."""
    routers = list(routers)
    app = FastAPI(
        title="bybit-signal-bot",
        description="Signals in (webhooks), health and metrics out; orders go to Bybit.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        # No 307 to the path without its trailing slash: its Location would be built from the
        # client's Host header, and a sender must use the exact route anyway.
        redirect_slashes=False,
    )
    for router in routers:
        app.include_router(router)
    if admin is not None:
        app.include_router(admin.router())

    app.add_middleware(_CountResponses)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": exc.detail, "detail": exc.detail}, status_code=exc.status_code
        )

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        status = await health()
        return JSONResponse(status, status_code=200 if status.get("ready") else 503)

    @app.get("/livez")
    async def livez() -> JSONResponse:
        return JSONResponse({"live": True})

    @app.get(
        "/metrics", responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}}, response_class=Response
    )
    async def prometheus() -> Response:
        return Response(await scrape(), media_type=CONTENT_TYPE_LATEST)

    async def render() -> bytes:
        if refresh_metrics is not None:
            await refresh_metrics()
        return generate_latest(metrics.REGISTRY)

    scrape = Coalesced(render)

    direct = _direct_posts(routers)
    return _DirectPosts(app, direct) if direct else app


def _direct_posts(routers: Iterable[APIRouter]) -> dict[str, Endpoint]:
    """The `DirectRoute`s' endpoints by path."""
    direct: dict[str, Endpoint] = {}
    for router in routers:
        for route in router.routes:
            if not isinstance(route, DirectRoute):
                continue
            if route.methods != {"POST"} or route.param_convertors:
                raise ValueError(f"{route.path}: a DirectRoute is a POST at a fixed path")
            direct[route.path] = route.endpoint
    return direct


class _DirectPosts:
    """Serves the `DirectRoute`s' POSTs itself, and everything else through `app`."""

    def __init__(self, app: ASGIApp, endpoints: Mapping[str, Endpoint]) -> None:
        self._app = app
        self._endpoints = dict(endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = None
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self._endpoints.get(scope["path"])
        if endpoint is None:
            await self._app(scope, receive, send)
            return
        try:
            response = await endpoint(Request(scope, receive))
        except Exception:  # a bug: the sender still gets a JSON answer, the log the traceback
            logger.exception("{path} failed", path=scope["path"])
            response = JSONResponse(
                {"error": "internal error", "detail": "the request could not be handled"},
                status_code=500,
            )
        metrics.HTTP_RESPONSES.labels(scope["path"], str(response.status_code)).inc()
        await response(scope, receive, send)


class _CountResponses:
    """Counts every answer by route and status: a plain ASGI middleware (Starlette's
    `BaseHTTPMiddleware` costs a task and a stream per request, on every webhook's path)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                label = getattr(route, "path", "unmatched")
                metrics.HTTP_RESPONSES.labels(label, str(message["status"])).inc()
            await send(message)

        await self._app(scope, receive, counted)
