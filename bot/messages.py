"""The frozen, typed messages that stages exchange.

    Signal ──► (Strategy) ──► OrderIntent | Decline ──► (RiskGate) ──► RiskDecision
                                                                        │ approved
                                                                        ▼
                                         OrderRequest ──► (Executor/venue) ──► OrderEvent

A stage consumes and produces these and nothing else, so every message can be journaled and
every signal traced to its orders or to the reason it produced none. Prices and quantities are
`Decimal`: binary floats cannot represent exchange tick and lot sizes exactly.
"""

from __future__ import annotations

import enum
import json
import math
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation, localcontext
from typing import Annotated, Any, Final, Literal, NoReturn

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from bot import clock
from bot.logs import scrub

__all__ = [
    "ORDER_LINK_ID_PATTERN",
    "SIGNAL_ID_PATTERN",
    "SYMBOL_PATTERN",
    "ClosedPnl",
    "Decline",
    "Execution",
    "ExitOrder",
    "Instrument",
    "OrderEvent",
    "OrderIntent",
    "OrderRequest",
    "OrderStatus",
    "OrderType",
    "PositionUpdate",
    "RiskDecision",
    "Side",
    "Signal",
    "SignalAction",
    "SignalError",
    "StopMove",
    "WalletUpdate",
    "clip",
    "error_said",
    "field_problems",
    "is_unicode",
    "json_number",
    "load_json",
    "one_line",
    "parse_signal",
    "parse_ts",
    "shape_problem",
]

SIGNAL_ID_PATTERN: Final = r"^[A-Za-z0-9._:-]{1,64}$"
ORDER_LINK_ID_PATTERN: Final = r"^[A-Za-z0-9_-]{1,36}$"  # Bybit's rule for orderLinkId
SYMBOL_PATTERN: Final = r"^[A-Z0-9]{2,30}$"
# Largest price or quantity accepted anywhere: far above any real instrument, small enough that
# arithmetic on it stays exact in Decimal's default 28-digit context.
MAX_NUMBER: Final = Decimal("1e15")
# Epoch values above this are milliseconds; below, a sender probably sent seconds by mistake.
_MIN_EPOCH_MS: Final = 10**11

_MAX_DIGITS: Final = 30
#: Enough digits to normalize any number that reaches the check (at most 1e15) exactly.
_EXACT_DIGITS: Final = 1000


def _not_too_precise(value: Decimal) -> Decimal:
    """At most `_MAX_DIGITS` digits (counted as pydantic's `max_digits` counts them), checked
    after the range, so that 1e400 is refused as too large, not as too many digits."""
    with localcontext() as exact:  # the default 28-digit context would round it first
        exact.prec = _EXACT_DIGITS
        _, digits, exponent = value.normalize().as_tuple()
    assert isinstance(exponent, int)  # finite: inf and nan are refused before
    total = len(digits) + exponent if exponent >= 0 else max(len(digits), -exponent)
    if total > _MAX_DIGITS:
        raise ValueError(f"has more than {_MAX_DIGITS} digits: round it")
    return value


PositiveDecimal = Annotated[
    Decimal,
    Field(gt=0, le=MAX_NUMBER, allow_inf_nan=False),
    AfterValidator(_not_too_precise),
]
Symbol = Annotated[str, StringConstraints(pattern=SYMBOL_PATTERN)]


class _Message(BaseModel):
    """Base of every message: immutable, no unknown fields, validated on construction."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def utc_now() -> datetime:
    """Timezone-aware current time; every timestamp in a message is aware and in UTC.

    Read from `bot.clock`: the wall clock, or the virtual clock of a replay."""
    return clock.now()


class Side(enum.StrEnum):
    """Order direction, spelled as Bybit spells it."""

    BUY = "Buy"
    SELL = "Sell"

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY


class SignalAction(enum.StrEnum):
    OPEN = "open"
    CLOSE = "close"


class OrderType(enum.StrEnum):
    MARKET = "Market"
    LIMIT = "Limit"


class OrderStatus(enum.StrEnum):
    """Life of an order as the journal sees it; the Bybit names plus our own pre-venue states."""

    PENDING = "Pending"  # journaled, never sent
    SUBMITTING = "Submitting"  # being sent, or sent without an answer yet: may exist
    NEW = "New"
    PARTIALLY_FILLED = "PartiallyFilled"
    FILLED = "Filled"
    CANCELLED = "Cancelled"
    REJECTED = "Rejected"
    UNKNOWN = "Unknown"  # the venue may or may not hold it: reconcile by orderLinkId

    @property
    def is_terminal(self) -> bool:
        return self in {OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED}


_SIDE_ALIASES: Final = {"buy": Side.BUY, "long": Side.BUY, "sell": Side.SELL, "short": Side.SELL}


class SignalError(ValueError):
    """A signal payload is invalid; `problems` lists (field, reason) pairs for the sender."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{field}: {reason}" for field, reason in problems))


