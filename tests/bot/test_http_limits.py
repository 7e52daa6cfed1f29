"""The HTTP port's limits (bot/http_limits.py), through the bot's real uvicorn server."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from bot.http_limits import MAX_HEAD_BYTES, MAX_HEAD_FIELDS, raise_descriptor_limit
from bot.secrets import MissingSecretError, SecretResolver
from signals.voiceofchain import sign
from tests.bot.test_service import RunningBot

HEAD_TIMEOUT_S = 0.5
MAX_CONNECTIONS = 4


@pytest.fixture
def head_timeout_s() -> float:
    """The bot's http.head_timeout_s (a test parametrizes it)."""
    return HEAD_TIMEOUT_S


@pytest.fixture
def bot(sim_config: Callable[..., Path], head_timeout_s: float) -> Iterator[RunningBot]:
    config = sim_config()
    limits = f"[http]\nmax_connections = {MAX_CONNECTIONS}\nhead_timeout_s = {head_timeout_s}\n"
    config.write_text(config.read_text().replace("[http]\n", limits))
    running = RunningBot(config).start()
    try:
        yield running
    finally:
        running.stop()


def _connect(bot: RunningBot) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", bot.service.http_port), timeout=5)
    sock.settimeout(5)
    return sock


def _one_response(sock: socket.socket) -> bytes:
    """One whole response (its head, and the body its content-length says)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _refused(bot: RunningBot) -> float:
    """bot_http_connections_refused_total (of the process: every test's bots count in it)."""
    metrics = requests.get(f"{bot.url}/metrics", timeout=5).text
    line = next(line for line in metrics.splitlines() if line.startswith("bot_http_conn"))
    return float(line.split()[1])


def _answer(sock: socket.socket) -> tuple[int, dict[str, str]]:
    """The status and JSON body of the one answer before the server closes."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_a_connection_that_sends_no_head_in_time_gets_408_and_is_closed(bot: RunningBot) -> None:
    silent, slow = _connect(bot), _connect(bot)
    slow.sendall(b"POST /webhooks/voiceofchain HTTP/1.1\r\nHost: x\r\n")  # and no more

    for sock in (silent, slow):
        status, body = _answer(sock)
        assert status == 408
        assert "did not arrive within 0.5 s" in body["detail"]


def test_a_head_over_the_limit_gets_431(bot: RunningBot) -> None:
    sock = _connect(bot)
    pad = b"X-Pad: " + b"a" * 1000 + b"\r\n"
    # A little over the limit, all of it read by the server before it answers and closes.
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + pad * (MAX_HEAD_BYTES // len(pad) + 6))

    status, body = _answer(sock)

    assert status == 431
    assert body["detail"] == "the request line and headers exceed 64 KiB or 100 fields"


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\r\n" + b"a: b\r\n" * (MAX_HEAD_FIELDS + 1) + b"\r\n",
        # Whole in one read, so the head completes inside it: the parser's count refuses it.
        b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * (3 * MAX_HEAD_BYTES) + b"\r\n\r\n",
    ],
    ids=["many small fields", "one large head in one piece"],
)
def test_a_head_over_the_limits_in_any_shape_gets_431(bot: RunningBot, head: bytes) -> None:
    sock = _connect(bot)
    sock.sendall(head)

    assert _answer(sock)[0] == 431


def test_a_keep_alive_connection_must_send_its_next_head_in_time(bot: RunningBot) -> None:
    """uvicorn's keep-alive timer stops at any byte, a blank line too: the head timer holds."""
    sock = _connect(bot)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    first = _one_response(sock)
    sock.sendall(b"\r\n")  # and nothing more

    status, _ = _answer(sock)

    assert first.startswith(b"HTTP/1.1 200")
    assert status == 408


def test_a_body_refused_unread_closes_the_connection(bot: RunningBot) -> None:
    sock = _connect(bot)
    sock.sendall(
        b"POST /webhooks/voiceofchain HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 999999999\r\n\r\n{"
    )

    status, body = _answer(sock)  # returns once the server closed

    assert status == 413
    assert body["error"] == "too large"


def test_a_long_body_before_a_pipelined_request_is_not_taken_for_a_head(bot: RunningBot) -> None:
    big = b"x" * (MAX_HEAD_BYTES + 1024)
    sock = _connect(bot)
    sock.sendall(
        b"POST /webhooks/voiceofchain HTTP/1.1\r\nHost: x\r\nContent-Length: "
        + str(len(big)).encode()
        + b"\r\n\r\n"
        + big
        + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )

    data = b""
    while chunk := sock.recv(65536):
        data += chunk

    assert data.count(b"HTTP/1.1 ") == 2, data[:400]
    assert b" 431 " not in data


# Idle connections that outlive the test's steps however slow a loaded host makes them: with
# HEAD_TIMEOUT_S, the idlest could time out (answered 408) before the probe came for its room.
@pytest.mark.parametrize("head_timeout_s", [60.0])
def test_past_the_limit_the_connection_idle_longest_makes_room_for_a_new_one(
    bot: RunningBot,
) -> None:
    refused = _refused(bot)
    idle = [_connect(bot) for _ in range(MAX_CONNECTIONS)]
    time.sleep(0.1)
    # A liveness probe (or a real sender) still gets in: the idlest connection makes room.
    assert requests.get(f"{bot.url}/livez", timeout=5).status_code == 200
    assert idle[0].recv(1) == b""  # closed for room, nothing sent

    _still_open(idle[1:])  # the others stay open
    assert _refused(bot) == refused + 1


def _still_open(socks: list[socket.socket]) -> None:
    """Each of `socks` is open, nothing sent to it (then closed by the test)."""
    for sock in socks:
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)
        sock.close()


