"""The webhook contract: authentication, limits, answers, presets, and what reaches the sink."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from starlette.types import ASGIApp

from bot import clock
from bot.app import create_app
from bot.messages import Signal
from signals.config import WebhookSourceConfig
from signals.presets import resolve
from signals.voiceofchain import SIGNATURE_HEADER, sign
from signals.webhook import _MAX_CLIENTS, WebhookReceiver, _Lockout
from tests.conftest import logged_errors

SECRET = "webhook-secret-for-tests"
PATH = "/webhooks/voiceofchain"


class Sink:
    """Records signals; the second one with an id is a duplicate, like the journal says."""

    def __init__(self) -> None:
        self.signals: list[Signal] = []
        self.fail = False
        self.failure: Exception = OSError("disk full")

    async def __call__(self, signal: Signal) -> bool:
        if self.fail:
            raise self.failure
        if any(s.id == signal.id for s in self.signals):
            return False
        self.signals.append(signal)
        return True


TOKEN = "query-token-for-tests-0123456789abcdef"


class Rejections(list[tuple[str, str, str]]):
    def __call__(self, kind: str, reason: str, client: str) -> None:
        self.append((kind, reason, client))


def receiver_for(
    sink: Sink,
    source: str = "voiceofchain",
    secrets: tuple[str, ...] = (SECRET,),
    rejections: Rejections | None = None,
    **config: object,
) -> WebhookReceiver:
    settings = WebhookSourceConfig(**config)  # type: ignore[arg-type]
    resolved = resolve(source, settings)
    token = SecretStr(TOKEN) if resolved.auth != "signature" else None
    return WebhookReceiver(
        resolved,
        [SecretStr(secret) for secret in secrets],
        sink,
        token=token,
        on_reject=rejections if rejections is not None else Rejections(),
    )


async def _healthy() -> dict[str, object]:
    return {"ready": True}


def served(receiver: WebhookReceiver) -> ASGIApp:
    """The receiver's routes served as the bot serves them (`create_app`: its POST a
    `DirectRoute`, ahead of FastAPI's middleware)."""
    return create_app([receiver.router()], _healthy)


def client_for(sink: Sink, client: str = "testclient", **config: object) -> TestClient:
    return TestClient(served(receiver_for(sink, **config)), client=(client, 50000))


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def client(sink: Sink) -> TestClient:
    return client_for(sink)


def body(**fields: object) -> bytes:
    signal = {
        "id": "s-1",
        "symbol": "BTCUSDT",
        "side": "buy",
        "stop_loss": 95000,
        "ts": int(time.time() * 1000),
    }
    signal.update(fields)
    return json.dumps(signal).encode()


def post(  # type: ignore[no-untyped-def]
    client: TestClient,
    data: bytes,
    signature: str | None = None,
    forwarded: str | None = None,
    **kwargs: object,
):
    headers = {"Content-Type": "application/json"}
    headers[SIGNATURE_HEADER] = signature or sign(SECRET, data, int(time.time()))
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    return client.post(PATH, content=data, headers=headers, **kwargs)  # type: ignore[arg-type]


def test_signed_signal_is_accepted_and_reaches_the_sink(client: TestClient, sink: Sink) -> None:
    response = post(client, body())

    assert response.status_code == 202
    assert response.json() == {
        "status": "accepted",
        "id": "s-1",
        "status_url": "/webhooks/voiceofchain/signals/s-1",
    }
    assert [s.id for s in sink.signals] == ["s-1"]


def test_duplicate_id_answers_200_and_adds_nothing(client: TestClient, sink: Sink) -> None:
    post(client, body())

    response = post(client, body(side="sell"))

    assert response.status_code == 200
    assert response.json()["status"] == "duplicate"
    assert len(sink.signals) == 1


@pytest.mark.parametrize(
    ("signature", "detail"),
    [
        (lambda data: sign("wrong-secret", data, int(time.time())), "does not match"),
        (lambda data: sign(SECRET, data, int(time.time()) - 301), "from the server's clock"),
        (lambda data: "v1=abc", "malformed"),
        (lambda data: sign(SECRET, data + b" ", int(time.time())), "does not match"),
    ],
)
def test_bad_signature_is_401_and_nothing_reaches_the_sink(
    client: TestClient, sink: Sink, signature: Callable[[bytes], str], detail: str
) -> None:
    data = body()

    response = post(client, data, signature=signature(data))

    assert response.status_code == 401
    assert detail in response.json()["detail"]
    assert sink.signals == []


