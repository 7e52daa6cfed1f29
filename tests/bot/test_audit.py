"""The audit log of signed requests: through real pybit against the simulator, its files
rotated and pruned, `bot audit` as a user runs it, and the venue's metrics of a running bot."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from bot.audit import CURRENT_FILE, AuditLog, VenueRequest, iter_audit, read_audit, summary
from bot.config import AuditConfig, Environment, load_settings
from bot.execution.executor import build_request
from bot.logs import logger
from bot.secrets import ApiCredentials
from bot.sim import SimAccountSpec, SimExchange, SimFaults, SimServer, SimulatorConfig
from bot.venue.bybit import BybitVenue
from bot.venue.errors import OrderRejectedError, RetryableError, VenueError
from bot.venue.stream import AccountStream, StreamMessage
from tests.bot.test_service import RunningBot, signal
from tests.conftest import client_orders, wait_for, write_key_secrets
from tests.factories import approve, make_intent

KEY, SECRET = "audit-test-api-key", "audit-test-api-secret-value"
NOTE = "main"


@pytest.fixture
def sim() -> Iterator[tuple[SimExchange, SimServer]]:
    exchange = SimExchange(SimulatorConfig(seed=5))
    exchange.add_account(SimAccountSpec(api_key=KEY, api_secret=SecretStr(SECRET), note=NOTE))
    with SimServer(exchange) as server:
        yield exchange, server


@pytest.fixture
def audit_log(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(tmp_path / "audit", AuditConfig())
    yield log
    log.close()


def open_venue(url: str, *observers: Callable[[VenueRequest], None]) -> BybitVenue:
    credentials = ApiCredentials(NOTE, SecretStr(KEY), SecretStr(SECRET))
    return BybitVenue(credentials, Environment.SIM, sim_url=url, timeout_s=2, observers=observers)


def audit_text(directory: Path) -> str:
    return "".join(path.read_text() for path in sorted(directory.iterdir()))


def signed_by_path(exchange: SimExchange, note: str) -> dict[str, int]:
    """Signed requests per path as the simulator counted them (authenticated ones)."""
    return dict(exchange.stats()["signed_requests_by_key_note"].get(note, {}))


def test_each_signed_request_is_one_line_with_its_order_link_id_and_ret_code(
    sim: tuple[SimExchange, SimServer], audit_log: AuditLog
) -> None:
    exchange, server = sim
    venue = open_venue(server.url, audit_log.write)
    request = build_request(approve(make_intent(signal_id="audited")), NOTE)
    limited = build_request(approve(make_intent(signal_id="limited")), NOTE)

    async def trade() -> None:
        await venue.wallet()
        await venue.last_price("BTCUSDT")  # public: not signed, not audited
        await venue.place_order(request)
        await venue.get_order(request.order_link_id, "BTCUSDT")
        assert not await venue.cancel_order("follow-0-never-placed", "BTCUSDT")  # 110001
        with pytest.raises(OrderRejectedError):  # above the price: 10001, filled or not yet
            await venue.set_trading_stop("BTCUSDT", stop_loss=Decimal(98000), take_profit=None)
        exchange.set_faults(SimFaults(rate_limit_10006=1.0))
        with pytest.raises(RetryableError):
            await venue.place_order(limited)

    try:
        asyncio.run(trade())
    finally:
        venue.close()

    lines = read_audit(audit_log.directory)
    assert Counter(line["endpoint"] for line in lines) == signed_by_path(exchange, NOTE)
    placed = [line for line in lines if line["endpoint"] == "/v5/order/create"]
    assert [(p["order_link_id"], p["method"], p["ret_code"]) for p in placed] == [
        (request.order_link_id, "POST", 0),
        (limited.order_link_id, "POST", 10006),
    ]
    codes = {line["endpoint"]: line["ret_code"] for line in lines}
    assert codes["/v5/order/cancel"] == 110001
    assert codes["/v5/position/trading-stop"] == 10001
    assert codes["/v5/account/wallet-balance"] == 0
    assert all(line["key"] == NOTE and line["environment"] == "sim" for line in lines)
    assert all(line["latency_ms"] > 0 and line["http_status"] == 200 for line in lines)
    text = audit_text(audit_log.directory)
    assert KEY not in text
    assert SECRET not in text


def test_a_request_without_an_answer_has_its_error_class_and_a_5xx_its_status(
    sim: tuple[SimExchange, SimServer],
) -> None:
    exchange, server = sim
    seen: list[VenueRequest] = []
    credentials = ApiCredentials(NOTE, SecretStr(KEY), SecretStr(SECRET))
    venue = BybitVenue(
        credentials, Environment.SIM, sim_url=server.url, timeout_s=0.3, observers=[seen.append]
    )
    order = build_request(approve(make_intent()), NOTE)

    def place() -> None:
        with pytest.raises(VenueError):
            asyncio.run(venue.place_order(order))

    try:
        exchange.set_faults(SimFaults(delay=1.0, delay_ms=1000))
        place()
        exchange.set_faults(SimFaults(http_5xx=1.0))
        place()
    finally:
        venue.close()

    assert [(r.ret_code, r.http_status, r.error, r.order_link_id) for r in seen] == [
        (None, None, "ReadTimeout", order.order_link_id),
        (None, 503, None, order.order_link_id),
    ]
    assert seen[0].latency_ms >= 300
    assert [r.outcome for r in seen] == ["ReadTimeout", "http 503"]


def test_the_stream_authentication_is_a_line_accepted_or_refused(
    sim: tuple[SimExchange, SimServer],
) -> None:
    url = sim[1].url
    seen: list[VenueRequest] = []

    async def ignore(message: StreamMessage | None = None) -> None:
        return None

    async def authenticate(secret: str) -> None:
        credentials = ApiCredentials(NOTE, SecretStr(KEY), SecretStr(secret))
        stream = AccountStream(
            credentials, Environment.SIM, ignore, ignore, sim_url=url, observers=[seen.append]
        )
        before = len(seen)
        running = asyncio.create_task(stream.run())
        try:
            while len(seen) == before:  # noqa: ASYNC110 - the record comes from pybit's thread
                await asyncio.sleep(0.01)
        finally:
            running.cancel()

    async def both() -> None:
        await asyncio.wait_for(authenticate(SECRET), 15)
        await asyncio.wait_for(authenticate("not-the-secret"), 15)

    asyncio.run(both())

    assert [(r.endpoint, r.method, r.key, r.ret_code, r.error) for r in seen] == [
        ("ws:auth", "WS", NOTE, 0, None),
        ("ws:auth", "WS", NOTE, None, "refused"),
    ]


def record(at: float, key: str = "alpha", link: str | None = None) -> VenueRequest:
    return VenueRequest(
        at=at,
        key=key,
        environment="sim",
        endpoint="/v5/order/create",
        method="POST",
        order_link_id=link,
        ret_code=0,
        http_status=200,
        error=None,
        latency_ms=1.25,
    )


def test_the_file_is_rotated_at_its_size_and_every_line_is_kept_in_order(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "audit"
    log = AuditLog(directory, AuditConfig(max_file_mb=0.001))  # 1048 bytes
    try:
        for n in range(40):
            log.write(record(time.time(), link=f"follow-{n}-leg"))
    finally:
        log.close()

    files = sorted(directory.iterdir())
    assert len(files) > 5
    assert all(path.stat().st_size <= 1048 for path in files)
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in files)
    assert [line["order_link_id"] for line in read_audit(directory)] == [
        f"follow-{n}-leg" for n in range(40)
    ]
    assert [line["order_link_id"] for line in read_audit(directory, limit=3)] == [
        "follow-37-leg",
        "follow-38-leg",
        "follow-39-leg",
    ]


def test_a_full_disk_costs_audit_lines_never_a_traceback_at_close(tmp_path: Path) -> None:
    """The bot stopped on a full disk with a traceback ("stopped on an unexpected error",
    exit 1): the line the audit file could not take stayed in its buffer, and closing the
    file flushed it again. /dev/full answers every write as a full disk does (ENOSPC)."""
    directory = tmp_path / "audit"
    directory.mkdir(mode=0o700)
    (directory / CURRENT_FILE).symlink_to("/dev/full")
    log = AuditLog(directory, AuditConfig())
    warnings: list[str] = []
    handler = logger.add(warnings.append, format="{message}", level="WARNING")
    try:
        log.write(record(time.time(), link="follow-0-leg"))
        log.write(record(time.time(), link="follow-1-leg"))

        log.close()  # Act: as a bot stopping on that disk
    finally:
        logger.remove(handler)

    assert [line.strip() for line in warnings] == [
        f"cannot write the audit log in {directory}: No space left on device"
    ]


def test_the_latest_lines_and_every_line_are_read_in_bounded_memory(tmp_path: Path) -> None:
    """A rotated file holds 100,000 lines, and 50 are kept: `bot audit` (its latest 50) read a
    whole file into dicts, and `--limit 0 --json` every file at once (3.5 GB for 100 MB)."""
    directory = tmp_path / "audit"
    directory.mkdir()
    line = json.dumps(record(time.time(), link="follow-x-0").audit_fields()) + "\n"
    (directory / "audit-20260101T000000000000Z.jsonl").write_text(line * 10_000)
    (directory / CURRENT_FILE).write_text(line * 10_000)
    tracemalloc.start()
    try:
        latest = read_audit(directory, limit=5)
        _, peak_latest = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        every = sum(1 for _ in iter_audit(directory))
        _, peak_every = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert (len(latest), every) == (5, 20_000)
    assert peak_latest < 2**20
    assert peak_every < 2**20


def test_rotated_files_past_their_age_or_count_are_deleted(tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    directory.mkdir()
    # Named (rotated) on 1-5 January 2020; the newest name was last written 100 days ago.
    days = [directory / f"audit-2020010{n}T000000000000Z.jsonl" for n in range(1, 6)]
    for path in days:
        path.write_text(json.dumps({"ts": "2020-01-01T00:00:00+00:00", "key": "alpha"}) + "\n")
    hundred_days_ago = time.time() - 100 * 86400
    os.utime(days[4], (hundred_days_ago, hundred_days_ago))

    log = AuditLog(directory, AuditConfig(max_file_mb=0.0002, retention_days=90, max_files=3))
    try:
        log.write(record(time.time(), link="first"))
        log.write(record(time.time(), link="second"))  # past 209 bytes: the first is rotated
    finally:
        log.close()

    rotated = sorted(path.name for path in directory.glob("audit-*.jsonl"))
    assert rotated[:2] == [days[2].name, days[3].name]  # 1 and 2 January: beyond the count
    assert days[4].name not in rotated  # past its age
    assert len(rotated) == 3  # and the one just rotated
    assert [line.get("order_link_id") for line in read_audit(directory)][-2:] == ["first", "second"]
    assert (directory / CURRENT_FILE).exists()


def bot_audit(config: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """`bot audit` as a user runs it, in a wide terminal (the table must fit 80 by itself)."""
    return subprocess.run(
        [sys.executable, "-m", "bot", "audit", "--config", str(config), *options],
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_bot_audit_filters_prints_80_columns_or_json_and_refuses_a_bad_since(
    sim_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = sim_config()
    log = AuditLog(tmp_path / "var" / "audit", AuditConfig())
    long_link = "follow-0123456789abcdef0123456789-0"
    try:
        log.write(record(time.time() - 3 * 3600, key="alpha", link="old-one"))
        log.write(record(time.time() - 60, key="alpha", link=long_link))
        log.write(record(time.time() - 30, key="beta", link="beta-one"))
    finally:
        log.close()

    table = bot_audit(config, "--since", "1h", "--key", "alpha")
    as_json = bot_audit(config, "--json", "--since", "2h")
    everything = bot_audit(config, "--json", "--limit", "0")
    bad = bot_audit(config, "--since", "yesterday")
    too_far = bot_audit(config, "--since", "99999999d")
    mistyped = bot_audit(config, "--key", "alpah")

    assert table.returncode == 0, table.stderr
    assert "old-one" not in table.stdout
    assert "beta" not in table.stdout
    assert re.search(r"alpha\s+order/create\s+follow…6789-0\s+0\s+1\.2", table.stdout)
    assert max(len(line) for line in table.stdout.splitlines()) <= 80
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(r["key"], r["order_link_id"]) for r in rows] == [
        ("alpha", long_link),
        ("beta", "beta-one"),
    ]
    assert len(everything.stdout.splitlines()) == 3
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1
    assert "--since 'yesterday'" in bad.stderr
    assert "ISO-8601" in bad.stderr
    assert too_far.returncode == 2
    assert too_far.stderr.strip().endswith("or leave --since out for every request")
    assert len(too_far.stderr.strip().splitlines()) == 1
    assert (mistyped.returncode, mistyped.stdout) == (0, "")
    assert mistyped.stderr.strip().endswith(
        f"(no key 'alpah' is configured: {', '.join(load_settings(config).keys)})"
    )


@pytest.mark.parametrize("as_json", [(), ("--json",)], ids=["table", "json"])
def test_bot_audit_with_a_limit_beyond_any_count_prints_every_line(
    sim_config: Callable[..., Path], tmp_path: Path, as_json: tuple[str, ...]
) -> None:
    # `--limit 99999999999999999999` was an OverflowError traceback (a deque's maxlen).
    config = sim_config()
    log = AuditLog(tmp_path / "var" / "audit", AuditConfig())
    try:
        log.write(record(time.time() - 60, key="alpha", link="first"))
        log.write(record(time.time() - 30, key="alpha", link="second"))
    finally:
        log.close()

    listed = bot_audit(config, "--limit", f"{10**20}", *as_json)

    assert listed.returncode == 0, listed.stderr
    assert "Traceback" not in listed.stderr
    assert "first" in listed.stdout and "second" in listed.stdout


def test_bot_audit_refuses_a_state_dir_that_is_a_file_as_the_other_commands_do(
    sim_config: Callable[..., Path], tmp_path: Path
) -> None:
    # Reproduced: "no signed requests match in <file>/audit", exit 0, where `bot orders`
    # and the others refuse the state_dir: a mistyped one passed for an empty log.
    config = sim_config()
    state_file = tmp_path / "state-file"
    state_file.write_text("")

    listed = subprocess.run(
        [sys.executable, "-m", "bot", "audit", "--config", str(config)],
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "BOT_STATE_DIR": str(state_file)},
    )

    assert listed.returncode == 2
    assert listed.stderr == (
        f"error: state_dir {state_file} is a file, not a directory: move it away, or choose "
        "another state_dir (--config or BOT_STATE_DIR)\n"
    )


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{re.escape(name)}{{{re.escape(wanted)}}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_running_bot_audits_every_signed_request_and_serves_the_venue_metrics(
    sim_config: Callable[..., Path], tmp_path: Path
) -> None:
    write_key_secrets(tmp_path, KEY, SECRET)
    exchange = SimExchange(SimulatorConfig())
    exchange.add_account(
        SimAccountSpec(
            api_key=KEY, api_secret=SecretStr(SECRET), ips=["127.0.0.1"], note="follow_sim"
        )
    )
    with SimServer(exchange) as server:
        bot = RunningBot(sim_config(extra=f'\n[venue]\nsim_url = "{server.url}"\n')).start()
        try:
            for n in range(3):
                assert bot.post(signal(f"audit-{n}")).status_code == 202
            wait_for(
                lambda: all(bot.journal_status(f"audit-{n}") == ["Filled"] for n in range(3)),
                what="3 filled orders",
            )
            metrics = requests.get(f"{bot.url}/metrics", timeout=10).text
        finally:
            bot.stop()
        signed = signed_by_path(exchange, "follow_sim")

    audit_dir = bot.settings.audit_dir
    lines = read_audit(audit_dir)
    rest = [line for line in lines if line["endpoint"] != "ws:auth"]
    assert Counter(line["endpoint"] for line in rest) == signed
    links = {line["order_link_id"] for line in rest if line["endpoint"] == "/v5/order/create"}
    assert links == {str(order["orderLinkId"]) for order in client_orders(exchange.orders())}
    assert len(links) == 3
    auths = [line for line in lines if line["endpoint"] == "ws:auth"]
    assert auths
    assert (auths[0]["ret_code"], auths[0]["method"]) == (0, "WS")
    secrets = [path.read_text().strip() for path in (bot.settings.state_dir / "secrets").iterdir()]
    text = audit_text(audit_dir)
    assert not [secret for secret in [KEY, SECRET, *secrets] if secret and secret in text]

    create = {"endpoint": "/v5/order/create", "key": "follow_sim"}
    assert metric(metrics, "bot_venue_request_latency_seconds_count", **create) >= 3
    assert metric(metrics, "bot_venue_request_latency_seconds_bucket", **create, le="+Inf") >= 3
    assert metric(metrics, "bot_venue_requests_total", **create, ret_code="0") >= 3
    limit = metric(metrics, "bot_venue_rate_limit", **create)
    assert 0 < metric(metrics, "bot_venue_rate_limit_remaining", **create) < limit


def test_bot_keys_check_audits_its_signed_request(sim_config: Callable[..., Path]) -> None:
    config = sim_config()
    checked = subprocess.run(
        [sys.executable, "-m", "bot", "keys", "check", "--config", str(config)],
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    rows = [json.loads(line) for line in bot_audit(config, "--json").stdout.splitlines()]
    assert checked.returncode == 0, checked.stderr
    assert [(row["key"], row["endpoint"]) for row in rows] == [("follow_sim", "/v5/user/query-api")]


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and Infinity too: json.dumps writes them, a damaged line may hold them
    | st.text(st.characters(codec=None, exclude_categories=()))  # lone surrogates too
    | st.sampled_from(["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "2026-01-05"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
_AUDIT_FIELDS = ("ts", "key", "endpoint", "order_link_id", "ret_code", "http_status", "error")


@given(
    rows=st.lists(st.dictionaries(st.sampled_from(_AUDIT_FIELDS), _JSON_VALUES), max_size=4),
    garbage=st.lists(st.binary(max_size=40), max_size=3),
)
@settings(max_examples=200, deadline=None)
def test_any_damaged_audit_file_reads_as_rows_that_print_and_serialize(
    rows: list[dict[str, object]], garbage: list[bytes]
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        lines = [json.dumps(row).encode() for row in rows] + garbage + [b"[" * 5000]
        lines.append(b'{"key": "k", "latency_ms": 1e400}')  # read back as infinity
        (Path(directory) / CURRENT_FILE).write_bytes(b"\n".join(lines) + b"\n")
        (Path(directory) / "audit-20250101T000000Z.jsonl").mkdir()  # named as a rotated file

        found = read_audit(Path(directory), since=datetime(2026, 1, 1, tzinfo=UTC), key=None)
        found += read_audit(Path(directory))

        for row in found:
            json.dumps(row, allow_nan=False)  # `bot audit --json` prints valid JSON
            assert all(isinstance(cell, str) for cell in summary(row).values())
            for cell in summary(row).values():
                cell.encode()  # the table prints it: no lone surrogate
