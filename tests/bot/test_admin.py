"""The kill switch through the whole bot: the signed admin routes, effective for the very
next intent, journaled, and still in force after a restart; `bot halt` with no bot running."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import requests
from loguru import logger
from pybit.unified_trading import HTTP

from bot.admin import parse_command
from bot.cli import _undone
from bot.config import load_settings
from bot.journal import Journal
from bot.risk.kill_switch import FINISH_AGAIN_S
from bot.risk.states import BOT_SCOPE, ScopeState, TradingState
from signals.voiceofchain import SIGNATURE_HEADER, UsedSignatures, sign
from tests.bot.test_service import RunningBot, signal
from tests.conftest import SIM_CONFIG, StartBot, free_port, wait_for
from tests.factories import sim_position, stop_loss


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`bot <args> --config <config>` as a user runs it, beside whatever bot is running."""
    return subprocess.run(
        [sys.executable, "-m", "bot", *args, "--config", str(config)],
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def admin_answer(
    bot: RunningBot, route: str, body: dict[str, object], secret: str | None = None
) -> requests.Response:
    raw = json.dumps(body).encode()
    if secret is None:
        secret = (bot.settings.state_dir / "secrets" / "bot_admin_secret").read_text().strip()
    return requests.post(
        f"{bot.url}/admin/{route}",
        data=raw,
        headers={SIGNATURE_HEADER: sign(secret, raw, int(time.time()))},
        timeout=60,
    )


def admin(bot: RunningBot, route: str, body: dict[str, object], secret: str | None = None) -> int:
    return admin_answer(bot, route, body, secret).status_code


def decision_of(bot: RunningBot, signal_id: str) -> tuple[str, str]:
    rows = wait_for(
        lambda: [
            row
            for row in bot.rows()
            if row["signal_id"] == signal_id and row["decision"] != "pending"
        ],
        what=f"a decision for {signal_id}",
    )
    return str(rows[0]["decision"]), str(rows[0]["reason"])


def test_a_halt_stops_the_next_intent_survives_a_restart_and_resume_lifts_it(
    sim_config: Callable[..., Path],
) -> None:
    config = sim_config()
    bot = RunningBot(config).start()
    try:
        assert admin(bot, "halt", {"reason": "drill"}, secret="not-the-secret") == 401
        raw = json.dumps({"reason": "drill"}).encode()
        valid = sign(
            (bot.settings.state_dir / "secrets" / "bot_admin_secret").read_text().strip(),
            raw,
            int(time.time()),
        )
        twice = httpx.post(
            f"{bot.url}/admin/halt",
            content=raw,
            headers=[(SIGNATURE_HEADER, valid), (SIGNATURE_HEADER, "t=1,v1=" + "0" * 64)],
            timeout=60,
        )
        assert twice.status_code == 401, twice.text
        assert "2 X-Signature headers" in twice.json()["detail"]
        assert admin(bot, "halt", {"strategy": "nope"}) == 422
        assert admin(bot, "halt", {"reason": "drill"}) == 200
        assert bot.post(signal("while-halted")).status_code == 202
        assert decision_of(bot, "while-halted") == (
            "rejected",
            "the bot is HALTED (drill); only reduce-only orders pass until `bot resume`",
        )
    finally:
        bot.stop()

    restarted = RunningBot(config).start()
    try:
        assert restarted.post(signal("after-restart")).status_code == 202
        assert decision_of(restarted, "after-restart")[0] == "rejected"
        assert admin(restarted, "resume", {}) == 200
        assert restarted.post(signal("resumed")).status_code == 202
        assert decision_of(restarted, "resumed")[0] == "approved"
    finally:
        restarted.stop()


def test_a_halt_holds_though_the_journal_cannot_record_it_and_a_resume_waits_for_it(
    sim_config: Callable[..., Path],
) -> None:
    # Reproduced on a full disk: `bot halt` was refused 503 (the journal could not remember
    # the command), so trading could not be stopped when it most needed to be. Here another
    # program holds the journal's write lock (a backup tool): the same failure.
    bot = RunningBot(sim_config()).start()
    holder = sqlite3.connect(bot.settings.journal_path, isolation_level=None, timeout=30)
    try:
        holder.execute("BEGIN IMMEDIATE")
        halted = admin_answer(bot, "halt", {"reason": "disk full"})
        resumed = admin_answer(bot, "resume", {})
        holder.execute("COMMIT")

        assert halted.status_code == 200, halted.text
        assert halted.json()["state"] == "HALTED" and halted.json()["journaled"] is False
        assert resumed.status_code == 503, resumed.text  # never carried out unrecorded
        assert bot.post(signal("after")).status_code == 202
        assert decision_of(bot, "after")[0] == "rejected"  # the halt held
        assert "its journal record" in _undone(halted.text)  # `bot halt` exits 1
        # Journaled once the journal writes again: a restart keeps it.
        reader = sqlite3.connect(bot.settings.journal_path)
        try:
            journaled = wait_for(
                lambda: reader.execute("SELECT scope, state FROM trading_states").fetchall(),
                timeout_s=10,
                what="the halt journaled",
            )
        finally:
            reader.close()
        assert journaled == [(BOT_SCOPE, "HALTED")]
    finally:
        holder.close()
        bot.stop()


def test_bot_halt_answers_in_time_while_another_program_holds_the_journals_write_lock(
    sim_config: Callable[..., Path],
) -> None:
    # Reproduced: the halt was carried out, but its answer waited for SQLite's busy wait
    # (5 s) on each journal write (the command's record, the state's, that it was carried
    # out), so `bot halt` gave up after its 10 s ("no answer ... in time", exit 2): a kill
    # switch that seems not to work while a backup tool holds the journal.
    config = sim_config(port=free_port())  # the CLI reaches the bot at the config's address
    bot = RunningBot(config).start()
    holder = sqlite3.connect(bot.settings.journal_path, isolation_level=None, timeout=30)
    try:
        holder.execute("BEGIN IMMEDIATE")
        halted = cli(config, "halt", "--reason", "locked")
        holder.execute("COMMIT")

        # Answered within the CLI's wait (SEND_TIMEOUT_S; else exit 2): journaled false.
        assert halted.returncode == 1, halted.stderr
        assert '"journaled":false' in halted.stdout.replace(" ", ""), halted.stdout
        assert "its journal record" in halted.stderr
        assert bot.post(signal("after")).status_code == 202
        assert decision_of(bot, "after")[0] == "rejected"  # the halt held
        wait_for(
            lambda: bot.read_journal(lambda journal: journal.trading_states()),
            timeout_s=20,
            what="the halt journaled",
        )
    finally:
        holder.close()
        bot.stop()


def test_bot_risk_status_shows_the_halt_the_running_bot_holds_but_could_not_journal(
    sim_config: Callable[..., Path],
) -> None:
    # Reproduced on a full disk: the halt held (its answer said "journaled": false), but
    # `bot risk status` read the journal and showed the bot ACTIVE, which is false and
    # dangerous to believe. A trigger refuses the state's write here, as a full disk did.
    config = sim_config(port=free_port())  # the CLI reaches the bot at the config's address
    bot = RunningBot(config).start()
    try:
        writer = sqlite3.connect(bot.settings.journal_path, isolation_level=None, timeout=30)
        writer.execute(
            "CREATE TRIGGER refuse_states BEFORE INSERT ON trading_states "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
        halted = admin_answer(bot, "halt", {"reason": "disk full"})
        assert halted.json()["journaled"] is False, halted.text

        as_json = cli(config, "risk", "status", "--json")
        table = cli(config, "risk", "status")

        assert as_json.returncode == table.returncode == 0, as_json.stderr + table.stderr
        rows = {row["scope"]: row for row in map(json.loads, as_json.stdout.splitlines())}
        assert (rows["(bot)"]["state"], rows["(bot)"]["reason"]) == ("HALTED", "disk full")
        assert (rows["(bot)"]["journaled"], rows["follow"]["journaled"]) == (False, True)
        assert re.search(r"^\(bot\) +HALTED +disk full ", table.stdout, re.MULTILINE), table.stdout
        for done in (as_json, table):
            assert done.stderr == (
                "warning: the halt of (bot) holds in the running bot, but its journal could "
                "not record it: a restart before it is journaled forgets it (the bot tries "
                "again each minute); make the journal writable: /healthz names its problem\n"
            )

        writer.execute("DROP TRIGGER refuse_states")  # room again: the bot journals it
        writer.close()
        wait_for(
            lambda: bot.read_journal(lambda journal: journal.trading_states()),
            timeout_s=20,
            what="the halt journaled",
        )
        journaled = cli(config, "risk", "status", "--json")
        assert (journaled.stderr, json.loads(journaled.stdout.splitlines()[0])["journaled"]) == (
            "",
            True,
        )
    finally:
        bot.stop()


def test_a_resume_the_journal_cannot_record_leaves_the_halt_in_force(
    sim_config: Callable[..., Path],
) -> None:
    # A disk that fills between the command's record and the state's (the first write found
    # room, the second none): the resume was answered 503, yet the gate had entered ACTIVE
    # already, so the bot traded while its operator was told it had not resumed, and its
    # journal (HALTED) disagreed with it. A trigger refuses the state's write alone here.
    bot = RunningBot(sim_config()).start()
    try:
        assert admin(bot, "halt", {"reason": "drill"}) == 200
        writer = sqlite3.connect(bot.settings.journal_path, isolation_level=None, timeout=30)
        writer.execute(
            "CREATE TRIGGER refuse_states BEFORE INSERT ON trading_states "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
        writer.close()

        resumed = admin_answer(bot, "resume", {})

        assert resumed.status_code == 503, resumed.text
        assert bot.post(signal("after-refused-resume")).status_code == 202
        assert decision_of(bot, "after-refused-resume")[0] == "rejected"  # still halted
    finally:
        bot.stop()


def test_bot_halt_with_no_bot_running_is_journaled_for_its_start(
    sim_config: Callable[..., Path],
) -> None:
    config = sim_config(port=1)  # nothing listens there

    halted = cli(config, "halt", "--strategy", "follow", "--reason", "weekend")
    status = cli(config, "risk", "status", "--json")

    assert halted.returncode == 0, halted.stderr
    assert "applies when it starts" in halted.stdout
    rows = {row["scope"]: row for row in map(json.loads, status.stdout.splitlines())}
    assert (rows["follow"]["state"], rows["follow"]["reason"]) == ("HALTED", "weekend")
    assert rows["(bot)"]["state"] == "ACTIVE"


def test_bot_resume_with_no_bot_running_never_touches_another_environments_journal(
    sim_config: Callable[..., Path],
) -> None:
    """A config pointing at the state_dir of a halted testnet (or mainnet) bot: journaling
    ACTIVE there would lift that bot's halt at its next start."""
    config = sim_config(port=1)  # nothing listens there
    journal = Journal(load_settings(config).journal_path)
    journal.claim_environment("testnet")
    halted = ScopeState(BOT_SCOPE, TradingState.HALTED, "testnet's halt", datetime.now(UTC))
    journal.record_trading_state(halted)
    journal.close()

    resumed = cli(config, "resume")
    halted_too = cli(config, "halt", "--reason", "sim's halt")

    for refused in (resumed, halted_too):
        assert refused.returncode == 2
        assert refused.stderr.startswith("error: journal ")
        assert "belongs to a bot in testnet, but this one runs in sim" in refused.stderr
        assert "Traceback" not in refused.stderr
    journal = Journal(load_settings(config).journal_path, read_only=True)
    try:
        assert [state.reason for state in journal.trading_states()] == ["testnet's halt"]
    finally:
        journal.close()


def sim_price(bot: RunningBot, symbol: str = "BTCUSDT") -> float:
    answer = requests.get(
        f"{bot.service.sim_url}/v5/market/tickers",
        params={"category": "linear", "symbol": symbol},
        timeout=10,
    ).json()
    return float(answer["result"]["list"][0]["lastPrice"])


def venue_position(bot: RunningBot, symbol: str = "BTCUSDT") -> Decimal:
    """The key's position as the venue last reported it (private stream, journaled)."""
    positions = bot.read_journal(lambda journal: journal.positions())
    return sum((p.size for p in positions if p.symbol == symbol), Decimal(0))


def risk_status(bot: RunningBot, scope: str = "follow") -> dict[str, str]:
    """`bot risk status --json` run as a user would, beside the running bot."""
    done = cli(bot.settings.state_dir.parent / "bot.toml", "risk", "status", "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["scope"]: row for row in map(json.loads, done.stdout.splitlines())}
    return dict(rows[scope])


def test_bot_resume_of_another_environments_configuration_is_refused_by_the_running_bot(
    sim_config: Callable[..., Path], tmp_path: Path
) -> None:
    """Reproduced: `bot resume --config testnet.toml` sent to the port of a bot of another
    environment that signs with the same admin secret (one secrets folder for both) resumed
    that bot: a testnet command lifting a halt on real money."""
    bot = RunningBot(sim_config()).start()
    try:
        assert admin(bot, "halt", {"reason": "drill"}) == 200
        shared = tmp_path / "shared-secrets"
        shared.mkdir()
        secret = (bot.settings.state_dir / "secrets" / "bot_admin_secret").read_text().strip()
        (shared / "bot_admin_secret").write_text(secret)
        testnet = tmp_path / "testnet" / "testnet.toml"
        testnet.parent.mkdir()
        testnet.write_text(
            'environment = "testnet"\n[http]\nport = '
            f"{bot.url.rsplit(':', 1)[1]}\n"
            '[keys.follow_testnet]\nenvironment = "testnet"\n'
            '[strategies.follow]\nplugin = "follow"\nkey = "follow_testnet"\n'
        )

        resumed = cli(testnet, "resume", "--secrets-dir", str(shared))

        assert resumed.returncode != 0
        assert "the command is for a bot in testnet, but this bot runs in sim" in resumed.stderr
        assert admin_answer(bot, "resume", {"environment": "mainnet"}).status_code == 422
        assert bot.post(signal("still-halted")).status_code == 202
        assert decision_of(bot, "still-halted")[0] == "rejected"
        assert admin(bot, "resume", {"environment": "sim"}) == 200
    finally:
        bot.stop()


def test_a_halt_sent_to_another_bots_port_is_refused_by_that_bot(
    sim_config: Callable[..., Path], tmp_path: Path, start_bot: StartBot
) -> None:
    """Two bots of one environment signing with one admin secret: `bot halt` with the first's
    configuration and the second's port (`BOT_HTTP__PORT`) halted the second, and said HALTED
    while the first went on trading (found by a probe)."""
    first = RunningBot(sim_config(port=free_port())).start()
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other_port = free_port()
    other_config = other_dir / "bot.toml"
    other_config.write_text(SIM_CONFIG.format(state_dir=other_dir / "var", port=other_port))
    start_bot(other_config, other_port)
    try:
        secret = (other_dir / "var" / "secrets" / "bot_admin_secret").read_text().strip()
        config = first.settings.state_dir.parent / "bot.toml"

        def at_the_others_port(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "bot", *args, "--config", str(config)],
                cwd=config.parent,
                env=os.environ | {"BOT_HTTP__PORT": str(other_port), "BOT_ADMIN_SECRET": secret},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )

        misdirected = at_the_others_port("halt")
        shown = at_the_others_port("risk", "status")

        assert misdirected.returncode == 2, misdirected.stdout
        assert "but this bot keeps journal" in misdirected.stderr, misdirected.stderr
        # The other bot's states are not shown as this journal's: a note, and the journal's.
        assert "keeps another journal than" in shown.stderr, shown.stderr
        other_states = cli(other_config, "risk", "status", "--json")
        assert '"state": "ACTIVE"' in other_states.stdout.replace('":"', '": "'), other_states
        assert cli(config, "halt").returncode == 0  # its own port: its own bot
        assert risk_status(first, "(bot)")["state"] == "HALTED"
    finally:
        first.stop()


def test_halt_with_cancel_open_and_flatten_leaves_no_order_and_no_position(
    sim_config: Callable[..., Path],
) -> None:
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    bot = RunningBot(sim_config()).start()
    try:
        price = sim_price(bot)
        assert bot.post(signal("filled")).status_code == 202
        resting = signal("resting", entry=round(price * 0.95), stop_loss=round(price * 0.9))
        assert bot.post(resting).status_code == 202
        wait_for(
            lambda: (
                bot.journal_status("filled") == ["Filled"]
                and bot.journal_status("resting") == ["New"]
            ),
            what="a filled and a resting order",
        )
        wait_for(lambda: venue_position(bot) > 0, what="the venue's position")
        status = risk_status(bot)
        assert (status["open_orders_count"], status["orders_today_count"]) == ("1", "2")
        assert status["open_orders"] == "1 / 1000"
        assert Decimal(status["exposure_usdt"]) > 500  # the position and the resting buy

        answer = admin_answer(
            bot, "halt", {"reason": "drill", "cancel_open": True, "flatten": True}
        )

        assert answer.status_code == 200, answer.text
        report = answer.json()
        assert [(row["status"], row["done"]) for row in report["cancelled"]] == [
            ("Cancelled", True)
        ]
        assert [(row["strategy"], row["status"], row["done"]) for row in report["flattened"]] == [
            ("follow", "Filled", True)
        ]
        assert bot.journal_status("resting") == ["Cancelled"]
        wait_for(lambda: venue_position(bot) == 0, what="a flat position at the venue")
        assert bot.post(signal("after-halt")).status_code == 202
        assert decision_of(bot, "after-halt")[0] == "rejected"
        assert admin(bot, "resume", {"flatten": True}) == 422
    finally:
        bot.stop()
        logger.remove(sink)
    assert not [line for line in warnings if "not by the bot" in line]  # its own cancel


def test_halts_with_flatten_at_once_close_each_position_once(
    sim_config: Callable[..., Path],
) -> None:
    """Operators (or a retrying script) sending the same flatten together: one close reaches
    the venue, and no answer reports the others' positions as failed to close."""
    bot = RunningBot(sim_config()).start()
    try:
        assert bot.post(signal("filled")).status_code == 202
        wait_for(lambda: venue_position(bot) > 0, what="the venue's position")

        with ThreadPoolExecutor(max_workers=4) as senders:
            answers = list(
                senders.map(
                    lambda index: admin_answer(
                        bot, "halt", {"reason": f"drill {index}", "flatten": True}
                    ),
                    range(4),
                )
            )

        assert [answer.status_code for answer in answers] == [200] * 4
        assert not any(answer.json().get("superseded") for answer in answers)  # all HALTED
        rows = [row for answer in answers for row in answer.json()["flattened"]]
        assert [(row["status"], row["done"]) for row in rows] == [("Filled", True)]
        closes = [row for row in bot.rows() if str(row["signal_id"]).startswith("flatten-")]
        assert [row["status"] for row in closes] == ["Filled"]
        wait_for(lambda: venue_position(bot) == 0, what="a flat position at the venue")
    finally:
        bot.stop()


def test_a_flatten_waiting_behind_another_is_superseded_by_a_resume_meanwhile(
    sim_config: Callable[..., Path],
) -> None:
    """A halt with flatten queued behind another must not close what was opened after an
    operator resumed: it reports itself superseded, and `bot halt` would exit 1 on it."""
    bot = RunningBot(sim_config()).start()
    try:
        assert bot.post(signal("filled")).status_code == 202
        wait_for(lambda: venue_position(bot) > 0, what="the venue's position")
        faults = f"{bot.service.sim_url}/sim/faults"
        requests.post(faults, json={"delay": 1.0, "delay_ms": 1500}, timeout=10)
        try:
            with ThreadPoolExecutor(max_workers=2) as senders:
                first = senders.submit(
                    admin_answer, bot, "halt", {"reason": "first", "flatten": True}
                )
                time.sleep(0.3)  # the first holds the flatten; its close waits at the venue
                second = senders.submit(
                    admin_answer, bot, "halt", {"reason": "second", "flatten": True}
                )
                time.sleep(0.3)
                assert admin(bot, "resume", {}) == 200
                answers = first.result(), second.result()
        finally:
            requests.post(faults, json={}, timeout=10)

        assert [answer.status_code for answer in answers] == [200, 200]
        assert [(row["status"], row["done"]) for row in answers[0].json()["flattened"]] == [
            ("Filled", True)
        ]
        assert (answers[1].json()["flattened"], answers[1].json()["superseded"]) == ([], True)
        assert _undone(answers[1].text) == (  # what `bot halt` names as not done
            "the flatten (a resume came while it waited)"
        )
    finally:
        bot.stop()


def test_a_flatten_whose_cancels_a_resume_overtook_closes_nothing(
    sim_config: Callable[..., Path],
) -> None:
    """A resume that came while the halt's cancels waited on a slow venue did not stop the
    flatten after them (a probe read it in the code): it is superseded there too."""
    bot = RunningBot(sim_config()).start()
    try:
        assert bot.post(signal("filled")).status_code == 202
        wait_for(lambda: venue_position(bot) > 0, what="the venue's position")
        assert (
            bot.post(signal("resting", symbol="ETHUSDT", entry=3300, stop_loss=3200)).status_code
            == 202
        )
        wait_for(lambda: bot.journal_status("resting") == ["New"], what="an order to cancel")
        faults = f"{bot.service.sim_url}/sim/faults"
        requests.post(faults, json={"delay": 1.0, "delay_ms": 1500}, timeout=10)
        try:
            with ThreadPoolExecutor(max_workers=1) as sender:
                halting = sender.submit(
                    admin_answer, bot, "halt", {"reason": "drill", "flatten": True}
                )
                time.sleep(0.5)  # its cancel waits at the venue
                assert admin(bot, "resume", {}) == 200
                answer = halting.result()
        finally:
            requests.post(faults, json={}, timeout=10)

        report = answer.json()
        assert (report["flattened"], report["superseded"]) == ([], True)
        assert venue_position(bot) > 0  # the operator's, after the resume
    finally:
        bot.stop()


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"strategy": null, "x": 1}', "x: Extra inputs are not permitted"),
        (b'{"reason": "' + b"a" * 201 + b'"}', "reason: String should have at most 200"),
        (b'{"strategy": 5}', "strategy: Input should be a valid string"),
        (b"[]", "body: Input should be a valid dictionary"),
        (b'{"reason": "a\\u0000b\\nFAKE LOG LINE"}', "reason: must be one line of printable"),
        (b'{"reason": "one\\u2028two"}', "reason: must be one line of printable"),
        (b'{"reason": "a\\u202eb"}', "reason: must be one line of printable"),
        (b"nope", "the body is not JSON"),
        (b'{"cancel_open": "yes"}', "cancel_open: Input should be a valid boolean"),
        (b'{"flatten": 0}', "flatten: Input should be a valid boolean"),
        # Read as the last one, this halt of one strategy would have halted the whole bot.
        (b'{"strategy": "follow", "strategy": null}', "the key 'strategy' is given twice"),
        # Quoted into the answer, these failed to encode: 500.
        (b'{"strategy": "\\ud800"}', "the body holds text that is not valid Unicode"),
    ],
)
def test_a_bad_command_is_refused_naming_the_field_and_the_rule(body: bytes, problem: str) -> None:
    expected = re.escape(
        "expected {strategy, reason, cancel_open, flatten, environment, journal}: "
    )
    with pytest.raises(ValueError, match=f"^{expected}.*{re.escape(problem)}"):
        parse_command(body, TradingState.HALTED, ["follow"])