def test_missing_signature_is_401(client: TestClient) -> None:
    response = client.post(PATH, content=body())

    assert response.status_code == 401
    assert "missing X-Signature" in response.json()["detail"]


@pytest.mark.parametrize("second", ["t=1,v1=" + "0" * 64, None])
def test_two_signature_headers_are_401_whichever_is_valid(
    client: TestClient, sink: Sink, second: str | None
) -> None:
    # A proxy and the bot could each read another of them: neither is taken as the signature.
    data = body()
    valid = sign(SECRET, data, int(time.time()))
    for headers in ([valid, second or valid], [second or valid, valid]):
        response = client.post(
            PATH,
            content=data,
            headers=[(SIGNATURE_HEADER, value) for value in headers],
        )

        assert response.status_code == 401
        assert response.json()["detail"].startswith("2 X-Signature headers: send one")
    assert sink.signals == []


def test_a_second_v1_lets_senders_rotate_secrets(client: TestClient) -> None:
    data = body()
    now = int(time.time())
    old = sign("old-secret", data, now).split(",")[1]

    response = post(client, data, signature=f"{sign(SECRET, data, now)},{old}")

    assert response.status_code == 202


def test_invalid_json_is_400_and_invalid_signal_422_naming_the_field(client: TestClient) -> None:
    assert post(client, b"{not json").status_code == 400

    response = post(client, body(side="up", stop_loss=-5))

    assert response.status_code == 422
    fields = {problem["field"] for problem in response.json()["problems"]}
    assert fields == {"side", "stop_loss"}


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        # A signer and a reader could each take a different `id`: refused, never guessed.
        (b'{"id": "a", "id": "b", "symbol": "BTCUSDT", "side": "buy"}', "'id' is given twice"),
        (
            b'{"id": "a", "symbol": "BTCUSDT", "side": "buy", "entry": 1' + b"0" * 5000 + b"}",
            "a number has more than 4300 digits",
        ),
        # Kept in the signal's raw fields, these would be written back as null or not as JSON.
        (b'{"id": "a", "symbol": "BTCUSDT", "side": "buy", "x": NaN}', "NaN is not a JSON"),
        (b'{"id": "a", "symbol": "BTCUSDT", "side": "buy", "x": 1e400}', "beyond the range"),
    ],
)
def test_a_body_json_reads_ambiguously_or_in_python_terms_is_400_saying_why(
    client: TestClient, sink: Sink, data: bytes, problem: str
) -> None:
    response = post(client, data)

    assert response.status_code == 400
    assert problem in response.json()["detail"]
    assert "sys." not in response.text
    assert sink.signals == []


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "utf-16-be", "latin-1"])
def test_a_body_not_in_utf8_is_400_saying_so(client: TestClient, sink: Sink, encoding: str) -> None:
    # JSON between systems is UTF-8 (RFC 8259); json.loads alone would take UTF-16 and UTF-32.
    data = json.dumps({"id": "é-1", "symbol": "BTCUSDT", "side": "buy"}, ensure_ascii=False)

    response = post(client, data.encode(encoding))

    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "not UTF-8 text" in detail or "not a JSON document" in detail
    assert sink.signals == []


def test_a_utf8_body_with_a_byte_order_mark_is_read(client: TestClient, sink: Sink) -> None:
    assert post(client, b"\xef\xbb\xbf" + body()).status_code == 202
    assert [signal.id for signal in sink.signals] == ["s-1"]


@pytest.mark.parametrize(
    "written",
    # Arabic-Indic and full-width 95000 too
    [
        "95_000",
        "\u0669\u0665\u0660\u0660\u0660",
        "\uff19\uff15\uff10\uff10\uff10",
        "NaN",
        "Infinity",
        {"price": 95000},  # and anything not a number at all, said as plainly
    ],
)
def test_a_price_only_python_reads_as_a_number_is_not_one(
    client: TestClient, written: object
) -> None:
    # Decimal reads each of these; a JSON number or a decimal string in ASCII is what counts.
    response = post(client, body(stop_loss=written))

    assert response.status_code == 422
    assert response.json()["problems"] == [{"field": "stop_loss", "reason": "must be a number"}]


def test_a_compressed_body_is_415_saying_to_send_it_as_it_is(client: TestClient) -> None:
    data = gzip.compress(body())
    response = client.post(
        PATH,
        content=data,
        headers={
            "Content-Encoding": "gzip",
            SIGNATURE_HEADER: sign(SECRET, data, int(time.time())),
        },
    )

    assert response.status_code == 415
    assert "send the body uncompressed" in response.json()["detail"]


