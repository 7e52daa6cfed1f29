"""Configuration of the Bybit V5 simulator: market, fees, limits, accounts and injected faults."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Final, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "DEFAULT_RATE_LIMITS_PER_S",
    "PERMISSION_GROUPS",
    "InstrumentSpec",
    "PriceWalk",
    "SimAccountSpec",
    "SimFaults",
    "SimKeyProfile",
    "SimulatorConfig",
    "parse_faults",
]

#: Bybit's published per-UID limits (requests per rolling second) for category=linear on a
#: unified account, from https://bybit-exchange.github.io/docs/v5/rate-limit ("API Rate Limit
#: Table": Trade, Position, Account, Asset, User). Private paths not listed here get
#: `SimulatorConfig.other_private_per_s`.
#: The batch endpoints count every order of a request (Bybit: "Number of consumption = number
#: of requests * number of orders included in a single request").
DEFAULT_RATE_LIMITS_PER_S: dict[str, int] = {
    "/v5/order/create": 10,
    "/v5/order/amend": 10,
    "/v5/order/cancel": 10,
    "/v5/order/cancel-all": 10,
    "/v5/order/create-batch": 10,
    "/v5/order/cancel-batch": 10,
    "/v5/order/amend-batch": 10,
    "/v5/order/realtime": 50,
    "/v5/order/history": 50,
    "/v5/execution/list": 50,
    "/v5/position/list": 50,
    "/v5/position/closed-pnl": 50,
    "/v5/position/set-leverage": 10,
    "/v5/position/trading-stop": 10,
    "/v5/position/switch-mode": 10,
    "/v5/account/wallet-balance": 50,
    "/v5/account/info": 50,
    "/v5/account/fee-rate": 5,
    "/v5/account/transaction-log": 25,
    "/v5/account/set-margin-mode": 5,
    "/v5/asset/coin/query-info": 5,
    "/v5/user/query-api": 10,
}

#: Permission groups Bybit reports for an API key in `GET /v5/user/query-api`.
PERMISSION_GROUPS: tuple[str, ...] = (
    "ContractTrade",
    "Spot",
    "Wallet",
    "Options",
    "Derivatives",
    "CopyTrading",
    "BlockTrade",
    "Exchange",
    "NFT",
    "Affiliate",
    "Earn",
    "FiatP2P",
    "FiatBitPay",
    "FiatConvertBroker",
    "BitCard",
    "ByXPost",
)

PositiveDecimal = Annotated[Decimal, Field(gt=0, allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
BasisPoints = Annotated[Decimal, Field(ge=0, le=1000, allow_inf_nan=False)]


class InstrumentSpec(BaseModel):
    """Trading rules of one linear USDT perpetual, as `/v5/market/instruments-info` reports them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tick_size: PositiveDecimal = Field(
        description="Price increment in USDT (priceFilter.tickSize); prices must be multiples."
    )
    qty_step: PositiveDecimal = Field(
        description="Quantity increment in base coin (lotSizeFilter.qtyStep)."
    )
    min_order_qty: PositiveDecimal = Field(
        description="Smallest order quantity in base coin (lotSizeFilter.minOrderQty)."
    )
    max_order_qty: PositiveDecimal = Field(
        description="Largest limit order quantity in base coin (lotSizeFilter.maxOrderQty)."
    )
    max_market_order_qty: PositiveDecimal | None = Field(
        default=None,
        description="Largest market order quantity in base coin "
        "(lotSizeFilter.maxMktOrderQty); unset = max_order_qty.",
    )
    min_notional_usdt: PositiveDecimal = Field(
        description="Smallest order value qty * price in USDT (lotSizeFilter.minNotionalValue)."
    )
    max_leverage: PositiveDecimal = Field(
        default=Decimal(100), description="Highest leverage accepted by set-leverage (x)."
    )
    price_limit_ratio_x: PositiveDecimal = Field(
        default=Decimal("0.01"),
        description="riskParameters.priceLimitRatioX: how far above the mark price a buy may "
        "trade (below it, a sell), as a fraction, before the book's premium is added.",
    )
    price_limit_ratio_y: PositiveDecimal = Field(
        default=Decimal("0.02"),
        description="riskParameters.priceLimitRatioY: the furthest any order may trade from "
        "the mark price, as a fraction; at least priceLimitRatioX.",
    )

    @model_validator(mode="after")
    def _quantities_consistent(self) -> Self:
        if self.min_order_qty > self.max_order_qty:
            raise ValueError("min_order_qty must not exceed max_order_qty")
        if not self.min_order_qty <= self.market_order_cap <= self.max_order_qty:
            raise ValueError(
                "max_market_order_qty must lie between min_order_qty and max_order_qty"
            )
        if self.min_order_qty % self.qty_step != 0:
            raise ValueError("min_order_qty must be a multiple of qty_step")
        if self.max_leverage < 1:
            raise ValueError("max_leverage must be at least 1")
        return self

    @property
    def market_order_cap(self) -> Decimal:
        """The largest qty of one market order (maxMktOrderQty)."""
        return self.max_market_order_qty or self.max_order_qty

    @model_validator(mode="after")
    def _price_limit_ordered(self) -> Self:
        if not self.price_limit_ratio_x <= self.price_limit_ratio_y < 1:
            raise ValueError("price limit ratios must satisfy 0 < x <= y < 1")
        return self


