"""Deterministic orderLinkIds: the same (strategy, signal, leg) always names the same order.

Retrying, replaying a signal or restarting the bot therefore re-sends the *same* orderLinkId,
which Bybit refuses as a duplicate (110072) instead of placing a second order.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from typing import Final

from bot import messages

__all__ = [
    "MAX_LEG",
    "ORDER_LINK_ID_PATTERN",
    "order_link_id",
    "strategies_named_by",
    "strategy_slug",
]

ORDER_LINK_ID_PATTERN: Final = re.compile(messages.ORDER_LINK_ID_PATTERN)
MAX_LEG: Final = 99
_SLUG_CHARS: Final = 8
_DIGEST_CHARS: Final = 24  # 120 bits of SHA-256: collisions are not a practical concern
_NOT_SLUG: Final = re.compile(r"[^A-Za-z0-9]")
#: What follows a slug in an orderLinkId `order_link_id` makes: the leg and the digest.
_LEG_AND_DIGEST: Final = re.compile(rf"-(?:0|[1-9][0-9]?)-[a-z2-7]{{{_DIGEST_CHARS}}}")


def order_link_id(strategy: str, source: str, signal_id: str, leg: int) -> str:
    """`<strategy slug>-<leg>-<digest>`, at most 36 characters of [A-Za-z0-9_-].

    The readable prefix helps a person find the order in Bybit's UI; uniqueness comes from the
    digest over the full (strategy, source, signal id, leg), joined with a separator that none
    of them may contain, so distinct inputs never hash the same text.
    """
    if not 0 <= leg <= MAX_LEG:
        raise ValueError(f"leg must be 0..{MAX_LEG}, got {leg}")
    text = "\x1f".join((strategy, source, signal_id, str(leg)))
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    tag = base64.b32encode(digest).decode("ascii").lower()[:_DIGEST_CHARS]
    return f"{strategy_slug(strategy)}-{leg}-{tag}"


def strategy_slug(strategy: str) -> str:
    """The readable prefix of a strategy's orderLinkIds (several strategies may share one)."""
    return _NOT_SLUG.sub("", strategy)[:_SLUG_CHARS] or "s"


def strategies_named_by(order_link_id: str, strategies: Iterable[str]) -> list[str]:
    """Those of `strategies` whose orderLinkIds look like `order_link_id` (its slug, a leg
    and a digest): an order one of them may have placed, under this or another journal."""
    slug, dash, _ = order_link_id.partition("-")
    if not dash or _LEG_AND_DIGEST.fullmatch(order_link_id, len(slug)) is None:
        return []
    return sorted(name for name in strategies if strategy_slug(name) == slug)