def test_a_bad_symbol_or_id_is_said_in_words_not_as_a_pattern(client: TestClient) -> None:
    response = post(client, body(id="a b", symbol="BTC/USDT"))

    assert response.status_code == 422
    assert response.json()["problems"] == [
        {"field": "id", "reason": "must be 1-64 characters of letters, digits and . _ : -"},
        {
            "field": "symbol",
            "reason": "must be a Bybit symbol such as BTCUSDT (2-30 capital letters and digits)",
        },
    ]


def test_body_over_the_limit_is_413(sink: Sink) -> None:
    client = client_for(sink, max_body_bytes=256)

    response = post(client, body(note="x" * 300))

    assert response.status_code == 413
    assert sink.signals == []


def test_burst_over_the_rate_limit_is_429(sink: Sink) -> None:
    client = client_for(sink, requests_per_s=0.001, burst=2)

    codes = [post(client, body(id=f"s{i}")).status_code for i in range(3)]

    assert codes == [202, 202, 429]


def test_rate_limit_is_per_client_address() -> None:
    from signals.webhook import _ClientRateLimit

    limit = _ClientRateLimit(rate_per_s=0.5, burst=1, clock=lambda: 0.0)

    assert [limit.wait_s("flooder"), limit.wait_s("flooder")] == [0.0, 2.0]
    assert limit.wait_s("sender") == 0.0


def test_query_token_only_in_its_mode(sink: Sink) -> None:
    data = body()
    off = client_for(sink)
    on = client_for(sink, auth="query_token")

    assert off.post(f"{PATH}?token={TOKEN}", content=data).status_code == 401
    assert on.post(f"{PATH}?token={SECRET}", content=data).status_code == 401  # not the HMAC key
    assert on.post(f"{PATH}?token={TOKEN}", content=data).status_code == 202


def test_a_token_mode_needs_a_long_token(sink: Sink) -> None:
    resolved = resolve("voiceofchain", WebhookSourceConfig(auth="query_token"))
    with pytest.raises(ValueError, match="must be at least 32 characters"):
        WebhookReceiver(resolved, [SecretStr(SECRET)], sink, token=SecretStr("short"))


def test_journal_failure_is_503_so_the_sender_retries(client: TestClient, sink: Sink) -> None:
    sink.fail = True

    with logged_errors() as errors:
        answers = [post(client, body(id=f"s-{n}")).status_code for n in range(5)]

    assert answers == [503] * 5
    # The journal's own conditions (a full disk, a lock, too slow) in one line each: no
    # traceback (a hostile-input probe found one in the log on a locked journal).
    assert [line.strip() for line in errors] == [
        f"could not journal signal s-{n}: OSError: disk full" for n in range(5)
    ]


def test_an_unexpected_intake_failure_logs_its_traceback_once_a_while(
    client: TestClient, sink: Sink
) -> None:
    sink.fail, sink.failure = True, RuntimeError("a bug")

    with logged_errors() as errors:
        answers = [post(client, body(id=f"s-{n}")).status_code for n in range(5)]

    assert answers == [503] * 5
    # One traceback, then a line each: a sender retrying against it logged one per request.
    assert sum("Traceback" in line for line in errors) == 1
    assert errors[-1].strip() == "could not journal signal s-4: RuntimeError: a bug"


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600) | st.text(max_size=300).map(str.encode))
def test_no_signed_body_ever_gets_a_500(sink: Sink, data: bytes) -> None:
    client = client_for(sink, requests_per_s=10_000, burst=10_000)

    response = post(client, data)

    assert response.status_code in {202, 200, 400, 422}


@pytest.mark.parametrize("header", ["t=\xb2,v1=" + "a" * 64, "t=1,v1=\xe9" + "a" * 63])
def test_non_ascii_signature_header_is_401_not_500(client: TestClient, header: str) -> None:
    response = client.post(
        PATH, content=body(), headers={SIGNATURE_HEADER: header.encode("latin-1")}
    )

    assert response.status_code == 401


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=120))
def test_no_signature_header_ever_gets_a_500(sink: Sink, header: str) -> None:
    client = client_for(sink, requests_per_s=10_000, burst=10_000)

    response = client.post(
        PATH, content=body(), headers={SIGNATURE_HEADER: header.encode("latin-1")}
    )

    assert response.status_code == 401


def test_every_429_says_when_to_retry(sink: Sink) -> None:
    client = client_for(sink, requests_per_s=0.5, burst=1)
    post(client, body(id="first"))

    response = post(client, body(id="second"))

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"


