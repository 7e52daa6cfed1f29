"""Notifications: tagged log events reach an apprise target on loopback, a storm as one
summary, and neither a slow target nor a dead one ever holds the bot up.

The target is a plain HTTP server on 127.0.0.1 that apprise's `json://` URL posts to; nothing
leaves the machine.
"""

from __future__ import annotations

import io
import json
import logging
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, get_args

import apprise
import pytest
from pydantic import SecretStr

from bot import logs, notify
from bot.config import ConfigError, NotifyConfig, NotifyEvent, load_settings
from bot.logs import logger
from bot.notify import Notifier, split_urls
from tests.bot.test_admin import admin
from tests.bot.test_service import RunningBot, signal
from tests.conftest import free_port, wait_for

BOT_ROOT = Path(__file__).resolve().parents[2] / "bot"


class Target(ThreadingHTTPServer):
    """A notification target: keeps every JSON body posted to it, answering after `delay_s`."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), _TargetHandler)
        self.delay_s = delay_s
        self.received: list[dict[str, Any]] = []
        self.paths: list[str] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str = "notify") -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def titled(self, word: str) -> list[dict[str, Any]]:
        return [message for message in self.received if word in message["title"]]


class _TargetHandler(BaseHTTPRequestHandler):
    server: Target

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(self.server.delay_s)
        self.server.received.append(json.loads(body))
        self.server.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads what arrived, not the server's log."""


