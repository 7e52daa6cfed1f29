"""pybit's HTTP session, sending over one kept-alive connection without requests' machinery.

pybit builds every request with `session.prepare_request(requests.Request(...))` and sends it
with `session.send(prepared, timeout=...)`. Measured against the simulator, requests and urllib3
spend about 1.4 ms of CPU on each of those calls (settings merged, cookies, hooks, a connection
pool, headers parsed by the e-mail package), most of what a pybit call costs. `KeptAliveSession`
keeps pybit and its answers unchanged (a real `requests.Response`, the same exception classes)
and does the sending itself: the request written on one socket it keeps open, the answer parsed
by httptools (uvicorn's C parser, already a dependency).

It takes only what pybit sends: a method, a full http(s) URL, headers and a text body, no proxy.
Anything else (a proxy for the URL, `stream=True`, files, hooks, auth, a client certificate,
HEAD) is handed to requests, with its redirects returned too. Its guarantees are requests'
own with no retries (requests' default): a request is written once and never resent here;
a connection the server closed while idle is noticed before it is reused; interim 1xx
answers are skipped. Where it differs from requests, it is stricter: `timeout` also bounds
the whole answer, not each read alone, so a server trickling bytes cannot hold a call past
it; answers are bounded
(`MAX_ANSWER_BYTES`, inflated too); bytes after a complete answer spoil the connection, which
is dropped; redirects are returned, not followed (a 3xx is a failed call, never an order sent
again elsewhere); cookies are neither kept nor sent (Bybit's API uses none).
"""

from __future__ import annotations

import contextlib
import functools
import select
import socket
import ssl
import time
import zlib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httptools
import requests
from requests.cookies import RequestsCookieJar
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import ConnectTimeout, ReadTimeout, SSLError
from requests.structures import CaseInsensitiveDict
from requests.utils import (
    DEFAULT_CA_BUNDLE_PATH,
    get_encoding_from_headers,
    requote_uri,
    select_proxy,
)

__all__ = ["KeptAliveSession"]

_READ_CHUNK = 65536
#: Bound on an answer's size: a venue's largest page is far below it.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}


class KeptAliveSession(requests.Session):
    """A `requests.Session` for one thread's pybit client (one request at a time)."""

    def __init__(self) -> None:
        super().__init__()
        # Answers come uncompressed: nothing to inflate, and no compression oracle on a
        # signed request's answer.
        self.headers["Accept-Encoding"] = "identity"
        self._connection: _Connection | None = None

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        method = (request.method or "").upper()
        if method in ("", "HEAD") or not self._plain(request):  # HEAD: an answer without body
            return super().prepare_request(request)
        headers: CaseInsensitiveDict[str | bytes] = CaseInsensitiveDict(self.headers)
        headers.update(request.headers)
        for name in [name for name, value in headers.items() if value is None]:
            del headers[name]  # None unsets a header, as in requests
        data = request.data
        body = data.encode() if isinstance(data, str) else data if isinstance(data, bytes) else b""
        if body:
            headers["Content-Length"] = str(len(body))
        elif method not in ("GET", "HEAD"):
            headers["Content-Length"] = "0"
        prepared = requests.PreparedRequest()
        prepared.method = method
        prepared.url = requote_uri(str(request.url))
        prepared.headers = headers
        prepared.body = body or None
        prepared.hooks = {"response": []}
        prepared._cookies = RequestsCookieJar()  # read by requests' redirects, if it sends it
        return prepared

    def _plain(self, request: requests.Request) -> bool:
        """Whether `request` is one this session sends itself: no files, JSON, query
        parameters, auth, cookies or hooks, on either the request or the session."""
        return (isinstance(request.data, (str, bytes)) or not request.data) and not (
            request.files
            or request.json is not None
            or request.params
            or request.auth
            or request.cookies
            or any(request.hooks.values())
            or self.params
            or self.auth
            or self.cookies
            or any(self.hooks.values())
        )

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        url = str(request.url)
        split = _split(url)
        if (
            split is None
            or kwargs.get("stream")
            or kwargs.get("cert")
            or self.cert
            or not isinstance(request.body, (bytes, type(None)))
            or select_proxy(url, kwargs.get("proxies") or self.proxies)
        ):
            # requests would follow a redirect, sending the signed request (the API key in
            # its headers, an order in its body) again, to wherever it points.
            return super().send(request, **{**kwargs, "allow_redirects": False})
        origin, path = split
        timeout = kwargs.get("timeout")
        connect_s, read_s = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        verify = kwargs.get("verify", self.verify)
        started = time.perf_counter()
        connection = self._connection
        if connection is None or connection.origin != origin or connection.dropped():
            self._drop_connection()
            connection = _Connection.open(origin, connect_s, verify)
            self._connection = connection
        try:
            answer = connection.exchange(_request_bytes(request, origin, path), read_s)
        except BaseException:
            self._drop_connection()
            raise
        if not answer.keep_alive:
            self._drop_connection()
        return _response(request, answer, time.perf_counter() - started)

    def close(self) -> None:
        self._drop_connection()
        super().close()

    def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@dataclass(frozen=True)
