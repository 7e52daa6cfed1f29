"""Bybit V5's JSON rows as typed messages: one parser per shape, for REST and stream alike.

Bybit sends numbers as strings and times as epoch milliseconds; a field that cannot be read
makes the whole answer ambiguous (never a guess).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from bot.messages import (
    ClosedPnl,
    Execution,
    ExitOrder,
    OrderEvent,
    OrderStatus,
    OrderType,
    PositionUpdate,
    Side,
    WalletUpdate,
    utc_now,
)
from bot.venue.errors import AmbiguousError

__all__ = [
    "EXIT_KINDS",
    "POSITION_EXEC_TYPES",
    "KeyInfo",
    "cancelled_reason",
    "closed_pnl",
    "decimal_field",
    "execution",
    "exit_order",
    "is_exit_order",
    "key_info",
    "order_event",
    "position_update",
    "wallet_update",
]

#: Bybit's stopOrderType of the orders it creates to close a position at its SL or TP.
EXIT_KINDS: Final = frozenset(
    {"StopLoss", "TakeProfit", "TrailingStop", "PartialStopLoss", "PartialTakeProfit"}
)


#: Bybit's execTypes that change a position: trades, and what the venue does itself
#: (liquidation, auto-deleveraging, delivery, block and moved positions). Funding is not one.
POSITION_EXEC_TYPES: Final = frozenset(
    {"Trade", "BustTrade", "AdlTrade", "Delivery", "Settle", "BlockTrade", "MovePosition"}
)


def decimal_field(value: object, field: str) -> Decimal:
    """A Bybit number (a string) as Decimal; anything else makes the answer ambiguous."""
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise AmbiguousError(f"venue sent a non-numeric {field}: {value!r}") from None


def order_event(row: dict[str, Any]) -> OrderEvent:
    """An order row (REST /v5/order/realtime, /history, or the `order` stream)."""
    status = _order_status(row)
    return OrderEvent(
        order_link_id=str(row.get("orderLinkId")),
        status=status,
        order_id=row.get("orderId") or None,
        filled_qty=decimal_field(row.get("cumExecQty") or "0", "cumExecQty"),
        avg_price=_avg_price(row),
        venue_qty=decimal_field(row["qty"], "qty") if row.get("qty") else None,
        reason=_reason(row, status),
        ts=_from_ms(row.get("updatedTime") or ""),
        symbol=str(row["symbol"]) if row.get("symbol") else None,
        side=_side(row) if row.get("side") in ("Buy", "Sell") else None,
        order_type=_order_type(row),
        venue_price=_level(row, "price") or None,
        venue_reduce_only=row["reduceOnly"] if isinstance(row.get("reduceOnly"), bool) else None,
        venue_stop_loss=_level(row, "stopLoss"),
        venue_take_profit=_level(row, "takeProfit"),
        venue_created_at=_created_at(row),
    )


def _created_at(row: dict[str, Any]) -> datetime | None:
    """An order row's `createdTime`; None when absent, 0 (not said) or not a time: an
    order said made at the epoch would pass for one made before any send of ours."""
    try:
        ms = int(str(row["createdTime"]))
        return datetime.fromtimestamp(ms / 1000, tz=UTC) if ms > 0 else None
    except (KeyError, ValueError, OverflowError, OSError):
        return None


def _level(row: dict[str, Any], name: str) -> Decimal | None:
    """A price field of an order row: 0 when it says none ("", "0"), None when absent."""
    if name not in row:
        return None
    text = str(row[name] or "0")
    return decimal_field(text, name)


def _order_type(row: dict[str, Any]) -> OrderType | None:
    try:
        return OrderType(str(row.get("orderType")))
    except ValueError:
        return None


#: rejectReasons that reject nothing: Bybit shows EC_PerCancelRequest on an order its owner
#: cancelled (cancelType CancelByUser), EC_NoError on the others.
_NO_REJECTION = frozenset({"EC_NoError", "EC_PerCancelRequest"})


def _reason(row: dict[str, Any], status: OrderStatus) -> str:
    """Why the venue rejected the order, or who cancelled it (Bybit's cancelType: an order
    cancelled by hand on Bybit, or by another client of the key, says CancelByUser too)."""
    rejected = str(row.get("rejectReason") or "")
    if rejected in _NO_REJECTION:
        rejected = ""
    cancel_type = str(row.get("cancelType") or "")
    if rejected or status is not OrderStatus.CANCELLED or cancel_type in ("", "UNKNOWN"):
        return rejected
    return cancelled_reason(cancel_type)


def cancelled_reason(cancel_type: str) -> str:
    """The reason an order report carries when the venue says who cancelled it."""
    return f"cancelled at the venue ({cancel_type})"


def exit_order(row: dict[str, Any], key_name: str) -> ExitOrder:
    """A venue-created stop-loss / take-profit order row."""
    trigger = row.get("triggerPrice") or ""
    return ExitOrder(
        order_id=str(row.get("orderId")),
        key_name=key_name,
        symbol=str(row.get("symbol")),
        side=_side(row),
        kind=str(row.get("stopOrderType")),
        trigger_price=decimal_field(trigger, "triggerPrice")
        if trigger not in ("", "0", "0.00")
        else None,
        qty=decimal_field(row.get("qty") or "0", "qty"),
        status=_order_status(row),
        filled_qty=decimal_field(row.get("cumExecQty") or "0", "cumExecQty"),
        avg_price=_avg_price(row),
        cancel_type=str(row.get("cancelType") or ""),
        ts=_from_ms(row.get("updatedTime") or ""),
    )


def is_exit_order(row: dict[str, Any]) -> bool:
    return not row.get("orderLinkId") and row.get("stopOrderType") in EXIT_KINDS


def execution(row: dict[str, Any], key_name: str) -> Execution:
    """A fill (REST /v5/execution/list or the `execution` stream)."""
    return Execution(
        exec_id=str(row.get("execId")),
        key_name=key_name,
        order_id=str(row.get("orderId") or ""),
        order_link_id=str(row.get("orderLinkId") or ""),
        symbol=str(row.get("symbol")),
        side=_side(row),
        qty=decimal_field(row.get("execQty") or "0", "execQty"),
        price=decimal_field(row.get("execPrice") or "0", "execPrice"),
        fee=decimal_field(row.get("execFee") or "0", "execFee"),
        is_maker=bool(row.get("isMaker")),
        stop_order_type=_stop_order_type(row),
        ts=_from_ms(row.get("execTime") or ""),
        exec_type=str(row.get("execType") or "Trade"),
    )


def position_update(row: dict[str, Any], key_name: str) -> PositionUpdate:
    """A one-way position row (REST /v5/position/list or the `position` stream)."""
    size = decimal_field(row.get("size") or "0", "size")
    entry = row.get("entryPrice") or row.get("avgPrice") or "0"
    return PositionUpdate(
        key_name=key_name,
        symbol=str(row.get("symbol")),
        size=-size if row.get("side") == "Sell" else size,
        entry_price=decimal_field(entry, "entryPrice"),
        mark_price=decimal_field(row.get("markPrice") or "0", "markPrice"),
        unrealized_pnl=decimal_field(row.get("unrealisedPnl") or "0", "unrealisedPnl"),
        cum_realized_pnl=decimal_field(row.get("cumRealisedPnl") or "0", "cumRealisedPnl"),
        leverage=decimal_field(row.get("leverage") or "0", "leverage"),
        ts=_from_ms(row.get("updatedTime") or ""),
    )


def wallet_update(row: dict[str, Any], key_name: str, ts: object = "") -> WalletUpdate:
    """A unified account row (REST /v5/account/wallet-balance or the `wallet` stream)."""
    return WalletUpdate(
        key_name=key_name,
        equity_usdt=decimal_field(row.get("totalEquity") or "0", "totalEquity"),
        available_usdt=decimal_field(
            row.get("totalAvailableBalance") or "0", "totalAvailableBalance"
        ),
        wallet_balance_usdt=decimal_field(
            row.get("totalWalletBalance") or "0", "totalWalletBalance"
        ),
        ts=_from_ms(ts),
    )


def closed_pnl(row: dict[str, Any], key_name: str) -> ClosedPnl:
    """A closing order's record of REST /v5/position/closed-pnl."""
    return ClosedPnl(
        order_id=str(row.get("orderId")),
        key_name=key_name,
        symbol=str(row.get("symbol")),
        closed_qty=decimal_field(row.get("closedSize") or "0", "closedSize"),
        closed_pnl=decimal_field(row.get("closedPnl") or "0", "closedPnl"),
        ts=_from_ms(row.get("updatedTime") or ""),
    )


