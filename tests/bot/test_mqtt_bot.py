"""The whole bot on a real mosquitto: `bot signal send --mqtt` becomes an order, and the
broker's state shows in /healthz (not ready while it is down, ready again when it is back)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import requests
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import SecretStr

from bot.config import load_settings
from bot.journal import Journal, TraceRow
from bot.logs import logger
from signals.mqtt import SIGNATURE_PROPERTY, publish_signal
from signals.voiceofchain import sign
from tests.bot.test_admin import decision_of
from tests.bot.test_service import RunningBot, signal
from tests.conftest import StartBot, free_port, wait_for
from tests.signals.mosquitto import (  # noqa: F401 - the broker fixture
    Mosquitto,
    dynamic_security,
    mosquitto,
)


def health(bot: RunningBot) -> requests.Response:
    return requests.get(f"{bot.url}/healthz", timeout=10)


def send_mqtt(
    config: Path, *options: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`bot signal send --mqtt` with `config`, to its end; `env` adds variables."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "bot",
            "signal",
            "send",
            "--mqtt",
            "--config",
            str(config),
            *options,
        ],
        cwd=config.parent,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_signal_published_with_the_cli_becomes_an_order_and_healthz_follows_the_broker(
    sim_config: Callable[..., Path],
    mosquitto: Mosquitto,  # noqa: F811
) -> None:
    extra = (
        f'\n[mqtt]\nenabled = true\nport = {mosquitto.port}\nclient_id = "bot-e2e"\n'
        "reconnect_max_s = 0.5\n"
    )
    config = sim_config(extra=extra)
    bot = RunningBot(config).start()
    try:
        wait_for(lambda: health(bot).status_code == 200, what="the broker connected")
        sent = send_mqtt(
            config,
            "--symbol",
            "BTCUSDT",
            "--side",
            "buy",
            "--stop-loss",
            "95000",
            "--id",
            "via-mqtt",
        )
        assert sent.returncode == 0, sent.stderr
        assert "published to signals/voiceofchain" in sent.stdout
        wait_for(lambda: bot.journal_status("via-mqtt") == ["Filled"], what="the order")
        sources = health(bot).json()["signal_sources"]
        assert sources["mqtt:voiceofchain"]["state"] == "connected"

        mosquitto.stop()
        # (a requests.Response is falsy when its status is an error: wait on its body)
        down = wait_for(
            lambda: (h := health(bot)).status_code == 503 and h.json(), what="not ready"
        )
        assert down["signal_sources"]["mqtt:voiceofchain"]["state"] == "down"
        mosquitto.start()
        wait_for(lambda: health(bot).status_code == 200, what="ready again")
    finally:
        bot.stop()


def controlled_bot(
    sim_config: Callable[..., Path],
    mosquitto: Mosquitto,  # noqa: F811
    client_id: str,
) -> tuple[RunningBot, str]:
    """A running bot taking commands on `bot/control/<halt|resume>`, and its admin secret."""
    extra = (
        f'\n[mqtt]\nenabled = true\nport = {mosquitto.port}\nclient_id = "{client_id}"\n'
        'control_topic = "bot/control"\n'
    )
    bot = RunningBot(sim_config(extra=extra)).start()
    return bot, (bot.settings.state_dir / "secrets" / "bot_admin_secret").read_text().strip()


def test_the_kill_switch_answers_signed_commands_on_the_control_topic(
    sim_config: Callable[..., Path],
    mosquitto: Mosquitto,  # noqa: F811
) -> None:
    bot, admin_secret = controlled_bot(sim_config, mosquitto, "bot-control")
    secret = SecretStr(admin_secret)

    def command(name: str, body: dict[str, object], signing: SecretStr | None) -> None:
        asyncio.run(
            publish_signal(
                bot.settings.mqtt,
                body,
                password=None,
                signing_secret=signing,
                topic=f"bot/control/{name}",
            )
        )

    def state(scope: str = "(bot)") -> str:
        states = bot.read_journal(lambda journal: journal.trading_states())
        return next((s.state.value for s in states if s.scope == scope), "ACTIVE")

    try:
        wait_for(lambda: health(bot).status_code == 200, what="the broker connected")
        command("halt", {"reason": "over mqtt"}, secret)
        wait_for(lambda: state() == "HALTED", what="the halt")
        assert bot.post(signal("while-halted")).status_code == 202
        assert decision_of(bot, "while-halted")[0] == "rejected"
        command("resume", {}, SecretStr("not-the-admin-secret"))
        command("halt", {"strategy": "follow"}, secret)  # handled after the forged resume
        wait_for(lambda: state("follow") == "HALTED", what="the strategy's halt")
        assert state() == "HALTED"  # the forged resume was refused
        command("resume", {}, secret)
        wait_for(lambda: state() == "ACTIVE", what="the resume")
        assert health(bot).json()["mqtt_control"] == "listening"
        mosquitto.stop()
        wait_for(
            lambda: health(bot).json()["mqtt_control"] == "down (commands over HTTP only)",
            what="the control topic shown down",
        )
    finally:
        bot.stop()


def test_a_control_message_nobody_signed_or_nested_too_deep_is_refused_and_the_bot_goes_on(
    sim_config: Callable[..., Path],
    mosquitto: Mosquitto,  # noqa: F811
) -> None:
    bot, secret = controlled_bot(sim_config, mosquitto, "bot-poison")
    deep = b"[" * 5000 + b"]" * 5000

    async def publish(payload: bytes, signatures: list[str]) -> None:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.UserProperty = [(SIGNATURE_PROPERTY, value) for value in signatures]
        async with aiomqtt.Client(
            "127.0.0.1", mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5
        ) as client:
            await client.publish("bot/control/halt", payload, qos=1, properties=properties)

    def signed(payload: bytes) -> str:
        return sign(secret, payload, int(time.time()))  # "t=<unix>,v1=<hex>"

    try:
        wait_for(lambda: health(bot).status_code == 200, what="the broker connected")
        asyncio.run(publish(b"{}", ["t=1,v1=aa", "t=2,v1=bb"]))  # two signatures: no secret
        asyncio.run(publish(deep, [signed(deep)]))  # signed, but nested 5,000 deep
        asyncio.run(
            publish(b'{"reason": "still listening"}', [signed(b'{"reason": "still listening"}')])
        )

        wait_for(
            lambda: any(
                s.reason == "still listening"
                for s in bot.read_journal(lambda journal: journal.trading_states())
            ),
            what="the good command after the bad ones",
        )
        assert health(bot).status_code == 200
        assert bot.error is None
    finally:
        bot.stop()


def test_a_retained_command_is_refused_when_a_subscription_finds_it(
    sim_config: Callable[..., Path],
    mosquitto: Mosquitto,  # noqa: F811
) -> None:
    extra = (
        f'\n[mqtt]\nenabled = true\nport = {mosquitto.port}\nclient_id = "bot-first"\n'
        'control_topic = "bot/control"\n'
    )
    config = sim_config(extra=extra)
    bot = RunningBot(config).start()  # makes the admin secret
    secret = (bot.settings.state_dir / "secrets" / "bot_admin_secret").read_text().strip()
    bot.stop()

    async def publish(topic: str, body: bytes, *, retain: bool) -> None:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.UserProperty = [(SIGNATURE_PROPERTY, sign(secret, body, int(time.time())))]
        async with aiomqtt.Client(
            "127.0.0.1", mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5
        ) as client:
            await client.publish(topic, body, qos=1, retain=retain, properties=properties)

    def states() -> dict[str, tuple[str, str]]:
        rows = bot.read_journal(lambda journal: journal.trading_states())
        return {row.scope: (row.state.value, row.reason) for row in rows}

    # Kept by the broker, it reaches every new subscription: here a new session (another
    # client id, as after a redeploy), which no queued copy reaches.
    asyncio.run(publish("bot/control/halt", b'{"reason": "kept"}', retain=True))
    config.write_text(config.read_text().replace('"bot-first"', '"bot-second"'))
    bot = RunningBot(config).start()
    try:
        wait_for(lambda: health(bot).status_code == 200, what="the broker connected")
        asyncio.run(
            publish("bot/control/halt", b'{"strategy": "follow", "reason": "live"}', retain=False)
        )
        wait_for(lambda: "follow" in states(), what="the live command after the retained one")
        assert "(bot)" not in states()  # the retained halt was not acted on
    finally:
        bot.stop()
        asyncio.run(publish("bot/control/halt", b"", retain=True))  # clears it at the broker


def test_cli_refuses_to_publish_a_signal_the_bot_would_refuse(
    sim_config: Callable[..., Path],
) -> None:
    """The broker cannot answer 422 as the webhook does: the CLI checks first (nothing needs to
    listen: it is refused before any connection)."""
    config = sim_config(extra="\n[mqtt]\nenabled = true\nport = 1\n")
    sent = send_mqtt(config, "--symbol", "BTCUSDT", "--side", "buy", "--strategy", "s" * 70)

    assert sent.returncode == 2
    assert sent.stderr.startswith("error: not published: ")
    assert "strategy" in sent.stderr
    assert "Traceback" not in sent.stderr


def test_cli_publishing_with_a_blank_broker_password_is_one_line(
    sim_config: Callable[..., Path],
) -> None:
    config = sim_config(extra="\n[mqtt]\nenabled = true\nport = 1\n")
    sent = send_mqtt(config, "--symbol", "BTCUSDT", "--side", "buy", env={"BOT_MQTT_PASSWORD": " "})

    assert sent.returncode == 2
    assert sent.stderr.strip() == (
        "error: the environment variable BOT_MQTT_PASSWORD is blank: set the secret, or unset it"
    )


def test_cli_publishing_refuses_a_webhook_url_it_would_not_use(
    sim_config: Callable[..., Path],
) -> None:
    config = sim_config(extra="\n[mqtt]\nenabled = true\nport = 1\n")
    sent = send_mqtt(config, "--symbol", "BTCUSDT", "--side", "buy", "--url", "http://x:1")

    assert sent.returncode == 2
    assert sent.stderr.strip() == (
        "error: --url names a webhook; with --mqtt the signal goes to the [mqtt] broker and "
        "topic (mqtt.host, mqtt.port): leave --url out"
    )


def test_cli_publishing_with_mqtt_off_says_the_bot_will_not_hear_it(
    sim_config: Callable[..., Path],
    mosquitto: Mosquitto,  # noqa: F811
) -> None:
    config = sim_config(extra=f"\n[mqtt]\nenabled = false\nport = {mosquitto.port}\n")
    sent = send_mqtt(config, "--symbol", "BTCUSDT", "--side", "buy", "--stop-loss", "95000")

    assert sent.returncode == 0, sent.stderr
    assert "published to signals/voiceofchain" in sent.stdout
    assert "note: [mqtt] is off in this configuration" in sent.stderr


def test_a_refused_message_is_journaled_with_its_kind_as_the_webhooks_are(
    sim_config: Callable[..., Path],
    mosquitto: Mosquitto,  # noqa: F811
) -> None:
    extra = (
        f'\n[mqtt]\nenabled = true\nport = {mosquitto.port}\nclient_id = "bot-kinds"\n'
        "require_signature = true\n"
    )
    config = sim_config(extra=extra)
    secrets = config.parent / "no-secrets"
    secrets.mkdir(exist_ok=True)
    signing_secret = "mqtt-signing-secret-of-this-test"
    (secrets / "bot_mqtt_signing_secret").write_text(signing_secret)
    bot = RunningBot(config).start()

    async def publish(payload: bytes, signature: str | None) -> None:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if signature is not None:
            properties.UserProperty = [(SIGNATURE_PROPERTY, signature)]
        async with aiomqtt.Client(
            "127.0.0.1", mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5
        ) as client:
            await client.publish("signals/voiceofchain", payload, qos=1, properties=properties)

    try:
        wait_for(lambda: health(bot).status_code == 200, what="the broker connected")
        asyncio.run(publish(json.dumps(signal("unsigned")).encode(), None))
        asyncio.run(publish(b"{not json", sign(signing_secret, b"{not json", int(time.time()))))
        rows = wait_for(
            lambda: (
                (rows := bot.read_journal(lambda journal: journal.rejections()))
                and len(rows) == 2
                and rows
            ),
            what="both refusals journaled",
        )
        # An operator asks the journal for the unauthorized attempts: MQTT's are among them.
        assert [(row["kind"], row["remote"]) for row in reversed(rows)] == [
            ("unauthorized", "mqtt signals/voiceofchain"),
            ("invalid_json", "mqtt signals/voiceofchain"),
        ]
    finally:
        bot.stop()


def test_cli_publishing_a_signal_the_broker_refuses_fails_instead_of_saying_published(
    sim_config: Callable[..., Path], tmp_path: Path
) -> None:
    # The broker's ACL does not let this user publish: it answers PUBACK 0x87, and the
    # signal is dropped. `bot signal send --mqtt` said "published" and exited 0.
    broker = Mosquitto(tmp_path / "acl-broker")
    dynamic_security(broker, {"publishClientSend": False})
    broker.start()
    try:
        config = sim_config(extra=f"\n[mqtt]\nenabled = true\nport = {broker.port}\n")
        sent = send_mqtt(config, "--symbol", "BTCUSDT", "--side", "buy", "--id", "refused")
    finally:
        broker.stop()

    assert sent.returncode == 2, sent.stdout
    assert sent.stderr.strip() == (
        f"error: the broker at 127.0.0.1:{broker.port} refused the signal on "
        "signals/voiceofchain: Not authorized"
    )


def test_a_session_the_broker_lost_while_the_bot_was_down_is_a_warning(
    sim_config: Callable[..., Path],
    mosquitto: Mosquitto,  # noqa: F811
) -> None:
    # Reproduced: a broker that lost its saved sessions while the bot was stopped dropped the
    # signals queued for it, and the restarted bot only said "new session" at INFO.
    extra = (
        f'\n[mqtt]\nenabled = true\nport = {mosquitto.port}\nclient_id = "bot-lost"\n'
        "reconnect_max_s = 0.5\n"
    )
    config = sim_config(extra=extra)
    warnings: list[str] = []
    handler = logger.add(warnings.append, format="{message}", level="WARNING")

    def run_until_subscribed() -> None:
        bot = RunningBot(config).start()
        try:
            wait_for(lambda: health(bot).status_code == 200, what="the broker connected")
        finally:
            bot.stop()

    try:
        for lose_the_session in (False, True):
            run_until_subscribed()
            mosquitto.stop()
            if lose_the_session:
                for saved in mosquitto.data.iterdir():
                    saved.unlink()
            mosquitto.start()
        run_until_subscribed()
    finally:
        logger.remove(handler)

    lost = [line for line in warnings if "broker had lost the session" in line]
    assert len(lost) == 1, warnings  # the third start: its session was deleted before it


# A plug-in strategy that keeps the signal `hold_id` until the test lets it go, so a stopping
# bot's drain stays open for as long as the test needs.
HOLDING_STRATEGY = """
import time
from pathlib import Path

