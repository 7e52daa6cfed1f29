"""Configuration of the signal sources: one `[sources.<name>]` section per webhook source,
and the `[mqtt]` section (`MqttConfig`; the subscriber is `signals.mqtt`).

A source is configuration, not code: its route is `/webhooks/<name>`, its authentication is
one of three modes, and a field mapping turns the provider's JSON into the Signal schema.
A source named after a preset (`voiceofchain`, `tradingview`) starts from that preset; any
field given here replaces the preset's.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = [
    "PASSWORD_SECRET_NAME",
    "SIGNING_SECRET_NAME",
    "AuthMode",
    "FieldMapping",
    "MqttConfig",
    "WebhookSourceConfig",
]

PASSWORD_SECRET_NAME: Final = "BOT_MQTT_PASSWORD"  # noqa: S105 - the name, not the secret
SIGNING_SECRET_NAME: Final = "BOT_MQTT_SIGNING_SECRET"  # noqa: S105 - the name

#: `signature`: `X-Signature` HMAC over the body (the strongest); `body_token`: a `token` field
#: in the JSON body (for senders that cannot set headers, e.g. TradingView); `query_token`:
#: `?token=` in the URL (weakest: it lands in proxy logs). A signature is accepted in every mode.
AuthMode = Literal["signature", "body_token", "query_token"]
SignalField = Literal[
    "id",
    "symbol",
    "side",
    "action",
    "entry",
    "stop_loss",
    "take_profit",
    "leverage",
    "ts",
    "strategy",
]


class FieldMapping(BaseModel):
    """The provider's names and values for each Signal field.

    `fields` maps a Signal field to the provider's key (`take_profit` may list several keys,
    e.g. tp1..tp3); `values` maps, per Signal field, the provider's value (compared without
    case when it is ASCII, exactly otherwise) to the Signal's: a value not listed leaves the
    field out. Fields not mapped are read under their own name.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    fields: dict[SignalField, str | tuple[str, ...]] = Field(default_factory=dict)
    values: dict[SignalField, dict[str, str]] = Field(default_factory=dict)
    tradingview_ticker: bool = Field(
        False,
        description="the symbol is TradingView's {{ticker}}: an exchange prefix (BYBIT:) and "
        "the perpetual contract's suffix (.P) are dropped, BYBIT:BTCUSDT.P is BTCUSDT",
    )

    @field_validator("values")
    @classmethod
    def _ascii_keys_without_case(
        cls, values: dict[SignalField, dict[str, str]]
    ) -> dict[SignalField, dict[str, str]]:
        """A provider's ASCII values are compared in lower case: so are the keys given."""
        return {
            field: {(key.lower() if key.isascii() else key): value for key, value in table.items()}
            for field, table in values.items()
        }