def test_an_unknown_strategy_is_quoted_as_one_line() -> None:
    with pytest.raises(ValueError, match=re.escape("strategy 'x\\nFAKE' is not configured")):
        parse_command(b'{"strategy": "x\\nFAKE"}', TradingState.HALTED, ["follow"])


def test_bot_halt_refuses_a_reason_it_could_not_log_as_one_line(
    sim_config: Callable[..., Path],
) -> None:
    config = sim_config(port=1)  # no bot running: it would be journaled as it is

    halted = cli(config, "halt", "--reason", "weekend\nFAKE LOG LINE")

    assert halted.returncode == 2  # bad input, as every refused argument
    assert "reason: must be one line of printable text" in halted.stderr
    assert "Traceback" not in halted.stderr


def test_a_command_nested_too_deep_is_invalid_not_a_crash() -> None:
    deep = b"[" * 5000 + b"]" * 5000  # the HTTP routes and the MQTT control topic alike

    with pytest.raises(ValueError, match="nested too deep"):
        parse_command(deep, TradingState.HALTED, ["follow"])


def test_a_captured_command_cannot_be_replayed_to_any_route_even_after_a_restart(
    sim_config: Callable[..., Path],
) -> None:
    config = sim_config()
    bot = RunningBot(config).start()
    secret = (bot.settings.state_dir / "secrets" / "bot_admin_secret").read_text().strip()
    raw = json.dumps({"reason": "incident"}).encode()
    captured = {SIGNATURE_HEADER: sign(secret, raw, int(time.time()))}

    def send(route: str) -> requests.Response:
        return requests.post(f"{bot.url}/admin/{route}", data=raw, headers=captured, timeout=60)

    try:
        assert send("halt").status_code == 200
        replays = [send("resume"), send("halt")]

        assert [answer.status_code for answer in replays] == [409, 409]
        assert "sign it anew" in replays[0].json()["detail"]
        assert risk_status(bot, "(bot)")["state"] == "HALTED"  # the replayed resume did nothing
        bot.stop()
        bot = RunningBot(config).start()  # what the bot remembered in memory is gone
        assert send("resume").status_code == 409
        assert risk_status(bot, "(bot)")["state"] == "HALTED"
        # A command of its own (the same body signed in the same second is the same bytes)
        assert admin(bot, "resume", {"reason": "incident over"}) == 200
    finally:
        bot.stop()