def test_past_the_limit_the_connection_waiting_longest_for_a_body_makes_room(
    bot: RunningBot,
) -> None:
    # Heads with a promised body held back (a signature of the right shape gets that far) kept
    # every new connection out until body_timeout_s, and from a few addresses, each under its
    # rate limit, again and again: a real signal was refused before it could say anything.
    refused = _refused(bot)
    held = [_connect(bot) for _ in range(MAX_CONNECTIONS)]
    for sock in held:  # each in the middle of a request's body
        sock.sendall(
            b"POST /webhooks/voiceofchain HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n{"
        )
        time.sleep(0.02)  # the first waits longest
    time.sleep(0.1)

    assert requests.get(f"{bot.url}/livez", timeout=5).status_code == 200
    held[0].settimeout(5)
    assert held[0].recv(65536) == b""  # closed for room, no answer
    _still_open(held[1:])  # the others still wait for their bodies
    assert _refused(bot) == refused + 1


def test_past_the_limit_a_new_connection_is_closed_when_every_one_is_busy(
    bot: RunningBot,
) -> None:
    # Busy: a request whole and its answer not yet done (here: answers no one reads, the
    # server's sending paused), so no connection waits for its client.
    refused = _refused(bot)
    busy = [_connect(bot) for _ in range(MAX_CONNECTIONS)]
    for sock in busy:
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            for _ in range(2000):
                sock.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.3)
    extra = _connect(bot)
    assert extra.recv(1) == b""  # closed on arrival, nothing read

    for sock in busy:
        sock.close()
    # ... and the port serves again.
    assert requests.get(f"{bot.url}/healthz", timeout=5).status_code == 200
    assert _refused(bot) == refused + 1


def test_a_malformed_request_gets_a_json_400(bot: RunningBot) -> None:
    sock = _connect(bot)
    sock.sendall(
        b"POST /webhooks/voiceofchain HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
    )

    status, body = _answer(sock)

    assert status == 400
    assert body["error"] == "bad request"


def test_an_unreadable_secret_file_is_a_clear_error_not_a_crash(tmp_path: Path) -> None:
    loop = tmp_path / "bot_key_x_api_key"
    os.symlink(loop, loop)  # reading it fails with ELOOP, an OSError like EMFILE

    with pytest.raises(MissingSecretError, match=r"cannot read secret file .*symbolic links"):
        SecretResolver(tmp_path, environ={}).get("BOT_KEY_X_API_KEY")


