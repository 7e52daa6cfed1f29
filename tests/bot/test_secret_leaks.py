"""Leak test (issue 8, point 6): secrets with known values go through the whole bot, its
failures included, and none of them comes out anywhere.

One scenario, run once for the module, with the real CLI in subprocesses, in `sim`:
- `bot run --log-json --log-level DEBUG`, the API key, API secret, webhook secret and admin
  secret given as environment variables (the webhook, admin and API secrets hold characters
  that JSON and repr escape: quotes, backslashes, a newline, non-ASCII);
- signals: filled (over HTTP and with `bot signal send`), a duplicate, a bad signature, one
  the risk gate rejects, one the strategy declines, one to a strategy that raises (its
  traceback in the log shows the webhook secret in a chained `KeyError`, repr-escaped);
- `bot halt`, a forged admin request, a signal while halted, `/admin/resume`;
- venue faults injected in the simulator (`/sim/faults`): HTTP 503, an executed order
  answered 503 whose fill cuts the account stream (pybit reconnects and signs in again),
  10016 everywhere, a lost answer with the clock ten minutes off; then healed;
- `/metrics`, `/healthz`, the simulator's `/sim/orders`, `/sim/streams`, `/sim/stats`;
  SIGTERM;
- beside it the same bot without `--log-json` (console logs), lighter, whose raising
  strategy puts the admin secret in the exception's message too;
- start-up failures: an API key the simulator refuses (pydantic's error holds it), in JSON
  and console mode, and one longer than 64 characters;
- afterwards `bot orders --json`, `bot positions --json`, `bot risk status --json`.

Every output is then searched for each secret, its first 8 characters, its JSON-escaped
forms (both `ensure_ascii` ways) and its repr-escaped form: zero hits. The state
directories' files (the journal, its `-wal` and `-shm`, copied while the bot runs and read
again after it stopped) are searched as bytes, except `secrets/`, where `sim` keeps the
secrets it generates (none here: all four are given).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
import requests

from bot.journal import Journal
from signals.voiceofchain import SIGNATURE_HEADER, sign
from tests.conftest import SIM_CONFIG, free_port, wait_for

#: Known secret values; each starts with 8 random characters, so a hit on the first 8 is a
#: leak, not chance. API keys in `sim` must match ^[A-Za-z0-9_-]+$.
API_KEY = f"{secrets.token_hex(4)}Key_{secrets.token_urlsafe(18)}"
API_SECRET = f'{secrets.token_hex(4)}S"e\\c/é{secrets.token_urlsafe(18)}'
WEBHOOK_SECRET = f"{secrets.token_hex(4)}wh\"'\\é€{secrets.token_urlsafe(18)}"
ADMIN_SECRET = f'{secrets.token_hex(4)}ad\\m"\n{secrets.token_urlsafe(18)}'
#: The API key of a start-up failure: one the simulator refuses (a space, `+` and `/`),
#: short enough for pydantic to show it whole in its error.
BAD_API_KEY = f"{secrets.token_hex(4)} bad+key/{secrets.token_hex(8)}"
#: Over 64 characters: pydantic's error shows only its first 25 and last 24.
LONG_BAD_API_KEY = f"{secrets.token_hex(4)} bad+key/{secrets.token_hex(32)}"

SECRET_ENV = {
    "BOT_KEY_FOLLOW_SIM_API_KEY": API_KEY,
    "BOT_KEY_FOLLOW_SIM_API_SECRET": API_SECRET,
    "BOT_WEBHOOK_SECRET_VOICEOFCHAIN": WEBHOOK_SECRET,
    "BOT_ADMIN_SECRET": ADMIN_SECRET,
}
ALL_SECRETS = {**SECRET_ENV, "bad API key": BAD_API_KEY, "long bad API key": LONG_BAD_API_KEY}

#: A strategy with a bug that puts secrets into its exceptions: always the webhook secret,
#: as a chained `KeyError` (its repr in the traceback); the admin secret in the message too
#: if the signal asks (the message is also the journaled reason of the decline).
LEAKY_PLUGIN = """
import os

from strategies.base import Strategy


class Boom(Strategy):
    def on_signal(self, signal, context):
        try:
            {}[os.environ["BOT_WEBHOOK_SECRET_VOICEOFCHAIN"]]
        except KeyError as exc:
            message = "cannot sign"
            if signal.raw.get("secret_in_message"):
                message += " with " + os.environ["BOT_ADMIN_SECRET"]
            raise RuntimeError(message) from exc
"""
EXTRA_CONFIG = """
[execution]
# Quick retries and reconciliation: the faults play out within a second.
backoff_base_s = 0.02
backoff_max_s = 0.1
lookup_delays_s = [0.02, 0.05]
follow_s = 0.5
reconcile_interval_s = 0.2
exit_scan_interval_s = 0.5