def test_used_signatures_are_forgotten_once_they_could_not_pass_anyway() -> None:
    used = UsedSignatures(max_skew_s=300)
    header = sign("secret", b"{}", 1_000)

    async def uses() -> list[bool]:
        return [
            await used.first_use(header, b"{}", now=1_000),
            await used.first_use(header, b"{}", now=1_299),
            await used.first_use(sign("secret", b"{}", 1_001), b"{}", now=1_001),  # another time
            await used.first_use(header, b"{}", now=1_301),  # expired (and refused by its age)
        ]

    assert asyncio.run(uses()) == [True, False, True, True]
    assert len(used._until) == 1


def test_used_signatures_kept_in_the_journal_outlive_the_process(tmp_path: Path) -> None:
    header = sign("secret", b"{}", 1_000)
    journal = Journal(tmp_path / "journal.sqlite3")
    try:

        async def remember(digest: bytes, until: float, now: float, redelivered: bool) -> bool:
            return journal.record_used_command(digest, until, now, redelivered=redelivered)

        async def acted(digest: bytes) -> None:
            journal.record_command_acted(digest)

        def started(now: float) -> UsedSignatures:
            return UsedSignatures(
                remembered=journal.used_commands(now, carried_out=True),
                remember=remember,
                acted=acted,
            )

        async def use(now: float, *, redelivered: bool, done: bool) -> bool:
            used = started(now)
            first = await used.first_use(header, b"{}", now=now, redelivered=redelivered)
            if done:
                await used.done(header, b"{}")
            return first

        uses = [
            asyncio.run(use(1_000, redelivered=False, done=False)),  # a crash cut it short
            asyncio.run(use(1_020, redelivered=False, done=False)),  # the same bytes by HTTP
            asyncio.run(use(1_050, redelivered=True, done=True)),  # the broker's redelivery
            asyncio.run(use(1_100, redelivered=True, done=False)),  # carried out: a replay
        ]

        assert uses == [True, False, True, False]
        assert journal.used_commands(1_300) == {}  # expired: forgotten
    finally:
        journal.close()