class Signal(_Message):
    """A trading signal from one source, as the signal contract (README, "Signals") defines it.

    (`source`, `id`) identifies it: a second signal with the same pair is a duplicate.
    Unknown fields of the payload are kept in `raw` and otherwise ignored.
    """

    source: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,32}$")]
    id: Annotated[str, StringConstraints(pattern=SIGNAL_ID_PATTERN)]
    symbol: Symbol
    side: Side | None = None
    action: SignalAction = SignalAction.OPEN
    entry: PositiveDecimal | None = None
    stop_loss: PositiveDecimal | None = None
    take_profit: tuple[PositiveDecimal, ...] = ()
    leverage: PositiveDecimal | None = None
    strategy: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] | None = None
    ts: datetime
    received_at: datetime = Field(default_factory=utc_now)
    raw: dict[str, Any] = Field(default_factory=dict)

    @field_validator("symbol", mode="before")
    @classmethod
    def _upper_symbol(cls, value: object) -> object:
        # ASCII only: Unicode case mapping turns look-alikes into letters ("\u017fOLUSDT".upper()
        # is "SOLUSDT"); left as they are, the pattern refuses them.
        return value.strip().upper() if isinstance(value, str) and value.isascii() else value

    @field_validator("side", mode="before")
    @classmethod
    def _side_alias(cls, value: object) -> object:
        if value is None or isinstance(value, Side):
            return value
        if isinstance(value, str) and value.isascii() and value.strip().lower() in _SIDE_ALIASES:
            return _SIDE_ALIASES[value.strip().lower()]
        raise ValueError("must be one of buy, sell, long, short")

    @field_validator("action", mode="before")
    @classmethod
    def _action_lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) and value.isascii() else value

    @field_validator("entry", "stop_loss", "leverage", mode="before")
    @classmethod
    def _number(cls, value: object) -> object:
        return json_number(value)

    @field_validator("take_profit", mode="before")
    @classmethod
    def _targets(cls, value: object) -> object:
        if value is None:
            return ()
        if isinstance(value, list | tuple):
            return tuple(json_number(item) for item in value)
        return (json_number(value),)

    @field_validator("ts", mode="before")
    @classmethod
    def _timestamp(cls, value: object) -> object:
        return parse_ts(value)

    @field_validator("ts", "received_at")
    @classmethod
    def _aware_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        try:
            return value.astimezone(UTC)
        except OverflowError:  # e.g. 9999-12-31T23:59:59-23:59
            raise ValueError("is out of range once in UTC (years 1 to 9999)") from None

    @model_validator(mode="after")
    def _side_unless_close(self) -> Signal:
        if self.side is None and self.action is SignalAction.OPEN:
            raise ValueError("side: is required unless action is close")
        return self


def load_json(document: bytes | str) -> object:
    """A JSON document, as `json.loads` reads it, with what it would take silently or word
    in Python's terms refused in plain ones (ValueError): a key given twice in one object (a
    signer and a reader could each take a different one), a number of more digits than
    Python converts, nesting deeper than the interpreter's stack, NaN and Infinity (not JSON)
    and a number beyond a float's range (read as infinity, written back as null). Bytes must
    be UTF-8, as JSON sent between systems is (RFC 8259): `json.loads` would also take UTF-16
    and UTF-32. A leading byte order mark is passed over, as the RFC allows."""
    if isinstance(document, bytes):
        document = _utf8_text(document)
    try:
        return json.loads(
            document,
            object_pairs_hook=_unique_keys,
            parse_constant=_not_json_constant,
            parse_float=_finite_float,
        )
    except RecursionError:
        raise ValueError("nested too deep") from None
    except ValueError as exc:
        if "integer string conversion" in str(exc):
            raise ValueError(
                f"a number has more than {sys.get_int_max_str_digits()} digits"
            ) from None
        raise


