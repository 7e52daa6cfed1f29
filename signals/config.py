"""Configuration of the webhook sources: one `[sources.<name>]` section each.

A source is configuration, not code: its route is `/webhooks/<name>`, its authentication is
one of three modes, and a field mapping turns the provider's JSON into the Signal schema.
A source named after a preset (`voiceofchain`, `tradingview`) starts from that preset; any
field given here replaces the preset's.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["AuthMode", "FieldMapping", "WebhookSourceConfig"]

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
    case) to the Signal's: a value not listed leaves the field out. Fields not mapped are
    read under their own name.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    fields: dict[SignalField, str | tuple[str, ...]] = Field(default_factory=dict)
    values: dict[SignalField, dict[str, str]] = Field(default_factory=dict)


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