def _default_instruments() -> dict[str, InstrumentSpec]:
    """Bybit's published rules for the three default symbols (rounded maxima)."""
    return {
        "BTCUSDT": InstrumentSpec(
            tick_size=Decimal("0.1"),
            qty_step=Decimal("0.001"),
            min_order_qty=Decimal("0.001"),
            max_order_qty=Decimal(1190),
            max_market_order_qty=Decimal(500),
            min_notional_usdt=Decimal(5),
        ),
        "ETHUSDT": InstrumentSpec(
            tick_size=Decimal("0.01"),
            qty_step=Decimal("0.01"),
            min_order_qty=Decimal("0.01"),
            max_order_qty=Decimal(7240),
            max_market_order_qty=Decimal(3040),
            min_notional_usdt=Decimal(5),
        ),
        "SOLUSDT": InstrumentSpec(
            tick_size=Decimal("0.01"),
            qty_step=Decimal("0.1"),
            min_order_qty=Decimal("0.1"),
            max_order_qty=Decimal(79770),
            max_market_order_qty=Decimal(33500),
            min_notional_usdt=Decimal(5),
        ),
    }


def _default_prices() -> dict[str, Decimal]:
    return {"BTCUSDT": Decimal(97000), "ETHUSDT": Decimal(3500), "SOLUSDT": Decimal(180)}


def _upper_case_keys(table: str, symbols: dict[Any, Any]) -> dict[Any, Any]:
    """`symbols` by upper-case symbol; ValueError if two keys name one symbol."""
    upper: dict[Any, Any] = {}
    for key, value in symbols.items():
        symbol = key.upper() if isinstance(key, str) else key
        if symbol in upper:
            raise ValueError(f"{table}: {symbol} is given twice, in two cases: keep one")
        upper[symbol] = value
    return upper


#: The largest balance an account may start with: its 8 decimals stay within Decimal's
#: precision (a larger one failed every wallet read).
_MAX_BALANCE_USDT: Final = Decimal(10**15)


def _default_permissions() -> dict[str, list[str]]:
    return {"ContractTrade": ["Order", "Position"]}