def _utf8_text(document: bytes) -> str:
    try:
        text = document.decode()
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start}): send JSON encoded as UTF-8") from None
    return text.removeprefix("\ufeff")


def _not_json_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is beyond the range of a float")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(f"the key {key!r} is given twice in one object")
        document[key] = value
    return document


#: A decimal number written as text: digits 0-9, an optional sign, point and exponent.
_NUMBER_TEXT: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def json_number(value: object) -> object:
    """Accept JSON numbers and numeric strings; refuse booleans, which Python treats as ints."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    if isinstance(value, float):
        return Decimal(repr(value))  # the shortest decimal that round-trips, not binary noise
    if isinstance(value, str):
        # A number as JSON writes one, ASCII digits only: Decimal also reads "97_000" (as
        # Python source would), "٩٧٠٠٠" and full-width digits, and NaN and Infinity by name.
        if not _NUMBER_TEXT.fullmatch(value.strip()):
            raise ValueError("must be a number")
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            raise ValueError("must be a number") from None
    if value is not None and not isinstance(value, int | Decimal):  # an object, a list, ...
        raise ValueError("must be a number")
    return value


def parse_ts(value: object) -> object:
    """`ts` is an ISO-8601 string or epoch milliseconds (a number or a string of digits)."""
    if isinstance(value, bool):
        raise ValueError("must be an ISO-8601 string or epoch milliseconds")
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and math.isfinite(value):
        value = int(value)
    if isinstance(value, int):
        if not _MIN_EPOCH_MS <= value < 10**14:
            raise ValueError("epoch value must be in milliseconds (13 digits)")
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    if isinstance(value, str):
        text = value.strip()
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("must be an ISO-8601 string or epoch milliseconds") from None
    if isinstance(value, datetime):
        return value
    raise ValueError("must be an ISO-8601 string or epoch milliseconds")


_SIGNAL_FIELDS: Final = frozenset(Signal.model_fields) - {"source", "received_at", "raw"}
# JSON nested deeper than this is refused: the journal must be able to read back every
# signal it accepted, and pydantic's JSON reader stops at its own recursion limit.
MAX_PAYLOAD_DEPTH: Final = 16


def parse_signal(source: str, payload: object, received_at: datetime | None = None) -> Signal:
    """Build a `Signal` from a decoded JSON payload, or raise `SignalError` naming each bad field.

    Never raises anything else, whatever the payload: adapters turn `SignalError` into a 4xx
    answer or a dead-lettered message.
    """
    if not isinstance(payload, dict):
        raise SignalError([("body", "must be a JSON object")])
    problem = shape_problem(payload)
    if problem is not None:
        raise SignalError([("body", problem)])
    known = {key: value for key, value in payload.items() if key in _SIGNAL_FIELDS}
    try:
        return Signal(
            source=source,
            received_at=received_at or utc_now(),
            raw=payload,
            **known,
        )
    except ValidationError as exc:
        raise SignalError(_problems(exc)) from None
    except (ValueError, TypeError, ArithmeticError, OverflowError) as exc:
        # Defence in depth: a validator bug must still become a 4xx, never a 500.
        raise SignalError([("body", f"cannot be parsed: {type(exc).__name__}")]) from None


def shape_problem(value: object) -> str | None:
    """What makes decoded JSON unfit to journal, if anything: nesting deeper than
    `MAX_PAYLOAD_DEPTH`, or a string (key or value) that is not valid Unicode (JSON may
    escape a lone surrogate, `\\ud800`, which no UTF-8 text can hold). Walked without
    recursion: the input is untrusted."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_PAYLOAD_DEPTH:
            return f"is nested more than {MAX_PAYLOAD_DEPTH} levels deep"
        if isinstance(item, dict):
            if not all(map(is_unicode, item)):
                return _NOT_UNICODE
            children: Iterable[object] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
            elif isinstance(child, str) and not is_unicode(child):
                return _NOT_UNICODE
    return None


_NOT_UNICODE: Final = "holds text that is not valid Unicode (a lone surrogate such as \\ud800)"