def test_a_command_the_journal_could_not_remember_is_not_counted_as_used() -> None:
    async def failing(digest: bytes, until: float, now: float, redelivered: bool) -> bool:
        raise OSError("disk full")

    used = UsedSignatures(remember=failing)
    header = sign("secret", b"{}", 1_000)

    with pytest.raises(OSError, match="disk full"):
        asyncio.run(used.first_use(header, b"{}", now=1_000))
    assert used._until == {}  # sent again once the disk has room, it is acted on


def test_a_halt_waits_only_briefly_for_a_journal_that_does_not_answer() -> None:
    # Another program's lock holds each journal write for SQLite's busy timeout (5 s): the
    # halt goes on without its records, still refused if sent again; a resume never does.
    async def stuck(*_: object) -> bool:
        await asyncio.sleep(60)
        return True

    used = UsedSignatures(remember=stuck, acted=stuck, journal_wait_s=0.1)
    halt, resume = sign("secret", b"{}", 1_000), sign("secret", b"{ }", 1_000)

    async def commands() -> tuple[bool, bool, bool]:
        # Far sooner than the stuck journal's 60 s, or a TimeoutError fails the test.
        first = await asyncio.wait_for(
            used.first_use(halt, b"{}", now=1_000, unrecorded_ok=True), 30
        )
        await asyncio.wait_for(used.done(halt, b"{}"), 30)
        again = await used.first_use(halt, b"{}", now=1_001, unrecorded_ok=True)
        try:
            await asyncio.wait_for(used.first_use(resume, b"{ }", now=1_000), 0.5)
        except TimeoutError:
            resumed = False
        else:
            resumed = True
        return first, again, resumed

    first, again, resumed = asyncio.run(commands())

    assert (first, again, resumed) == (True, False, False)
    assert list(used._until) == [hashlib.sha256(b"1000.{}").digest()]  # the resume: unused


