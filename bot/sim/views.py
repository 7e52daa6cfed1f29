"""Bybit V5 JSON shapes of the simulator's state, with Bybit's field names and encodings.

Numbers are decimal strings as Bybit sends them ("97000", "0.001"), never floats.
"""

from __future__ import annotations

import functools
import hashlib
import zlib
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from bot.sim.candles import DayStats

from bot.sim.config import PERMISSION_GROUPS, InstrumentSpec, SimAccountSpec
from bot.sim.records import (
    MAINTENANCE_MARGIN_RATE,
    RISK_LIMIT_VALUE,
    SETTLE_COIN,
    ZERO,
    ClosedPnlRecord,
    ExecutionRecord,
    MarginFigures,
    OrderRecord,
    PositionRecord,
    PriceLimits,
)

__all__ = [
    "FUNDING_INTERVAL_MINUTES",
    "FUNDING_RATE",
    "LAUNCH_TIME_MS",
    "MAX_PRICE_TICKS",
    "account_info_view",
    "api_key_view",
    "batch_cancel_row",
    "batch_place_row",
    "closed_pnl_view",
    "coin_info_view",
    "execution_stream_view",
    "execution_view",
    "fast_execution_stream_view",
    "fee_rate_view",
    "fmt",
    "funding_rate_view",
    "instrument_view",
    "mark_kline_rows",
    "open_interest_view",
    "order_history_view",
    "order_stream_view",
    "order_view",
    "orderbook_view",
    "position_stream_view",
    "position_view",
    "premium_kline_rows",
    "price_limit_view",
    "public_trade_stream_view",
    "public_trade_view",
    "risk_limit_view",
    "ticker_stream_view",
    "ticker_view",
    "to_tick",
    "transaction_log_view",
    "unit",
    "wallet_stream_view",
    "wallet_view",
]

#: priceFilter.maxPrice in ticks; the simulator refuses prices above it.
MAX_PRICE_TICKS = 20_000_000
#: When every simulated instrument was listed (instruments-info `launchTime`); market history
#: (candles, funding, open interest) starts there.
LAUNCH_TIME_MS = 1_584_230_400_000
#: The funding rate every simulated perpetual publishes and settles, each 8 h (tickers,
#: funding history, the Funding executions of the positions held at a settlement).
FUNDING_RATE = Decimal("0.0001")
#: Every simulated perpetual's funding interval (instruments' fundingInterval, in minutes)
#: and the bound of its rate (upper/lowerFundingRate, the tickers' fundingCap).
FUNDING_INTERVAL_MINUTES = 480
FUNDING_CAP = "0.005"
_RATE_PLACES = Decimal("0.0001")
_PLACES = Decimal("1e-8")
#: The least fee rate Bybit's break-even price assumes ("max(taker fee rate, 0.00055)").
_BREAK_EVEN_MIN_FEE = Decimal("0.00055")
#: Book sizes kept worked out: both sides of the deepest book (1000 levels) of 16 symbols.
_BOOK_SIZES_CACHED = 2 * 1000 * 16


def fmt(value: Decimal) -> str:
    """Bybit-style decimal text: plain notation, no exponent, no trailing zeros; every digit
    kept (`normalize` would round to 28: a client's price of 40 decimals, refused as off the
    tick, was echoed as the round number it is not)."""
    if value == 0:
        return "0"
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _fmt8(value: Decimal) -> str:
    """An average price or an amount of money, rounded to 8 places as Bybit shows them (a
    weighted mean, and what is worked out from it, would run to 28 digits)."""
    return fmt(value.quantize(_PLACES))


def to_tick(price: Decimal, tick: Decimal, *, up: bool) -> Decimal:
    """The price rounded to a multiple of tick, up or down."""
    return (price / tick).to_integral_value(ROUND_CEILING if up else ROUND_FLOOR) * tick


def _fmt_optional(value: Decimal | None) -> str:
    return fmt(value) if value is not None else ""


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _trigger_direction(order: OrderRecord) -> int:
    """Bybit's: 1 triggers when the price rises to the trigger, 2 when it falls (0: none). A
    conditional order says which; a long's take profit and a short's stop loss rise, the
    other TP/SL orders fall."""
    if order.trigger_direction or not order.stop_order_type:
        return order.trigger_direction
    closes_long = order.side == "Sell"
    return 1 if (order.stop_order_type == "TakeProfit") == closes_long else 2