class _Origin:
    """Where a request goes: one kept-alive connection serves one origin."""

    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if _DEFAULT_PORTS[self.scheme] == self.port else f"{host}:{self.port}"


def _split(url: str) -> tuple[_Origin, str] | None:
    """A plain http(s) URL (no user info, no fragment) as its origin and its request-target
    (path and query); None for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    if port is None or not parts.hostname or "@" in parts.netloc or parts.fragment:
        return None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Origin(parts.scheme, parts.hostname, port), path


def _request_bytes(request: requests.PreparedRequest, origin: _Origin, path: str) -> bytes:
    lines = [f"{request.method} {path} HTTP/1.1", f"Host: {origin.host_header}"]
    for name, value in request.headers.items():
        if name.lower() == "host":
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        if "\r" in text or "\n" in text or "\r" in name or "\n" in name:
            raise requests.exceptions.InvalidHeader(f"header {name!r} holds a line break")
        lines.append(f"{name}: {text}")
    try:
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError as exc:
        raise requests.exceptions.InvalidHeader(f"a header is not latin-1: {exc}") from exc
    body = request.body
    return head + body if isinstance(body, bytes) else head


@dataclass
class _Answer:
    """One parsed HTTP answer (httptools' callbacks fill it in)."""

    status: int = 0
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: list[bytes] = field(default_factory=list)
    size: int = 0
    headers_done: bool = False
    interim: bool = False  # a 1xx answer before the real one (100 Continue, 103 Early Hints)
    complete: bool = False
    keep_alive: bool = False
    parser: Any = None  # the httptools parser feeding this answer

    def on_message_begin(self) -> None:
        if self.complete:  # bytes after the answer: stop, never merge them into it
            raise _Leftover

    def on_status(self, reason: bytes) -> None:
        self.reason += reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        # Read here: httptools resets its state once the message is complete.
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True
        self.interim = 100 <= self.status < 200 and self.status != 101

    def on_body(self, chunk: bytes) -> None:
        # Not raised here: httptools would wrap it as a parser error.
        self.size += len(chunk)
        if self.size <= MAX_ANSWER_BYTES:
            self.body.append(chunk)

    def on_message_complete(self) -> None:
        if self.interim:  # skipped, as http.client does: the real answer follows
            self.status, self.reason, self.headers = 0, "", []
            self.headers_done = self.interim = False
            return
        self.complete = True

    def ended_by_close(self) -> bool:
        """Whether the server's closing the connection ends this answer: its headers are in
        and give it no length (RFC 9112 6.3: the body then runs to the close)."""
        names = {name.lower() for name, _ in self.headers}
        return self.headers_done and not names & {"content-length", "transfer-encoding"}


class _Leftover(Exception):
    """Bytes followed a complete answer on the connection."""


class _Connection:
    """One open socket to one origin, used by one thread."""

    def __init__(self, origin: _Origin, sock: socket.socket) -> None:
        self.origin = origin
        self._socket = sock

    @classmethod
    def open(cls, origin: _Origin, timeout_s: float | None, verify: bool | str) -> _Connection:
        try:
            sock = socket.create_connection((origin.host, origin.port), timeout=timeout_s)
        except TimeoutError as exc:
            raise ConnectTimeout(f"no connection to {origin.host}:{origin.port}: {exc}") from exc
        except UnicodeError as exc:
            raise requests.exceptions.InvalidURL(f"unusable host name {origin.host!r}") from exc
        except OSError as exc:
            raise RequestsConnectionError(
                f"cannot connect to {origin.host}:{origin.port}: {exc}"
            ) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if origin.scheme == "https":
            try:
                sock = _tls_context(verify).wrap_socket(sock, server_hostname=origin.host)
            except (ssl.SSLError, ssl.CertificateError) as exc:
                sock.close()
                raise SSLError(f"TLS with {origin.host} failed: {exc}") from exc
            except TimeoutError as exc:
                sock.close()
                raise ConnectTimeout(f"TLS with {origin.host} timed out") from exc
            except OSError as exc:
                sock.close()
                raise RequestsConnectionError(f"TLS with {origin.host} failed: {exc}") from exc
        return cls(origin, sock)

    def dropped(self) -> bool:
        """Whether the server closed (or wrote to) this idle connection: it cannot carry a
        new request. An idle keep-alive connection has nothing to read."""
        if isinstance(self._socket, ssl.SSLSocket) and self._socket.pending():
            return True
        poller = select.poll()
        try:
            poller.register(self._socket, select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True

    def exchange(self, data: bytes, timeout_s: float | None) -> _Answer:
        """Write one request and read its whole answer within `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            self._socket.settimeout(timeout_s)
            self._socket.sendall(data)
            return self._read(deadline)
        except requests.RequestException:
            raise
        except TimeoutError as exc:
            raise ReadTimeout(f"no complete answer within {timeout_s} s") from exc
        except ssl.SSLError as exc:
            raise SSLError(f"TLS failed mid-request: {exc}") from exc
        except OSError as exc:
            raise RequestsConnectionError(f"connection failed mid-request: {exc}") from exc

    def _read(self, deadline: float | None) -> _Answer:
        answer = _Answer()
        parser = answer.parser = httptools.HttpResponseParser(answer)
        while not answer.complete:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self._socket.settimeout(left)
            chunk = self._socket.recv(_READ_CHUNK)
            if not chunk:
                if answer.ended_by_close():
                    answer.keep_alive = False
                    return answer
                raise RequestsConnectionError("the server closed the connection mid-answer")
            try:
                parser.feed_data(chunk)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
                if answer.complete:  # bytes after a whole answer: the connection is spoilt
                    answer.keep_alive = False
                    return answer
                raise RequestsConnectionError(f"malformed HTTP answer: {exc!r}") from exc
            if answer.size > MAX_ANSWER_BYTES:
                raise RequestsConnectionError(f"answer larger than {MAX_ANSWER_BYTES} bytes")
        return answer

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._socket.close()


@functools.lru_cache(maxsize=8)
def _tls_context(verify: bool | str) -> ssl.SSLContext:
    """requests' rules: True verifies against certifi's bundle, a path against that file or
    directory, False not at all. Built once per setting: loading a bundle costs milliseconds."""
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if isinstance(verify, str) and verify:
        if Path(verify).is_dir():
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    return ssl.create_default_context(cafile=DEFAULT_CA_BUNDLE_PATH)


def _response(
    request: requests.PreparedRequest, answer: _Answer, elapsed_s: float
) -> requests.Response:
    response = requests.Response()
    response.status_code = answer.status
    response.reason = answer.reason
    headers: CaseInsensitiveDict[str] = CaseInsensitiveDict()
    for name, value in answer.headers:
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    response.headers = headers
    response._content = _decoded(b"".join(answer.body), headers.get("Content-Encoding", ""))
    response._content_consumed = True
    response.encoding = get_encoding_from_headers(headers)
    response.url = str(request.url)
    response.request = request
    response.elapsed = timedelta(seconds=elapsed_s)
    return response


def _decoded(body: bytes, encoding: str) -> bytes:
    """The body before any gzip or deflate (identity was asked for; a server may not care).
    As requests: an empty body or an unknown coding is given as it came; a body that fails
    to inflate raises."""
    coding = encoding.strip().lower()
    if not body or coding not in ("gzip", "x-gzip", "deflate"):
        return body
    try:
        if coding != "deflate":
            return _inflated(body, 16 + zlib.MAX_WBITS)
        try:
            return _inflated(body, zlib.MAX_WBITS)
        except zlib.error:
            return _inflated(body, -zlib.MAX_WBITS)  # deflate sent raw, without its header
    except zlib.error as exc:
        raise requests.exceptions.ContentDecodingError(f"undecodable {coding} body: {exc}") from exc


def _inflated(body: bytes, window_bits: int) -> bytes:
    """`body` inflated, bounded like an answer (a small body can inflate to gigabytes)."""
    plain = zlib.decompressobj(window_bits).decompress(body, MAX_ANSWER_BYTES + 1)
    if len(plain) > MAX_ANSWER_BYTES:
        raise RequestsConnectionError(f"answer inflates past {MAX_ANSWER_BYTES} bytes")
    return plain
