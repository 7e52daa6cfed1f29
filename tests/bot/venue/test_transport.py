"""KeptAliveSession against real sockets on loopback: one request written once, every failure a
requests exception (so pybit and `classify` see what they saw from requests), and answers the
way requests would give them."""

from __future__ import annotations

import datetime as dt
import gzip
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.net import tcp_listener
from bot.venue import transport
from bot.venue.errors import AmbiguousError, classify
from bot.venue.transport import KeptAliveSession

#: What the server does with one connection: read requests, write answers.
Handler = Callable[["Conn"], None]

OK_JSON = (
    b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"retCode":'
)


def answer(body: bytes = b'{"retCode":0}', *, extra: str = "", status: str = "200 OK") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


class Conn:
    """One accepted connection, as the handler sees it."""

    def __init__(self, sock: socket.socket, server: Server) -> None:
        self.sock = sock
        self.server = server
        self._buffer = b""

    def read_request(self) -> bytes | None:
        """One whole request (head and Content-Length body); None once the client closed."""
        while b"\r\n\r\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self._buffer += chunk
        head, _, rest = self._buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            rest += self.sock.recv(65536)
        self._buffer = rest[length:]
        request = head + b"\r\n\r\n" + rest[:length]
        self.server.requests.append(request)
        return request


class Server:
    """A loopback TCP server running `handler` on each connection, counting both."""

    def __init__(self, handler: Handler, context: ssl.SSLContext | None = None) -> None:
        self._listener = tcp_listener("127.0.0.1", 0)
        self._listener.listen()
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self.handler = handler
        self.context = context
        self.connections = 0
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{'https' if self.context else 'http'}://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._run, args=(sock,), daemon=True).start()

    def _run(self, sock: socket.socket) -> None:
        try:
            if self.context is not None:
                sock = self.context.wrap_socket(sock, server_side=True)
            self.handler(Conn(sock, self))
        except (OSError, ssl.SSLError):
            pass
        finally:
            sock.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._listener.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(handler: Handler, context: ssl.SSLContext | None = None) -> Server:
        servers.append(Server(handler, context))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def answering(*answers: bytes) -> Handler:
    """Answer each request on a connection with the next of `answers`, then keep it open."""

    def handle(conn: Conn) -> None:
        for data in answers:
            if conn.read_request() is None:
                return
            conn.sock.sendall(data)
        conn.read_request()

    return handle


def forever(data: bytes) -> Handler:
    def handle(conn: Conn) -> None:
        while conn.read_request() is not None:
            conn.sock.sendall(data)

    return handle


def post(
    session: requests.Session, url: str, body: str = '{"a":1}', timeout: float = 2.0
) -> requests.Response:
    """Exactly what pybit does: prepare a Request on the session, then send it."""
    prepared = session.prepare_request(
        requests.Request("POST", f"{url}/v5/order/create", data=body, headers={"X-Test": "1"})
    )
    return session.send(prepared, timeout=timeout)


def test_requests_share_one_connection(serve: Callable[..., Server]) -> None:
    server = serve(forever(answer()))
    session = KeptAliveSession()
    for _ in range(5):
        response = post(session, server.url)
        assert response.status_code == 200
        assert response.json() == {"retCode": 0}
    assert server.connections == 1
    assert len(server.requests) == 5
    head = server.requests[0].split(b"\r\n\r\n")[0].decode()
    assert head.startswith("POST /v5/order/create HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}" in head
    assert "X-Test: 1" in head
    assert "Content-Length: 7" in head
    assert "Accept-Encoding: identity" in head
    assert server.requests[0].endswith(b'{"a":1}')


def test_get_carries_the_query_and_no_body(serve: Callable[..., Server]) -> None:
    server = serve(forever(answer()))
    session = KeptAliveSession()
    prepared = session.prepare_request(
        requests.Request("GET", f"{server.url}/v5/order/realtime?category=linear&cursor=a b")
    )
    session.send(prepared, timeout=2)
    head = server.requests[0].decode()
    assert head.startswith("GET /v5/order/realtime?category=linear&cursor=a%20b HTTP/1.1\r\n")
    assert "Content-Length" not in head
    assert head.endswith("\r\n\r\n")


def test_answer_matches_what_requests_gives(serve: Callable[..., Server]) -> None:
    body = b'{"retCode":0,"result":{"list":[]}}'
    server = serve(
        forever(answer(body, extra="X-Bapi-Limit: 10\r\nSet-Thing: a\r\nSet-Thing: b\r\n"))
    )
    ours = post(KeptAliveSession(), server.url)
    theirs = post(requests.Session(), server.url)
    assert (ours.status_code, ours.reason, ours.content) == (
        theirs.status_code,
        theirs.reason,
        theirs.content,
    )
    assert ours.headers["x-bapi-limit"] == theirs.headers["X-Bapi-Limit"] == "10"
    assert ours.headers["Set-Thing"] == theirs.headers["Set-Thing"] == "a, b"
    assert ours.encoding == theirs.encoding == "utf-8"
    assert ours.url == theirs.url
    assert isinstance(ours.elapsed, dt.timedelta)


def test_connection_close_answers_open_a_new_connection_each(
    serve: Callable[..., Server],
) -> None:
    server = serve(forever(answer(extra="Connection: close\r\n")))
    session = KeptAliveSession()
    for _ in range(3):
        assert post(session, server.url).status_code == 200
    assert server.connections == 3
    assert len(server.requests) == 3


def test_an_answer_without_a_length_runs_to_the_close(serve: Callable[..., Server]) -> None:
    def unframed(conn: Conn) -> None:
        conn.read_request()
        conn.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{}")

    server = serve(unframed)
    assert post(KeptAliveSession(), server.url).json() == {}


def test_idle_connection_closed_by_the_server_is_noticed(serve: Callable[..., Server]) -> None:
    def once_then_close(conn: Conn) -> None:
        conn.read_request()
        conn.sock.sendall(answer())
        time.sleep(0.05)
        conn.sock.shutdown(socket.SHUT_RDWR)

    server = serve(once_then_close)
    session = KeptAliveSession()
    post(session, server.url)
    time.sleep(0.3)  # the server has closed the idle connection
    assert post(session, server.url).status_code == 200
    assert server.connections == 2
    assert len(server.requests) == 2  # each written once, on a live connection


def test_no_answer_is_ambiguous_and_never_resent(serve: Callable[..., Server]) -> None:
    def read_then_close(conn: Conn) -> None:
        conn.read_request()

    server = serve(read_then_close)
    with pytest.raises(requests.ConnectionError) as caught:
        post(KeptAliveSession(), server.url)
    assert isinstance(classify(caught.value, "place_order"), AmbiguousError)
    time.sleep(0.1)
    assert len(server.requests) == 1


def test_silence_times_out(serve: Callable[..., Server]) -> None:
    def silent(conn: Conn) -> None:
        conn.read_request()
        time.sleep(2)

    server = serve(silent)
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout) as caught:
        post(KeptAliveSession(), server.url, timeout=0.3)
    assert time.monotonic() - started < 1.5
    assert isinstance(classify(caught.value, "place_order"), AmbiguousError)