def _tpsl_mode(order: OrderRecord) -> str:
    """Partial for an order with partial TP/SL, Full for one with the position's, else ""."""
    if not (order.take_profit or order.stop_loss):
        return ""
    return "Partial" if order.partial_tpsl else "Full"


def order_view(order: OrderRecord) -> dict[str, Any]:
    """An order as `/v5/order/realtime` and `/v5/order/history` list it."""
    leaves = order.leaves_qty
    return {
        "orderId": order.order_id,
        "orderLinkId": order.order_link_id,
        "blockTradeId": "",
        "symbol": order.symbol,
        # A market order is an IOC limit at its price limit, and shows that price (once sent).
        "price": _fmt_optional(order.worst_price) or "0",
        "qty": fmt(order.qty),
        "side": order.side,
        "isLeverage": "",
        "positionIdx": 0,
        "orderStatus": order.status,
        "createType": order.create_type,
        "cancelType": order.cancel_type,
        "rejectReason": order.reject_reason,
        "avgPrice": (
            _fmt8(order.cum_exec_value / order.cum_exec_qty) if order.cum_exec_qty else ""
        ),
        "leavesQty": fmt(leaves),
        "leavesValue": fmt(leaves * order.worst_price) if order.worst_price is not None else "0",
        "cumExecQty": fmt(order.cum_exec_qty),
        "cumExecValue": fmt(order.cum_exec_value),
        "cumExecFee": fmt(order.cum_exec_fee),
        "timeInForce": order.time_in_force,
        "orderType": order.order_type,
        "stopOrderType": order.stop_order_type,
        "orderIv": "",
        "marketUnit": "",
        "triggerPrice": _fmt_optional(order.trigger_price),
        "takeProfit": _fmt_optional(order.take_profit),
        "stopLoss": _fmt_optional(order.stop_loss),
        "tpslMode": _tpsl_mode(order),
        "ocoTriggerBy": "",
        "tpLimitPrice": _fmt_optional(order.tp_limit_price),
        "slLimitPrice": _fmt_optional(order.sl_limit_price),
        "tpTriggerBy": order.tp_trigger_by if order.take_profit is not None else "",
        "slTriggerBy": order.sl_trigger_by if order.stop_loss is not None else "",
        "triggerDirection": _trigger_direction(order),
        "triggerBy": order.trigger_by if order.trigger_price is not None else "",
        "lastPriceOnCreated": fmt(order.last_price_on_created),
        "reduceOnly": order.reduce_only,
        "closeOnTrigger": order.close_on_trigger,
        "placeType": "",
        "smpType": order.smp_type,
        "smpGroup": 0,
        "smpOrderId": "",
        "createdTime": str(order.created_ms),
        "updatedTime": str(order.updated_ms),
        "cumFeeDetail": {SETTLE_COIN: fmt(order.cum_exec_fee)} if order.cum_exec_fee else {},
        "parentOrderLinkId": order.parent_order_link_id,
    }


def execution_view(execution: ExecutionRecord) -> dict[str, Any]:
    """A fill as `/v5/execution/list` lists it (linear: fees in USDT)."""
    order = execution.order
    return {
        "symbol": order.symbol,
        "orderId": order.order_id,
        "orderLinkId": order.order_link_id,
        "side": order.side,
        # A funding settlement has no order, so no order price ("0", as Bybit lists it).
        "orderPrice": fmt(ZERO if order.funding else order.worst_price or execution.price),
        "orderQty": fmt(execution.order_qty),
        "leavesQty": fmt(execution.leaves_qty),
        "createType": order.create_type,
        "orderType": order.order_type,
        "stopOrderType": order.stop_order_type or "UNKNOWN",
        "execFee": fmt(execution.fee),
        "execFeeV2": "",
        "execId": execution.exec_id,
        "execPrice": fmt(execution.price),
        "execQty": fmt(execution.qty),
        "execType": order.exec_type,
        "execValue": fmt(execution.qty * execution.price),
        "execTime": str(execution.exec_ms),
        "feeCurrency": SETTLE_COIN,
        "isMaker": execution.is_maker,
        "feeRate": fmt(execution.fee_rate),
        "tradeIv": "",
        "markIv": "",
        "markPrice": fmt(execution.mark_price),
        "indexPrice": "",
        "underlyingPrice": "",
        "blockTradeId": "",
        "closedSize": fmt(execution.closed_size),
        "seq": execution.seq,
        "extraFees": "",
    }


