"""The kill switch through the whole bot: the signed admin routes, effective for the very
next intent, journaled, and still in force after a restart; `bot halt` with no bot running."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

from signals.voiceofchain import SIGNATURE_HEADER, sign
from tests.bot.test_service import RunningBot, signal
from tests.conftest import wait_for


def admin(bot: RunningBot, route: str, body: dict[str, object], secret: str | None = None) -> int:
    raw = json.dumps(body).encode()
    if secret is None:
        secret = (bot.settings.state_dir / "secrets" / "bot_admin_secret").read_text().strip()
    answer = requests.post(
        f"{bot.url}/admin/{route}",
        data=raw,
        headers={SIGNATURE_HEADER: sign(secret, raw, int(time.time()))},
        timeout=10,
    )
    return answer.status_code


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


def test_bot_halt_with_no_bot_running_is_journaled_for_its_start(
    sim_config: Callable[..., Path],
) -> None:
    config = sim_config(port=1)  # nothing listens there

    def bot(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bot", *args, "--config", str(config)],
            cwd=config.parent,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    halted = bot("halt", "--strategy", "follow", "--reason", "weekend")
    status = bot("risk", "status", "--json")

    assert halted.returncode == 0, halted.stderr
    assert "applies when it starts" in halted.stdout
    rows = {row["scope"]: row for row in map(json.loads, status.stdout.splitlines())}
    assert (rows["follow"]["state"], rows["follow"]["reason"]) == ("HALTED", "weekend")
    assert rows["(bot)"]["state"] == "ACTIVE"