def test_a_trickling_answer_is_bounded_by_the_timeout_as_a_whole(
    serve: Callable[..., Server],
) -> None:
    def trickle(conn: Conn) -> None:
        conn.read_request()
        for byte in answer(b" " * 40):
            conn.sock.sendall(bytes([byte]))
            time.sleep(0.05)

    server = serve(trickle)
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        post(KeptAliveSession(), server.url, timeout=0.5)
    assert time.monotonic() - started < 1.5


def test_refused_connection_is_a_connection_error() -> None:
    listener = tcp_listener("127.0.0.1", 0)
    port = listener.getsockname()[1]
    listener.close()
    with pytest.raises(requests.ConnectionError):
        post(KeptAliveSession(), f"http://127.0.0.1:{port}")


def test_chunked_and_gzip_answers_are_decoded(serve: Callable[..., Server]) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"a":\r\n2\r\n1}\r\n0\r\n\r\n'
    )
    packed = gzip.compress(b'{"b":2}')
    zipped = answer(packed, extra="Content-Encoding: gzip\r\n")
    server = serve(forever(chunked))
    zipped_server = serve(forever(zipped))
    session = KeptAliveSession()
    assert post(session, server.url).json() == {"a": 1}
    assert post(session, zipped_server.url).json() == {"b": 2}


def test_oversized_and_malformed_answers_are_connection_errors(
    serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "MAX_ANSWER_BYTES", 100)
    big = serve(forever(answer(b"x" * 500)))
    garbage = serve(forever(b"SMTP ready\r\n\r\n"))
    session = KeptAliveSession()
    with pytest.raises(requests.ConnectionError, match="larger than 100 bytes"):
        post(session, big.url)
    with pytest.raises(requests.ConnectionError, match="malformed"):
        post(session, garbage.url)