[strategies.boom]
plugin = "leaky.boom:Boom"  # a package in the bot's working directory
key = "follow_sim"
"""

#: Leaks this test finds whose fix lies outside the logging configuration. Each check stays
#: in place and fails until its cause is fixed; the message says where.


def forms(secret: str) -> dict[str, bytes]:
    """What must not appear: the value, its first 8 characters, JSON- and repr-escaped."""
    spelled = {
        "value": secret,
        "first 8 characters": secret[:8],
        "JSON-escaped": json.dumps(secret)[1:-1],
        "JSON-escaped (ensure_ascii=False)": json.dumps(secret, ensure_ascii=False)[1:-1],
        "repr-escaped": repr(secret)[1:-1],
    }
    return {name: text.encode() for name, text in spelled.items()}


def hits(haystack: bytes) -> list[str]:
    """Each secret's form found in `haystack`, with the bytes around its first hit."""
    found = []
    for secret_name, secret in ALL_SECRETS.items():
        for form, needle in forms(secret).items():
            at = haystack.find(needle)
            if at >= 0:
                around = haystack[max(0, at - 100) : at + len(needle) + 40]
                found.append(f"{secret_name} ({form}) in ...{around!r}...")
    return found


def bot_env(**changes: str) -> dict[str, str]:
    return {**os.environ, **SECRET_ENV, **changes}


