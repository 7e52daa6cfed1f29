"""The simulated exchange's mutable records: orders, one-way positions, accounts, margin.

Only `SimExchange` mutates them, under its lock; `views` turns them into Bybit JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from bot.sim.config import SimAccountSpec

__all__ = [
    "LIQUIDATION_CREATE_TYPE",
    "MAINTENANCE_MARGIN_RATE",
    "RISK_LIMIT_VALUE",
    "SETTLE_COIN",
    "ZERO",
    "AccountRecord",
    "ClosedPnlRecord",
    "ExecutionRecord",
    "MarginFigures",
    "OrderRecord",
    "PositionRecord",
    "PriceLimits",
]

ZERO = Decimal(0)
#: Every simulated instrument is a linear perpetual settled in USDT.
SETTLE_COIN = "USDT"
#: createType of the orders the liquidation engine closes a position with.
LIQUIDATION_CREATE_TYPE = "CreateByLiq"
#: Maintenance margin as a fraction of position value (Bybit's lowest risk tier).
MAINTENANCE_MARGIN_RATE = Decimal("0.005")
#: The one risk tier every position is in (`riskId` 1): the position value it allows, USDT.
RISK_LIMIT_VALUE = Decimal(2_000_000)
_OPEN_STATUSES = frozenset({"New", "PartiallyFilled"})


@dataclass(slots=True)
class OrderRecord:
    """One order as the matching engine tracks it; price is None for market orders."""

    order_id: str
    order_link_id: str
    symbol: str
    side: str
    order_type: str
    price: Decimal | None
    qty: Decimal
    time_in_force: str
    reduce_only: bool
    close_on_trigger: bool
    take_profit: Decimal | None
    stop_loss: Decimal | None
    last_price_on_created: Decimal
    created_ms: int
    #: Exchange-wide creation sequence, to list orders of all accounts in time order.
    seq: int
    updated_ms: int = 0
    status: str = "New"
    cum_exec_qty: Decimal = ZERO
    cum_exec_value: Decimal = ZERO
    cum_exec_fee: Decimal = ZERO
    cancel_type: str = "UNKNOWN"
    reject_reason: str = "EC_NoError"
    stop_order_type: str = ""
    create_type: str = "CreateByUser"
    trigger_price: Decimal | None = None
    #: A conditional order's: 1 triggers when the price rises to it, 2 when it falls (0: set
    #: by its kind, for a position's TP/SL order); and the price it watches.
    trigger_direction: int = 0
    trigger_by: str = "LastPrice"
    #: The prices its take profit and stop loss watch (echoed: the simulator has one price).
    tp_trigger_by: str = "LastPrice"
    sl_trigger_by: str = "LastPrice"
    #: Whether the matching engine has seen the order (it is acknowledged before that).
    arrived: bool = False
    #: Whether it has rested on the book: a later taker fill (a price amend that crosses)
    #: is then a maker order converted to taker, whose `execution.fast` orderLinkId is "".
    rested: bool = False
    #: Engine-clock ms from which queries show the order (query lag, visibility faults).
    visible_from_ms: int = 0
    #: Taker pieces still to execute after this one (partial fills).
    pieces_left: int = 1
    #: A market order's price, once sent: Bybit turns it into an IOC limit order at the
    #: order price limit of that moment (the most a buy may pay, the least a sell may take),
    #: or nearer, at its own slippage tolerance ("TickSize" or "Percent", and how many).
    price_limit: Decimal | None = None
    slippage_tolerance_type: str = "UNKNOWN"
    slippage_tolerance: Decimal = ZERO
    #: An order whose TP/SL is Partial (tpslMode): each fill that opens adds its qty to a
    #: pair of TP/SL orders of its own (`exit_pair`), market or at the limit prices here.
    partial_tpsl: bool = False
    tp_limit_price: Decimal | None = None
    sl_limit_price: Decimal | None = None
    exit_pair: list[str] = field(default_factory=list)
    #: A partial TP/SL order's other half (the SL of its TP): the first to fire cancels it.
    paired_with: str | None = None
    smp_type: str = "None"
    #: A TP/SL order's parent: the orderLinkId of the order it came attached to ("" for one
    #: set by trading-stop alone, or a parent without one), Bybit's `parentOrderLinkId`.
    parent_order_link_id: str = ""
    #: No order of anyone's: what a funding settlement's execution belongs to (Bybit lists
    #: one under an orderId of its own, orderType UNKNOWN, no orderLinkId, qty and price 0).
    funding: bool = False

    @property
    def is_open(self) -> bool:
        return self.status in _OPEN_STATUSES

    @property
    def worst_price(self) -> Decimal | None:
        """The worst price the order may trade at: its own, or a market order's price limit
        once it is sent (None before)."""
        return self.price if self.price is not None else self.price_limit

    @property
    def leaves_qty(self) -> Decimal:
        waiting = self.is_open or self.status == "Untriggered"
        return self.qty - self.cum_exec_qty if waiting else ZERO

    @property
    def direction(self) -> int:
        """+1 for a buy, -1 for a sell."""
        return 1 if self.side == "Buy" else -1

    @property
    def is_liquidation(self) -> bool:
        """The order the liquidation engine took a position over with."""
        return self.create_type == LIQUIDATION_CREATE_TYPE

    @property
    def exec_type(self) -> str:
        """Bybit's execType of the order's fills."""
        if self.funding:
            return "Funding"
        return "BustTrade" if self.is_liquidation else "Trade"

    @property
    def log_type(self) -> str:
        """The `type` of its fills' entries in the transaction log."""
        if self.funding:
            return "SETTLEMENT"
        return "LIQUIDATION" if self.is_liquidation else "TRADE"