class WebhookSourceConfig(BaseModel):
    """A webhook source: `POST /webhooks/<source>`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    preset: Literal["", "voiceofchain", "tradingview"] = Field(
        "", description="start from a preset (default: the one named like the source, if any)"
    )
    auth: AuthMode | None = Field(None, description="default: the preset's, else signature")
    mapping: FieldMapping | None = Field(None, description="default: the preset's, else none")
    token_field: str = Field("token", description="the body field holding the token")
    max_body_bytes: int = Field(16_384, ge=256, le=1_048_576, description="larger bodies get 413")
    body_timeout_s: float = Field(
        5.0, gt=0, le=60, description="a body not fully sent by then is refused (408)"
    )
    max_clock_skew_s: int = Field(
        300, ge=1, le=3600, description="how far X-Signature's `t` may be from now"
    )
    requests_per_s: float = Field(
        50, gt=0, description="sustained requests per client address before answering 429"
    )
    burst: int = Field(100, ge=1, description="requests one client may send at once before 429")
    auth_failures_before_lockout: int = Field(
        10, ge=1, description="failed authentications from one address within a minute"
    )
    lockout_s: float = Field(300, ge=1, description="how long such an address then gets 429")
    allowed_ips: tuple[str, ...] = Field(
        (), description="client addresses or CIDR networks; empty: any (see allow_preset_ips)"
    )
    allow_preset_ips: bool = Field(
        False, description="add the preset's published sender addresses to allowed_ips"
    )
    trusted_proxies: tuple[str, ...] = Field(
        (),
        description="reverse proxies whose X-Forwarded-For is believed; nobody else's is",
    )
    id_bucket_s: int = Field(
        60,
        ge=1,
        le=86_400,
        description="a body without an id gets one from its hash and this time bucket, so a "
        "provider's retry within it is a duplicate",
    )

    @field_validator("allowed_ips", "trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or CIDR network") from None
        return value


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """A client's TLS context that verifies the broker's certificate and name: against the
    system's CA certificates, or against `ca_file`'s alone; ValueError saying why the file
    cannot serve."""
    if ca_file is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ValueError(
            f"{ca_file} cannot be read as PEM CA certificates ({reason}): give the file of "
            "the CA certificate that signed the broker's"
        ) from None


class MqttConfig(BaseModel):
    """The `[mqtt]` section: where signals come from and how they are delivered."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(False, description="subscribe to the broker when the bot runs")
    host: str = Field(
        "127.0.0.1", min_length=1, pattern=r"^\S+$", description="broker host name or address"
    )
    port: int = Field(1883, ge=1, le=65535, description="broker port (8883 is usual with TLS)")
    topic: str = Field(
        "signals/voiceofchain/#",
        description="topic filter, subscribed with QoS 1; a trailing wildcard level names the "
        "strategy (see signals.mqtt)",
    )
    source: str = Field(
        "voiceofchain",
        pattern=r"^[a-z0-9_]{1,32}$",
        description="source the signals are attributed to: strategies subscribed to it get them, "
        "and an id seen on the webhook and on MQTT is one signal",
    )
    client_id: str = Field(
        "bybit-signal-bot",
        pattern=r"^[A-Za-z0-9._-]{1,128}$",
        description="stable MQTT client id: the broker keeps the session under it; every bot "
        "instance needs its own (a second connection with the same id evicts the first)",
    )
    session_expiry_s: int = Field(
        86_400,
        ge=0,
        le=0xFFFFFFFF,
        description="how long the broker keeps the session and queues messages while the bot is "
        "away (0: no persistent session)",
    )
    shared_group: str = Field(
        "",
        pattern=r"^[A-Za-z0-9_.-]{0,64}$",
        description="subscribe as $share/<group>/<topic> so instances split one stream; "
        "empty = no shared subscription. mosquitto 2.0 also deals an instance that is down but "
        "whose session lives its share, delivered when it returns: keep session_expiry_s short",
    )
    username: str = Field("", description=f"broker user; its password is {PASSWORD_SECRET_NAME}")
    tls: bool = Field(False, description="TLS with the system's CA certificates")
    tls_ca_file: Path | None = Field(
        None,
        description="PEM file of the CA certificate(s) that signed the broker's certificate, "
        "trusted instead of the system's (a private CA, a self-signed broker); needs tls = true",
    )
    control_topic: str = Field(
        "",
        pattern=r"^$|^[A-Za-z0-9_./-]{1,128}$",
        description="the kill switch over MQTT: halt/resume commands signed with "
        "BOT_ADMIN_SECRET (empty: off; no wildcards)",
    )
    require_signature: bool = Field(
        False,
        description=f"reject every message not signed with {SIGNING_SECRET_NAME} (when false, "
        "only signed messages are checked)",
    )
    max_signature_age_s: int = Field(
        86_400,
        ge=1,
        le=0xFFFFFFFF,
        description="how far a signature's `t` may be from now; messages queued in the session "
        "arrive late, so as long as session_expiry_s by default (raise both together)",
    )
    max_payload_bytes: int = Field(
        16_384,
        ge=256,
        le=1_048_576,
        description="larger messages are rejected; the broker is told (MQTT v5 Maximum Packet "
        "Size) not to send one much larger at all",
    )
    max_unacked_messages: int = Field(
        100,
        ge=1,
        le=65_535,
        description="MQTT v5 Receive Maximum: messages the broker may send ahead of our acks "
        "(bounds memory)",
    )
    keepalive_s: int = Field(30, ge=5, le=65_535, description="MQTT keepalive interval")
    connect_timeout_s: float = Field(
        10, gt=0, le=120, description="bound on connecting, CONNACK, SUBACK and DISCONNECT"
    )
    reconnect_min_s: float = Field(
        0.5, gt=0, le=60, description="first delay before reconnecting; doubles per failure"
    )
    reconnect_max_s: float = Field(30, gt=0, le=3600, description="longest reconnect delay")

    @field_validator("topic")
    @classmethod
    def _topic_filter(cls, value: str) -> str:
        if not value or len(value.encode()) > 65_535 or "\x00" in value:
            raise ValueError("must be 1 to 65535 bytes of UTF-8 without NUL")
        if value.startswith("$share/"):
            raise ValueError("set shared_group instead of writing $share/ into the topic")
        levels = value.split("/")
        for index, level in enumerate(levels):
            if "#" in level and (level != "#" or index != len(levels) - 1):
                raise ValueError("'#' must be a whole level, and the last one")
            if "+" in level and level != "+":
                raise ValueError("'+' must be a whole level")
        return value

    @field_validator("control_topic")
    @classmethod
    def _apart_from_signals(cls, value: str, info: ValidationInfo) -> str:
        """Commands on a topic the signals' filter takes reach both subscribers: each
        refused by the other, logged and counted as an attack would be."""
        topic = info.data.get("topic")  # absent if it was invalid itself
        if not (value and topic):
            return value
        # paho's own matching, imported only here: every command reads this module
        from paho.mqtt.client import topic_matches_sub

        for command in ("halt", "resume"):
            if topic_matches_sub(topic, f"{value}/{command}"):
                raise ValueError(
                    f"its commands ({value}/{command}) would also match the signals' topic "
                    f"{topic!r}: choose a control_topic outside it"
                )
        return value

    @field_validator("tls_ca_file")
    @classmethod
    def _usable_ca_file(cls, value: Path | None) -> Path | None:
        """Read now, as every connection will read it: a start-up error, not one per retry."""
        if value is not None:
            tls_context(value)
        return value

    @model_validator(mode="after")
    def _backoff_order(self) -> MqttConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be at least reconnect_min_s")
        return self

    @model_validator(mode="after")
    def _ca_file_needs_tls(self) -> MqttConfig:
        if self.tls_ca_file is not None and not self.tls:
            raise ValueError("tls_ca_file is set but tls is false: set tls = true to use it")
        return self

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS of a connection to the broker (None: plain MQTT). Reads files: call it
        off the event loop."""
        return tls_context(self.tls_ca_file) if self.tls else None

    @property
    def subscription(self) -> str:
        """The filter actually subscribed: the topic, or its shared form."""
        return f"$share/{self.shared_group}/{self.topic}" if self.shared_group else self.topic