def is_unicode(text: str) -> bool:
    """Whether `text` is valid Unicode, so it encodes as UTF-8: no lone surrogate (escaped
    in JSON, or one Python decoded undecodable bytes to: argv, the environment)."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def field_problems(exc: ValidationError) -> list[tuple[str, str]]:
    """Each problem of a validation as (field, what is wrong): "body" for the whole."""
    return [
        (".".join(str(part) for part in error["loc"]) or "body", error_said(error))
        for error in exc.errors(include_url=False, include_input=False)
    ]


#: What a value that does not match one of the schema's patterns should be, in words.
_PATTERNS_SAID: Final = {
    SYMBOL_PATTERN: "must be a Bybit symbol such as BTCUSDT (2-30 capital letters and digits)",
    SIGNAL_ID_PATTERN: "must be 1-64 characters of letters, digits and . _ : -",
    ORDER_LINK_ID_PATTERN: "must be 1-36 characters of letters, digits and _ -",
}


def error_said(error: ErrorDetails) -> str:
    """What is wrong with a value, in words (a pattern it misses is said as what it must
    be)."""
    if error["type"] == "string_pattern_mismatch":
        said = _PATTERNS_SAID.get(str(error.get("ctx", {}).get("pattern")))
        if said is not None:
            return said
    return str(error["msg"]).removeprefix("Value error, ")


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for field, message in field_problems(exc):
        named, _, rest = message.partition(": ")
        if field == "body" and named in Signal.model_fields:  # a rule across fields names one
            field, message = named, rest
        problems.append((field, message))
    return problems


class OrderIntent(_Message):
    """What a strategy wants to trade for one signal; the risk gate decides whether it may."""

    strategy: str
    signal_source: str
    signal_id: str
    leg: int = Field(0, ge=0, le=99, description="0 = entry; strategies number further legs")
    symbol: Symbol
    side: Side
    order_type: OrderType
    qty: PositiveDecimal
    price: PositiveDecimal | None = Field(None, description="limit price; None for Market")
    reference_price: PositiveDecimal = Field(
        description="price the intent was sized at: the limit price or the last price"
    )
    stop_loss: PositiveDecimal | None = None
    take_profit: PositiveDecimal | None = None
    reduce_only: bool = False
    leverage: PositiveDecimal | None = Field(
        None, description="wanted leverage (the signal's hint); the risk gate caps it"
    )
    signal_ts: datetime
    created_at: datetime = Field(default_factory=utc_now)

    @model_validator(mode="after")
    def _price_matches_type(self) -> OrderIntent:
        if (self.order_type is OrderType.LIMIT) != (self.price is not None):
            raise ValueError("a Limit intent needs a price and a Market intent must not have one")
        return self

    @property
    def notional_usdt(self) -> Decimal:
        """The notional the strategy sized at; the risk gate prices at the venue's price."""
        return self.qty * self.reference_price

    @classmethod
    def close_at_market(
        cls,
        *,
        strategy: str,
        signal_source: str,
        signal_id: str,
        leg: int,
        symbol: str,
        long: bool,
        qty: Decimal,
        price: Decimal,
        signal_ts: datetime,
    ) -> OrderIntent:
        """A reduce-only market order closing `qty` of a `long` (or short) position, sized at
        the venue's `price`."""
        return cls(
            strategy=strategy,
            signal_source=signal_source,
            signal_id=signal_id,
            leg=leg,
            symbol=symbol,
            side=Side.SELL if long else Side.BUY,
            order_type=OrderType.MARKET,
            qty=qty,
            reference_price=price,
            reduce_only=True,
            signal_ts=signal_ts,
        )


