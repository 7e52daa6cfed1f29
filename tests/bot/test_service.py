"""End to end, in one process: real uvicorn, the real simulator over HTTP, real pybit, SQLite.

Signals are posted with a plain HTTP client; the assertions read the simulator's own book.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

import pytest
import requests
from loguru import logger
from pybit.unified_trading import HTTP
from pydantic import SecretStr

from bot.account import AccountProjection
from bot.config import ConfigError, load_settings
from bot.execution.ids import order_link_id
from bot.journal import Journal
from bot.logs import REDACTED, scrub
from bot.messages import PositionUpdate
from bot.service import Service, check_mainnet_opt_in
from bot.sim import SimAccountSpec, SimExchange, SimFaults, SimServer, SimulatorConfig
from signals.voiceofchain import SIGNATURE_HEADER, sign
from tests.conftest import (
    OTHER_KEY,
    client_orders,
    two_keys_of_one_account,
    venue_with_key,
    wait_for,
)
from tests.factories import make_execution

T = TypeVar("T")


class RunningBot:
    """A Service running on its own event loop in a thread, as `bot run` would."""

    def __init__(self, config: Path) -> None:
        self.settings = load_settings(config)
        self.service = Service(self.settings, secrets_dir=config.parent / "no-secrets")
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self.service.run(ready=lambda _: self._ready.set()))
        except BaseException as exc:  # re-raised in the test thread by start()
            self.error = exc
            self._ready.set()

    def start(self) -> RunningBot:
        self._thread.start()
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Wait for a start begun in the background to be ready (or raise why it failed)."""
        assert self._ready.wait(30), "bot did not start"
        if self.error is not None:
            raise self.error

    def start_in_background(self) -> None:
        """Start without waiting for readiness (to stop it during start-up)."""
        self._thread.start()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self.service.request_stop)
        self._thread.join(30)
        assert not self._thread.is_alive(), "bot did not stop"

    def stop_within(self, bound_s: float) -> None:
        """Request a stop; fail if the bot is still running `bound_s` later."""
        self._loop.call_soon_threadsafe(self.service.request_stop)
        self._thread.join(bound_s)
        assert not self._thread.is_alive(), f"bot did not stop within {bound_s} s"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.service.http_port}"

    def secret(self) -> str:
        path = self.settings.state_dir / "secrets" / "bot_webhook_secret_voiceofchain"
        return path.read_text().strip()

    def post(self, signal: dict[str, object], secret: str | None = None) -> requests.Response:
        body = json.dumps(signal).encode()
        signature = sign(secret or self.secret(), body, int(time.time()))
        return requests.post(
            f"{self.url}/webhooks/voiceofchain",
            data=body,
            headers={"Content-Type": "application/json", SIGNATURE_HEADER: signature},
            timeout=10,
        )

    def sim_orders(self) -> list[dict[str, object]]:
        """The orders the bot placed at the simulator (not the venue's own TP/SL orders)."""
        answer = requests.get(f"{self.service.sim_url}/sim/orders", timeout=10).json()
        return client_orders(answer["result"]["list"] if "result" in answer else answer["orders"])

    def read_journal(self, read: Callable[[Journal], T]) -> T:
        """Read the bot's journal from the test, as `bot orders` does (read-only)."""
        journal = Journal(self.settings.journal_path, read_only=True)
        try:
            return read(journal)
        finally:
            journal.close()

    def rows(self) -> list[dict[str, object]]:
        """Every line of `bot orders --json`, newest signal first."""
        return self.read_journal(lambda journal: [r.as_dict() for r in journal.trace(10_000)])

    def journal_status(self, signal_id: str) -> list[str]:
        """The status (or decision) of each of the signal's own rows, not of the exits the
        venue holds for its position (`exit` rows)."""
        return [
            str(row["status"] or row["decision"])
            for row in self.rows()
            if row["signal_id"] == signal_id and row["decision"] != "exit"
        ]


@pytest.fixture
def bot(sim_config: Callable[..., Path]) -> Iterator[RunningBot]:
    running = RunningBot(sim_config()).start()
    yield running
    running.stop()