def closed_pnl_view(record: ClosedPnlRecord) -> dict[str, Any]:
    """What one closing order realised, as `/v5/position/closed-pnl` lists it."""
    order = record.order
    size = record.closed_size
    return {
        "symbol": order.symbol,
        "orderId": order.order_id,
        "side": order.side,
        "qty": fmt(order.qty),
        "orderPrice": _fmt_optional(order.worst_price) or "0",
        "orderType": order.order_type,
        "execType": order.exec_type,
        "closedSize": fmt(size),
        "cumEntryValue": _fmt8(record.cum_entry_value),
        "avgEntryPrice": _fmt8(record.cum_entry_value / size) if size else "0",
        "cumExitValue": _fmt8(record.cum_exit_value),
        "avgExitPrice": _fmt8(record.cum_exit_value / size) if size else "0",
        "closedPnl": _fmt8(record.closed_pnl),
        "fillCount": str(record.fill_count),
        "leverage": fmt(record.leverage),
        "openFee": fmt(record.open_fee),
        "closeFee": fmt(record.close_fee),
        "createdTime": str(record.created_ms),
        "updatedTime": str(record.updated_ms),
    }


def account_info_view(created_ms: int) -> dict[str, Any]:
    """`/v5/account/info` of a unified trading account 2.0 in regular (cross) margin."""
    return {
        "unifiedMarginStatus": 6,
        "marginMode": "REGULAR_MARGIN",
        "isMasterTrader": False,
        "spotHedgingStatus": "OFF",
        "updatedTime": str(created_ms),
        "dcpStatus": "OFF",
        "timeWindow": 0,
        "smpGroup": 0,
    }


def coin_info_view(coins: list[str]) -> dict[str, Any]:
    """`/v5/asset/coin/query-info`: the simulator moves no coins on chain, so every coin has
    one chain with deposits and withdrawals suspended ("0")."""
    rows = [
        {
            "name": coin,
            "coin": coin,
            "remainAmount": "0",
            "chains": [
                {
                    "chain": "SIM",
                    "chainType": "Simulator",
                    "confirmation": "1",
                    "withdrawFee": "",
                    "depositMin": "0",
                    "withdrawMin": "0",
                    "minAccuracy": "8",
                    "chainDeposit": "0",
                    "chainWithdraw": "0",
                    "withdrawPercentageFee": "0",
                    "contractAddress": "",
                    "safeConfirmNumber": "1",
                    "withdrawMax": "0",
                }
            ],
        }
        for coin in coins
    ]
    return {"rows": rows}


def unit(*parts: object) -> Decimal:
    """A deterministic number in [0, 1) from the parts (a hash, not a random draw)."""
    digest = hashlib.sha256(":".join(str(part) for part in parts).encode()).digest()
    return Decimal(int.from_bytes(digest[:6], "big")) / Decimal(2**48)


def book_size(symbol: str, spec: InstrumentSpec, side: Literal["b", "a"], level: int) -> str:
    """The synthetic book's size at a level (0: the best) of a side, fixed per level."""
    return _book_size(symbol, spec.qty_step, side, level)


@functools.lru_cache(maxsize=_BOOK_SIZES_CACHED)
def _book_size(symbol: str, qty_step: Decimal, side: str, level: int) -> str:
    """Worked out once: the stream reads the 1000-level book on every price move, and hashing
    its 2000 sizes each time was two thirds of reading it (~9 of ~14 ms)."""
    steps = 1 + int(unit(symbol, side, level) * 500)
    return fmt(qty_step * steps)


def orderbook_view(
    symbol: str,
    bid: Decimal,
    ask: Decimal,
    spec: InstrumentSpec,
    depth: int,
    now_ms: int,
    update_id: int,
) -> dict[str, Any]:
    """A synthetic book around the quote: levels one tick apart, sizes fixed per level."""
    tick = spec.tick_size
    bids = [
        [fmt(bid - tick * i), book_size(symbol, spec, "b", i)]
        for i in range(depth)
        if bid - tick * i > 0
    ]
    asks = [[fmt(ask + tick * i), book_size(symbol, spec, "a", i)] for i in range(depth)]
    return {
        "s": symbol,
        "b": bids,
        "a": asks,
        "ts": now_ms,
        "u": update_id,
        "seq": update_id,
        "cts": now_ms,
    }


def mark_kline_rows(rows: list[list[str]]) -> list[list[str]]:
    """Mark-price candles from kline rows of the mark price: Bybit sends start, open, high,
    low, close only (no volume, no turnover)."""
    return [row[:5] for row in rows]