@dataclass(slots=True)
class PositionRecord:
    """A one-way position; size is signed (long > 0, short < 0)."""

    symbol: str
    size: Decimal = ZERO
    avg_price: Decimal = ZERO
    take_profit: Decimal | None = None
    stop_loss: Decimal | None = None
    cum_realised_pnl: Decimal = ZERO
    #: Realised PnL since the position last opened from flat.
    cur_realised_pnl: Decimal = ZERO
    created_ms: int = 0
    updated_ms: int = 0
    #: Bybit reports -1 for a symbol never traded.
    seq: int = -1
    #: Fees paid on the opening fills still in the position (closed-pnl's openFee).
    open_fee: Decimal = ZERO
    #: A trailing stop: its distance from the best price since it activated, the price that
    #: activates it (its order's triggerPrice, as Bybit shows it: the activePrice, or the
    #: last price when it was set without one), and its stop level once active (None while
    #: it waits for that price).
    trailing_stop: Decimal | None = None
    trailing_active_price: Decimal | None = None
    trailing_level: Decimal | None = None
    #: The prices its take profit and stop loss watch (echoed on their orders).
    tp_trigger_by: str = "LastPrice"
    sl_trigger_by: str = "LastPrice"
    #: The orderLinkId of the order whose fill set each level, by stopOrderType (TakeProfit,
    #: StopLoss): the parentOrderLinkId of the level's order when it is made.
    exit_parents: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ResumedPosition:
    """A position an account resumes with (`SimExchange.resume_account`); its TP/SL orders
    keep the ids given (the orders the client knows), or get new ones."""

    symbol: str
    size: Decimal
    entry_price: Decimal
    leverage: Decimal
    take_profit: Decimal | None = None
    stop_loss: Decimal | None = None
    take_profit_order_id: str | None = None
    stop_loss_order_id: str | None = None


@dataclass(frozen=True, slots=True)
class ResumedOrder:
    """An order an account resumes with (`SimExchange.resume_account`): a limit order still
    resting, or (what it filled of it done) one the venue must still know by its ids."""

    order_id: str
    order_link_id: str
    symbol: str
    side: str
    price: Decimal | None  # None: a market order
    qty: Decimal
    filled_qty: Decimal
    avg_price: Decimal | None
    reduce_only: bool
    take_profit: Decimal | None
    stop_loss: Decimal | None


