"""Request bodies read as they arrive: whole, too large, too slow, or cut off by the sender;
and the admin routes, which read theirs the same way, never log a traceback for one."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from pydantic import SecretStr
from starlette.requests import Request

from bot.admin import AdminRoutes, parse_command
from bot.app import create_app
from bot.bodies import BodyRefused, read_body
from bot.risk.states import BOT_SCOPE, TradingState
from tests.conftest import logged_errors

Message = dict[str, Any]


def _scope(path: str = "/", length: int | None = None) -> dict[str, Any]:
    headers = [] if length is None else [(b"content-length", str(length).encode())]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 4000),
        "server": ("127.0.0.1", 8080),
    }


def _receiver(messages: Sequence[Message], pause_s: float = 0.0) -> Any:
    queue = list(messages)

    async def receive() -> Message:
        await asyncio.sleep(pause_s)
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    return receive


def _chunks(*parts: bytes) -> list[Message]:
    return [
        {"type": "http.request", "body": part, "more_body": index < len(parts) - 1}
        for index, part in enumerate(parts)
    ]


async def _read(scope: dict[str, Any], receive: Any, timeout_s: float = 5.0) -> bytes:
    return await read_body(Request(scope, receive), 10, timeout_s, "a thing")


def test_a_body_sent_in_pieces_is_read_whole() -> None:
    assert asyncio.run(_read(_scope(), _receiver(_chunks(b"abc", b"def")))) == b"abcdef"


@pytest.mark.parametrize(
    ("scope", "messages", "pause_s", "expected"),
    [
        (_scope(length=11), _chunks(b"x"), 0.0, (413, "too_large", "a thing is at most 10")),
        (_scope(), _chunks(b"123456", b"789012"), 0.0, (413, "too_large", "at most 10 bytes")),
        (_scope(), _chunks(b"12", b"34"), 0.2, (408, "timeout", "not sent within 0.3 s")),
        (
            _scope(length=8),
            [*_chunks(b"1234", b"5")[:1], {"type": "http.disconnect"}],
            0.0,
            (400, "incomplete", "closed after 4 bytes of the body; send it again"),
        ),
        (
            _scope(length=8),
            _chunks(b"1234"),
            0.0,
            (400, "incomplete", "4 bytes of the body arrived, not the 8 its Content-Length"),
        ),
    ],
    ids=["declared too large", "grows too large", "too slow", "sender hung up", "cut short"],
)
def test_a_body_not_read_whole_is_refused_with_what_is_wrong(
    scope: dict[str, Any],
    messages: list[Message],
    pause_s: float,
    expected: tuple[int, str, str],
) -> None:
    with pytest.raises(BodyRefused) as refused:
        asyncio.run(_read(scope, _receiver(messages, pause_s), timeout_s=0.3))

    status, kind, words = expected
    assert (refused.value.status, refused.value.kind) == (status, kind)
    assert words in refused.value.detail


def test_an_admin_command_cut_off_mid_body_is_a_400_without_a_traceback() -> None:
    async def apply(*_: object) -> dict[str, Any]:
        raise AssertionError("nothing may be applied")

    async def healthy() -> dict[str, Any]:
        return {"ready": True}

    app = create_app([], healthy, AdminRoutes(SecretStr("admin-secret-" + "x" * 20), apply, []))
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    receive = _receiver([*_chunks(b'{"reason":', b"")[:1], {"type": "http.disconnect"}])
    with logged_errors() as errors:
        asyncio.run(app(_scope("/admin/halt", length=40), receive, send))

    assert sent[0]["status"] == 400
    assert errors == []


def test_an_admin_command_with_an_empty_body_is_refused_not_taken_for_the_whole_bot() -> None:
    """A body lost on the way (a server handing over none) must not become a halt or a
    resume of the whole bot: that takes `{}`, said in the answer."""
    with pytest.raises(ValueError, match=r"the body is empty; send \{\} for the whole bot"):
        parse_command(b"", TradingState.HALTED, ["follow"])
    scope, command = parse_command(b"{}", TradingState.HALTED, ["follow"])
    assert (scope.scope, command.strategy) == (BOT_SCOPE, None)