def premium_kline_rows(starts: list[int]) -> list[list[str]]:
    """Premium-index candles (start, open, high, low, close), newest first: the simulator's
    premium is zero throughout."""
    zero = "0.000000"
    return [[str(start), zero, zero, zero, zero] for start in starts]


def risk_limit_view(symbol: str, spec: InstrumentSpec) -> dict[str, Any]:
    """The symbol's one risk tier as `/v5/market/risk-limit` lists it: the position value it
    allows, its margin rates (fractions) and the instrument's maximum leverage."""
    return {
        "id": 1,
        "symbol": symbol,
        "riskLimitValue": fmt(RISK_LIMIT_VALUE),
        "maintenanceMargin": fmt(MAINTENANCE_MARGIN_RATE),
        "initialMargin": fmt((1 / spec.max_leverage).quantize(Decimal("1e-8"))),
        "isLowestRisk": 1,
        "maxLeverage": f"{spec.max_leverage:.2f}",
        "mmDeduction": "",
    }


def public_trade_view(execution: ExecutionRecord) -> dict[str, Any]:
    """A fill as `/v5/market/recent-trade` lists it. `side` is the taker's: the order's own
    side when it took liquidity, the opposite when it rested and the market came to it."""
    side = execution.order.side
    if execution.is_maker:
        side = "Sell" if side == "Buy" else "Buy"
    return {
        "execId": execution.exec_id,
        "symbol": execution.order.symbol,
        "price": fmt(execution.price),
        "size": fmt(execution.qty),
        "side": side,
        "time": str(execution.exec_ms),
        "isBlockTrade": False,
        "isRPITrade": False,
        "seq": str(execution.seq),
    }


def public_trade_stream_view(execution: ExecutionRecord, tick_direction: str) -> dict[str, Any]:
    """A fill as the `publicTrade.{symbol}` stream carries it (Bybit's short names), with
    its tick direction (`L`) against the trade before it."""
    trade = public_trade_view(execution)
    return {
        "T": execution.exec_ms,
        "s": trade["symbol"],
        "S": trade["side"],
        "v": trade["size"],
        "p": trade["price"],
        "L": tick_direction,
        "i": trade["execId"],
        "BT": False,
        "RPI": False,
        "seq": execution.seq,
    }


def open_interest_view(single_open_interest: Decimal, timestamp_ms: int) -> dict[str, str]:
    """One `/v5/market/open-interest` point: both sides and one side, in base coin."""
    return {
        "openInterest": fmt(single_open_interest * 2),
        "singleOpenInterest": fmt(single_open_interest),
        "timestamp": str(timestamp_ms),
    }


def funding_rate_view(symbol: str, timestamp_ms: int) -> dict[str, str]:
    """One settlement of `/v5/market/funding/history`, at the rate tickers publish."""
    return {
        "symbol": symbol,
        "fundingRate": fmt(FUNDING_RATE),
        "fundingRateTimestamp": str(timestamp_ms),
    }


def transaction_log_view(execution: ExecutionRecord, user_id: int) -> dict[str, Any]:
    """A fill as a TRADE entry of `/v5/account/transaction-log`: cashFlow is the PnL it
    realised, change = cashFlow - fee, cashBalance the wallet balance after it, size the
    position after it (short negative). A funding settlement is a SETTLEMENT entry: its
    `funding` is what the position received (negative: paid, the opposite of the
    execution's execFee), its fee 0, and change = funding."""
    order = execution.order
    funding, fee = (-execution.fee, ZERO) if order.funding else (None, execution.fee)
    return {
        "id": f"{user_id}_{order.symbol}_{execution.seq}",
        "symbol": order.symbol,
        "category": "linear",
        "side": order.side,
        "transactionTime": str(execution.exec_ms),
        "type": order.log_type,
        "transSubType": "",
        "qty": fmt(execution.qty),
        "size": fmt(execution.position_size),
        "currency": SETTLE_COIN,
        "tradePrice": fmt(execution.price),
        "funding": "" if funding is None else _fmt8(funding),
        "fee": _fmt8(fee),
        "cashFlow": _fmt8(execution.cash_flow),
        "change": _fmt8(execution.cash_flow - execution.fee),
        "cashBalance": _fmt8(execution.cash_balance),
        "feeRate": fmt(execution.fee_rate),
        "bonusChange": "",
        "tradeId": execution.exec_id,
        "orderId": order.order_id,
        "orderLinkId": order.order_link_id,
        "extraFees": "",
    }


