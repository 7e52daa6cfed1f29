"""The simulated exchange under random trading: market, limit and reduce-only orders, whole and
partial TP/SL, trading-stop, amendments, cancels, price moves and time. Whatever the sequence,
what it reports must add up as an exchange's books do (checked only through its API)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from pydantic import SecretStr

from bot.sim import SimAccountSpec, SimError, SimExchange, SimulatorConfig
from bot.sim.params import (
    AmendOrderParams,
    CancelOrderParams,
    ExecutionQueryParams,
    OrderQueryParams,
    PlaceOrderParams,
    PositionQueryParams,
    TradingStopParams,
    TransactionLogParams,
    WalletBalanceParams,
)

KEY = "stateful-key"
SYMBOL = "BTCUSDT"
START_PRICE = Decimal(97000)
BALANCE = Decimal(10_000)
EXIT_KINDS = {"TakeProfit", "StopLoss", "TrailingStop", "PartialTakeProfit", "PartialStopLoss"}
SIDES = st.sampled_from(["Buy", "Sell"])
QTYS = st.sampled_from(["0.001", "0.005", "0.01", "0.02"])
#: Offsets from the last price, in percent (levels, limit prices, trading-stop levels).
OFFSETS = st.sampled_from(["-3", "-1.5", "-0.5", "0.5", "1.5", "3"])
#: Distances of a stop loss or take profit from the last price, in percent.
DISTANCES = st.sampled_from(["0.5", "1.5", "3"])


def _pages(read: Callable[[str | None], dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = read(cursor)
        rows += page["list"]
        cursor = page.get("nextPageCursor") or None
        if cursor is None:
            return rows


class ExchangeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        spec = SimAccountSpec(api_key=KEY, api_secret=SecretStr("secret"), balance_usdt=BALANCE)
        self.exchange = SimExchange(
            SimulatorConfig(
                seed=3,
                accounts=[spec],
                market_fill_delay_ms=5,
                partial_fills=2,
                partial_fill_probability=0.5,
            )
        )
        self.price = START_PRICE
        self.exchange.set_prices({SYMBOL: START_PRICE})

    # ----------------------------------------------------------------- helpers

    def _level(self, offset: str) -> str:
        return str((self.price * (1 + Decimal(offset) / 100)).quantize(Decimal("0.1")))

    def _try(self, call: Callable[[], Any]) -> None:
        """A request the exchange may refuse (a refusal changes nothing)."""
        with contextlib.suppress(SimError):
            call()

    def _place(self, **fields: Any) -> None:
        """Place an order and let the engine run long enough for it to arrive and fill (both
        pieces), so that most steps trade; `wait` leaves orders in flight too."""
        body = {"category": "linear", "symbol": SYMBOL, **fields}
        self._try(lambda: self.exchange.place_order(KEY, PlaceOrderParams.model_validate(body)))
        self.exchange.advance(12)

    def _position_size(self) -> Decimal:
        query = PositionQueryParams.model_validate({"category": "linear", "symbol": SYMBOL})
        row = self.exchange.positions(KEY, query)["list"][0]
        size = Decimal(row["size"])
        return -size if row["side"] == "Sell" else size

    def _orders(self, *, history: bool) -> list[dict[str, Any]]:
        read = self.exchange.order_history if history else self.exchange.open_orders

        def page(cursor: str | None) -> dict[str, Any]:
            query = {"category": "linear", "symbol": SYMBOL, "limit": 50}
            return read(KEY, OrderQueryParams.model_validate(query | {"cursor": cursor}))

        return _pages(page)

    def _executions(self) -> list[dict[str, Any]]:
        def page(cursor: str | None) -> dict[str, Any]:
            query = {"category": "linear", "symbol": SYMBOL, "limit": 100, "cursor": cursor}
            return self.exchange.executions(KEY, ExecutionQueryParams.model_validate(query))

        return _pages(page)

    # ----------------------------------------------------------------- rules

    @rule(side=SIDES, qty=QTYS, reduce_only=st.booleans())
    def market(self, side: str, qty: str, reduce_only: bool) -> None:
        self._place(side=side, orderType="Market", qty=qty, reduceOnly=reduce_only)

    def _exits(self, side: str, stop: str, profit: str) -> dict[str, str]:
        """A stop loss and take profit `stop` and `profit` percent away on the sides a `side`
        position has them."""
        down = "-" if side == "Buy" else ""
        up = "" if side == "Buy" else "-"
        return {"stopLoss": self._level(down + stop), "takeProfit": self._level(up + profit)}

    @rule(side=SIDES, qty=QTYS, stop=DISTANCES, profit=DISTANCES, partial=st.booleans())
    def market_with_exits(self, side: str, qty: str, stop: str, profit: str, partial: bool) -> None:
        fields: dict[str, Any] = self._exits(side, stop, profit)
        if partial:
            fields |= {
                "tpslMode": "Partial",
                "tpOrderType": "Limit",
                "tpLimitPrice": fields["takeProfit"],
            }
        self._place(side=side, orderType="Market", qty=qty, **fields)

    @rule(side=SIDES, qty=QTYS, offset=OFFSETS, reduce_only=st.booleans())
    def limit(self, side: str, qty: str, offset: str, reduce_only: bool) -> None:
        self._place(
            side=side, orderType="Limit", qty=qty, price=self._level(offset), reduceOnly=reduce_only
        )

    @rule(stop=DISTANCES, profit=DISTANCES, partial_size=st.sampled_from([None, "0.001", "0.01"]))
    def trading_stop(self, stop: str, profit: str, partial_size: str | None) -> None:
        side = "Buy" if self._position_size() >= 0 else "Sell"
        body: dict[str, Any] = {
            "category": "linear",
            "symbol": SYMBOL,
            "tpslMode": "Full" if partial_size is None else "Partial",
            **self._exits(side, stop, profit),
        }
        if partial_size is not None:
            body |= {"tpSize": partial_size, "slSize": partial_size}
        self._try(
            lambda: self.exchange.set_trading_stop(KEY, TradingStopParams.model_validate(body))
        )

    @rule(pick=st.integers(0, 50), offset=OFFSETS, qty=QTYS, what=st.sampled_from(["p", "q", "s"]))
    def amend(self, pick: int, offset: str, qty: str, what: str) -> None:
        waiting = self._orders(history=False)
        if not waiting:
            return
        order = waiting[pick % len(waiting)]
        change = {"p": {"price": self._level(offset)}, "q": {"qty": qty}}.get(
            what, {"stopLoss": self._level(offset)}
        )
        if order["orderStatus"] == "Untriggered":
            change = {"triggerPrice": self._level(offset)}
        body = {"category": "linear", "symbol": SYMBOL, "orderId": order["orderId"], **change}
        self._try(lambda: self.exchange.amend_order(KEY, AmendOrderParams.model_validate(body)))

    @rule(pick=st.integers(0, 50))
    def cancel(self, pick: int) -> None:
        waiting = self._orders(history=False)
        if not waiting:
            return
        order_id = waiting[pick % len(waiting)]["orderId"]
        body = {"category": "linear", "symbol": SYMBOL, "orderId": order_id}
        self._try(lambda: self.exchange.cancel_order(KEY, CancelOrderParams.model_validate(body)))

    @rule(percent=st.sampled_from(["-4", "-2", "-0.7", "-0.2", "0.2", "0.7", "2", "4"]))
    def move_price(self, percent: str) -> None:
        self.price = Decimal(self._level(percent))
        self.exchange.set_prices({SYMBOL: self.price})
        self.exchange.advance(12)  # what the move triggered trades

    @rule(ms=st.sampled_from([1, 5, 20]))
    def wait(self, ms: int) -> None:
        self.exchange.advance(ms)

    # ----------------------------------------------------------------- invariants

    @invariant()
    def the_position_is_the_sum_of_its_fills(self) -> None:
        signed = sum(
            (Decimal(row["execQty"]) * (1 if row["side"] == "Buy" else -1))
            for row in self._executions()
        )
        assert self._position_size() == signed

    @invariant()
    def the_wallet_is_the_start_plus_every_change_in_the_log(self) -> None:
        def page(cursor: str | None) -> dict[str, Any]:
            query = {"accountType": "UNIFIED", "limit": 50, "cursor": cursor}
            return self.exchange.transaction_log(KEY, TransactionLogParams.model_validate(query))

        changes = sum((Decimal(row["change"]) for row in _pages(page)), Decimal(0))
        query = WalletBalanceParams.model_validate({"accountType": "UNIFIED"})
        wallet = Decimal(self.exchange.wallet_balance(KEY, query)["list"][0]["totalWalletBalance"])
        assert abs(wallet - (BALANCE + changes)) < Decimal("0.000001")

    @invariant()
    def a_reduce_only_fill_only_closes(self) -> None:
        reducing = {row["orderId"] for row in self._orders(history=True) if row["reduceOnly"]}
        for fill in self._executions():
            if fill["orderId"] in reducing:
                assert fill["closedSize"] == fill["execQty"], fill

    @invariant()
    def every_waiting_exit_closes_the_position_there_is(self) -> None:
        size = self._position_size()
        for order in self._orders(history=False):
            if order["stopOrderType"] not in EXIT_KINDS or order["orderStatus"] != "Untriggered":
                continue
            assert size != 0, order
            assert order["side"] == ("Sell" if size > 0 else "Buy"), order
            if order["stopOrderType"] in {"TakeProfit", "StopLoss"}:
                assert Decimal(order["qty"]) == abs(size), order

    @invariant()
    def open_orders_have_something_left_and_no_more_than_they_asked(self) -> None:
        for order in self._orders(history=False):
            assert Decimal(order["cumExecQty"]) <= Decimal(order["qty"]), order
            if order["orderStatus"] in {"New", "PartiallyFilled"}:
                assert Decimal(order["leavesQty"]) > 0, order

    @invariant()
    def at_most_one_half_of_a_partial_pair_fires(self) -> None:
        halves = [
            row
            for row in self._orders(history=True)
            if row["stopOrderType"] in {"PartialTakeProfit", "PartialStopLoss"}
        ]
        fired = [row for row in halves if row["orderStatus"] not in {"Untriggered", "Deactivated"}]
        ended_by_pair = [row for row in halves if row["cancelType"].startswith("CancelByOCO")]
        assert len(ended_by_pair) <= len(fired)


TestExchangeMachine = ExchangeMachine.TestCase
TestExchangeMachine.settings = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