class Instrument(_Message):
    """Trading rules of one symbol, as Bybit's instruments-info gives them."""

    symbol: Symbol
    qty_step: PositiveDecimal
    min_order_qty: PositiveDecimal
    max_order_qty: PositiveDecimal
    tick_size: PositiveDecimal
    min_notional_usdt: Decimal = Decimal(0)
    #: lotSizeFilter.maxMktOrderQty: a market order's largest qty, below a limit order's
    #: (BTCUSDT: 500 against 1190); None where the venue does not publish one.
    max_market_order_qty: PositiveDecimal | None = None

    def max_qty(self, order_type: OrderType) -> Decimal:
        """The largest qty one order of `order_type` may have."""
        if order_type is OrderType.MARKET and self.max_market_order_qty is not None:
            return min(self.max_market_order_qty, self.max_order_qty)
        return self.max_order_qty

    def round_qty(self, qty: Decimal) -> Decimal:
        """Round down to the lot size: rounding up could break a risk limit."""
        return (qty // self.qty_step) * self.qty_step

    def round_price(self, price: Decimal) -> Decimal:
        return (price / self.tick_size).to_integral_value() * self.tick_size


class StopMove(_Message):
    """A strategy's wish to set the stop loss of its key's position in `symbol` (Bybit's
    position-level stop: it covers the whole position, whichever strategy opened it)."""

    strategy: str
    signal_source: str
    signal_id: str
    symbol: Symbol
    stop_loss: PositiveDecimal
    close_leg_if_crossed: int | None = Field(
        None,
        ge=1,  # leg 0 is every signal's first order
        le=99,
        description="if the price has already crossed `stop_loss` (the venue would refuse "
        "such a stop), close the strategy's position at market instead, as this leg of the "
        "signal, as the stop would have; None: the move is refused",
    )


#: The longest reason of a strategy's decline or failure that is kept (logged, journaled).
MAX_REASON_CHARS: Final = 500


def one_line(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """`text` on one line, without control characters or lone surrogates, clipped: for text
    from anyone (a sender, a plug-in) that is logged and journaled. Secrets are scrubbed
    first, while they are still spelled as the scrubber knows them."""
    return clip("".join(char if char.isprintable() else " " for char in scrub(text)), limit)


def clip(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters ("..." saying so) if it is longer."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Decline(_Message):
    """A strategy's answer when a signal should produce no order, with the reason why (made
    one line of text: a plug-in's, it is logged and journaled)."""

    strategy: str
    reason: str

    @field_validator("reason")
    @classmethod
    def _one_line(cls, reason: str) -> str:
        return one_line(reason)


class RiskDecision(_Message):
    """The risk gate's verdict on one intent: a value with a reason, never an exception."""

    intent: OrderIntent
    approved: bool
    rule: str | None = Field(None, description="the rule that rejected the intent")
    reason: str
    decided_at: datetime = Field(default_factory=utc_now)


class OrderRequest(_Message):
    """One order as sent to the venue, keyed by its deterministic `order_link_id`."""

    order_link_id: Annotated[str, StringConstraints(pattern=ORDER_LINK_ID_PATTERN)]
    key_name: str
    strategy: str
    signal_source: str
    signal_id: str
    leg: int
    category: Literal["linear"] = "linear"
    symbol: Symbol
    side: Side
    order_type: OrderType
    qty: PositiveDecimal
    price: PositiveDecimal | None = None
    stop_loss: PositiveDecimal | None = None
    take_profit: PositiveDecimal | None = None
    reduce_only: bool = False
    leverage: PositiveDecimal | None = Field(
        None, description="set on the venue (set-leverage) before the order is sent"
    )
    max_leverage: PositiveDecimal | None = Field(
        None, description="without `leverage`, the venue's is lowered to this if higher"
    )
    closes_position: bool = Field(
        False,
        description="a reduce-only market order closing its strategy's position in the "
        "symbol whole (a stop the price crossed): the strategy's other reduce-only orders on "
        "its side, which would leave it no room, are cancelled before it is sent, by a restart "
        "that resumes it too; resumed, it is sent whatever its age while that position is held",
    )

    @model_validator(mode="after")
    def _closes_only_at_market(self) -> OrderRequest:
        if self.closes_position and not (self.reduce_only and self.order_type is OrderType.MARKET):
            raise ValueError("only a reduce-only market order closes a position whole")
        return self

    def to_bybit_params(self) -> dict[str, Any]:
        """The `POST /v5/order/create` parameters, decimals as plain strings as Bybit wants."""
        params: dict[str, Any] = {
            "category": self.category,
            "symbol": self.symbol,
            "side": self.side.value,
            "orderType": self.order_type.value,
            "qty": _plain(self.qty),
            "orderLinkId": self.order_link_id,
            "positionIdx": 0,  # one-way mode; start-up refuses an account in hedge mode
        }
        if self.price is not None:
            params["price"] = _plain(self.price)
            params["timeInForce"] = "GTC"
        if self.stop_loss is not None:
            params["stopLoss"] = _plain(self.stop_loss)
        if self.take_profit is not None:
            params["takeProfit"] = _plain(self.take_profit)
        if self.reduce_only:
            params["reduceOnly"] = True
        return params


def _plain(value: Decimal) -> str:
    """Decimal as a plain string without exponent ("0.001", not "1E-3")."""
    return format(value.normalize(), "f")


class OrderEvent(_Message):
    """A change in an order's life: acknowledged, filled, rejected, or status unknown."""

    order_link_id: str
    status: OrderStatus
    order_id: str | None = None
    filled_qty: Decimal = Decimal(0)
    avg_price: Decimal | None = None
    #: The order's quantity as the venue holds it (its reports only): another client may
    #: amend it, or the venue trim a reduce-only order.
    venue_qty: Decimal | None = None
    reason: str = ""
    ret_code: int | None = None
    ts: datetime = Field(default_factory=utc_now)
    #: What the venue's report says the order is (its reports only): another client of the
    #: key may use the same orderLinkId for an order of its own, which is not ours.
    symbol: str | None = None
    side: Side | None = None
    order_type: OrderType | None = None
    #: The order's terms as the venue's report gives them (its reports only; None: not
    #: said): its price (a limit order's limit; a market order's, the protection price the
    #: venue gave it), the reduce-only flag, and the stop loss and take profit it carries
    #: (0: none). Before the venue has given ours an orderId, these tell an order of another
    #: client under our orderLinkId from ours (`bot.execution.orders.unlike_request`).
    venue_price: Decimal | None = None
    venue_reduce_only: bool | None = None
    venue_stop_loss: Decimal | None = None
    venue_take_profit: Decimal | None = None
    #: When the venue created the order, by the venue's clock (its reports only; None: not
    #: said). An order under our orderLinkId created before our first send of it cannot be
    #: ours, whatever became of that send.
    venue_created_at: datetime | None = None
    #: A Submitting event's signing offset (the venue's clock minus ours, ms) when the send
    #: left, so that `ts` plus it is the send's time by the venue's clock whatever the clock
    #: does later (a resync, an NTP step, a restart); None: not known, or an earlier send of
    #: the order may have gone unjournaled (then this is not the first send).
    signing_offset_ms: int | None = None


class ExitOrder(_Message):
    """An order the venue created itself: a position's stop loss or take profit triggered.

    It has no orderLinkId (Bybit leaves it empty); the journal attributes it to the order
    whose stop loss or take profit it executed.
    """

    order_id: str
    key_name: str
    symbol: Symbol
    side: Side
    kind: str = Field(description="Bybit's stopOrderType: StopLoss, TakeProfit, ...")
    trigger_price: Decimal | None = None
    qty: Decimal
    status: OrderStatus
    filled_qty: Decimal = Decimal(0)
    avg_price: Decimal | None = None
    cancel_type: str = Field(
        "", description="Bybit's cancelType: CancelByUser when someone cancelled the order"
    )
    ts: datetime = Field(default_factory=utc_now)

    @property
    def cancelled_by_hand(self) -> bool:
        """Cancelled at the venue by a client (the bot never cancels an exit order: it moves
        or clears the position's level), not ended by the position closing."""
        return self.status is OrderStatus.CANCELLED and self.cancel_type == "CancelByUser"


class Execution(_Message):
    """One fill at the venue, with its fee; `exec_id` is the venue's and unique per fill.

    `order_link_id` is empty for orders the venue created (a stop loss or take profit).
    """

    exec_id: str
    key_name: str
    order_id: str
    order_link_id: str = ""
    symbol: Symbol
    side: Side
    qty: Decimal
    price: Decimal
    fee: Decimal = Field(description="USDT; positive is paid, negative a rebate")
    is_maker: bool = False
    stop_order_type: str = ""
    ts: datetime
    #: Bybit's execType: Trade, or what the venue did itself (BustTrade: a liquidation,
    #: AdlTrade: auto-deleveraging, ...). Not journaled: a replayed fill reads Trade.
    exec_type: str = "Trade"

    @property
    def signed_qty(self) -> Decimal:
        return self.qty if self.side is Side.BUY else -self.qty


class PositionUpdate(_Message):
    """A key's position in one symbol as the venue reports it (one-way mode)."""

    key_name: str
    symbol: Symbol
    size: Decimal = Field(description="signed: positive long, negative short, zero flat")
    entry_price: Decimal
    mark_price: Decimal
    unrealized_pnl: Decimal
    cum_realized_pnl: Decimal
    leverage: Decimal
    ts: datetime


class WalletUpdate(_Message):
    """A key's unified account balance, in USDT."""

    key_name: str
    equity_usdt: Decimal
    available_usdt: Decimal
    wallet_balance_usdt: Decimal
    ts: datetime


class ClosedPnl(_Message):
    """What one closing order realized, net of its open and close fees, as the venue reports
    it (key-level: the venue cannot tell strategies apart)."""

    order_id: str
    key_name: str
    symbol: Symbol
    closed_qty: Decimal
    closed_pnl: Decimal
    ts: datetime