def fee_rate_view(symbol: str, taker_fee_rate: Decimal, maker_fee_rate: Decimal) -> dict[str, str]:
    """A symbol's trading fees as `/v5/account/fee-rate` lists them (derivatives: no
    baseCoin)."""
    return {
        "symbol": symbol,
        "takerFeeRate": fmt(taker_fee_rate),
        "makerFeeRate": fmt(maker_fee_rate),
    }


def batch_place_row(order: OrderRecord | None, symbol: str, order_link_id: str) -> dict[str, str]:
    """One `/v5/order/create-batch` result row: the cancel-batch row with `createAt`, blank
    for an item that failed (its reason is in `retExtInfo.list`)."""
    created = "" if order is None else str(order.created_ms)
    return {**batch_cancel_row(order, symbol, order_link_id), "createAt": created}


def batch_cancel_row(order: OrderRecord | None, symbol: str, order_link_id: str) -> dict[str, str]:
    """One `/v5/order/cancel-batch` or `/v5/order/amend-batch` result row: the order
    cancelled or amended, or (None) the item as sent with an empty orderId, as Bybit answers
    an item that failed."""
    if order is None:
        return {
            "category": "linear",
            "symbol": symbol,
            "orderId": "",
            "orderLinkId": order_link_id,
        }
    return {
        "category": "linear",
        "symbol": order.symbol,
        "orderId": order.order_id,
        "orderLinkId": order.order_link_id,
    }


def position_view(
    position: PositionRecord,
    mark: Decimal,
    leverage: Decimal,
    never_traded_ms: int,
    position_idx: int = 0,
    *,
    taker_fee_rate: Decimal,
    liquidation_price: Decimal | None = None,
) -> dict[str, Any]:
    """A position as `/v5/position/list` reports it (side "" and size "0" when flat).

    position_idx is 0 in one-way mode, 1 (Buy side) or 2 (Sell side) in hedge mode.
    `liquidation_price`: its estimate, if within the instrument's price range (else "", as
    Bybit shows it). `bustPrice` is "" as in every unified account ("no position
    bankruptcy price"). The margins are on the position's value at the `mark` price, and
    the "ByMp" ones the same figures (Bybit: positionIMByMp is "Initial margin calculated by
    mark price, the same value as positionIM"); `positionValue` is at the entry price;
    `breakEvenPrice` is Bybit's formula with the account's taker fee rate (at least
    0.055 %), `openTime` when the position last opened from flat (0 while flat).
    """
    value = abs(position.size) * position.avg_price
    value_at_mark = abs(position.size) * mark
    initial_margin = _fmt8(value_at_mark / leverage)
    maintenance_margin = _fmt8(value_at_mark * MAINTENANCE_MARGIN_RATE)
    side = "Buy" if position.size > 0 else "Sell" if position.size < 0 else ""
    return {
        "positionIdx": position_idx,
        "riskId": 1,
        "riskLimitValue": fmt(RISK_LIMIT_VALUE),
        "symbol": position.symbol,
        "side": side,
        "size": fmt(abs(position.size)),
        "avgPrice": _fmt8(position.avg_price) if position.size else "0",
        "positionValue": _fmt8(value),
        "tradeMode": 0,
        "positionStatus": "Normal",
        "autoAddMargin": 0,
        "adlRankIndicator": 2 if position.size else 0,
        "leverage": fmt(leverage),
        "positionBalance": initial_margin,
        "markPrice": fmt(mark),
        "liqPrice": _fmt_optional(liquidation_price),
        "bustPrice": "",
        "positionIM": initial_margin,
        "positionIMByMp": initial_margin,
        "positionMM": maintenance_margin,
        "positionMMByMp": maintenance_margin,
        "tpslMode": "Full",
        "takeProfit": fmt(position.take_profit) if position.take_profit else "0",
        "stopLoss": fmt(position.stop_loss) if position.stop_loss else "0",
        "trailingStop": fmt(position.trailing_stop) if position.trailing_stop else "0",
        "unrealisedPnl": _fmt8((mark - position.avg_price) * position.size),
        "curRealisedPnl": _fmt8(position.cur_realised_pnl),
        "cumRealisedPnl": _fmt8(position.cum_realised_pnl),
        "sessionAvgPrice": "",
        "breakEvenPrice": _break_even(position, taker_fee_rate),
        "openTime": position.created_ms if position.size else 0,
        "isReduceOnly": False,
        "mmrSysUpdatedTime": "",
        "leverageSysUpdatedTime": "",
        "createdTime": str(position.created_ms or never_traded_ms),
        "updatedTime": str(position.updated_ms or never_traded_ms),
        "seq": position.seq,
    }


