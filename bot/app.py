"""The bot's HTTP server: webhook receivers, `GET /healthz`, `GET /livez` and `GET /metrics`.

Anything a client sends is answered with a 4xx that says what is wrong; the handlers of
FastAPI's own validation and of unknown routes are replaced to keep every answer JSON.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bot import metrics
from bot.admin import AdminRoutes

__all__ = ["create_app"]

HealthCheck = Callable[[], Awaitable[dict[str, Any]]]


def create_app(
    routers: Iterable[APIRouter],
    health: HealthCheck,
    admin: AdminRoutes | None = None,
    *,
    refresh_metrics: Callable[[], Awaitable[None]] | None = None,
) -> FastAPI:
    """`health()` returns the /healthz body; a false `ready` in it makes the answer 503.
    `/livez` answers 200 while the event loop does. The admin routes are served only when
    `admin` is given (an admin secret exists); `refresh_metrics()` runs before each scrape."""
    app = FastAPI(
        title="bybit-signal-bot",
        description="Signals in (webhooks), health and metrics out; orders go to Bybit.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
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

    @app.get("/metrics")
    async def prometheus() -> Response:
        if refresh_metrics is not None:
            await refresh_metrics()
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


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