def signal(signal_id: str, **fields: object) -> dict[str, object]:
    body: dict[str, object] = {
        "id": signal_id,
        "symbol": "BTCUSDT",
        "side": "buy",
        "stop_loss": 95000,
        "ts": int(time.time() * 1000),
    }
    body.update(fields)
    return body


def test_each_accepted_signal_becomes_exactly_one_filled_order(bot: RunningBot) -> None:
    answers = [bot.post(signal(f"e2e-{i}")) for i in range(3)]
    duplicate = bot.post(signal("e2e-0"))
    forged = bot.post(signal("e2e-forged"), secret="not-the-secret")

    assert [a.status_code for a in answers] == [202, 202, 202]
    assert duplicate.status_code == 200
    assert forged.status_code == 401
    orders = wait_for(lambda: len(bot.sim_orders()) >= 3 and bot.sim_orders(), what="3 orders")
    time.sleep(0.3)  # give a wrongly placed 4th order the chance to show up
    orders = bot.sim_orders()
    assert len(orders) == 3
    assert {o["orderLinkId"] for o in orders} == {
        o["orderLinkId"] for o in orders if str(o["orderLinkId"]).startswith("follow-0-")
    }
    assert all(o["orderStatus"] == "Filled" for o in orders)
    assert all(o["note"] == "follow_sim" and "apiKey" not in o for o in orders)
    assert wait_for(lambda: bot.journal_status("e2e-2") == ["Filled"], what="journal Filled")


def test_a_declined_or_rejected_signal_places_nothing_and_says_why(bot: RunningBot) -> None:
    assert bot.post(signal("no-stop", stop_loss=None)).status_code == 202
    assert bot.post(signal("not-allowed", symbol="SOLUSDT", stop_loss=170)).status_code == 202

    wait_for(lambda: bot.journal_status("not-allowed") == ["rejected"], what="rejection")
    wait_for(lambda: bot.journal_status("no-stop") == ["declined"], what="decline")
    assert bot.sim_orders() == []


def test_healthz_and_metrics_are_served(bot: RunningBot) -> None:
    bot.post(signal("m-1"))
    wait_for(lambda: bot.sim_orders(), what="an order")

    health = requests.get(f"{bot.url}/healthz", timeout=10)
    metrics = requests.get(f"{bot.url}/metrics", timeout=10)

    assert health.status_code == 200
    assert health.json()["environment"] == "sim"
    assert 'bot_http_responses_total{route="/webhooks/voiceofchain",status="202"}' in metrics.text


def test_signals_left_unprocessed_are_run_on_the_next_start(
    sim_config: Callable[..., Path],
) -> None:
    config = sim_config()
    settings = load_settings(config)
    journal = Journal(settings.journal_path)
    from bot.messages import parse_signal

    journal.record_signal(parse_signal("voiceofchain", signal("crashed-before-processing")))
    journal.close()

    running = RunningBot(config).start()
    try:
        wait_for(lambda: running.sim_orders(), what="the recovered signal's order")
        assert wait_for(
            lambda: running.journal_status("crashed-before-processing") == ["Filled"],
            what="journal Filled",
        )
    finally:
        running.stop()