@dataclass(frozen=True, slots=True)
class PriceLimits:
    """An order price limit: the highest price a buy may trade at, the lowest a sell may."""

    buy: Decimal
    sell: Decimal

    def of(self, side: str) -> Decimal:
        return self.buy if side == "Buy" else self.sell


@dataclass(frozen=True, slots=True)
class ExecutionRecord:
    """One fill, as `/v5/execution/list` reports it (and `/v5/account/transaction-log`)."""

    exec_id: str
    order: OrderRecord
    #: The order's quantity and leaves at the time of this fill.
    order_qty: Decimal
    leaves_qty: Decimal
    price: Decimal
    qty: Decimal
    fee: Decimal
    fee_rate: Decimal
    is_maker: bool
    mark_price: Decimal
    closed_size: Decimal
    exec_ms: int
    seq: int
    #: PnL the fill realised on the closed part, fees aside (the log's cashFlow).
    cash_flow: Decimal
    #: The signed position size after the fill (short < 0) and the wallet balance after it.
    position_size: Decimal
    cash_balance: Decimal


@dataclass(slots=True)
class ClosedPnlRecord:
    """What one closing order realised, as `/v5/position/closed-pnl` reports it."""

    order: OrderRecord
    leverage: Decimal
    closed_size: Decimal = ZERO
    cum_entry_value: Decimal = ZERO
    cum_exit_value: Decimal = ZERO
    open_fee: Decimal = ZERO
    close_fee: Decimal = ZERO
    fill_count: int = 0
    created_ms: int = 0
    updated_ms: int = 0

    @property
    def closed_pnl(self) -> Decimal:
        """Price PnL of the closed size minus the opening and closing fees, as Bybit nets it."""
        direction = -1 if self.order.side == "Buy" else 1  # a sell closes a long
        gross = (self.cum_exit_value - self.cum_entry_value) * direction
        return gross - self.open_fee - self.close_fee


@dataclass(slots=True)
class AccountRecord:
    """Everything behind one API key: wallet, orders (all, open, by link id), positions."""

    spec: SimAccountSpec
    user_id: int
    created_ms: int
    wallet_balance: Decimal
    orders: dict[str, OrderRecord] = field(default_factory=dict)
    open_orders: dict[str, OrderRecord] = field(default_factory=dict)
    #: The positions' take-profit / stop-loss orders, Untriggered, by (symbol, stopOrderType):
    #: Bybit makes one for each level a position has (see `SimExchange._sync_exits`).
    exit_orders: dict[tuple[str, str], OrderRecord] = field(default_factory=dict)
    #: The conditional orders (a triggerPrice at creation), Untriggered, by orderId.
    conditional_orders: dict[str, OrderRecord] = field(default_factory=dict)
    link_ids: dict[str, str] = field(default_factory=dict)
    positions: dict[str, PositionRecord] = field(default_factory=dict)
    leverage: dict[str, Decimal] = field(default_factory=dict)
    executions: list[ExecutionRecord] = field(default_factory=list)
    closed_pnl: list[ClosedPnlRecord] = field(default_factory=list)
    #: The closed-pnl record of each closing order, to add later fills of the same order to.
    closed_pnl_by_order: dict[str, ClosedPnlRecord] = field(default_factory=dict)
    #: every API key of the account (the one that opened it first); each gets its pushes
    api_keys: list[str] = field(default_factory=list)
    #: Symbols in hedge (two-way) position mode; the rest are one-way (Bybit's default).
    hedge_symbols: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class MarginFigures:
    """An account's margin picture at current prices (UTA cross margin, USDT only)."""

    wallet_balance: Decimal
    unrealised_pnl: Decimal
    position_im: Decimal
    position_mm: Decimal
    order_im: Decimal
    cum_realised_pnl: Decimal

    @property
    def equity(self) -> Decimal:
        return self.wallet_balance + self.unrealised_pnl

    @property
    def initial_margin(self) -> Decimal:
        return self.position_im + self.order_im

    @property
    def available(self) -> Decimal:
        """What a new order may commit: equity minus all initial margin."""
        return self.equity - self.initial_margin