@pytest.mark.parametrize("answer_s", [0.0, 0.3], ids=["at-once", "after-the-wait"])
def test_a_halt_whose_use_the_journal_could_not_record_is_said(answer_s: float) -> None:
    # The journal fails the halt's record at once, or after the halt went on without it: a
    # restart then forgets the signature, which a replay could use; said either way.
    async def refused(*_: object) -> bool:
        await asyncio.sleep(answer_s)
        raise sqlite3.OperationalError("database or disk is full")

    used = UsedSignatures(remember=refused, journal_wait_s=0.1)
    halt = sign("secret", b"{}", 1_000)
    records: list[str] = []
    handler = logger.add(records.append, level="WARNING", format="{level} {message}")

    async def command() -> bool:
        first = await used.first_use(halt, b"{}", now=1_000, unrecorded_ok=True)
        await asyncio.sleep(answer_s + 0.2)  # the late answer arrives
        return first

    try:
        first = asyncio.run(command())
    finally:
        logger.remove(handler)

    assert first is True  # carried out all the same
    assert [record.rstrip("\n") for record in records] == [
        "WARNING a signed command was carried out, but the journal could not record its "
        "signature as used (database or disk is full): sent again after a restart, before its "
        "signature expires, it would be taken again"
    ]


def test_bot_halt_never_says_not_running_while_a_bot_holds_the_journal(
    sim_config: Callable[..., Path],
) -> None:
    # The bot was started on another port than its config says (`bot run --port`): the
    # halt finds no one at the config's address, but must not journal a halt "for its next
    # start" and report success while that bot keeps trading.
    config = sim_config()
    bot = RunningBot(config).start()
    try:
        sim_config(port=1)  # the config now names an address where nothing listens
        halted = cli(config, "halt")

        assert halted.returncode == 2, halted.stdout
        assert f"bot PID {os.getpid()} is running on this journal" in halted.stderr
        assert "Nothing was changed" in halted.stderr
        assert len(halted.stderr.strip().splitlines()) <= 3  # one message, soft-wrapped
        states = bot.read_journal(lambda journal: journal.trading_states())
        assert [s.state.value for s in states if s.scope == "(bot)"] in ([], ["ACTIVE"])
    finally:
        bot.stop()


def test_bot_halt_exits_1_naming_a_flatten_the_venue_did_not_take(
    sim_config: Callable[..., Path],
) -> None:
    quick_retries = "\n[execution]\nbackoff_base_s = 0.01\nbackoff_max_s = 0.02\n"
    bot = RunningBot(sim_config(extra=quick_retries)).start()
    try:
        assert bot.post(signal("filled")).status_code == 202
        wait_for(lambda: venue_position(bot) > 0, what="the venue's position")
        faults = requests.post(
            f"{bot.service.sim_url}/sim/faults", json={"http_5xx": 1.0}, timeout=10
        )
        assert faults.status_code == 200

        port = int(bot.url.rsplit(":", 1)[1])
        halted = cli(sim_config(port, quick_retries), "halt", "--flatten")  # the bot's address

        assert halted.returncode == 1, halted.stderr
        report = json.loads(halted.stdout)
        assert [row["done"] for row in report["flattened"]] == [False]
        assert "the halt holds, but 1 close did not complete" in halted.stderr
        assert risk_status(bot, "(bot)")["state"] == "HALTED"
    finally:
        requests.post(f"{bot.service.sim_url}/sim/faults", json={}, timeout=10)
        bot.stop()


def test_an_entry_the_venue_shows_after_the_bot_stopped_looking_is_said_to_be_the_operators(
    sim_config: Callable[..., Path],
) -> None:
    """A halt withdrew an entry sent without an answer that the venue did not show within
    `unseen_final_after_s`; shown later, its fill was booked as another client's with a
    warning blaming another program on the key, the position (the bot's own) in no
    strategy's books: the warning now says what it may be, and whose it is to close."""
    bot = RunningBot(sim_config(extra="\n[execution]\nunseen_final_after_s = 1\n")).start()
    faults = f"{bot.service.sim_url}/sim/faults"
    said: list[str] = []
    sink = logger.add(
        lambda m: said.append(m.record["message"]),
        filter=lambda r: r["extra"].get("notify") == "foreign",
    )
    try:
        requests.post(faults, json=_LOST_AND_LATE | {"order_visibility_lag_ms": 4000}, timeout=10)
        assert bot.post(signal("late")).status_code == 202
        wait_for(lambda: bot.sim_orders(), what="the entry at the venue")
        admin_answer(bot, "halt", {"reason": "drill", "flatten": True})  # withdraws it
        wait_for(lambda: bot.journal_status("late") == ["Rejected"], what="given up on")

        wait_for(lambda: said, what="the late fill warned of")

        assert "only you can close it" in said[0], said
        assert _held_at_venue(bot) == {"BTCUSDT": "0.005"}
    finally:
        logger.remove(sink)
        requests.post(faults, json={}, timeout=10)
        bot.stop()


#: Quick retries, and an order the venue does not show taken as never sent after 1 s.
_QUICK_AND_SURE: Final = (
    "\n[execution]\nbackoff_base_s = 0.01\nbackoff_max_s = 0.02\nunseen_final_after_s = 1\n"
)


def _trading_state_notes(said: list[str]) -> Callable[[Any], None]:
    """A log sink keeping the messages of trading-state notifications in `said`."""

    def keep(message: Any) -> None:
        if message.record["extra"].get("notify") == "trading_state":
            said.append(message.record["message"])

    return keep


def _halted_while_the_venue_fails(bot: RunningBot) -> dict[str, Any]:
    """A position held, then a halt with flatten while every venue request fails (HTTP
    503): its report, the close not done."""
    assert bot.post(signal("held")).status_code == 202
    wait_for(lambda: venue_position(bot) > 0, what="the venue's position")
    requests.post(f"{bot.service.sim_url}/sim/faults", json={"http_5xx": 1.0}, timeout=10)
    report: dict[str, Any] = admin_answer(bot, "halt", {"reason": "drill", "flatten": True}).json()
    assert [row["done"] for row in report["flattened"]] == [False]
    return report