def test_repeated_failed_logins_lock_out_that_addresss_failures_only(sink: Sink) -> None:
    """A lockout refuses what fails authentication from the address; a correctly signed
    request from it (TradingView sends every user's alerts from a few shared addresses)
    still gets through, as does every other address."""
    rejections = Rejections()
    receiver = receiver_for(
        sink, rejections=rejections, auth_failures_before_lockout=3, lockout_s=120
    )
    app = served(receiver)
    attacker = TestClient(app, client=("203.0.113.9", 1))
    sender = TestClient(app, client=("198.51.100.7", 1))
    forged = sign("guessed-secret", body(), int(time.time()))

    codes = [post(attacker, body(), signature=forged).status_code for _ in range(3)]
    locked = post(attacker, body(id="forged-again"), signature=forged)
    genuine = post(attacker, body(id="a-good-one-from-the-shared-address"))

    assert codes == [401, 401, 401]
    assert (locked.status_code, locked.headers["Retry-After"]) == (429, "120")
    assert genuine.status_code == 202
    assert post(sender, body(id="real")).status_code == 202
    kinds = [kind for kind, _, client in rejections if client == "203.0.113.9"]
    assert kinds == ["unauthorized"] * 3 + ["locked_out"]


def test_a_locked_out_address_that_keeps_sending_is_journaled_once_a_minute(sink: Sink) -> None:
    # Each request of a locked-out sender must not cost a journal row (the journal would
    # grow at the attacker's pace).
    rejections = Rejections()
    receiver = receiver_for(
        sink, rejections=rejections, auth_failures_before_lockout=3, lockout_s=120
    )
    attacker = TestClient(served(receiver), client=("203.0.113.9", 1))
    forged = sign("guessed-secret", body(), int(time.time()))

    codes = [post(attacker, body(), signature=forged).status_code for _ in range(200)]

    assert codes == [401] * 3 + [429] * 197
    kinds = [kind for kind, _, _ in rejections]
    assert kinds == ["unauthorized"] * 3 + ["locked_out"]


def test_an_address_that_keeps_sending_oversized_bodies_is_journaled_once_a_minute(
    sink: Sink,
) -> None:
    rejections = Rejections()
    receiver = receiver_for(sink, rejections=rejections, requests_per_s=10_000, burst=10_000)
    sender = TestClient(served(receiver), client=("203.0.113.9", 1))
    huge = b"x" * 100_000

    codes = {sender.post(PATH, content=huge).status_code for _ in range(50)}

    assert codes == {413}
    assert [kind for kind, _, _ in rejections] == ["too_large"]


def test_lockouts_of_addresses_without_end_stay_bounded() -> None:
    now = [1000.0]
    lockout = _Lockout(limit=1, lockout_s=120, clock=lambda: now[0])

    for index in range(3 * _MAX_CLIENTS):  # one failure each locks an address out
        now[0] += 0.001
        assert lockout.failed(f"2001:db8::{index:x}")
    assert len(lockout._locked) == _MAX_CLIENTS
    assert lockout.wait_s(f"2001:db8::{3 * _MAX_CLIENTS - 1:x}") > 0  # the newest still are
    now[0] += 121  # every lockout has ended: the next one forgets them all
    lockout.failed("203.0.113.9")

    assert len(lockout._locked) == 1


def test_every_rejection_is_reported_without_secrets(sink: Sink) -> None:
    rejections = Rejections()
    app = served(receiver_for(sink, rejections=rejections))
    client = TestClient(app, client=("192.0.2.1", 1))
    signature = sign("wrong-secret", body(), int(time.time()))

    post(client, body(), signature=signature)
    post(client, body(side="up"))

    assert [(kind, client) for kind, _, client in rejections] == [
        ("unauthorized", "192.0.2.1"),
        ("invalid", "192.0.2.1"),
    ]
    assert all(SECRET not in reason and signature not in reason for _, reason, _ in rejections)


def test_any_of_several_secrets_signs_so_a_secret_rotates_without_downtime(sink: Sink) -> None:
    app = served(receiver_for(sink, secrets=("old-secret-123", SECRET)))
    client = TestClient(app)

    payload = body(id="old")  # one body: signed and sent as it is (it carries the time)
    old = post(client, payload, signature=sign("old-secret-123", payload, int(time.time())))
    new = post(client, body(id="new"))

    assert (old.status_code, new.status_code) == (202, 202)