def test_interim_answers_are_skipped_and_never_read_as_the_next_call(
    serve: Callable[..., Server],
) -> None:
    """A 100 Continue (alone, or in one segment with the answer) is not the answer, and the
    answer that follows it is not left for the next request to read."""

    def continued(conn: Conn) -> None:
        conn.read_request()
        conn.sock.sendall(b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n")
        time.sleep(0.1)
        conn.sock.sendall(answer(b'{"link":1}'))
        conn.read_request()
        conn.sock.sendall(b"HTTP/1.1 103 Early Hints\r\n\r\n" + answer(b'{"link":2}'))
        conn.read_request()

    server = serve(continued)
    session = KeptAliveSession()
    first = post(session, server.url)
    assert (first.status_code, first.reason, first.json()) == (200, "OK", {"link": 1})
    assert "X-Interim" not in first.headers
    assert post(session, server.url).json() == {"link": 2}
    assert server.connections == 1


def test_bytes_after_an_answer_never_merge_into_it_and_spoil_the_connection(
    serve: Callable[..., Server],
) -> None:
    trailing = (
        answer(b'{"retCode":0}') + answer(b'{"retCode":10016}', status="500 Internal Server Error"),
        answer(b'{"retCode":0}') + b"HTTP/1.1 500 Inter",
        answer(b'{"retCode":0}') + b"\x00garbage",
    )
    for data in trailing:
        server = serve(forever(data))
        session = KeptAliveSession()
        response = post(session, server.url)
        assert (response.status_code, response.reason) == (200, "OK")
        assert response.json() == {"retCode": 0}
        assert response.headers["Content-Length"] == "13"
        post(session, server.url)
        assert server.connections == 2  # the spoilt connection was not used again


def test_an_upgrade_answer_is_its_status_and_the_connection_is_dropped(
    serve: Callable[..., Server],
) -> None:
    """As http.client gives it (pybit then raises on a status other than 200); the socket
    belongs to another protocol now."""
    upgrade = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    server = serve(forever(upgrade + b"\r\n\x81\x05hello"))
    session = KeptAliveSession()
    assert post(session, server.url).status_code == 101
    post(session, server.url)
    assert server.connections == 2


def test_codings_are_taken_as_requests_takes_them(
    serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    banned = serve(
        forever(answer(b"denied", status="403 Forbidden", extra="Content-Encoding: br\r\n"))
    )
    empty = serve(forever(answer(b"", extra="Content-Encoding: gzip\r\n")))
    response = post(KeptAliveSession(), banned.url)
    assert (response.status_code, response.content) == (403, b"denied")  # the status counts
    assert post(KeptAliveSession(), empty.url).content == b""
    monkeypatch.setattr(transport, "MAX_ANSWER_BYTES", 1000)
    bomb = serve(forever(answer(gzip.compress(b"0" * 100_000), extra="Content-Encoding: gzip\r\n")))
    with pytest.raises(requests.ConnectionError, match="inflates past 1000 bytes"):
        post(KeptAliveSession(), bomb.url)


def test_a_session_header_set_to_none_is_not_sent(serve: Callable[..., Server]) -> None:
    server = serve(forever(answer()))
    session = KeptAliveSession()
    session.headers["User-Agent"] = None  # type: ignore[assignment]  # requests' way to unset
    post(session, server.url)
    assert b"User-Agent" not in server.requests[0]


def test_a_header_with_a_line_break_is_refused_before_sending(
    serve: Callable[..., Server],
) -> None:
    server = serve(forever(answer()))
    session = KeptAliveSession()
    session.headers["X-Evil"] = "a\r\nX-Injected: 1"
    with pytest.raises(requests.exceptions.InvalidHeader):
        post(session, server.url)
    assert server.requests == []


def test_a_proxied_url_goes_through_requests(serve: Callable[..., Server]) -> None:
    """The proxy sees the absolute-form request requests writes to a plain-HTTP proxy."""
    proxy = serve(forever(answer()))
    session = KeptAliveSession()
    session.proxies = {"http": proxy.url}
    assert post(session, "http://venue.invalid").status_code == 200
    assert proxy.requests[0].startswith(b"POST http://venue.invalid/v5/order/create HTTP/1.1")


def test_a_proxied_request_returns_a_redirect_as_a_direct_one_does(
    serve: Callable[..., Server],
) -> None:
    """Reproduced: through a proxy (HTTPS_PROXY), requests followed a 307, sending the signed
    order, its API key header and signature with it, again to another host."""
    proxy = serve(
        answering(
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://elsewhere.invalid/v5/other\r\n"
            b"Content-Length: 0\r\n\r\n",
            answer(),
        )
    )
    session = KeptAliveSession()
    session.proxies = {"http": proxy.url}
    response = post(session, "http://venue.invalid")
    assert (response.status_code, len(response.history)) == (307, 0)
    assert len(proxy.requests) == 1
    assert proxy.requests[0].startswith(b"POST http://venue.invalid/v5/order/create HTTP/1.1")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, and its key."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_is_verified_like_requests(
    serve: Callable[..., Server], certificate: tuple[Path, Path]
) -> None:
    cert_path, key_path = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    server = serve(forever(answer()), context)

    trusting = KeptAliveSession()
    trusting.verify = str(cert_path)
    for _ in range(3):
        assert post(trusting, server.url).json() == {"retCode": 0}
    assert server.connections == 1

    with pytest.raises(requests.exceptions.SSLError):
        post(KeptAliveSession(), server.url)  # certifi's bundle does not hold it


def test_any_answer_is_a_response_or_a_requests_error(serve: Callable[..., Server]) -> None:
    """Hostile or broken servers: whatever comes back, pybit sees a response or an exception
    `classify` calls ambiguous, never anything else."""
    payload = [b""]

    def once(conn: Conn) -> None:
        conn.read_request()
        conn.sock.sendall(payload[0])

    server = serve(once)

    @settings(max_examples=80, deadline=None)
    @given(st.binary(max_size=300) | st.builds(lambda tail: OK_JSON + tail, st.binary(max_size=50)))
    def check(data: bytes) -> None:
        payload[0] = data
        try:
            response = post(KeptAliveSession(), server.url, timeout=0.5)
        except requests.RequestException as exc:
            assert isinstance(classify(exc, "place_order"), AmbiguousError)
        else:
            assert isinstance(response.status_code, int)
            assert isinstance(response.content, bytes)

    check()