def test_a_halt_closes_by_itself_what_the_venue_refused_once_it_takes_orders_again(
    sim_config: Callable[..., Path],
) -> None:
    """The operator was told to run the halt again, and until then the position stayed open
    (kill-switch probe): the halt now does its undone part again while it stands."""
    bot = RunningBot(sim_config(extra=_QUICK_AND_SURE)).start()
    said: list[str] = []
    sink = logger.add(_trading_state_notes(said))
    try:
        report = _halted_while_the_venue_fails(bot)
        assert "while the halt stands" in report["finishing"]

        requests.post(f"{bot.service.sim_url}/sim/faults", json={}, timeout=10)

        wait_for(lambda: venue_position(bot) == 0, 40, what="the position closed by the halt")
        wait_for(lambda: any("is done now" in line for line in said), what="said so")
        assert risk_status(bot, "(bot)")["state"] == "HALTED"
    finally:
        logger.remove(sink)
        requests.post(f"{bot.service.sim_url}/sim/faults", json={}, timeout=10)
        bot.stop()


def test_a_start_says_which_positions_a_standing_halt_holds_open(
    sim_config: Callable[..., Path],
) -> None:
    """A halt's flatten a stop cut short is not resumed by the next start, and nothing said
    so (a probe of the halt's tries): the start names what the halt holds open."""
    config = sim_config()
    bot = RunningBot(config).start()
    try:
        assert bot.post(signal("held")).status_code == 202
        wait_for(lambda: venue_position(bot) > 0, what="the venue's position")
        assert admin_answer(bot, "halt", {"reason": "drill"}).status_code == 200
    finally:
        bot.stop()
    said: list[str] = []
    with _started_saying(config, said):
        pass

    [note] = [line for line in said if "with positions open" in line]
    assert "(bot) is HALTED with positions open (follow 0.005 BTCUSDT)" in note, note
    assert "`bot halt --flatten` closes them" in note
    assert not any("cut its" in line for line in said), said  # not asked: nothing to redo


@contextlib.contextmanager
def _started_saying(config: Path, said: list[str]) -> Iterator[RunningBot]:
    """The bot of `config` started (again), its trading-state notifications kept in `said`."""
    sink = logger.add(_trading_state_notes(said))
    bot = RunningBot(config)
    try:
        yield bot.start()
    finally:
        bot.stop()
        logger.remove(sink)


def test_a_start_does_again_the_flatten_a_stop_cut_short(
    sim_config: Callable[..., Path],
) -> None:
    """A halt's tries ended with the bot's stop, and the next start only said which positions
    it held open: the position stayed open until the operator ran the halt again."""
    config = sim_config(extra=_QUICK_AND_SURE)
    bot = RunningBot(config).start()
    try:
        _halted_while_the_venue_fails(bot)
        assert risk_status(bot, "(bot)")["halt_work"] == "flatten"
    finally:
        bot.stop()  # the venue still failing: the halt's tries had not closed it
    said: list[str] = []
    with _started_saying(config, said) as restarted:
        wait_for(lambda: venue_position(restarted) == 0, 30, what="the position closed")
        wait_for(lambda: any("is done now" in line for line in said), what="said so")
        assert any("a stop cut its flatten short; doing it again now" in line for line in said)
        assert not any("with positions open" in line for line in said), said
        wait_for(lambda: risk_status(restarted, "(bot)")["halt_work"] == "", what="it done")
        assert risk_status(restarted, "(bot)")["state"] == "HALTED"

    again: list[str] = []
    with _started_saying(config, again):
        pass
    assert not any("cut its" in line for line in again), again  # nothing left to do


def test_a_start_does_again_the_cancels_a_stop_cut_short(
    sim_config: Callable[..., Path],
) -> None:
    config = sim_config(extra=_QUICK_AND_SURE)
    bot = RunningBot(config).start()
    try:
        assert bot.post(resting("resting", bot)).status_code == 202
        wait_for(lambda: bot.journal_status("resting") == ["New"], what="a resting order")
        requests.post(f"{bot.service.sim_url}/sim/faults", json={"http_5xx": 1.0}, timeout=10)
        report = admin_answer(bot, "halt", {"reason": "drill", "cancel_open": True}).json()
        assert [row["done"] for row in report["cancelled"]] == [False]
    finally:
        bot.stop()
    said: list[str] = []
    with _started_saying(config, said) as restarted:
        wait_for(lambda: restarted.journal_status("resting") == ["Cancelled"], 30, what="cancel")
        wait_for(lambda: any("is done now" in line for line in said), what="said so")
        assert any("a stop cut its cancels short" in line for line in said)


def test_a_resume_ends_what_a_halt_was_doing_again_by_itself(
    sim_config: Callable[..., Path],
) -> None:
    bot = RunningBot(sim_config(extra=_QUICK_AND_SURE)).start()
    said: list[str] = []
    sink = logger.add(_trading_state_notes(said))
    try:
        _halted_while_the_venue_fails(bot)
        assert admin_answer(bot, "resume", {}).status_code == 200

        requests.post(f"{bot.service.sim_url}/sim/faults", json={}, timeout=10)
        time.sleep(sum(FINISH_AGAIN_S[:3]) + 2)  # past the attempts the halt would have made

        assert venue_position(bot) > 0  # the operator's to close, after a resume
        assert not any("is done now" in line for line in said)
    finally:
        logger.remove(sink)
        requests.post(f"{bot.service.sim_url}/sim/faults", json={}, timeout=10)
        bot.stop()


def test_a_flatten_again_while_an_earlier_close_is_unsettled_says_so_and_exits_1(
    sim_config: Callable[..., Path],
) -> None:
    """It exited 0 with no row, the position open (kill-switch probe): the earlier close,
    unanswered, stood for it."""
    quick_retries = "\n[execution]\nbackoff_base_s = 0.01\nbackoff_max_s = 0.02\n"
    bot = RunningBot(sim_config(extra=quick_retries)).start()
    faults = f"{bot.service.sim_url}/sim/faults"
    try:
        assert bot.post(signal("held")).status_code == 202
        wait_for(lambda: venue_position(bot) > 0, what="the venue's position")
        requests.post(faults, json={"timeout_10016": 1.0}, timeout=10)
        config = sim_config(int(bot.url.rsplit(":", 1)[1]), quick_retries)

        first = cli(config, "halt", "--flatten")
        requests.post(faults, json={}, timeout=10)
        again = cli(config, "halt", "--flatten")

        assert first.returncode == 1, first.stderr
        assert "again by itself" in first.stderr and "when it starts again" in first.stderr
        assert again.returncode == 1, again.stdout
        [row] = json.loads(again.stdout)["flattened"]
        assert row["done"] is False and "is not settled yet" in row["status"]
        assert venue_position(bot) > 0  # not closed twice, nor closed without a row
    finally:
        requests.post(faults, json={}, timeout=10)
        bot.stop()