def _side(row: dict[str, Any]) -> Side:
    return Side.BUY if row.get("side") == "Buy" else Side.SELL


def _stop_order_type(row: dict[str, Any]) -> str:
    kind = str(row.get("stopOrderType") or "")
    return kind if kind in EXIT_KINDS else ""


def _order_status(row: dict[str, Any]) -> OrderStatus:
    text = str(row.get("orderStatus"))
    try:
        return OrderStatus(text)
    except ValueError:
        # Bybit's other statuses: PartiallyFilledCanceled (spot) and Deactivated end the order;
        # Untriggered and Triggered are conditional orders still open.
        closed = "Cancel" in text or text == "Deactivated"
        return OrderStatus.CANCELLED if closed else OrderStatus.NEW


def _avg_price(row: dict[str, Any]) -> Decimal | None:
    avg = row.get("avgPrice") or ""
    return decimal_field(avg, "avgPrice") if avg not in ("", "0") else None


def _from_ms(value: object) -> datetime:
    try:
        return datetime.fromtimestamp(int(str(value)) / 1000, tz=UTC)
    except (ValueError, OverflowError):
        return utc_now()


@dataclass(frozen=True)
class KeyInfo:
    """An API key as `/v5/user/query-api` describes it (never its secret)."""

    read_only: bool
    #: permission group (ContractTrade, Wallet, ...) -> granted rights, empty groups left out
    permissions: dict[str, tuple[str, ...]]
    ips: tuple[str, ...]  # ("*",): not bound to any IP
    expires_at: datetime | None  # None: never expires
    uta: bool  # the account is a unified trading account
    note: str
    #: the account the key belongs to (Bybit's `userID`); "" when the venue does not say
    user_id: str = ""

    @property
    def ip_bound(self) -> bool:
        return bool(self.ips) and "*" not in self.ips


def key_info(row: dict[str, Any]) -> KeyInfo:
    """A `/v5/user/query-api` result; AmbiguousError if it cannot be read."""
    try:
        permissions = {
            str(group): tuple(str(right) for right in rights)
            for group, rights in (row.get("permissions") or {}).items()
            if rights
        }
        expires_at = _key_expiry(str(row.get("expiredAt") or ""))
        return KeyInfo(
            read_only=int(row.get("readOnly") or 0) == 1,
            permissions=permissions,
            ips=tuple(str(ip) for ip in row.get("ips") or ("*",)),
            expires_at=expires_at,
            uta=int(row.get("uta") or 0) == 1,
            note=str(row.get("note") or ""),
            user_id=str(row.get("userID") or ""),
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise AmbiguousError(f"unreadable API key information: {exc}") from None


def _key_expiry(text: str) -> datetime | None:
    """Bybit reports a key that never expires with an empty or epoch-zero `expiredAt`."""
    if not text:
        return None
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return None if moment.year <= 1970 else moment