def test_only_allowed_addresses_and_x_forwarded_for_only_from_trusted_proxies(
    sink: Sink,
) -> None:
    config = {"allowed_ips": ["198.51.100.0/24"], "trusted_proxies": ["10.0.0.1"]}
    app = served(receiver_for(sink, **config))
    proxy = TestClient(app, client=("10.0.0.1", 1))
    stranger = TestClient(app, client=("203.0.113.5", 1))
    forwarded = {"X-Forwarded-For": "203.0.113.5, 198.51.100.7"}

    via_proxy = post(proxy, body(id="a"), forwarded=forwarded["X-Forwarded-For"])
    spoofed = post(stranger, body(id="b"), forwarded="198.51.100.7")
    outside = post(proxy, body(id="c"), forwarded="203.0.113.5")

    assert via_proxy.status_code == 202  # the last untrusted hop is the client
    assert spoofed.status_code == 403  # a stranger's X-Forwarded-For is not believed
    assert outside.status_code == 403
    assert "203.0.113.5 may not send" in outside.json()["detail"]


TRADINGVIEW = "/webhooks/tradingview"


def tradingview_client(sink: Sink, **config: object) -> TestClient:
    app = served(receiver_for(sink, source="tradingview", **config))
    return TestClient(app)


def alert(**fields: object) -> bytes:
    message = {"token": TOKEN, "ticker": "BTCUSDT", "action": "long", "sl": 95000, "tp1": 99000}
    message.update(fields)
    return json.dumps(message).encode()


def test_a_tradingview_alert_is_mapped_and_its_retry_is_a_duplicate(sink: Sink) -> None:
    client = tradingview_client(sink)
    headers = {"Content-Type": "text/plain"}

    first = client.post(TRADINGVIEW, content=alert(), headers=headers)
    retry = client.post(TRADINGVIEW, content=alert(), headers=headers)

    assert (first.status_code, retry.status_code) == (202, 200)
    (signal,) = sink.signals
    assert (signal.symbol, signal.side, signal.stop_loss) == ("BTCUSDT", "Buy", 95000)
    assert signal.take_profit == (99000,)
    assert "token" not in signal.raw  # never stored
    assert signal.id.startswith("tradingview:")


@pytest.mark.parametrize("ticker", ["BTCUSDT.P", "BYBIT:BTCUSDT.P", "bybit:btcusdt.p", "BTCUSDT"])
def test_a_tradingview_ticker_of_a_perpetual_chart_is_the_bybit_symbol(
    sink: Sink, ticker: str
) -> None:
    # {{ticker}} on Bybit's BTCUSDT perpetual chart is BTCUSDT.P ({{exchange}}:{{ticker}}:
    # BYBIT:BTCUSDT.P): refused as a symbol, every alert of such a chart would be lost.
    response = tradingview_client(sink).post(TRADINGVIEW, content=alert(ticker=ticker))

    assert response.status_code == 202, response.text
    assert [signal.symbol for signal in sink.signals] == ["BTCUSDT"]


def test_a_tradingview_close_and_its_token_rules(sink: Sink) -> None:
    client = tradingview_client(sink)

    close = client.post(TRADINGVIEW, content=alert(action="close", id="c1"))
    no_token = client.post(TRADINGVIEW, content=alert(token="wrong", id="c2"))
    unmapped = client.post(TRADINGVIEW, content=alert(action="sideways", id="c3"))
    not_text = client.post(TRADINGVIEW, content=alert(token="\ud800", id="c4"))  # was a 500

    assert close.status_code == 202
    assert not_text.status_code == 401
    assert sink.signals[0].action == "close"
    assert no_token.status_code == 401
    assert "the body's 'token' field" in no_token.json()["detail"]
    assert unmapped.status_code == 422
    assert [p["field"] for p in unmapped.json()["problems"]] == ["side"]


def test_an_alert_with_the_right_token_and_a_key_twice_is_400_never_a_lockout(
    sink: Sink,
) -> None:
    """TradingView sends every user's alerts from a few shared addresses: an alert template
    with a key given twice must be told so, not counted as a wrong token until every alert
    is locked out."""
    client = tradingview_client(sink, auth_failures_before_lockout=3)
    twice = alert()[:-1] + b', "comment": "a", "comment": "b"}'

    answers = [client.post(TRADINGVIEW, content=twice) for _ in range(5)]
    valid = client.post(TRADINGVIEW, content=alert())

    assert {answer.status_code for answer in answers} == {400}
    assert "the key 'comment' is given twice" in answers[0].json()["detail"]
    assert valid.status_code == 202