def _break_even(position: PositionRecord, taker_fee_rate: Decimal) -> str:
    """Bybit: (entry_price * qty - realized_pnl) / (qty - abs(qty) * max(taker fee rate,
    0.00055)), qty signed and realized_pnl the position's since it opened; "0" when flat."""
    size = position.size
    if not size:
        return "0"
    fee = max(taker_fee_rate, _BREAK_EVEN_MIN_FEE)
    return _fmt8((position.avg_price * size - position.cur_realised_pnl) / (size - abs(size) * fee))


def wallet_view(figures: MarginFigures, include_usdt: bool) -> dict[str, Any]:
    """The UNIFIED account as `/v5/account/wallet-balance` reports it (USDT its only coin)."""
    equity = figures.equity
    coins = [
        {
            "coin": SETTLE_COIN,
            "equity": _fmt8(equity),
            "usdValue": _fmt8(equity),
            "walletBalance": _fmt8(figures.wallet_balance),
            "free": "",
            "locked": "0",
            "spotHedgingQty": "0",
            "borrowAmount": "0",
            "availableToWithdraw": "",
            "availableToBorrow": "",
            "accruedInterest": "0",
            "totalOrderIM": _fmt8(figures.order_im),
            "totalPositionIM": _fmt8(figures.position_im),
            "totalPositionMM": _fmt8(figures.position_mm),
            "unrealisedPnl": _fmt8(figures.unrealised_pnl),
            "cumRealisedPnl": _fmt8(figures.cum_realised_pnl),
            "bonus": "0",
            "marginCollateral": True,
            "collateralSwitch": True,
            "colRes": "0",
            "spotBorrow": "0",
        }
    ]

    def rate(part: Decimal) -> str:
        return fmt((part / equity).quantize(_RATE_PLACES)) if equity > 0 else "0"

    account = {
        "accountType": "UNIFIED",
        "accountLTV": "0",
        "accountIMRate": rate(figures.initial_margin),
        "accountMMRate": rate(figures.position_mm),
        "totalEquity": _fmt8(equity),
        "totalWalletBalance": _fmt8(figures.wallet_balance),
        "totalMarginBalance": _fmt8(equity),
        "totalAvailableBalance": _fmt8(figures.available),
        "totalPerpUPL": _fmt8(figures.unrealised_pnl),
        "totalInitialMargin": _fmt8(figures.initial_margin),
        "totalMaintenanceMargin": _fmt8(figures.position_mm),
        # Bybit: "You can ignore this field ... which has the same calculation".
        "accountIMRateByMp": rate(figures.initial_margin),
        "accountMMRateByMp": rate(figures.position_mm),
        "totalInitialMarginByMp": _fmt8(figures.initial_margin),
        "totalMaintenanceMarginByMp": _fmt8(figures.position_mm),
        "coin": coins if include_usdt else [],
    }
    return {"list": [account]}


def api_key_view(
    spec: SimAccountSpec, user_id: int, created_ms: int, now_ms: int
) -> dict[str, Any]:
    """An API key as `/v5/user/query-api` reports it; the secret is always ""."""
    if spec.expired_at is None:
        # Bybit's encoding for a key that never expires (an IP-bound key).
        deadline_day, expired_at = -2, "1970-01-01T00:00:00Z"
    else:
        now = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
        deadline_day, expired_at = max(0, (spec.expired_at - now).days), _iso(spec.expired_at)
    return {
        "id": str(user_id * 10),
        "note": spec.note,
        "apiKey": spec.api_key,
        "readOnly": 1 if spec.read_only else 0,
        "secret": "",
        "permissions": {
            group: list(spec.permissions.get(group, [])) for group in PERMISSION_GROUPS
        },
        "ips": list(spec.ips),
        "type": 1,
        "deadlineDay": deadline_day,
        "expiredAt": expired_at,
        "createdAt": _iso(datetime.fromtimestamp(created_ms / 1000, tz=UTC)),
        "unified": spec.unified,
        "uta": spec.uta,
        "userID": user_id,
        "inviterID": 0,
        "vipLevel": "No VIP",
        "mktMakerLevel": "0",
        "affiliateID": 0,
        "rsaPublicKey": "",
        "isMaster": True,
        "parentUid": "0",
        "kycLevel": "LEVEL_DEFAULT",
        "kycRegion": "",
    }