class SimFaults(BaseModel):
    """Faults the simulator injects, each drawn independently per request from a seeded RNG.

    Posting a new set replaces the old one: fields left out fall back to "no fault".
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    drop_response_after_accept: Probability = Field(
        default=0.0,
        description="Chance that an accepted order's answer (create, create-batch) is cut off "
        "mid-body: the order exists, the client gets a connection error (never a success); "
        "on the WebSocket trade API, the answer is never sent.",
    )
    delay: Probability = Field(
        default=0.0, description="Chance that a /v5 request is held for delay_ms before work."
    )
    delay_ms: int = Field(
        default=0, ge=0, le=60_000, description="How long a delayed request is held, in ms."
    )
    rate_limit_10006: Probability = Field(
        default=0.0,
        description="Chance that an authenticated request (or a WebSocket trade API order "
        "request) is refused with 10006 'Too many visits!' although under the limit.",
    )
    timeout_10016: Probability = Field(
        default=0.0,
        description="Chance that a /v5 request (or a WebSocket trade API order request) is "
        "answered 10016 'Server error.' without being executed.",
    )
    http_5xx: Probability = Field(
        default=0.0,
        description="Chance that a /v5 request is answered HTTP 503 without being executed.",
    )
    clock_skew_ms: int = Field(
        default=0,
        ge=-86_400_000,
        le=86_400_000,
        description="Offset added to the simulator's clock in ms (server time, timestamp "
        "checks, rate-limit reset times); a large value makes signed requests fail 10002.",
    )
    accept_then_10016: Probability = Field(
        default=0.0,
        description="Chance that an order write (create, amend, cancel, cancel-all, "
        "create-batch, cancel-batch, amend-batch, over REST or the WebSocket trade API) is "
        "executed and then answered 10016 'Server error.': the change happened, the client "
        "is told it may not have.",
    )
    accept_then_5xx: Probability = Field(
        default=0.0,
        description="Chance that an order write is executed and then answered HTTP 503.",
    )
    order_visibility_lag: Probability = Field(
        default=0.0,
        description="Chance that a new order stays invisible to order and execution queries "
        "for order_visibility_lag_ms after its acknowledgement (it still trades).",
    )
    order_visibility_lag_ms: int = Field(
        default=0, ge=0, le=60_000, description="How long a lagging order stays invisible, in ms."
    )
    clock_skew_burst: Probability = Field(
        default=0.0,
        description="Chance, per /v5 request outside a burst, that a burst of clock skew "
        "starts: for clock_skew_burst_window_ms the clock is off by clock_skew_burst_ms more.",
    )
    clock_skew_burst_ms: int = Field(
        default=0,
        ge=-86_400_000,
        le=86_400_000,
        description="Extra clock offset during a burst, in ms (added to clock_skew_ms).",
    )
    clock_skew_burst_window_ms: int = Field(
        default=1000, ge=1, le=3_600_000, description="How long one burst of skew lasts, in ms."
    )
    stream_drop: Probability = Field(
        default=0.0,
        description="Chance, per message pushed on a WebSocket stream, that the connection is "
        "cut instead (no close frame: the client sees a lost connection and must reconnect).",
    )


class PriceWalk(BaseModel):
    """A seeded random walk of one symbol's last price, stepped by the exchange's engine.

    Every `interval_ms` the price moves by `step_bps` up or down (a fair coin from
    `Random(seed)`) plus `drift_bps`, rounded to the tick, and never below one tick; fills,
    stop-losses and take-profits then happen as for any other price move. The same seed gives
    the same sequence of prices.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(default=0, description="Seed of this walk's coin flips.")
    step_bps: BasisPoints = Field(
        default=Decimal(5), description="Size of one step in basis points of the price."
    )
    interval_ms: int = Field(
        default=100, ge=1, le=3_600_000, description="Time between two steps, in ms."
    )
    drift_bps: Annotated[Decimal, Field(ge=-1000, le=1000, allow_inf_nan=False)] = Field(
        default=Decimal(0),
        description="Signed bias added to every step, in basis points (trend up or down).",
    )
    start: PositiveDecimal | None = Field(
        default=None, description="Price to start from; None starts from the current price."
    )