def cli(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`bot <args> --config folder/bot.toml`, started in `folder`."""
    return subprocess.Popen(
        [sys.executable, "-m", "bot", *args, "--config", str(folder / "bot.toml")],
        cwd=folder,
        env=env or bot_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finished(process: subprocess.Popen[bytes]) -> tuple[int, bytes]:
    """Exit code and stdout + stderr of a process started by `cli`."""
    stdout, stderr = process.communicate(timeout=60)
    return process.returncode, stdout + stderr


def write_config(folder: Path, extra: str = "") -> int:
    """A sim configuration in `folder` (state in `folder/var`); its HTTP port."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    config = SIM_CONFIG.format(state_dir=folder / "var", port=port)
    one_key = '[keys.follow_sim]\nenvironment = "sim"\n'
    assert one_key in config
    config = config.replace(one_key, one_key + "shared = true\n")  # follow and boom
    (folder / "bot.toml").write_text(config + extra)
    return port


class BotProcess:
    """`bot run` in a subprocess; its stdout and stderr collected as they come."""

    def __init__(self, folder: Path, *options: str) -> None:
        self.folder = folder
        self.state_dir = folder / "var"
        self.port = write_config(folder, EXTRA_CONFIG)
        (folder / "leaky").mkdir()
        (folder / "leaky" / "__init__.py").write_text("")
        (folder / "leaky" / "boom.py").write_text(LEAKY_PLUGIN)
        self.answers: list[bytes] = []  # every HTTP answer's body
        self.process = cli(folder, "run", *options)
        self._output = bytearray()
        self._lock = threading.Lock()
        self._readers = [
            threading.Thread(target=self._read, args=(stream,), daemon=True)
            for stream in (self.process.stdout, self.process.stderr)
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            with self._lock:
                self._output += line

    def output(self) -> bytes:
        with self._lock:
            return bytes(self._output)

    def logged(self, text: bytes) -> Callable[[], bool]:
        """A probe: has the bot logged `text`?"""
        return lambda: text in self.output()

    def finish(self, timeout_s: float = 20) -> bytes:
        """SIGTERM, wait for the exit; the whole output."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout_s)
        for reader in self._readers:
            reader.join(5)
        return self.output()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"the bot exited {self.process.returncode}:\n{self.output().decode()}")
        try:
            return requests.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:  # not up, or too busy starting to answer yet
            return False

    def sim_url(self) -> str:
        """The in-process simulator's URL, from the JSON log."""

        def logged() -> str | None:
            for line in self.output().splitlines():
                if b"simulator running in-process" in line:
                    return str(json.loads(line)["url"])
            return None

        return wait_for(logged, what="the simulator's URL in the log")

    def _post(self, path: str, body: dict[str, object], secret: str) -> int:
        raw = json.dumps(body).encode()
        answer = requests.post(
            self.url + path,
            data=raw,
            headers={SIGNATURE_HEADER: sign(secret, raw, int(time.time()))},
            timeout=30,
        )
        self.answers.append(answer.content)
        return answer.status_code

    def post_signal(self, body: dict[str, object], secret: str = WEBHOOK_SECRET) -> int:
        return self._post("/webhooks/voiceofchain", body, secret)

    def post_admin(self, route: str, body: dict[str, object], secret: str = ADMIN_SECRET) -> int:
        return self._post(f"/admin/{route}", body, secret)

    def outcome(self, signal_id: str) -> str | None:
        """The signal's order status, else its decision once decided; None while pending."""
        journal = Journal(self.state_dir / "journal.sqlite3", read_only=True)
        try:
            rows = journal.trace(10_000)
        finally:
            journal.close()
        for row in rows:
            if row.signal_id == signal_id and row.decision != "pending":
                return row.status or row.decision
        return None

    def state_files(self) -> dict[str, bytes]:
        """Every file of the state directory but `secrets/`, as bytes."""
        found = {}
        for path in sorted(self.state_dir.rglob("*")):
            if path.is_file() and "secrets" not in path.relative_to(self.state_dir).parts:
                try:
                    found[path.name] = path.read_bytes()
                except FileNotFoundError:  # a -wal checkpointed away meanwhile
                    continue
        return found


def signal_body(signal_id: str, **fields: object) -> dict[str, object]:
    body: dict[str, object] = {
        "id": signal_id,
        "symbol": "BTCUSDT",
        "side": "buy",
        "stop_loss": 95000,
        "strategy": "follow",
        "ts": int(time.time() * 1000),
        **fields,
    }
    return {key: value for key, value in body.items() if value is not None}


@dataclass
class Scenario:
    """Every output of the scenario by name, and what happened (to check it did)."""

    outputs: dict[str, bytes] = field(default_factory=dict)
    facts: dict[str, object] = field(default_factory=dict)


def _drive(bot: BotProcess, console: BotProcess, scenario: Scenario) -> None:
    facts, outputs = scenario.facts, scenario.outputs
    sim = bot.sim_url()

    # Signals: filled, duplicate, bad signature, rejected by the gate, declined, raising.
    sent = cli(
        bot.folder,
        *("signal", "send", "--symbol", "BTCUSDT", "--side", "buy", "--stop-loss", "95000"),
        *("--strategy", "follow", "--id", "by-cli"),
    )
    facts["answers"] = [
        bot.post_signal(signal_body("filled-1")),
        bot.post_signal(signal_body("filled-2", symbol="ETHUSDT", stop_loss=3300)),
        bot.post_signal(signal_body("filled-1")),
        bot.post_signal(signal_body("forged"), secret=WEBHOOK_SECRET[:-1]),
        bot.post_signal(signal_body("gate-rejects", symbol="SOLUSDT", stop_loss=170)),
        bot.post_signal(signal_body("no-stop", stop_loss=None)),
        bot.post_signal(signal_body("raises", strategy="boom")),
        console.post_signal(signal_body("console-filled")),
        console.post_signal(signal_body("console-raises", strategy="boom", secret_in_message=True)),
    ]
    facts["bot signal send exit"], outputs["bot signal send"] = finished(sent)
    expected = {
        "filled-1": "Filled",
        "filled-2": "Filled",
        "by-cli": "Filled",
        "gate-rejects": "rejected",
        "no-stop": "declined",
        "raises": "failed",
    }
    wait_for(
        lambda: all(bot.outcome(sid) == status for sid, status in expected.items()),
        what=f"the outcomes {expected}",
    )
    wait_for(lambda: console.outcome("console-raises"), what="the console bot's decline")

    # The kill switch: halt with the CLI, a forged request, a signal refused, resume.
    facts["bot halt exit"], outputs["bot halt"] = finished(
        cli(bot.folder, "halt", "--reason", "leak drill")
    )
    facts["forged admin"] = bot.post_admin("halt", {"reason": "forged"}, ADMIN_SECRET[1:])
    bot.post_signal(signal_body("while-halted"))
    facts["while halted"] = wait_for(
        lambda: bot.outcome("while-halted"), what="the halted signal's decision"
    )
    facts["resume"] = bot.post_admin("resume", {})

    # Venue faults, each until the log shows its effect. Then the venue heals.
    phases: list[tuple[dict[str, float], bytes]] = [
        ({"http_5xx": 1.0}, b"HTTP 503"),
        ({"accept_then_5xx": 1.0, "stream_drop": 1.0}, b"account stream error"),
        ({"timeout_10016": 1.0}, b"retCode 10016"),
        ({"drop_response_after_accept": 1.0, "clock_skew_ms": 600_000}, b"retCode 10002"),
    ]
    for n, (faults, effect) in enumerate(phases):
        answer = requests.post(f"{sim}/sim/faults", json=faults, timeout=10)
        assert answer.status_code == 200, answer.text
        bot.post_signal(signal_body(f"fault-{n}"))
        wait_for(bot.logged(effect), what=f"{effect!r} in the log")
    running = bot.state_files()
    outputs["state files while running"] = b"".join(running.values())
    facts["a -wal while running"] = any(name.endswith("-wal") for name in running)
    requests.post(f"{sim}/sim/faults", json={}, timeout=10)
    bot.post_signal(signal_body("healed"))
    wait_for(lambda: bot.outcome("healed") == "Filled", what="a fill once healed")

    for route in ("/metrics", "/healthz"):
        outputs[route] = requests.get(bot.url + route, timeout=10).content
    for route in ("/sim/orders", "/sim/streams", "/sim/stats"):
        outputs[f"simulator {route}"] = requests.get(sim + route, timeout=10).content


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    root = tmp_path_factory.mktemp("leaks")
    result = Scenario()
    starts: dict[str, tuple[Path, str, tuple[str, ...]]] = {
        "start-up failure (JSON)": (root / "fail-json", BAD_API_KEY, ("--log-json",)),
        "start-up failure (console)": (root / "fail-console", BAD_API_KEY, ()),
        "start-up failure, long key": (root / "fail-long", LONG_BAD_API_KEY, ("--log-json",)),
    }
    processes: dict[str, subprocess.Popen[bytes]] = {}
    for name, (folder, api_key, options) in starts.items():
        write_config(folder)
        processes[name] = cli(
            folder, "run", *options, env=bot_env(BOT_KEY_FOLLOW_SIM_API_KEY=api_key)
        )
    bot = BotProcess(root / "json", "--log-json", "--log-level", "DEBUG")
    console = BotProcess(root / "console")
    try:
        wait_for(lambda: bot.healthy() and console.healthy(), 30, "both bots to serve")
        _drive(bot, console, result)
        result.outputs["bot run --log-json"] = bot.finish()
        result.outputs["bot run (console)"] = console.finish()
        result.facts["exit codes"] = (bot.process.returncode, console.process.returncode)
        result.outputs["HTTP answers"] = b"\n".join(bot.answers + console.answers)
        processes |= {
            "bot orders --json": cli(bot.folder, "orders", "--json", "--limit", "1000"),
            "bot positions --json": cli(bot.folder, "positions", "--json"),
            "bot risk status --json": cli(bot.folder, "risk", "status", "--json"),
            "bot orders (console bot)": cli(console.folder, "orders", "--json"),
        }
        for name, process in processes.items():
            result.facts[f"{name} exit"], result.outputs[name] = finished(process)
        result.outputs["state files after the run"] = b"".join(bot.state_files().values())
        result.outputs["console bot's state files"] = b"".join(console.state_files().values())
        yield result
    finally:
        for running in (bot, console):
            running.kill()
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)


SINKS = [
    "bot run --log-json",
    "bot run (console)",
    "start-up failure (JSON)",
    "start-up failure (console)",
    "start-up failure, long key",
    "bot signal send",
    "bot halt",
    "HTTP answers",
    "/metrics",
    "/healthz",
    "simulator /sim/orders",
    "simulator /sim/streams",
    "simulator /sim/stats",
    "state files while running",
    "state files after the run",
    "console bot's state files",
    "bot orders --json",
    "bot positions --json",
    "bot risk status --json",
    "bot orders (console bot)",
]


@pytest.mark.parametrize("sink", SINKS)
def test_no_secret_in(scenario: Scenario, sink: str) -> None:
    found = hits(scenario.outputs[sink])
    assert found == []


def test_the_scenario_did_what_it_says(scenario: Scenario) -> None:
    """Zero hits mean something only if every path ran (and wrote where it is searched)."""
    facts, outputs = scenario.facts, scenario.outputs
    assert facts["answers"] == [202, 202, 200, 401, 202, 202, 202, 202, 202]
    assert (facts["bot signal send exit"], facts["bot halt exit"]) == (0, 0)
    assert (facts["forged admin"], facts["while halted"], facts["resume"]) == (
        401,
        "rejected",
        200,
    )
    assert facts["exit codes"] == (0, 0)  # SIGTERM: a clean stop
    json_logs = outputs["bot run --log-json"].decode()
    assert "strategy boom: on_signal raised" in json_logs
    assert "KeyError: '***'" in json_logs  # the repr-escaped webhook secret, scrubbed
    for effect in ("HTTP 503", "account stream error", "retCode 10016", "retCode 10002"):
        assert effect in json_logs
    console_logs = outputs["bot run (console)"].decode()
    assert "KeyError: '***'" in console_logs
    assert "RuntimeError: cannot sign with ***" in console_logs
    assert facts["a -wal while running"]
    assert b'"signal_id":"filled-1"' in outputs["bot orders --json"]
    assert b'"signal_id":"console-raises"' in outputs["bot orders (console bot)"]
    assert b"bot_http_responses_total" in outputs["/metrics"]
    for name in ("start-up failure (JSON)", "start-up failure (console)"):
        assert facts[f"{name} exit"] != 0
        # One line naming what is wrong, never the value.
        assert (
            b"the secrets of sim key follow_sim do not fit the simulator: api_key"
            in (outputs[name])
        )