from strategies.base import Strategy, StrategyParams


class Holding(Strategy):
    class Params(StrategyParams):
        hold_id: str
        held_file: str
        release_file: str

    def on_signal(self, signal, context):
        if signal.id == self.params.hold_id:
            Path(self.params.held_file).touch()
            deadline = time.monotonic() + 50  # never for ever, even if the test broke
            while not Path(self.params.release_file).exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return self.decline("holding test strategy")
"""


def test_a_stopping_bot_takes_no_mqtt_signal_while_it_drains_and_the_next_start_does(
    sim_config: Callable[..., Path],
    mosquitto: Mosquitto,  # noqa: F811
    start_bot: StartBot,
    tmp_path: Path,
) -> None:
    """README: on SIGTERM the bot stops taking signals, then finishes the queued ones. A
    message published during the drain stays with the broker's session for the next start."""
    held, release, log = tmp_path / "held", tmp_path / "release", tmp_path / "bot.log"
    (tmp_path / "holding.py").write_text(HOLDING_STRATEGY)
    port = free_port()
    config = sim_config(
        port=port,
        extra=(
            f'\n[mqtt]\nenabled = true\nport = {mosquitto.port}\nclient_id = "bot-drain"\n'
            '\n[keys.holding_sim]\nenvironment = "sim"\n'
            '\n[strategies.holding]\nplugin = "holding:Holding"\nkey = "holding_sim"\n'
            "time_budget_ms = 60000\n"
            f'params = {{ hold_id = "held", held_file = "{held}", release_file = "{release}" }}\n'
        ),
    )
    settings = load_settings(config)

    def publish(signal_id: str) -> None:
        body = signal(signal_id, strategy="holding")
        asyncio.run(publish_signal(settings.mqtt, body, password=None, signing_secret=None))

    def trace(signal_id: str) -> list[TraceRow]:
        journal = Journal(settings.journal_path, read_only=True)
        try:
            return journal.trace(signal=("voiceofchain", signal_id))
        finally:
            journal.close()

    first = start_bot(config, port, log=log)  # listening once the broker took its subscription
    try:
        publish("held")
        wait_for(held.exists, what="the strategy holding its signal")
        first.terminate()  # SIGTERM
        wait_for(lambda: "; draining " in log.read_text(), what="the drain")
        publish("late")
        # The bot is draining until the strategy lets go: by then it has either taken the
        # late signal or left the broker.
        wait_for(
            lambda: trace("late") or not mosquitto.connected("bot-drain"),
            what="the late signal journaled, or the bot gone from the broker",
        )
        taken_while_draining = trace("late")
    finally:
        release.touch()
    assert first.wait(30) == 0, log.read_text()
    assert taken_while_draining == []
    assert trace("late") == []

    second = start_bot(config, port, log=log)  # the session delivers it on connecting
    rows = wait_for(
        lambda: (rows := trace("late")) and rows[0].decision != "pending" and rows,
        what="the late signal decided by the next start",
    )
    second.terminate()
    assert second.wait(30) == 0, log.read_text()
    assert [(row.strategy, row.decision) for row in rows] == [("holding", "declined")]
    assert [(row.strategy, row.decision) for row in trace("held")] == [("holding", "declined")]