def test_an_upgrade_request_is_answered_as_plain_http_without_log_lines(
    bot: RunningBot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="uvicorn.error")
    sock = _connect(bot)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")

    answer = _one_response(sock)

    assert answer.startswith(b"HTTP/1.1 200")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_broken_body_is_answered_400_at_once_not_after_the_body_timeout(
    bot: RunningBot,
) -> None:
    sock = _connect(bot)
    sock.sendall(
        b"POST /webhooks/voiceofchain HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\n"  # not a chunk size
    )

    status, body = _answer(sock)

    assert status == 400
    assert body["error"] == "bad request"


def test_the_descriptor_room_leaves_out_what_the_in_process_simulator_may_hold() -> None:
    """In `sim` the simulator's connections (HTTP and WebSocket) share the bot's limit on
    open files: room counted without them let a flood of either take the webhook's."""
    alone = raise_descriptor_limit(10**9)
    if alone <= 1512:
        pytest.skip(f"this machine's limit on open files leaves room for {alone} only")
    beside = raise_descriptor_limit(10**9, beside=1512)

    assert alone - beside == 1512


def _chunked_post(
    body: bytes, head: bytes, trailer: bytes = b"", coding: bytes = b"chunked"
) -> bytes:
    """A webhook POST of `body`, chunked, with `head`'s fields and `trailer`'s after it."""
    return (
        b"POST /webhooks/voiceofchain HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: "
        + coding
        + b"\r\nConnection: close\r\n"
        + head
        + b"\r\n"
        + b"%x\r\n" % len(body)
        + body
        + b"\r\n0\r\n"
        + trailer
        + b"\r\n"
    )


def _signal_body() -> bytes:
    return json.dumps(
        {
            "id": f"t-{time.time_ns()}",
            "symbol": "BTCUSDT",
            "side": "buy",
            "stop_loss": 95000,
            "ts": int(time.time() * 1000),
        }
    ).encode()


def test_trailers_are_never_taken_for_headers(bot: RunningBot) -> None:
    """Fields after a chunked body (trailers) are dropped: the server merged them into the
    headers, where a signature no proxy in front had seen authenticated the signal."""
    body = _signal_body()
    signature = f"X-Signature: {sign(bot.secret(), body, int(time.time()))}\r\n".encode()

    only_in_trailer = _connect(bot)
    only_in_trailer.sendall(_chunked_post(body, b"", trailer=signature))
    in_head = _connect(bot)
    in_head.sendall(_chunked_post(body, signature, trailer=b"X-Signature: t=1,v1=00\r\n"))

    assert _answer(only_in_trailer) == (
        401,
        {
            "error": "unauthorized",
            "detail": "missing X-Signature header (t=<unix seconds>,v1=<hex>)",
        },
    )
    assert _answer(in_head)[0] == 202


@pytest.mark.parametrize(
    ("head", "coding", "status", "detail"),
    [
        (
            b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n",
            b"chunked",
            400,
            "the connection cannot be upgraded (Upgrade: h2c): send plain HTTP/1.1",
        ),
        (b"", b"gzip, chunked", 501, "Transfer-Encoding 'gzip, chunked' is not supported"),
    ],
    ids=["curl --http2 on http://", "a coding nothing decodes"],
)
def test_a_body_the_server_cannot_hand_over_as_sent_is_refused_saying_why(
    bot: RunningBot, head: bytes, coding: bytes, status: int, detail: str
) -> None:
    """Asked to upgrade, the server handed the application an empty body: a signed signal
    was refused as forged (and counted towards its address's lockout), a signed halt of one
    strategy halted the whole bot. A transfer coding other than chunked was read as plain."""
    body = _signal_body()
    signature = f"X-Signature: {sign(bot.secret(), body, int(time.time()))}\r\n".encode()
    sock = _connect(bot)
    sock.sendall(_chunked_post(body, head + signature, coding=coding))

    answered, problem = _answer(sock)

    assert answered == status
    assert detail in problem["detail"]
