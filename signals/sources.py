"""The one seam between the bot and its signal adapters.

Every configured source becomes a `SignalSource`, built here by kind from configuration
(`[sources.<name>]`: a webhook; `[mqtt]`: the MQTT subscriber), so the service imports no
adapter. A source may serve HTTP routes, may run in the background, and reports its health;
each hands its signals to the bot's `SignalSink` and reports every refusal.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import APIRouter
from pydantic import SecretStr

from bot.secrets import split_secrets, webhook_secret_name, webhook_token_name
from signals.base import SignalSink
from signals.config import (
    PASSWORD_SECRET_NAME,
    SIGNING_SECRET_NAME,
    MqttConfig,
    WebhookSourceConfig,
)
from signals.mqtt import MqttSubscriber
from signals.presets import resolve
from signals.webhook import SignalStatus, WebhookReceiver

__all__ = ["SignalSource", "SourceContext", "build_sources"]


class SignalSource(Protocol):
    """A configured way in for signals."""

    name: str

    def router(self) -> APIRouter | None:
        """Its HTTP routes, if it serves any."""

    async def run(self) -> None:
        """Its background work until cancelled (returns at once if it has none)."""

    def health(self) -> dict[str, Any]:
        """Its state for /healthz; `ready` false when it cannot take signals now."""


@dataclass(frozen=True)
class SourceContext:
    """What every source gets from the bot."""

    sink: SignalSink
    #: a secret by name (raises MissingSecretError), and one that may be absent
    secret: Callable[[str], SecretStr]
    optional_secret: Callable[[str], SecretStr | None]
    #: a refusal: (source, kind, reason, where from: a client address or an MQTT topic)
    on_reject: Callable[[str, str, str, str], None]
    status: SignalStatus
    #: remembers a note across restarts; False if it was remembered already
    note_once: Callable[[str], Awaitable[bool]] | None = None


def build_sources(
    webhooks: Mapping[str, WebhookSourceConfig], mqtt: MqttConfig, context: SourceContext
) -> list[SignalSource]:
    """Every enabled source; ValueError with what to fix when one cannot be built."""
    sources: list[SignalSource] = [
        _webhook(name, config, context) for name, config in webhooks.items() if config.enabled
    ]
    if mqtt.enabled:
        sources.append(_Mqtt(mqtt, context))
    return sources


def _webhook(name: str, config: WebhookSourceConfig, context: SourceContext) -> WebhookReceiver:
    source = resolve(name, config)
    token = None if source.auth == "signature" else context.secret(webhook_token_name(name))
    try:
        return WebhookReceiver(
            source,
            split_secrets(context.secret(webhook_secret_name(name))),
            context.sink,
            token=token,
            on_reject=lambda kind, reason, client: context.on_reject(name, kind, reason, client),
            status=context.status,
        )
    except ValueError as exc:
        raise ValueError(
            f"{exc}: set {webhook_token_name(name)} (or its file) to a random string, e.g. "
            "`openssl rand -hex 24`"
        ) from None


class _Mqtt:
    """The MQTT subscriber as a source: no routes, a background loop, the broker's state."""

    def __init__(self, config: MqttConfig, context: SourceContext) -> None:
        self.name = f"mqtt:{config.source}"

        def rejected(kind: str, reason: str, topic: str) -> None:
            context.on_reject(config.source, kind, reason, f"mqtt {topic}")

        self._subscriber = MqttSubscriber(
            config,
            context.sink,
            password=context.optional_secret(PASSWORD_SECRET_NAME),
            signing_secret=context.optional_secret(SIGNING_SECRET_NAME),
            on_reject=rejected,
            note_once=context.note_once,
        )
        self._where = f"{config.host}:{config.port}"

    def router(self) -> APIRouter | None:
        return None

    async def run(self) -> None:
        await self._subscriber.run()

    def health(self) -> dict[str, Any]:
        subscriber = self._subscriber
        return {
            "ready": subscriber.connected,
            "broker": self._where,
            "state": "connected" if subscriber.connected else "down",
            "last_error": subscriber.last_error,
        }