def instrument_view(symbol: str, spec: InstrumentSpec) -> dict[str, Any]:
    """A linear perpetual as `/v5/market/instruments-info` lists it."""
    tick = spec.tick_size.normalize()
    return {
        "symbol": symbol,
        # A stable id per symbol name (Bybit's are small integers too).
        "symbolId": zlib.crc32(symbol.encode()) % 1_000_000,
        "contractType": "LinearPerpetual",
        "status": "Trading",
        "baseCoin": symbol.removesuffix(SETTLE_COIN),
        "quoteCoin": SETTLE_COIN,
        "launchTime": str(LAUNCH_TIME_MS),
        "deliveryTime": "0",
        "deliveryFeeRate": "",
        "priceScale": str(max(0, -int(tick.as_tuple().exponent))),
        "leverageFilter": {
            "minLeverage": "1",
            "maxLeverage": fmt(spec.max_leverage),
            "leverageStep": "0.01",
        },
        "priceFilter": {
            "minPrice": fmt(tick),
            "maxPrice": fmt(tick * MAX_PRICE_TICKS),
            "tickSize": fmt(tick),
        },
        "lotSizeFilter": {
            "maxOrderQty": fmt(spec.max_order_qty),
            "minOrderQty": fmt(spec.min_order_qty),
            "qtyStep": fmt(spec.qty_step),
            "postOnlyMaxOrderQty": fmt(spec.max_order_qty),
            "maxMktOrderQty": fmt(spec.market_order_cap),
            "minNotionalValue": fmt(spec.min_notional_usdt),
        },
        "unifiedMarginTrade": True,
        "fundingInterval": FUNDING_INTERVAL_MINUTES,
        "settleCoin": SETTLE_COIN,
        "copyTrading": "both",
        "upperFundingRate": FUNDING_CAP,
        "lowerFundingRate": f"-{FUNDING_CAP}",
        "isPreListing": False,
        "preListingInfo": None,
        "symbolType": "",
        "displayName": "",
        "forbidUplWithdrawal": False,
        "riskParameters": {
            "priceLimitRatioX": fmt(spec.price_limit_ratio_x),
            "priceLimitRatioY": fmt(spec.price_limit_ratio_y),
        },
    }


def price_limit_view(symbol: str, limits: PriceLimits) -> dict[str, str]:
    """An order price limit as `/v5/market/price-limit` answers it and `priceLimit.{symbol}`
    pushes it (without `ts`)."""
    return {"symbol": symbol, "buyLmt": fmt(limits.buy), "sellLmt": fmt(limits.sell)}


