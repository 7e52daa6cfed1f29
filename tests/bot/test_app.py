"""The bot's HTTP app: a `DirectRoute` (a signal's webhook) is served ahead of FastAPI's
middleware and routing, and still answers, counts and documents itself like any route."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import SecretStr

from bot import app as bot_app
from bot import metrics
from bot.admin import AdminRoutes
from bot.app import DirectRoute, create_app
from tests.conftest import logged_errors


async def _healthy() -> dict[str, Any]:
    return {"ready": True}


def _client(endpoint: Any, path: str = "/hot", methods: tuple[str, ...] = ("POST",)) -> TestClient:
    router = APIRouter()
    router.add_api_route(path, endpoint, methods=list(methods), route_class_override=DirectRoute)
    return TestClient(create_app([router], _healthy), raise_server_exceptions=False)


async def _echo(request: Request) -> Response:
    return JSONResponse({"got": (await request.body()).decode()}, status_code=202)


def _count(route: str, status: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value(
            "bot_http_responses_total", {"route": route, "status": status}
        )
        or 0.0
    )


def test_a_direct_post_is_answered_counted_and_stays_in_the_openapi_document() -> None:
    client = _client(_echo)
    before = _count("/hot", "202")

    answer = client.post("/hot", content=b"signal")

    assert (answer.status_code, answer.json()) == (202, {"got": "signal"})
    assert _count("/hot", "202") == before + 1
    assert "post" in client.get("/openapi.json").json()["paths"]["/hot"]


def test_everything_else_at_its_path_goes_the_usual_way() -> None:
    client = _client(_echo)

    wrong_method = client.get("/hot")
    slashed = client.post("/hot/", content=b"x", follow_redirects=False)

    assert wrong_method.status_code == 405
    assert "detail" in wrong_method.json()
    assert slashed.status_code != 202  # FastAPI's answer (a redirect), not the endpoint's
    assert client.get("/livez").json() == {"live": True}


def test_an_endpoint_that_fails_answers_a_json_500_and_logs_the_traceback() -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("a bug")

    client = _client(broken)
    with logged_errors() as lines:
        answer = client.post("/hot", content=b"{}")

    assert answer.status_code == 500
    assert answer.json()["error"] == "internal error"
    assert any("/hot failed" in line and "RuntimeError: a bug" in line for line in lines)


@pytest.mark.parametrize(("path", "methods"), [("/hot/{signal_id}", ("POST",)), ("/hot", ("GET",))])
def test_a_direct_route_is_a_post_at_a_fixed_path(path: str, methods: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="a DirectRoute is a POST at a fixed path"):
        _client(_echo, path, methods)


def test_a_trailing_slash_is_not_redirected_by_the_clients_host_header() -> None:
    client = _client(_echo)

    answer = client.post("/hot/", content=b"x", headers={"Host": "evil.example"})

    assert answer.status_code == 404
    assert "location" not in answer.headers
    assert answer.json()["error"] == "Not Found"


def test_the_openapi_document_names_every_answer_of_the_admin_routes_and_metrics() -> None:
    async def apply(*_: Any) -> dict[str, Any]:
        return {}

    admin = AdminRoutes(SecretStr("admin-secret"), apply, ["follow"])
    document = TestClient(create_app([], _healthy, admin)).get("/openapi.json").json()

    for route in ("/admin/halt", "/admin/resume"):
        answers = document["paths"][route]["post"]["responses"]
        assert {"200", "401", "408", "409", "413", "422", "503"} <= set(answers), route
    metrics_answer = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics_answer) == [CONTENT_TYPE_LATEST]


def test_scrapes_that_come_together_share_one_rendering(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rendering /metrics runs on the event loop (a few ms): 50 scrapes at once must cost one
    rendering, not 50 back to back, which would hold every signal's 202 up meanwhile."""
    renders = []
    real = bot_app.generate_latest

    def counted(registry: Any) -> bytes:
        renders.append(1)
        return real(registry)

    monkeypatch.setattr(bot_app, "generate_latest", counted)
    release = asyncio.Event()

    async def slow_refresh() -> None:
        await release.wait()

    async def fifty_scrapes() -> list[int]:
        app = create_app([], _healthy, refresh_metrics=slow_refresh)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bot") as client:
            scrapes = [asyncio.ensure_future(client.get("/metrics")) for _ in range(50)]
            await asyncio.sleep(0.1)
            release.set()
            return [answer.status_code for answer in await asyncio.gather(*scrapes)]

    assert asyncio.run(fifty_scrapes()) == [200] * 50
    assert len(renders) == 1
