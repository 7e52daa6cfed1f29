"""Schemathesis against the app's own OpenAPI document: whatever a client sends, never a 5xx,
never a signal from an unauthenticated or invalid request, every 4xx names what was wrong."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from pydantic import SecretStr

from bot.app import create_app
from bot.messages import Signal
from signals.config import WebhookSourceConfig
from signals.presets import resolve
from signals.webhook import WebhookReceiver

TOKEN = "fuzz-token-0123456789abcdef0123456789"


class Sink:
    def __init__(self) -> None:
        self.signals: list[Signal] = []

    async def __call__(self, signal: Signal) -> bool:
        self.signals.append(signal)
        return True


SINK = Sink()


async def _healthy() -> dict[str, Any]:
    return {"ready": True}


async def _status(source: str, signal_id: str) -> dict[str, Any] | None:
    return None


def _app() -> Any:
    receivers = [
        WebhookReceiver(
            resolve(name, WebhookSourceConfig(requests_per_s=10_000, burst=10_000)),
            [SecretStr("fuzz-secret-value")],
            SINK,
            token=SecretStr(TOKEN) if name == "tradingview" else None,
            status=_status,
        )
        for name in ("voiceofchain", "tradingview")
    ]
    return create_app([receiver.router() for receiver in receivers], _healthy)


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@schema.parametrize()
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_request_gets_a_5xx_or_an_order(case: schemathesis.Case) -> None:
    response = case.call()

    assert response.status_code < 500, response.text
    if 400 <= response.status_code < 500:
        answer = response.json()
        assert answer.get("detail"), answer  # every refusal says what is wrong
    assert SINK.signals == []  # nobody signed, nobody knew the token
