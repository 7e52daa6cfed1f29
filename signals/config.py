"""Configuration of the signal adapters, one model per kind of source."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["WebhookSourceConfig"]


class WebhookSourceConfig(BaseModel):
    """A webhook source such as VoiceOfChain: `POST /webhooks/<source>`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    max_body_bytes: int = Field(16_384, ge=256, le=1_048_576, description="larger bodies get 413")
    max_clock_skew_s: int = Field(
        300, ge=1, le=3600, description="how far X-Signature's `t` may be from now"
    )
    allow_query_token: bool = Field(
        False,
        description="also accept ?token=<BOT_WEBHOOK_TOKEN_<SOURCE>>, for senders that cannot "
        "set headers (weaker: the token travels in the URL and is not bound to the body)",
    )
    requests_per_s: float = Field(
        50, gt=0, description="sustained requests per client address before answering 429"
    )
    burst: int = Field(100, ge=1, description="requests one client may send at once before 429")