def test_port_in_use_is_a_clear_error(sim_config: Callable[..., Path]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            RunningBot(sim_config(port=port)).start()


def test_mainnet_needs_both_opt_ins(sim_config: Callable[..., Path], tmp_path: Path) -> None:
    text = sim_config().read_text().replace('environment = "sim"', 'environment = "mainnet"')
    path = tmp_path / "main.toml"
    path.write_text(text)
    mainnet = load_settings(path)
    allowed = mainnet.model_copy(update={"allow_mainnet": True})

    with pytest.raises(
        ConfigError, match="allow_mainnet = true in the configuration and --mainnet"
    ):
        check_mainnet_opt_in(mainnet, mainnet_flag=False)
    with pytest.raises(ConfigError, match="missing: --mainnet"):
        check_mainnet_opt_in(allowed, mainnet_flag=False)
    with pytest.raises(ConfigError, match="missing: allow_mainnet"):
        check_mainnet_opt_in(mainnet, mainnet_flag=True)
    check_mainnet_opt_in(allowed, mainnet_flag=True)


def test_two_configured_keys_holding_one_api_key_are_refused_at_start(
    sim_config: Callable[..., Path], tmp_path: Path
) -> None:
    # Reproduced: the other key's secret files copied under this key's names started the
    # bot, each strategy trading on the one account as if it had a key of its own (neither
    # declared shared), past each key's rate limiter and books.
    exchange = venue_with_key(tmp_path, "one-key-of-one-account", "its-secret-1234")
    secrets = tmp_path / "no-secrets"
    for kind in ("key", "secret"):
        copied = (secrets / f"bot_key_follow_sim_api_{kind}").read_text()
        (secrets / f"bot_key_other_sim_api_{kind}").write_text(copied)
    with SimServer(exchange) as server:
        config = sim_config(extra=f'\n[venue]\nsim_url = "{server.url}"\n{OTHER_KEY}')
        with pytest.raises(
            ConfigError,
            match="keys follow_sim and other_sim hold the same API key "
            r"\(BOT_KEY_FOLLOW_SIM_API_KEY and BOT_KEY_OTHER_SIM_API_KEY\)",
        ):
            RunningBot(config).start()
    assert not (tmp_path / "var" / "journal.sqlite3").exists()


def test_two_configured_keys_of_one_account_are_refused_at_start(
    sim_config: Callable[..., Path], tmp_path: Path
) -> None:
    # Reproduced: a second key of follow_sim's account given to other_sim started the bot;
    # the account's stream told each key the other's fills (strategy other's sell was booked
    # on key follow_sim), and other's sell closed follow's long at the venue while follow's
    # book still held it.
    exchange = two_keys_of_one_account(tmp_path)
    with SimServer(exchange) as server:
        config = sim_config(extra=f'\n[venue]\nsim_url = "{server.url}"\n{OTHER_KEY}')
        with pytest.raises(
            ConfigError,
            match=r"refusing to start: keys follow_sim and other_sim are keys of one account "
            r"\(UID [0-9]+\)",
        ):
            RunningBot(config).start()


def test_a_plug_in_failing_with_a_secret_before_the_secrets_are_used_is_scrubbed(
    sim_config: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reproduced: a plug-in whose import failed with the key's API secret in its message
    # (it read it from the environment) printed it whole: `bot run` loads the plug-ins before
    # it resolves the secrets, so none was registered with the scrubber yet.
    monkeypatch.setattr(sys, "path", list(sys.path))  # the loader adds the config's folder
    api_secret = f"{os.urandom(8).hex()}-api-secret-of-follow-sim"
    monkeypatch.setenv("BOT_KEY_FOLLOW_SIM_API_SECRET", api_secret)
    module = f"plugin_{os.urandom(4).hex()}"
    (tmp_path / f"{module}.py").write_text(
        "import os\n"
        "raise RuntimeError('cannot start: ' + os.environ['BOT_KEY_FOLLOW_SIM_API_SECRET'])\n"
    )
    config = sim_config(extra="").read_text().replace('plugin = "follow"', f'plugin = "{module}:S"')
    (tmp_path / "bot.toml").write_text(config)

    with pytest.raises(ConfigError, match="cannot start: ") as failed:
        RunningBot(tmp_path / "bot.toml").start()

    # The plug-in's own message, its secret taken out where it is said (as `bot run` prints it)
    assert api_secret not in scrub(str(failed.value))
    assert f"cannot start: {REDACTED}" in str(failed.value)


def test_http_socket_is_tcp_so_answers_get_tcp_nodelay(sim_config: Callable[..., Path]) -> None:
    # asyncio sets TCP_NODELAY on accepted connections only when the listening socket's proto
    # is IPPROTO_TCP; with proto 0 every answer waited ~44 ms for a delayed ACK (measured).
    import socket

    service = Service(load_settings(sim_config()), secrets_dir=Path("/nonexistent"))
    sock = service._bind()
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_query_token_is_a_separate_secret_when_enabled(sim_config: Callable[..., Path]) -> None:
    config = sim_config(extra='\n[sources.voiceofchain]\nauth = "query_token"\n')
    running = RunningBot(config).start()
    try:
        secrets = running.settings.state_dir / "secrets"
        token = (secrets / "bot_webhook_token_voiceofchain").read_text().strip()
        body = json.dumps(signal("by-token")).encode()
        url = f"{running.url}/webhooks/voiceofchain?token="

        assert requests.post(url + running.secret(), data=body, timeout=10).status_code == 401
        assert requests.post(url + token, data=body, timeout=10).status_code == 202
    finally:
        running.stop()


def test_a_sender_reads_what_became_of_its_signal_and_refusals_are_journaled(
    bot: RunningBot,
) -> None:
    accepted = bot.post(signal("traced"))
    status_url = bot.url + accepted.json()["status_url"]
    wait_for(lambda: bot.journal_status("traced") == ["Filled"], what="the order")
    now = int(time.time())

    unsigned = requests.get(status_url, timeout=10)
    signed = requests.get(
        status_url, headers={SIGNATURE_HEADER: sign(bot.secret(), b"", now)}, timeout=10
    )
    impossible = requests.get(
        f"{bot.url}/webhooks/voiceofchain/signals/{'x' * 1000}",
        headers={SIGNATURE_HEADER: sign(bot.secret(), b"", now)},
        timeout=10,
    )
    forged = bot.post(signal("forged"), secret="not-the-secret")
    openapi = requests.get(f"{bot.url}/openapi.json", timeout=10).json()

    assert unsigned.status_code == 401
    assert signed.status_code == 200
    decision, stop = signed.json()["decisions"]  # its order, and the stop the venue holds
    assert (decision["decision"], decision["status"]) == ("approved", "Filled")
    assert (stop["decision"], stop["status"]) == ("exit", "New")
    assert impossible.status_code == 404
    assert "an id is 1-64 characters" in impossible.text
    assert "x" * 65 not in impossible.text  # never echoed
    assert forged.status_code == 401
    rejections = wait_for(
        lambda: bot.read_journal(lambda journal: journal.rejections()), what="the refusal"
    )
    assert (rejections[0]["kind"], rejections[0]["remote"]) == ("unauthorized", "127.0.0.1")
    assert "/webhooks/voiceofchain" in openapi["paths"]
    assert "/webhooks/voiceofchain/signals/{signal_id}" in openapi["paths"]
    halt = openapi["paths"]["/admin/halt"]["post"]
    fields = halt["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"strategy", "reason", "cancel_open", "flatten"} <= set(fields)


def test_a_half_sent_body_times_out_without_holding_up_other_senders(
    sim_config: Callable[..., Path],
) -> None:
    config = sim_config(extra="\n[sources.voiceofchain]\nbody_timeout_s = 0.5\n")
    running = RunningBot(config).start()
    try:
        with socket.create_connection(("127.0.0.1", running.service.http_port), timeout=10) as slow:
            slow.sendall(
                b"POST /webhooks/voiceofchain HTTP/1.1\r\nHost: x\r\n"
                b'Content-Type: application/json\r\nContent-Length: 400\r\n\r\n{"id": '
            )
            meanwhile = running.post(signal("not-held-up"))
            answer = b""
            while b"not sent within" not in answer:  # until the whole answer is in
                chunk = slow.recv(4096)
                if not chunk:
                    break
                answer += chunk
    finally:
        running.stop()

    assert meanwhile.status_code == 202
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"not sent within 0.5 s" in answer


def test_a_leverage_another_client_sets_on_the_key_is_set_back_before_the_next_order(
    sim_config: Callable[..., Path],
) -> None:
    bot = RunningBot(sim_config()).start()
    secrets = bot.settings.state_dir / "secrets"
    other = HTTP(
        api_key=(secrets / "bot_key_follow_sim_api_key").read_text().strip(),
        api_secret=(secrets / "bot_key_follow_sim_api_secret").read_text().strip(),
        max_retries=1,
    )
    other.endpoint = bot.service.sim_url

    def venue_leverage() -> Decimal:
        rows = other.get_positions(category="linear", symbol="BTCUSDT")["result"]["list"]
        return Decimal(rows[0]["leverage"])

    def journaled_leverage() -> Decimal | None:
        positions = bot.read_journal(lambda journal: journal.positions())
        return next((p.leverage for p in positions if p.symbol == "BTCUSDT"), None)

    try:
        assert bot.post(signal("first", leverage=3)).status_code == 202
        wait_for(lambda: bot.journal_status("first") == ["Filled"], what="the first order")
        assert venue_leverage() == 3
        other.set_leverage(category="linear", symbol="BTCUSDT", buyLeverage="50", sellLeverage="50")
        wait_for(lambda: journaled_leverage() == 50, what="the stream to report 50x")

        assert bot.post(signal("second", leverage=3)).status_code == 202
        wait_for(lambda: bot.journal_status("second") == ["Filled"], what="the second order")

        assert venue_leverage() == 3  # set back before the order, never traded at 50x
    finally:
        bot.stop()


#: Three keys, each with its strategy; the reconciliation loop's first pass (its own, later
#: reads) well after what the test counts.
STARTUP_KEYS = ("follow_sim", "other_sim", "third_sim")
SIM_SYMBOLS = ("BTCUSDT", "ETHUSDT")  # `[risk] symbols` of the tests' configuration
STARTUP_CONFIG = (
    OTHER_KEY
    + """
[keys.third_sim]
environment = "sim"

[strategies.third]
plugin = "follow"
key = "third_sim"

[execution]
reconcile_interval_s = 60
"""
)


@dataclass
class _Start:
    """What a start-up beside a venue that already holds something did and left."""

    read: dict[str, dict[str, int]]  # signed requests per key and path during the start
    positions: list[PositionUpdate]  # the journal's, after the bot stopped
    warnings: list[str]
    resting: str  # the orderLinkId of the order the journal does not know
    streams: dict[str, str]  # each key's account stream as /healthz last said


def _start_beside_the_venues_own(
    sim_config: Callable[..., Path], tmp_path: Path, faults: SimFaults | None = None
) -> _Start:
    """Start (and stop) a bot with `STARTUP_KEYS` at a simulator that outlives it, where key
    other_sim holds a BTCUSDT position and an order resting under its strategy's orderLinkId,
    both made before the start (its journal is new: it knows neither). The start ends once
    every account stream is live, or at once when `faults` (set before the start) keep them
    from connecting."""
    exchange = SimExchange(SimulatorConfig())
    secrets = tmp_path / "no-secrets"
    secrets.mkdir()
    for name in STARTUP_KEYS:
        exchange.add_account(
            SimAccountSpec(api_key=f"{name}-key", api_secret=SecretStr(f"{name}-secret"), note=name)
        )
        (secrets / f"bot_key_{name}_api_key").write_text(f"{name}-key")
        (secrets / f"bot_key_{name}_api_secret").write_text(f"{name}-secret")
    resting = order_link_id("other", "voiceofchain", "placed-elsewhere", 0)
    warnings: list[str] = []
    handler = logger.add(lambda line: warnings.append(str(line)), level="WARNING")
    with SimServer(exchange) as server:
        session = HTTP(api_key="other_sim-key", api_secret="other_sim-secret", max_retries=1)
        session.endpoint = server.url
        common = {"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "qty": "0.01"}
        session.place_order(**common, orderType="Market")
        session.place_order(**common, orderType="Limit", price="50000", orderLinkId=resting)
        bot = RunningBot(
            sim_config(extra=f'\n[venue]\nsim_url = "{server.url}"\n' + STARTUP_CONFIG)
        )
        if faults is not None:
            exchange.set_faults(faults)
        before = _signed_by_key(exchange)
        try:
            bot.start()
            streams = wait_for(
                lambda: (
                    (now := requests.get(f"{bot.url}/healthz", timeout=10).json())
                    and (faults is not None or set(now["account_streams"].values()) == {"live"})
                    and now["account_streams"]
                ),
                what="every account stream live",
            )
        finally:
            bot.stop()
            logger.remove(handler)
        after = _signed_by_key(exchange)
    return _Start(
        read={name: dict(after[name] - before[name]) for name in STARTUP_KEYS},
        positions=bot.read_journal(lambda journal: journal.positions()),
        warnings=warnings,
        resting=resting,
        streams=streams,
    )


def test_each_keys_account_is_read_once_at_start_up_and_nothing_at_the_venue_is_missed(
    sim_config: Callable[..., Path], tmp_path: Path
) -> None:
    # Reproduced: each key's open orders were read three times at start-up, its positions,
    # wallet, fills and closed PnL twice (the start's own gap close, the stream's as it
    # connected, the look for orders the journal does not know): 14 requests a key, 280 in
    # a second over 20 keys, half the address's budget for 5 s just before the first orders.
    start = _start_beside_the_venues_own(sim_config, tmp_path)

    # Each key's orders, positions, wallet, fills and closed PnL read once (its positions
    # besides once per symbol, for its position mode), the key checked once ...
    once = {
        "/v5/user/query-api": 1,
        "/v5/order/realtime": 1,
        "/v5/position/list": 1 + len(SIM_SYMBOLS),
        "/v5/account/wallet-balance": 1,
        "/v5/execution/list": 1,
        "/v5/position/closed-pnl": 1,
    }
    assert start.read == dict.fromkeys(STARTUP_KEYS, once)
    # ... and nothing at the venue was missed: the position is in the books, the order the
    # journal does not know was warned of.
    _assert_nothing_missed(start)


def test_a_key_whose_stream_cannot_connect_at_start_up_is_read_by_rest(
    sim_config: Callable[..., Path], tmp_path: Path
) -> None:
    # The venue's clock a minute ahead: every stream's authentication has expired as it
    # arrives (REST resynchronizes its clock and goes on), so no stream closes a gap.
    start = _start_beside_the_venues_own(sim_config, tmp_path, SimFaults(clock_skew_ms=60_000))

    assert set(start.streams.values()) == {"down (REST reconciliation)"}
    _assert_nothing_missed(start)


def _assert_nothing_missed(start: _Start) -> None:
    held = [p for p in start.positions if p.key_name == "other_sim" and p.symbol == "BTCUSDT"]
    assert [p.size for p in held][-1:] == [Decimal("0.01")]
    unknown = [line for line in start.warnings if "journal does not know" in line]
    assert len(unknown) == 1
    assert start.resting in unknown[0]


def _signed_by_key(exchange: SimExchange) -> dict[str, Counter[str]]:
    """The signed requests the simulator has had so far, per key (its note) and path."""
    signed = exchange.stats()["signed_requests_by_key_note"]
    return {name: Counter(signed.get(name, {})) for name in STARTUP_KEYS}


@pytest.mark.parametrize("key_before_followed", [True, False])
def test_start_up_says_what_a_strategy_moved_to_another_key_left_on_the_key_before(
    sim_config: Callable[..., Path], key_before_followed: bool
) -> None:
    """Strategy `follow` moved from key old_sim to follow_sim leaves its position there, which
    its exits and flattens (on its own key) never close: said, with whether it still counts."""
    other = '\n[strategies.other]\nplugin = "follow"\nkey = "old_sim"\n'
    extra = '\n[keys.old_sim]\nenvironment = "sim"\n' + (other if key_before_followed else "")
    service = Service(load_settings(sim_config(extra=extra)), secrets_dir=Path("/nonexistent"))
    projection = AccountProjection()
    fill = make_execution(key_name="old_sim", order_link_id="follow-0-x", qty=Decimal("0.038"))
    projection.apply_execution(fill, {"follow": Decimal("0.038")})
    said: list[str] = []
    handler = logger.add(said.append, level="WARNING", format="{message} {extra[notify]}")
    try:
        service._warn_of_moved_strategies(projection.books())
    finally:
        logger.remove(handler)

    assert len(said) == 1
    assert (
        "strategy follow trades on key follow_sim, but holds a position of 0.038 BTCUSDT"
        in (said[0])
    )
    assert "set strategies.follow.key back to old_sim" in said[0]
    assert said[0].endswith("venue_error\n")
    counted = "it counts towards the strategy's exposure limits" in said[0]
    assert counted == key_before_followed


def test_a_rejection_of_numbers_the_grid_moved_says_what_was_sent(bot: RunningBot) -> None:
    assert bot.post(signal("on-the-tick", stop_loss="96999.99")).status_code == 202

    rows = wait_for(
        lambda: [r for r in bot.rows() if r["signal_id"] == "on-the-tick" and r["reason"]],
        what="the decision",
    )

    (row,) = rows
    assert row["decision"] == "rejected"
    assert "stop 97000.0 must be below the entry" in str(row["reason"])
    assert "(on the instrument's grid: " in str(row["reason"])
    assert "stop 96999.99 to 97000.0)" in str(row["reason"])
