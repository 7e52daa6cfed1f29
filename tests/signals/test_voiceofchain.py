"""The VoiceOfChain webhook contract: signature, answers, and what reaches the sink."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from bot.messages import Signal
from signals.config import WebhookSourceConfig
from signals.voiceofchain import SIGNATURE_HEADER, WebhookReceiver, sign

SECRET = "webhook-secret-for-tests"
PATH = "/webhooks/voiceofchain"


class Sink:
    """Records signals; the second one with an id is a duplicate, like the journal says."""

    def __init__(self) -> None:
        self.signals: list[Signal] = []
        self.fail = False

    async def __call__(self, signal: Signal) -> bool:
        if self.fail:
            raise OSError("disk full")
        if any(s.id == signal.id for s in self.signals):
            return False
        self.signals.append(signal)
        return True


TOKEN = "query-token-for-tests"


def client_for(sink: Sink, client: str = "testclient", **config: object) -> TestClient:
    settings = WebhookSourceConfig(**config)  # type: ignore[arg-type]
    token = SecretStr(TOKEN) if settings.allow_query_token else None
    receiver = WebhookReceiver("voiceofchain", SecretStr(SECRET), settings, sink, token=token)
    app = FastAPI()
    app.include_router(receiver.router())
    return TestClient(app, client=(client, 50000))


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


def post(client: TestClient, data: bytes, signature: str | None = None, **kwargs: object):  # type: ignore[no-untyped-def]
    headers = {"Content-Type": "application/json"}
    headers[SIGNATURE_HEADER] = signature or sign(SECRET, data, int(time.time()))
    return client.post(PATH, content=data, headers=headers, **kwargs)  # type: ignore[arg-type]


def test_signed_signal_is_accepted_and_reaches_the_sink(client: TestClient, sink: Sink) -> None:
    response = post(client, body())

    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "id": "s-1"}
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
    from signals.voiceofchain import _ClientRateLimit

    limit = _ClientRateLimit(rate_per_s=0.001, burst=1, clock=lambda: 0.0, max_clients=2)

    assert [limit.allow("flooder"), limit.allow("flooder")] == [True, False]
    assert limit.allow("sender")
    assert limit.allow("third")  # evicts the least recently seen bucket ("flooder")
    assert limit.allow("flooder")


def test_query_token_only_when_enabled(sink: Sink) -> None:
    data = body()
    off = client_for(sink)
    on = client_for(sink, allow_query_token=True)

    assert off.post(f"{PATH}?token={TOKEN}", content=data).status_code == 401
    assert on.post(f"{PATH}?token={SECRET}", content=data).status_code == 401  # not the HMAC key
    assert on.post(f"{PATH}?token={TOKEN}", content=data).status_code == 202


def test_query_token_cannot_be_enabled_without_a_token(sink: Sink) -> None:
    with pytest.raises(ValueError, match="allow_query_token needs the source's token"):
        WebhookReceiver(
            "voiceofchain", SecretStr(SECRET), WebhookSourceConfig(allow_query_token=True), sink
        )


def test_journal_failure_is_503_so_the_sender_retries(client: TestClient, sink: Sink) -> None:
    sink.fail = True

    response = post(client, body())

    assert response.status_code == 503


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