def serving(delay_s: float = 0.0) -> Iterator[Target]:
    target = Target(delay_s)
    thread = threading.Thread(target=target.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield target
    finally:
        target.shutdown()
        target.server_close()


@pytest.fixture
def target() -> Iterator[Target]:
    yield from serving()


@pytest.fixture
def slow_target() -> Iterator[Target]:
    yield from serving(delay_s=2.0)


@pytest.fixture
def hung_url() -> Iterator[str]:
    """A target that takes the connection and never answers (a hung peer)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"json://127.0.0.1:{listener.getsockname()[1]}/notify"


@pytest.fixture
def notifier_for() -> Iterator[Callable[..., Notifier]]:
    """Start a notifier for a URL (closed after the test)."""
    started: list[Notifier] = []

    def start(url: str, **config: Any) -> Notifier:
        notifier = notify.start(NotifyConfig(**config), SecretStr(url), "test-bot (sim)")
        assert notifier is not None
        started.append(notifier)
        return notifier

    yield start
    for notifier in started:
        notifier.close()


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """The bot's log lines of WARNING and above, as written (before scrubbing)."""
    lines: list[str] = []
    handler = logger.add(lines.append, level="WARNING", format="{message} {extra}")
    yield lines
    logger.remove(handler)


def test_a_single_event_arrives_with_its_text(
    target: Target, notifier_for: Callable[..., Notifier]
) -> None:
    notifier_for(target.url())

    logger.bind(notify="fill").info("fill on key k1: Buy 0.01 BTCUSDT at 97000", whose="follow")

    (message,) = wait_for(lambda: target.received, what="the notification")
    assert message["title"] == "test-bot (sim): fill"
    assert message["message"] == "fill on key k1: Buy 0.01 BTCUSDT at 97000 (whose=follow)"
    assert message["type"] == "info"


def test_untagged_lines_and_kinds_not_chosen_are_not_sent(
    target: Target, notifier_for: Callable[..., Notifier]
) -> None:
    notifier = notifier_for(target.url(), events=["trading_state"])

    logger.warning("an ordinary warning")
    logger.bind(notify="fill").info("a fill nobody asked to hear of")
    logger.bind(notify="trading_state").warning("trading state of bot: HALTED (drill)")
    notifier.close()  # sends what is queued, then stops

    assert [message["message"] for message in target.received] == [
        "trading state of bot: HALTED (drill)"
    ]
    assert target.received[0]["type"] == "warning"


def test_a_storm_sends_one_message_at_once_and_one_summary(
    target: Target, notifier_for: Callable[..., Notifier]
) -> None:
    window_s = 0.5
    notifier_for(target.url(), min_interval_s=window_s)

    started = time.monotonic()
    for number in range(500):
        logger.bind(notify="fill").info("fill number {n}", n=number)
    assert time.monotonic() - started < window_s, "the storm must fit in one window"

    first = wait_for(lambda: target.received, what="the first fill")[0]
    summary = wait_for(lambda: target.received[1:], what="the summary")[0]
    time.sleep(window_s * 1.5)  # a third message would come at the next window's end
    assert len(target.received) == 2
    assert first["message"] == "fill number 0"
    assert summary["title"] == "test-bot (sim): 499 more fills"
    assert summary["message"].startswith(f"499 more fills in the last {window_s:g} s; the latest:")
    assert summary["message"].endswith("- fill number 499")


def test_each_kind_has_its_own_window(
    target: Target, notifier_for: Callable[..., Notifier]
) -> None:
    notifier = notifier_for(target.url())

    for _ in range(3):
        logger.bind(notify="fill").info("a fill")
        logger.bind(notify="stream").warning("account stream of key k1 dropped")
    notifier.close()  # the open windows' counts go out as summaries

    assert sorted(message["title"] for message in target.received) == [
        "test-bot (sim): 2 more account stream losses",
        "test-bot (sim): 2 more fills",
        "test-bot (sim): account stream loss",
        "test-bot (sim): fill",
    ]


def test_every_kind_is_sent_and_summed_up_by_its_name(
    target: Target, notifier_for: Callable[..., Notifier]
) -> None:
    notifier = notifier_for(target.url())

    for kind in get_args(NotifyEvent):
        for _ in range(2):
            logger.bind(notify=kind).warning("a {kind} event", kind=kind)
    notifier.close()  # each kind's second event goes out as its window's summary

    titles = sorted(message["title"] for message in target.received)
    assert len(titles) == 2 * len(get_args(NotifyEvent))
    assert "test-bot (sim): change by another client" in titles
    assert "test-bot (sim): 1 more change by another client" in titles


@pytest.mark.parametrize("kind", ["slow", "hung"])
def test_a_slow_or_hung_target_never_delays_the_caller(
    kind: str,
    slow_target: Target,
    hung_url: str,
    notifier_for: Callable[..., Notifier],
    warnings: list[str],
) -> None:
    url = slow_target.url() if kind == "slow" else hung_url
    # The floor: what one send to this target costs whoever waits for it.
    direct = apprise.Apprise()
    direct.add(url)
    began = time.monotonic()
    assert not direct.notify(body="probe", timeout=0.5)
    floor_s = time.monotonic() - began
    assert floor_s >= 0.4
    notifier = notifier_for(url, min_interval_s=0.2, timeout_s=0.5)

    durations = []
    for number in range(300):
        kind_of_event = ("fill", "stream", "venue_error")[number % 3]
        began = time.monotonic()
        logger.bind(notify=kind_of_event).warning("event {n}", n=number)
        durations.append(time.monotonic() - began)
        if number % 100 == 99:
            time.sleep(0.25)  # windows end meanwhile: summaries queue behind the stuck sends

    assert max(durations) < floor_s / 10
    began = time.monotonic()
    notifier.close()
    assert time.monotonic() - began < floor_s * 2 + 1.0  # shutdown waits a bounded time
    logger.bind(notify="fill").info("logging goes on after the notifier stopped")
    assert any("a notification was not delivered" in line for line in warnings)


def test_a_failing_target_is_logged_once_per_window_and_never_raises(
    notifier_for: Callable[..., Notifier], warnings: list[str]
) -> None:
    notifier = notifier_for(f"json://127.0.0.1:{free_port()}/refused", timeout_s=2)

    for kind in ("fill", "rejection", "trading_state", "key", "venue_error", "stream"):
        logger.bind(notify=kind).warning("a {kind} event", kind=kind)
    notifier.close()

    failures = [line for line in warnings if "not delivered" in line]
    assert len(failures) == 1
    assert "1 of 1 targets failed" in failures[0]


def test_the_urls_never_appear_in_the_logs(
    target: Target, notifier_for: Callable[..., Notifier]
) -> None:
    token = secrets.token_hex(16)
    good = target.url(f"hook-{token}")
    dead = f"json://user:{secrets.token_hex(8)}@127.0.0.1:{free_port()}/dead-{token}"
    captured = io.StringIO()
    raw: list[str] = []
    hooks = sys.excepthook, threading.excepthook, sys.unraisablehook
    apprise_logger = logging.getLogger("apprise")
    try:
        logs.configure(stream=captured, level="DEBUG")
        apprise_logger.setLevel(logging.DEBUG)  # its debug lines spell the URL it posts to
        handler = logger.add(raw.append, level="DEBUG", format="{message} {extra} {exception}")
        notifier = notifier_for(f"{good}\n{dead}", timeout_s=2)
        logger.bind(notify="fill").info("a fill")
        wait_for(lambda: target.received, what="the notification")
        notifier.close()
        with pytest.raises(ConfigError) as refused:
            notify.start(NotifyConfig(), SecretStr(f"{good}, nonsense://{token}"), "test-bot")
        logger.remove(handler)
    finally:
        apprise_logger.setLevel(logging.NOTSET)
        logs.configure()
        sys.excepthook, threading.excepthook, sys.unraisablehook = hooks

    written = captured.getvalue() + "".join(raw) + str(refused.value)
    assert "notifications on: 2 target(s)" in written
    assert "a notification was not delivered" in written  # the dead one failed, and said so
    assert "URL 2 of 2 (nonsense://...) is not one apprise can send to" in str(refused.value)
    assert token not in written
    assert target.paths == [f"/hook-{token}"]


def test_no_url_means_no_notifications_and_no_error() -> None:
    assert notify.start(NotifyConfig(), None, "test-bot") is None
    assert notify.start(NotifyConfig(events=[]), SecretStr("json://127.0.0.1:1/x"), "x") is None


@pytest.mark.parametrize("secret", [",", " ;\n, ", "\n,\n"])
def test_a_secret_that_holds_no_url_stops_the_start(secret: str) -> None:
    """Set, but only separators: notifications said "on: 0 target(s)" and never sent one."""
    with pytest.raises(ConfigError, match="BOT_NOTIFY_URLS holds no URL"):
        notify.start(NotifyConfig(), SecretStr(secret), "test-bot")


def test_urls_split_on_lines_commas_and_spaces_but_not_inside_a_url() -> None:
    secret = SecretStr(
        "tgram://123456:abcdef/-100200\n"
        "discord://111/aaaa, mailtos://u:p@example.com?to=a@example.com,b@example.com "
        "json://127.0.0.1:9/x\n\n"
    )

    assert split_urls(secret) == [
        "tgram://123456:abcdef/-100200",
        "discord://111/aaaa",
        "mailtos://u:p@example.com?to=a@example.com,b@example.com",
        "json://127.0.0.1:9/x",
    ]
    assert logs.scrub("sent to discord://111/aaaa") == f"sent to {logs.REDACTED}"


def test_urls_written_in_the_config_file_are_refused_as_secrets(tmp_path: Path) -> None:
    config = tmp_path / "bot.toml"
    config.write_text('[notify]\nurls = "tgram://123456:abcdef/-100200"\n')

    with pytest.raises(ConfigError, match=r"notify\.urls: secrets never go in the configuration"):
        load_settings(config)


def test_every_tagged_log_call_names_a_known_kind() -> None:
    tagged = {
        kind
        for path in BOT_ROOT.rglob("*.py")
        for kind in re.findall(r'bind\(notify="(\w+)"\)', path.read_text(encoding="utf-8"))
    }

    assert tagged == set(get_args(NotifyEvent))


def test_a_halt_and_a_fill_of_the_real_bot_reach_the_target(
    target: Target,
    hung_url: str,
    sim_config: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(notify.NOTIFY_URLS_NAME, raising=False)
    config = sim_config(extra="\n[notify]\ntimeout_s = 1\n")
    secrets_dir = config.parent / "no-secrets"
    secrets_dir.mkdir()
    # A hung second target beside the good one: the bot trades on regardless.
    (secrets_dir / "bot_notify_urls").write_text(f"{target.url()},{hung_url}\n")
    bot = RunningBot(config).start()
    try:
        assert bot.post(signal("notified")).status_code == 202
        fill = wait_for(lambda: target.titled(": fill"), what="the fill's notification")[0]
        assert admin(bot, "halt", {"reason": "drill"}) == 200
        halt = wait_for(
            lambda: target.titled("trading state change"), what="the halt's notification"
        )[0]
    finally:
        bot.stop()

    assert re.match(r"fill on key follow_sim: Buy [\d.]+ BTCUSDT at [\d.]+", fill["message"])
    assert fill["message"].endswith("(follow)")
    assert halt["message"] == "trading state of (bot): HALTED (drill)"
    assert halt["type"] == "warning"
    assert bot.journal_status("notified") == ["Filled"]