class SimKeyProfile(BaseModel):
    """What an API key may do and what `/v5/user/query-api` reports about it."""

    # An error must never echo a value: the API key is a credential.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    read_only: bool = Field(default=False, description="Read-only keys cannot trade (10005).")
    permissions: dict[str, list[str]] = Field(
        default_factory=_default_permissions,
        description="Bybit permission groups (ContractTrade, Wallet, ...) to granted rights; "
        "trading needs ContractTrade 'Order', set-leverage needs 'Position'.",
    )
    ips: list[str] = Field(
        default_factory=lambda: ["*"],
        min_length=1,
        description="Client IPs or CIDR networks the key accepts; '*' accepts any (10010).",
    )
    expired_at: datetime | None = Field(
        default=None,
        description="When the key expires (33004 from then on); None never expires. "
        "Naive datetimes are read as UTC.",
    )
    uta: Literal[0, 1] = Field(
        default=1, description="1: the account is a unified trading account (UTA); 0: classic."
    )
    unified: Literal[0, 1] = Field(
        default=0, description="Bybit's deprecated unified-margin flag, reported as is."
    )

    @field_validator("permissions")
    @classmethod
    def _known_groups(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        unknown = sorted(set(value) - set(PERMISSION_GROUPS))
        if unknown:
            raise ValueError(
                f"unknown permission group(s) {unknown}; expected some of {list(PERMISSION_GROUPS)}"
            )
        return value

    @field_validator("ips")
    @classmethod
    def _valid_ips(cls, value: list[str]) -> list[str]:
        for entry in value:
            if entry == "*":
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as exc:
                raise ValueError(f"{entry!r} is neither '*' nor an IP address or network") from exc
        return value

    @field_validator("expired_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class SimAccountSpec(SimKeyProfile):
    """One API key of the simulated exchange and the account (balance, orders) behind it."""

    api_key: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="The key sent in X-BAPI-API-KEY; one account per key.",
    )
    api_secret: SecretStr = Field(description="HMAC-SHA256 secret the client signs with.")
    balance_usdt: Decimal | None = Field(
        default=None,
        ge=0,
        le=_MAX_BALANCE_USDT,
        allow_inf_nan=False,
        description="Starting USDT wallet balance; None uses the config's starting_balance_usdt.",
    )
    note: str = Field(default="", max_length=128, description="Bybit's free-text key remark.")
    account_of: str | None = Field(
        default=None,
        description="The api_key of an existing account this key is added to (Bybit accounts "
        "hold several keys, e.g. while one is rotated); balance_usdt and hedge_mode are then "
        "the account's.",
    )
    hedge_mode: bool = Field(
        default=False,
        description="Hedge (two-way) position mode at start: /v5/position/list shows "
        "positionIdx 1 (Buy side) and 2 (Sell side) per symbol, and orders with positionIdx 0 "
        "are refused 10001. Only detection is simulated: hedge-mode orders are refused too, "
        "and /v5/position/switch-mode can switch symbols to one-way mode (not back).",
    )


class SimulatorConfig(BaseModel):
    """Everything that shapes one simulated exchange; defaults mirror Bybit's mainnet rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instruments: dict[str, InstrumentSpec] = Field(
        default_factory=_default_instruments,
        description="Listed linear USDT perpetuals by symbol; anything else is 10001.",
    )
    prices: dict[str, PositiveDecimal] = Field(
        default_factory=_default_prices,
        description="Starting last/mark/index price in USDT of every listed symbol.",
    )
    starting_balance_usdt: Decimal = Field(
        default=Decimal(10000),
        ge=0,
        le=_MAX_BALANCE_USDT,
        allow_inf_nan=False,
        description="USDT wallet balance of an account whose spec leaves balance_usdt unset.",
    )
    default_leverage: Decimal = Field(
        default=Decimal(10),
        ge=1,
        allow_inf_nan=False,
        description="Leverage (x) of every symbol until set-leverage changes it; initial "
        "margin = notional / leverage.",
    )
    taker_fee_rate: Decimal = Field(
        default=Decimal("0.00055"),
        ge=0,
        lt=1,
        description="Fee as a fraction of notional for fills that take liquidity "
        "(market orders, marketable limits).",
    )
    maker_fee_rate: Decimal = Field(
        default=Decimal("0.0002"),
        ge=0,
        lt=1,
        description="Fee as a fraction of notional for resting limit orders the price reaches.",
    )
    market_fill_delay_ms: int = Field(
        default=0,
        ge=0,
        le=60_000,
        description="Time between an order's acknowledgement and its arrival at the matching "
        "engine, in ms: a market order fills then, a limit order trades or starts resting then.",
    )
    spread_bps: BasisPoints = Field(
        default=Decimal(0),
        description="Bid-ask spread around the last price in basis points: bid = last - half, "
        "ask = last + half (rounded outwards to the tick). Takers buy at the ask, sell at the bid.",
    )
    slippage_bps: BasisPoints = Field(
        default=Decimal(0),
        description="Extra price a taker pays beyond the bid/ask, in basis points (a buy fills "
        "higher, a sell lower; capped at a limit order's price).",
    )
    partial_fills: int = Field(
        default=1,
        ge=1,
        le=100,
        description="Number of executions a taker order is split into (1 = one execution); the "
        "pieces come market_fill_delay_ms apart, each at the then current bid/ask.",
    )
    partial_fill_probability: Probability = Field(
        default=1.0,
        description="Chance that a taker order is split into partial_fills pieces at all.",
    )
    query_lag_ms: int = Field(
        default=0,
        ge=0,
        le=60_000,
        description="How long a new order stays invisible to /v5/order/realtime, "
        "/v5/order/history and /v5/execution/list after its acknowledgement, in ms.",
    )
    rate_limits_per_s: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: dict(DEFAULT_RATE_LIMITS_PER_S),
        description="Requests per UID per rolling second, by private path (Bybit's table). "
        "A mapping given here replaces the whole table; the legacy order_create_per_s key "
        "sets the /v5/order/create entry.",
    )
    other_private_per_s: int = Field(
        default=50,
        ge=1,
        description="Requests per UID per rolling second on a private path not in "
        "rate_limits_per_s.",
    )
    ip_requests_per_5s: int = Field(
        default=600,
        ge=1,
        description="/v5 requests per client IP per rolling ip_window_ms (5 s); the one over "
        "it is answered HTTP 403 and bans the IP for ip_ban_ms.",
    )
    ip_window_ms: int = Field(
        default=5000,
        ge=1,
        description="Length of the per-IP window in ms (Bybit: 5 s); tests shorten it.",
    )
    ip_ban_ms: int = Field(
        default=600_000,
        ge=0,
        description="How long an IP over its limit is answered HTTP 403, in ms (Bybit: "
        "'wait for at least 10 minutes').",
    )
    stream_queue_max_messages: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Messages a WebSocket connection may have waiting to be sent; a client that "
        "falls further behind is disconnected, as a real exchange does.",
    )
    stream_queue_max_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024 * 1024,
        le=1024 * 1024 * 1024,
        description="Bytes of messages a WebSocket connection may have waiting to be sent; a "
        "client that falls further behind is disconnected. The message count alone let a "
        "client that never read hold 10 000 orderbook.1000 deltas, about 500 MB.",
    )
    stream_idle_cutoff_s: float = Field(
        default=600.0,
        gt=0,
        le=86_400,
        description="A WebSocket connection with no ping-pong and no data sent for this long "
        "is closed (Bybit: 10 minutes; a private or trade connection may ask for 30 s to "
        "10 min with ?max_active_time=); tests shorten it.",
    )
    seed: int | None = Field(
        default=None, description="Seed of the fault RNG; None draws a fresh one per exchange."
    )
    faults: SimFaults = Field(
        default_factory=SimFaults, description="Faults active from start-up (usually none)."
    )
    accounts: list[SimAccountSpec] = Field(
        default_factory=list, description="Accounts created at start-up, one per API key."
    )
    key_profiles: dict[str, SimKeyProfile] = Field(
        default_factory=dict,
        description="By the bot's key name: what its sim key may do (permissions, read-only, "
        "IP binding, expiry, account type). A key without a profile has trading rights only "
        "and is bound to 127.0.0.1.",
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_order_create_limit(cls, data: Any) -> Any:
        """`order_create_per_s` (the earlier name) sets the /v5/order/create limit."""
        if not isinstance(data, dict) or "order_create_per_s" not in data:
            return data
        data = dict(data)
        value = data.pop("order_create_per_s")
        if isinstance(value, str) and value.isascii() and value.strip().isdigit():
            value = int(value)  # BOT_SIM__ORDER_CREATE_PER_S: a variable's value is text
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError("order_create_per_s must be an integer of at least 1")
        table = dict(data.get("rate_limits_per_s") or DEFAULT_RATE_LIMITS_PER_S)
        table["/v5/order/create"] = value
        data["rate_limits_per_s"] = table
        return data

    @model_validator(mode="before")
    @classmethod
    def _symbol_tables(cls, data: Any) -> Any:
        """Symbols in upper case, as Bybit spells them: a `BOT_SIM__PRICES__BTCUSDT` variable
        arrives as `btcusdt` (variable names are not case-sensitive). A listed symbol with a
        built-in starting price keeps it unless `prices` names it, so one variable can move
        one symbol's price, and a table of instruments needs prices only for symbols without
        one."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for table in ("instruments", "prices"):
            if isinstance(data.get(table), dict):
                data[table] = _upper_case_keys(table, data[table])
        given = data.get("prices", {})
        if isinstance(given, dict):
            listed = data.get("instruments")
            listed = listed if isinstance(listed, dict) else _default_instruments()
            built_in = {s: p for s, p in _default_prices().items() if s in listed}
            data["prices"] = {**built_in, **given}
        return data

    def rate_limit_per_s(self, path: str) -> int:
        """The per-UID, per-second limit of a private path."""
        return self.rate_limits_per_s.get(path, self.other_private_per_s)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        unpriced = sorted(set(self.instruments) - set(self.prices))
        if unpriced:
            raise ValueError(f"prices: no starting price for listed symbol(s) {unpriced}")
        unlisted = sorted(set(self.prices) - set(self.instruments))
        if unlisted:
            raise ValueError(f"prices: symbol(s) {unlisted} have no entry in instruments")
        for symbol, spec in self.instruments.items():
            if self.default_leverage > spec.max_leverage:
                raise ValueError(
                    f"default_leverage {self.default_leverage} exceeds {symbol} max_leverage "
                    f"{spec.max_leverage}"
                )
            # A market order trades up to its price limit, mark x (1 + X): the ask must fit.
            room = self.prices[symbol] * (spec.price_limit_ratio_x - self.spread_bps / 20_000)
            if room < spec.tick_size:
                raise ValueError(
                    f"spread_bps {self.spread_bps} puts {symbol}'s ask at or past its price "
                    f"limit (price_limit_ratio_x {spec.price_limit_ratio_x}), where no market "
                    "order could fill: narrow the spread or raise the ratio"
                )
        keys = [account.api_key for account in self.accounts]
        if len(keys) != len(set(keys)):
            raise ValueError("accounts: api_key values must be unique")
        return self


def parse_faults(text: str) -> SimFaults:
    """A `SimFaults` from JSON text (`bot sim --faults`); ValueError with a one-line reason."""
    try:
        return SimFaults.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "faults"
        raise ValueError(f"{where}: {first['msg']}") from None