def test_a_flatten_leaves_nothing_open_though_an_entry_was_on_its_way(
    sim_config: Callable[..., Path],
) -> None:
    # Market orders fill 0.3 s after the venue took them: the halt comes in between.
    bot = RunningBot(sim_config(extra="\n[sim]\nmarket_fill_delay_ms = 300\n")).start()
    try:
        assert bot.post(signal("on-its-way")).status_code == 202
        wait_for(lambda: bot.journal_status("on-its-way") == ["New"], what="the venue's ack")

        answer = admin_answer(bot, "halt", {"reason": "drill", "flatten": True})

        assert answer.status_code == 200, answer.text
        report = answer.json()
        assert all(row["done"] for row in report["cancelled"] + report["flattened"]), report
        time.sleep(0.5)  # past the fill delay: nothing left to fill
        wait_for(lambda: venue_position(bot) == 0, what="a flat position")
    finally:
        bot.stop()


def _held_at_venue(bot: RunningBot) -> dict[str, str]:
    """The key's positions as the simulator holds them: symbol -> size."""
    answer = requests.get(f"{bot.service.sim_url}/sim/positions", timeout=10).json()
    return {str(p["symbol"]): str(p["size"]) for p in answer["positions"] if p["size"] != "0"}


#: Each create's answer lost after the venue took it, and the venue slow to show new orders.
_LOST_AND_LATE: Final = {"drop_response_after_accept": 1.0, "order_visibility_lag": 1.0}


def test_a_flatten_closes_entries_whose_answers_were_lost_and_shown_late(
    sim_config: Callable[..., Path],
) -> None:
    """A halt with flatten just after market entries whose answers were lost: the cancel
    found nothing to cancel, the look-up nothing yet (the venue slow to show them), and the
    halt said every row done and exited 0, the positions left open (kill-switch probe)."""
    bot = RunningBot(sim_config()).start()
    faults = f"{bot.service.sim_url}/sim/faults"
    try:
        requests.post(faults, json=_LOST_AND_LATE | {"order_visibility_lag_ms": 2500}, timeout=10)
        assert bot.post(signal("lost-1")).status_code == 202
        assert bot.post(signal("lost-2", symbol="ETHUSDT", stop_loss=3400)).status_code == 202
        wait_for(lambda: len(bot.sim_orders()) == 2, what="both entries at the venue")

        answer = admin_answer(bot, "halt", {"reason": "drill", "flatten": True})

        report = answer.json()
        assert all(row["done"] for row in report["cancelled"] + report["flattened"]), report
        assert sorted(row["symbol"] for row in report["flattened"]) == ["BTCUSDT", "ETHUSDT"]
        assert _held_at_venue(bot) == {}
    finally:
        requests.post(faults, json={}, timeout=10)
        bot.stop()


def test_an_entry_the_venue_does_not_show_in_time_is_a_row_not_done(
    sim_config: Callable[..., Path],
) -> None:
    bot = RunningBot(sim_config(extra="\n[execution]\nunseen_final_after_s = 1\n")).start()
    faults = f"{bot.service.sim_url}/sim/faults"
    try:
        requests.post(faults, json=_LOST_AND_LATE | {"order_visibility_lag_ms": 8000}, timeout=10)
        assert bot.post(signal("unseen")).status_code == 202
        wait_for(lambda: bot.sim_orders(), what="the entry at the venue")

        answer = admin_answer(bot, "halt", {"reason": "drill", "flatten": True})

        [row] = answer.json()["cancelled"]
        assert row["done"] is False
        assert "the venue does not show it yet" in str(row["status"]), row
        assert _held_at_venue(bot) == {"BTCUSDT": "0.005"}  # for the operator's next halt
    finally:
        requests.post(faults, json={}, timeout=10)
        bot.stop()


def _held_with_room_taken(bot: RunningBot, part: Decimal) -> HTTP:
    """A position held, `part` of whose reduce-only room another client of the key takes with
    a resting order; that client."""
    secrets = bot.settings.state_dir / "secrets"
    other = HTTP(
        api_key=(secrets / "bot_key_follow_sim_api_key").read_text().strip(),
        api_secret=(secrets / "bot_key_follow_sim_api_secret").read_text().strip(),
        max_retries=1,
    )
    other.endpoint = bot.service.sim_url
    assert bot.post(signal("held")).status_code == 202
    wait_for(lambda: venue_position(bot) or None, what="the venue's position")
    other.place_order(
        category="linear",
        symbol="BTCUSDT",
        side="Sell",
        orderType="Limit",
        qty=str(part),
        price="120000",
        reduceOnly=True,
    )
    return other


def test_a_close_signal_the_venue_trimmed_is_said(sim_config: Callable[..., Path]) -> None:
    """It showed Filled, for less than the position, and nothing said that the rest was left
    open (found by a probe)."""
    bot = RunningBot(sim_config()).start()
    said: list[str] = []
    sink = logger.add(
        lambda m: said.append(m.record["message"]),
        filter=lambda r: r["extra"].get("notify") == "venue_error",
    )
    try:
        _held_with_room_taken(bot, Decimal("0.001"))

        assert bot.post(signal("close", action="close")).status_code == 202

        wait_for(lambda: bot.journal_status("close") == ["Filled"], what="the close filled")
        wait_for(lambda: said, what="the trim said")
        assert "filled 0.004 of 0.005: the venue trimmed it" in said[0], said
    finally:
        logger.remove(sink)
        bot.stop()


def test_a_flatten_the_venue_trimmed_is_not_done(sim_config: Callable[..., Path]) -> None:
    bot = RunningBot(sim_config()).start()
    try:
        part = Decimal("0.001")
        other = _held_with_room_taken(bot, part)

        answer = admin_answer(bot, "halt", {"reason": "drill", "flatten": True})

        [row] = answer.json()["flattened"]
        assert row["done"] is False  # the venue closed only what the other order left
        assert "the venue trimmed it" in row["status"], row["status"]
        [position] = other.get_positions(category="linear", symbol="BTCUSDT")["result"]["list"]
        assert Decimal(position["size"]) == part  # the rest, still open
    finally:
        bot.stop()


def test_a_restarted_sim_bot_finds_its_position_and_stop_where_it_left_them(
    sim_config: Callable[..., Path],
) -> None:
    """The in-process simulator starts empty: it resumes from the journal, so the books and the
    venue still agree after a restart (the position can be flattened, its stop still waits,
    under the id the journal knows: not reported gone and replaced at each restart)."""
    config = sim_config()

    def waiting_stops(bot: RunningBot) -> list[dict[str, Any]]:
        orders = requests.get(f"{bot.service.sim_url}/sim/orders", timeout=10).json()["orders"]
        return [
            order
            for order in orders
            if order["stopOrderType"] == "StopLoss" and order["orderStatus"] == "Untriggered"
        ]

    first = RunningBot(config).start()
    try:
        assert first.post(signal("before-restart", stop_loss=90000)).status_code == 202
        price = sim_price(first)
        resting = signal("resting", entry=round(price * 0.95), stop_loss=round(price * 0.9))
        assert first.post(resting).status_code == 202
        wait_for(lambda: venue_position(first) > 0, what="the position")
        wait_for(lambda: first.journal_status("resting") == ["New"], what="the resting order")
        held = venue_position(first)
        (first_stop,) = wait_for(lambda: waiting_stops(first), what="the stop")
    finally:
        first.stop()

    second = RunningBot(config).start()
    try:
        stops = wait_for(lambda: waiting_stops(second), what="the stop at the restarted simulator")
        assert [(stop["triggerPrice"], Decimal(stop["qty"])) for stop in stops] == [("90000", held)]
        assert [stop["orderId"] for stop in stops] == [first_stop["orderId"]]

        answer = admin_answer(second, "halt", {"reason": "after restart", "flatten": True})

        assert answer.status_code == 200, answer.text
        assert [(row["status"], row["done"]) for row in answer.json()["cancelled"]] == [
            ("Cancelled", True)  # the resting order was still at the venue, under its ids
        ]
        assert [(row["status"], row["done"]) for row in answer.json()["flattened"]] == [
            ("Filled", True)
        ]
        wait_for(lambda: venue_position(second) == 0, what="a flat position")
        assert second.journal_status("resting") == ["Cancelled"]
    finally:
        second.stop()