def ticker_view(
    symbol: str,
    spec: InstrumentSpec,
    last: Decimal,
    mark: Decimal,
    next_funding_ms: int,
    bid: Decimal,
    ask: Decimal,
    single_open_interest: Decimal,
    day: DayStats,
) -> dict[str, Any]:
    """A ticker as `/v5/market/tickers` lists it: the last trade's price, and the market's
    as mark and index price (the simulator's index is its mark); the 24 h figures are the
    simulator's own trades (`bot.sim.candles`).

    single_open_interest is what the accounts hold (the simulated market is the other side
    of every position); Bybit's openInterest counts both sides, valued at the mark price.
    """
    mark_text = fmt(mark)
    both_sides = single_open_interest * 2
    return {
        "symbol": symbol,
        "lastPrice": fmt(last),
        "indexPrice": mark_text,
        "markPrice": mark_text,
        "prevPrice24h": fmt(day.prev_24h),
        "price24hPcnt": fmt(day.change_24h(last)),
        "highPrice24h": fmt(day.high_24h),
        "lowPrice24h": fmt(day.low_24h),
        "prevPrice1h": fmt(day.prev_1h),
        "openInterest": fmt(both_sides),
        "openInterestValue": fmt(both_sides * mark),
        "singleOpenInterest": fmt(single_open_interest),
        "singleOpenInterestValue": fmt(single_open_interest * mark),
        "turnover24h": fmt(day.turnover_24h.quantize(Decimal("0.0001"))),
        "volume24h": fmt(day.volume_24h),
        "fundingRate": fmt(FUNDING_RATE),
        "nextFundingTime": str(next_funding_ms),
        "predictedDeliveryPrice": "",
        "basisRate": "",
        "deliveryFeeRate": "",
        "deliveryTime": "0",
        "bid1Price": fmt(bid),
        "bid1Size": book_size(symbol, spec, "b", 0),
        "ask1Price": fmt(ask),
        "ask1Size": book_size(symbol, spec, "a", 0),
        "basis": "",
        "preOpenPrice": "",
        "preQty": "",
        "curPreListingPhase": "",
        "fundingIntervalHour": str(FUNDING_INTERVAL_MINUTES // 60),
        "basisRateYear": "",
        "fundingCap": FUNDING_CAP,
    }


# ----------------------------------------------------------------- WebSocket stream shapes


def order_history_view(order: OrderRecord) -> dict[str, Any]:
    """An order as `/v5/order/history` lists it: the `/v5/order/realtime` fields and the
    history's own (the simulator has no RPI orders and no extra fees)."""
    return {
        **order_view(order),
        "slippageToleranceType": order.slippage_tolerance_type,
        "slippageTolerance": fmt(order.slippage_tolerance),
        "extraFees": "",
        "rpiTakerAccess": False,
        "rpiMatchedQty": "0",
    }


def order_stream_view(order: OrderRecord, closed_pnl: Decimal | None) -> dict[str, Any]:
    """An order as the private `order` topic pushes it: the REST fields plus category,
    closedPnl (the order's closed PnL so far) and the stream-only fields."""
    return {
        "category": "linear",
        **order_view(order),
        "closedPnl": _fmt8(closed_pnl) if closed_pnl is not None else "0",
        "feeCurrency": "",
        "brokerOrderPrice": "",
        "slippageToleranceType": order.slippage_tolerance_type,
        "slippageTolerance": fmt(order.slippage_tolerance),
        "rpiTakerAccess": False,
        "rpiMatchedQty": "0",
    }


def execution_stream_view(execution: ExecutionRecord) -> dict[str, Any]:
    """One fill as the private `execution` topic pushes it; its `execPnl` is the fill's
    `cashFlow` in the transaction log, as Bybit documents it."""
    return {
        "category": "linear",
        **execution_view(execution),
        "isLeverage": "0",
        "execPnl": _fmt8(execution.cash_flow),
    }


def fast_execution_stream_view(execution: ExecutionRecord) -> dict[str, Any]:
    """One trade as the private `execution.fast` topic pushes it, in its few fields. Its
    orderLinkId is "" for a maker's fill and for a maker order converted to taker (Bybit:
    "If a maker order in the orderbook is converted to taker (by price amend), orderLinkId
    is also \"\"", docs/v5/websocket/private/fast-execution.mdx)."""
    order = execution.order
    return {
        "category": "linear",
        "symbol": order.symbol,
        "orderId": order.order_id,
        "isMaker": execution.is_maker,
        "orderLinkId": "" if execution.is_maker or order.rested else order.order_link_id,
        "execId": execution.exec_id,
        "execPrice": fmt(execution.price),
        "execQty": fmt(execution.qty),
        "side": order.side,
        "execTime": str(execution.exec_ms),
        "seq": execution.seq,
    }


def position_stream_view(row: dict[str, Any]) -> dict[str, Any]:
    """A `position_view` row as the private `position` topic pushes it: entryPrice in place
    of REST's avgPrice, plus category."""
    row = dict(row)
    entry = row.pop("avgPrice")
    return {"category": "linear", **row, "entryPrice": entry}


def wallet_stream_view(figures: MarginFigures) -> list[dict[str, Any]]:
    """The UNIFIED account as the private `wallet` topic pushes it (the `data` list)."""
    rows: list[dict[str, Any]] = wallet_view(figures, include_usdt=True)["list"]
    return rows


#: Fields of a linear ticker on the public `tickers.{symbol}` topic (Bybit's order).
_TICKER_STREAM_FIELDS = (
    "symbol",
    "tickDirection",
    "price24hPcnt",
    "lastPrice",
    "prevPrice24h",
    "highPrice24h",
    "lowPrice24h",
    "prevPrice1h",
    "markPrice",
    "indexPrice",
    "openInterest",
    "openInterestValue",
    "singleOpenInterest",
    "singleOpenInterestValue",
    "turnover24h",
    "volume24h",
    "fundingIntervalHour",
    "fundingCap",
    "nextFundingTime",
    "fundingRate",
    "bid1Price",
    "bid1Size",
    "ask1Price",
    "ask1Size",
    "preOpenPrice",
    "preQty",
    "curPreListingPhase",
)


def ticker_stream_view(ticker: dict[str, Any], tick_direction: str) -> dict[str, str]:
    """A linear ticker (`ticker_view`'s) as a `tickers.{symbol}` snapshot carries it (a delta
    carries the fields that changed, and symbol)."""
    row = {**ticker, "tickDirection": tick_direction}
    return {name: str(row[name]) for name in _TICKER_STREAM_FIELDS}
