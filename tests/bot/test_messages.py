"""Signal parsing: the contract of DESIGN.md, and never anything but SignalError on bad input."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.messages import (
    Decline,
    OrderType,
    Side,
    SignalAction,
    SignalError,
    parse_signal,
)
from tests.factories import make_intent, make_request

NOW_MS = 1_790_000_000_000


def payload(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {"id": "sig-1", "symbol": "BTCUSDT", "side": "buy", "ts": NOW_MS}
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def test_minimal_signal_parses_with_defaults() -> None:
    signal = parse_signal("voiceofchain", payload())

    assert signal.side is Side.BUY
    assert signal.action is SignalAction.OPEN
    assert signal.entry is None
    assert signal.take_profit == ()
    assert signal.ts == datetime.fromtimestamp(NOW_MS / 1000, tz=UTC)


@pytest.mark.parametrize(("given_side", "expected"), [("long", Side.BUY), ("SHORT", Side.SELL)])
def test_long_and_short_are_sides(given_side: str, expected: Side) -> None:
    assert parse_signal("voiceofchain", payload(side=given_side)).side is expected


def test_full_signal_keeps_unknown_fields_in_raw_only() -> None:
    body = payload(
        entry=97000.5,
        stop_loss="95000",
        take_profit=[99000, 101000],
        leverage=5,
        strategy="follow",
        ts="2026-11-24T10:00:00Z",
        confidence=0.9,
    )

    signal = parse_signal("voiceofchain", body)

    assert signal.entry == Decimal("97000.5")
    assert signal.stop_loss == Decimal(95000)
    assert signal.take_profit == (Decimal(99000), Decimal(101000))
    assert signal.ts == datetime(2026, 11, 24, 10, tzinfo=UTC)
    assert signal.raw["confidence"] == 0.9
    assert "confidence" not in signal.model_dump(exclude={"raw"})


def test_floats_become_their_shortest_decimal_not_binary_noise() -> None:
    assert parse_signal("voiceofchain", payload(entry=0.1)).entry == Decimal("0.1")


def test_close_needs_no_side() -> None:
    signal = parse_signal("voiceofchain", payload(side=None, action="close"))

    assert signal.action is SignalAction.CLOSE
    assert signal.side is None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"id": "bad id with spaces"}, "id"),
        ({"id": "x" * 65}, "id"),
        ({"side": None}, "side"),  # required unless action is close
        ({"side": "up"}, "side"),
        ({"entry": -1}, "entry"),
        ({"entry": True}, "entry"),
        ({"stop_loss": "NaN"}, "stop_loss"),
        ({"take_profit": [1, "x"]}, "take_profit"),
        ({"ts": 1_790_000_000}, "ts"),  # seconds, not milliseconds
        ({"ts": "yesterday"}, "ts"),
        ({"symbol": "BTC/USDT"}, "symbol"),
        ({"action": "flip"}, "action"),
        # Look-alikes Unicode's case mapping would turn into a tradable symbol or a side.
        ({"symbol": "\u017fOLUSDT"}, "symbol"),  # long s: "SOLUSDT" once upper-cased
        ({"symbol": "ETHUSDT\u00df"}, "symbol"),  # sharp s: "ETHUSDTSS"
        ({"symbol": "\u0131NJUSDT"}, "symbol"),  # dotless i: "INJUSDT"
        ({"side": "\u017fell"}, "side"),
        ({"action": "\u212alose"}, "action"),  # Kelvin sign: "klose"
    ],
)
def test_invalid_fields_are_named(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(SignalError) as caught:
        parse_signal("voiceofchain", payload(**overrides))

    assert field in [name for name, _ in caught.value.problems], caught.value.problems


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"entry": "1e400"}, ("entry", "Input should be less than or equal to 1E+15")),
        ({"stop_loss": "1e-1000000"}, ("stop_loss", "has more than 30 digits: round it")),
        (
            {"entry": "97000.000000000000000000000000000001"},  # 36 digits, exact
            ("entry", "has more than 30 digits: round it"),
        ),
        (
            {"ts": "9999-12-31T23:59:59-23:59"},
            ("ts", "is out of range once in UTC (years 1 to 9999)"),
        ),
        (
            {"ts": "0001-01-01T00:00:00+23:59"},
            ("ts", "is out of range once in UTC (years 1 to 9999)"),
        ),
    ],
)
def test_extreme_values_are_refused_saying_what_is_wrong(
    overrides: dict[str, object], problem: tuple[str, str]
) -> None:
    with pytest.raises(SignalError) as caught:
        parse_signal("voiceofchain", payload(**overrides))

    assert caught.value.problems == [problem]


def test_missing_required_fields_are_all_reported() -> None:
    with pytest.raises(SignalError) as caught:
        parse_signal("voiceofchain", {"side": "buy"})

    assert {"id", "symbol", "ts"} <= {name for name, _ in caught.value.problems}


def test_non_object_body_is_refused() -> None:
    with pytest.raises(SignalError, match="JSON object"):
        parse_signal("voiceofchain", [1, 2])


# JSON may escape a lone surrogate ("\\ud800"): text no journal can hold.
texts = st.text(max_size=20) | st.sampled_from(["\ud800", "buy\udfff"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
signal_like = st.fixed_dictionaries(
    {},
    optional={
        name: json_values | st.sampled_from(["buy", "sell", "close", "BTCUSDT", "1e400", "-0"])
        for name in (
            "id",
            "symbol",
            "side",
            "action",
            "entry",
            "stop_loss",
            "take_profit",
            "leverage",
            "strategy",
            "ts",
        )
    },
)


@settings(max_examples=400)
@given(body=json_values | signal_like)
def test_parsing_never_raises_anything_but_signal_error(body: object) -> None:
    try:
        signal = parse_signal("voiceofchain", body)
    except SignalError as exc:
        assert exc.problems
    else:
        assert signal.id and signal.symbol
        signal.model_dump_json()  # what the journal writes: every accepted signal can be kept


@given(text=st.text(max_size=200))
def test_parsing_arbitrary_json_text_never_crashes(text: str) -> None:
    try:
        body = json.loads(text)
    except ValueError:
        return
    with contextlib.suppress(SignalError):
        parse_signal("voiceofchain", body)


def test_limit_intent_needs_a_price_and_market_must_not_have_one() -> None:
    with pytest.raises(ValueError, match="Limit intent needs a price"):
        make_intent(order_type=OrderType.LIMIT)
    with pytest.raises(ValueError, match="Limit intent needs a price"):
        make_intent(price=Decimal(1))


def test_order_request_sends_plain_decimal_strings() -> None:
    request = make_request(
        order_link_id="follow-0-abc",
        side=Side.SELL,
        order_type=OrderType.LIMIT,
        qty=Decimal("1E-3"),
        price=Decimal("97000.50"),
        stop_loss=Decimal("99000"),
        reduce_only=True,
    )

    assert request.to_bybit_params() == {
        "category": "linear",
        "symbol": "BTCUSDT",
        "side": "Sell",
        "orderType": "Limit",
        "qty": "0.001",
        "price": "97000.5",
        "timeInForce": "GTC",
        "stopLoss": "99000",
        "reduceOnly": True,
        "orderLinkId": "follow-0-abc",
        "positionIdx": 0,
    }


def test_deeply_nested_payload_is_refused_so_the_journal_can_always_read_it_back() -> None:
    nested: object = 1
    for _ in range(40):
        nested = [nested]

    with pytest.raises(SignalError, match="nested more than 16 levels"):
        parse_signal("voiceofchain", payload(extra=nested))
    shallow = parse_signal("voiceofchain", payload(extra=[[[1]]]))
    assert type(shallow).model_validate_json(shallow.model_dump_json()) == shallow


@settings(max_examples=300)
@given(extra=st.dictionaries(texts, json_values, max_size=4))
def test_a_valid_signal_with_any_extra_fields_is_refused_or_journalable(
    extra: dict[str, object],
) -> None:
    try:
        signal = parse_signal("voiceofchain", {**extra, **payload()})
    except SignalError as exc:
        assert exc.problems
    else:
        assert type(signal).model_validate_json(signal.model_dump_json()).id == "sig-1"


def test_a_lone_surrogate_anywhere_is_refused_in_one_line() -> None:
    for body in (payload(note="\ud800"), {**payload(), "\udfff": 1}, payload(x=[{"y": "a\ud800"}])):
        with pytest.raises(SignalError, match="not valid Unicode"):
            parse_signal("voiceofchain", body)


def test_a_strategys_decline_reason_is_one_line_of_text_and_clipped() -> None:
    """A lone surrogate failed the journal write (the signal stayed unprocessed) and the
    log; 50 MB reasons made a 100 MB journal."""
    decline = Decline(strategy="s", reason="bad \ud800 reason\nFAKE LOG LINE" + "x" * 10_000)

    assert decline.reason.startswith("bad   reason FAKE LOG LINE")
    assert len(decline.reason) == 500 and decline.reason.endswith("...")
    decline.reason.encode()  # journal and log take it