def test_a_resumed_position_never_takes_a_stop_of_an_earlier_one(
    sim_config: Callable[..., Path],
) -> None:
    """The journal still holds an earlier long's stop as waiting (the simulator that held it
    is gone): a short resumed now must not get it (on the short's side it would fire at
    once), and the stale row is ended."""
    config = sim_config()
    now = datetime.now(UTC)
    journal = Journal(load_settings(config).journal_path)
    journal.record_exit(
        stop_loss(
            order_id="stop-of-the-long",
            trigger_price=Decimal(90000),
            ts=now - timedelta(hours=1),
        )
    )
    journal.record_position(sim_position(Decimal("-0.01"), ts=now))
    journal.close()

    bot = RunningBot(config).start()
    try:
        time.sleep(0.5)  # a tick or two: a wrong stop would have fired by now
        orders = requests.get(f"{bot.service.sim_url}/sim/orders", timeout=10).json()["orders"]
        assert venue_position(bot) == Decimal("-0.01")
        waiting = bot.read_journal(lambda j: j.waiting_exits())
    finally:
        bot.stop()

    assert [o for o in orders if o["stopOrderType"]] == []
    assert waiting == []


def test_no_opening_order_waiting_for_the_venues_rate_limit_is_sent_after_a_halt(
    sim_config: Callable[..., Path],
) -> None:
    """An order approved before a halt, waiting for room under the key's order rate limit
    when the halt is answered, is never sent: the halt holds from its answer, whatever was
    queued."""
    bot = RunningBot(sim_config(extra="\n[sim]\norder_create_per_s = 1\n")).start()
    try:
        assert bot.post(signal("first")).status_code == 202  # the key learns its limit: 1/s
        wait_for(lambda: bot.journal_status("first") == ["Filled"], what="the first fill")
        eth = sim_price(bot, "ETHUSDT")
        assert bot.post(signal("btc")).status_code == 202
        eth_signal = signal("eth", symbol="ETHUSDT", stop_loss=round(eth * 0.95))
        assert bot.post(eth_signal).status_code == 202
        wait_for(lambda: len(bot.sim_orders()) == 2, what="one of the two sent")

        answer = admin_answer(bot, "halt", {"reason": "drill"})
        answered_ms = time.time() * 1000

        assert answer.status_code == 200, answer.text
        time.sleep(2.5)  # the second order's turn under the limit comes and goes
        late = [
            order["orderLinkId"]
            for order in bot.sim_orders()
            if int(str(order["createdTime"])) > answered_ms
        ]
        assert late == []
        statuses = sorted(bot.journal_status("btc") + bot.journal_status("eth"))
        assert statuses == ["Filled", "Rejected"]
    finally:
        bot.stop()


def resting(
    signal_id: str, bot: RunningBot, symbol: str = "BTCUSDT", below: float = 0.95
) -> dict[str, object]:
    """A buy limit `below` the market, far enough to rest."""
    price = sim_price(bot, symbol)
    return signal(
        signal_id, symbol=symbol, entry=round(price * below), stop_loss=round(price * 0.9)
    )


def sim_requests(bot: RunningBot, path: str) -> int:
    stats = requests.get(f"{bot.service.sim_url}/sim/stats", timeout=10).json()
    return int(stats["requests_by_path"].get(path, 0))


def test_halts_with_cancel_open_at_once_cancel_each_order_once(
    sim_config: Callable[..., Path],
) -> None:
    """Operators (or a retrying script) cancelling together: one cancel per order reaches the
    venue, not one per command (each costs a request of the key's limit, which the closes of
    a flatten wait behind)."""
    bot = RunningBot(sim_config()).start()
    try:
        ids = [f"resting-{index}" for index in range(4)]
        for index, signal_id in enumerate(ids):
            below = 0.95 - index / 100
            assert bot.post(resting(signal_id, bot, below=below)).status_code == 202
        wait_for(
            lambda: all(bot.journal_status(signal_id) == ["New"] for signal_id in ids),
            what="four resting orders",
        )
        cancels_before = sim_requests(bot, "/v5/order/cancel")

        with ThreadPoolExecutor(max_workers=3) as senders:
            answers = list(
                senders.map(
                    lambda index: admin_answer(
                        bot, "halt", {"reason": f"drill {index}", "cancel_open": True}
                    ),
                    range(3),
                )
            )

        assert [answer.status_code for answer in answers] == [200] * 3
        rows = [row for answer in answers for row in answer.json()["cancelled"]]
        assert all(row["done"] for row in rows), rows
        assert sorted({str(row["order_link_id"]) for row in rows}) == sorted(
            {str(row["orderLinkId"]) for row in bot.sim_orders()}
        )
        assert sim_requests(bot, "/v5/order/cancel") - cancels_before == 4
        assert [bot.journal_status(signal_id) for signal_id in ids] == [["Cancelled"]] * 4
    finally:
        bot.stop()


def test_a_cancel_longer_than_its_wait_reports_only_orders_still_being_sent(
    sim_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An order being sent when the halt came, settled while the other cancels took longer
    than the wait for it, is not reported "still being sent" (not done, `bot halt` exits 1)
    from what was seen before those cancels."""
    monkeypatch.setattr("bot.risk.kill_switch._CANCEL_WAIT_S", 0.3)
    limits = '{ "/v5/order/create" = 1, "/v5/order/cancel" = 1 }'
    bot = RunningBot(sim_config(extra=f"\n[sim]\nrate_limits_per_s = {limits}\n")).start()
    try:
        ids = ["rest-btc", "rest-eth", "rest-btc-2"]
        for signal_id in ids:
            symbol = "ETHUSDT" if "eth" in signal_id else "BTCUSDT"
            below = 0.94 if signal_id.endswith("2") else 0.95
            assert bot.post(resting(signal_id, bot, symbol, below)).status_code == 202
            wait_for(lambda: bot.journal_status(signal_id) == ["New"], what=signal_id)  # noqa: B023
        assert bot.post(resting("on-its-way", bot, "ETHUSDT", 0.94)).status_code == 202
        wait_for(
            lambda: bot.journal_status("on-its-way") == ["Submitting"],
            what="an order waiting for room under the limit",
        )

        answer = admin_answer(bot, "halt", {"reason": "drill", "cancel_open": True})

        assert answer.status_code == 200, answer.text
        rows = answer.json()["cancelled"]
        assert [row for row in rows if not row["done"]] == []
        assert bot.journal_status("on-its-way") == ["Rejected"]  # held: never sent
        assert [bot.journal_status(signal_id) for signal_id in ids] == [["Cancelled"]] * 3
    finally:
        bot.stop()