def test_tradingview_may_be_limited_to_its_published_addresses(sink: Sink) -> None:
    receiver = receiver_for(sink, source="tradingview", allow_preset_ips=True)
    app = served(receiver)

    outside = TestClient(app, client=("203.0.113.5", 1)).post(TRADINGVIEW, content=alert())
    inside = TestClient(app, client=("52.89.214.238", 1)).post(TRADINGVIEW, content=alert())

    assert (outside.status_code, inside.status_code) == (403, 202)


def test_a_custom_mapping_names_what_is_missing(sink: Sink) -> None:
    mapping = {"fields": {"symbol": "pair", "side": "direction"}}
    client = TestClient(served(receiver_for(sink, source="myfeed", mapping=mapping)))
    data = json.dumps({"direction": "buy"}).encode()

    response = client.post(
        "/webhooks/myfeed",
        content=data,
        headers={SIGNATURE_HEADER: sign(SECRET, data, int(time.time()))},
    )

    assert response.status_code == 422
    assert [p["field"] for p in response.json()["problems"]] == ["symbol"]


@pytest.mark.parametrize(
    ("direction", "side"),
    [("LONG", "Buy"), ("long", "Buy"), ("Short", "Sell"), ("\u043b\u043e\u043d\u0433", "Buy")],
    ids=["upper", "lower", "mixed", "non-ascii exact"],
)
def test_mapped_values_match_without_case_when_ascii(sink: Sink, direction: str, side: str) -> None:
    # The configuration's keys are compared as the provider's values are: ASCII in lower
    # case ("Long" as given in a config still matches "LONG"), other text exactly.
    values = {"side": {"Long": "buy", "SHORT": "sell", "\u043b\u043e\u043d\u0433": "buy"}}
    mapping = {"fields": {"side": "direction"}, "values": values}
    client = TestClient(served(receiver_for(sink, source="myfeed", mapping=mapping)))
    data = json.dumps(
        {"id": "m-1", "symbol": "BTCUSDT", "direction": direction, "ts": int(time.time() * 1000)}
    ).encode()

    response = client.post(
        "/webhooks/myfeed",
        content=data,
        headers={SIGNATURE_HEADER: sign(SECRET, data, int(time.time()))},
    )

    assert response.status_code == 202, response.text
    assert [s.side.value if s.side else None for s in sink.signals] == [side]


def test_a_sender_that_hangs_up_mid_body_is_refused_as_incomplete_not_a_crash(
    sink: Sink,
) -> None:
    """As uvicorn reports it: part of the body, then `http.disconnect`."""
    rejections = Rejections()
    app = served(receiver_for(sink, rejections=rejections))
    data = body()
    messages = [
        {"type": "http.request", "body": data[:10], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
            (SIGNATURE_HEADER.lower().encode(), sign(SECRET, data, int(time.time())).encode()),
        ],
        "client": ("198.51.100.3", 4000),
        "server": ("127.0.0.1", 8080),
    }
    with logged_errors() as errors:
        asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]

    assert sent[0]["status"] == 400
    assert errors == []
    assert sink.signals == []
    assert rejections == [
        (
            "incomplete",
            "the connection closed after 10 bytes of the body; send it again",
            "198.51.100.3",
        )
    ]


def test_a_signed_mapped_request_sent_again_minutes_later_is_still_one_signal(sink: Sink) -> None:
    # Its id comes from the body and the signature's time, not the time it arrived: a copy
    # sent again within the signature's validity (a replay, or a retry over a minute
    # boundary) is the same signal, never a second order.
    signed_at = 1_800_000_000 - 1  # one second before a minute boundary
    virtual = clock.VirtualClock(datetime.fromtimestamp(signed_at, UTC))
    receiver = WebhookReceiver(
        resolve("tradingview", WebhookSourceConfig()),
        [SecretStr(SECRET)],
        sink,
        token=SecretStr(TOKEN),
        clock=lambda: virtual.now().timestamp(),
    )
    client = TestClient(served(receiver))
    body = alert(token=None)
    headers = {SIGNATURE_HEADER: sign(SECRET, body, signed_at)}

    codes = []
    with clock.installed(virtual):
        for delay in (0, 2, 62, 125, 250):
            virtual.advance_to(datetime.fromtimestamp(signed_at + delay, UTC))
            codes.append(client.post(TRADINGVIEW, content=body, headers=headers).status_code)

    assert codes == [202, 200, 200, 200, 200]
    assert len(sink.signals) == 1
