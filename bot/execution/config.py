"""The executor's configuration: how hard it tries, how it waits, how it follows orders."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ExecutionConfig"]


class ExecutionConfig(BaseModel):
    """`[execution]`: retries, look-ups and reconciliation of orders. Every wait is bounded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_send_attempts: int = Field(
        6, ge=1, le=20, description="sends of one order per run, each with the same orderLinkId"
    )
    max_total_sends: int = Field(
        12,
        ge=1,
        le=100,
        description="sends of one order over its whole life (restarts included); after that "
        "an order the venue does not show is journaled Rejected",
    )
    unseen_final_after_s: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="an order that may have reached the venue is declared never sent (Rejected) "
        "only if look-ups still miss it this long after its last send, whatever else says no; "
        "one the venue acknowledged is journaled Cancelled (gone from the venue) once look-ups "
        "have missed it, open and in its history, this long",
    )
    backoff_base_s: float = Field(
        0.1, gt=0, le=10, description="first wait after an ambiguous failure; doubles, jittered"
    )
    backoff_max_s: float = Field(5.0, gt=0, le=60, description="longest backoff between sends")
    max_retry_wait_s: float = Field(
        30.0,
        gt=0,
        le=900,
        description="longest wait for a rate limit's reset before a resend; a longer ban ends "
        "the attempt (the order stays for reconciliation, or is Rejected if it never left). "
        "Refusals for the limit (unread: they spend none of max_send_attempts) end the "
        "attempt once they have gone on this long",
    )
    max_close_retry_wait_s: float = Field(
        900.0,
        gt=0,
        le=3600,
        description="max_retry_wait_s for a reduce-only order (a close, a target) and a stop "
        "loss's move: losing one leaves a position open or less protected, so a rate limit's "
        "reset, a ban or the limit's refusals are waited out this long before its attempts are "
        "spent (its signal's age never bounds it); "
        "above Bybit's 10-minute IP ban (HTTP 403), whose wait a shorter one gives up at once",
    )
    lookup_delays_s: tuple[float, ...] = Field(
        (0.05, 0.25, 1.0),
        min_length=1,
        description="waits before each look-up of an order the venue said exists (110072) but "
        "does not show yet",
    )
    follow_s: float = Field(
        2.0,
        ge=0,
        le=30,
        description="how long a new market order is followed to a terminal state before the "
        "next signal of its key and symbol runs (the reconciliation loop follows it after)",
    )
    reconcile_interval_s: float = Field(
        1.0, gt=0, le=60, description="how often every open or unknown order is looked up"
    )
    reconcile_live_interval_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="how often a limit order resting at the venue (New, PartiallyFilled) is "
        "looked up while its key's account stream has stayed up since the last look (the "
        "stream reports its fills and cancels; this is the safety net). A market order still "
        "open, or one that may not exist yet (Unknown, Submitting), is looked up every "
        "reconcile_interval_s",
    )
    exit_scan_interval_s: float = Field(
        5.0,
        gt=0,
        le=300,
        description="how often the venue is asked for stop-loss / take-profit exits it executed "
        "and for its closed PnL while the key's account stream is down, has reconnected since "
        "the last complete scan, or the key has placed 25 orders since",
    )
    exit_scan_live_interval_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="the same while the key's account stream has stayed up since the last "
        "complete scan (it reports exits itself); never more often than exit_scan_interval_s",
    )
    reconcile_batch: int = Field(
        50, ge=1, le=1000, description="orders looked up per key per reconciliation pass"
    )

    @model_validator(mode="after")
    def _bounds_in_order(self) -> Self:
        """Settings that bound one another: a lifetime's sends cover one run's, a close's
        patience an opening order's, and the longest backoff is not shorter than the first."""
        if self.max_total_sends < self.max_send_attempts:
            raise ValueError(
                f"max_total_sends ({self.max_total_sends}) must be at least max_send_attempts "
                f"({self.max_send_attempts}): it counts every send of an order, restarts "
                "included"
            )
        if self.max_close_retry_wait_s < self.max_retry_wait_s:
            raise ValueError(
                f"max_close_retry_wait_s ({self.max_close_retry_wait_s:g}) must be at least "
                f"max_retry_wait_s ({self.max_retry_wait_s:g}): a close is never given up "
                "sooner than an opening order"
            )
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError(
                f"backoff_max_s ({self.backoff_max_s:g}) must be at least backoff_base_s "
                f"({self.backoff_base_s:g}), the first wait it caps"
            )
        return self
