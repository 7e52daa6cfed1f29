"""MQTT signals against a real mosquitto: delivery, persistent sessions, manual acks, rejections.

Each test has its own broker (tests/signals/mosquitto.py) on a free loopback port. A subscriber
runs as the bot runs it, `run()` on an event loop, here in a thread so a test can publish,
restart the broker or kill a process while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho_mqtt
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import SecretStr, ValidationError

from bot.journal import Journal
from bot.logs import logger
from bot.messages import Signal, SignalError, load_json, parse_signal
from bot.metrics import REGISTRY
from signals import mqtt as mqtt_module
from signals.mqtt import (
    SIGNATURE_PROPERTY,
    MqttConfig,
    MqttControl,
    MqttSubscriber,
    publish_signal,
    publish_topic,
    sign_payload,
)
from signals.voiceofchain import UsedSignatures, command_digest, sign
from tests.conftest import wait_for
from tests.signals import mosquitto as mosquitto_helper
from tests.signals.mosquitto import (
    Mosquitto,
    dynamic_security,
    private_ca_certificate,
    running_mosquitto,
    tls_listener,
)

ROOT = Path(__file__).resolve().parents[2]
SIGNING_SECRET = SecretStr("mqtt-signing-secret-for-tests")
TOPIC = "signals/voiceofchain"


# helpers --------------------------------------------------------------------------------------


def now_ms() -> int:
    return int(time.time() * 1000)


def signal_payload(signal_id: str, **fields: object) -> dict[str, Any]:
    payload: dict[str, Any] = {"id": signal_id, "symbol": "BTCUSDT", "side": "buy", "ts": now_ms()}
    payload.update(fields)
    return payload


def config_for(broker: Mosquitto, **fields: Any) -> MqttConfig:
    """Short timeouts and backoffs, so a test waits for the broker, not for our delays."""
    settings: dict[str, Any] = {
        "enabled": True,
        "port": broker.port,
        "client_id": "test-bot",
        "keepalive_s": 5,
        "connect_timeout_s": 3,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.2,
    }
    settings.update(fields)
    return MqttConfig(**settings)


def publish(config: MqttConfig, payload: dict[str, Any], **kwargs: Any) -> str:
    """Publish like `bot signal send --mqtt` does (QoS 1: returns once the broker has it)."""
    kwargs.setdefault("password", None)
    kwargs.setdefault("signing_secret", None)
    return asyncio.run(publish_signal(config, payload, timeout_s=5, **kwargs))


class RecordingSink:
    """A sink that remembers signals; a repeated id is a duplicate, as the journal says."""

    def __init__(self) -> None:
        self.signals: list[Signal] = []
        self.calls = 0

    async def __call__(self, signal: Signal) -> bool:
        self.calls += 1
        if any(seen.id == signal.id for seen in self.signals):
            return False
        self.signals.append(signal)
        return True

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.signals]


class JournalSink:
    """The bot's sink: `Journal.record_signal` on the journal's thread."""

    def __init__(self, journal: Journal, failures: int = 0) -> None:
        self.journal = journal
        self.calls: list[str] = []  # every id the sink saw, redeliveries included
        self.new: list[str] = []  # ids the journal recorded as new
        self._failures = failures

    async def __call__(self, signal: Signal) -> bool:
        self.calls.append(signal.id)
        if self._failures > 0:
            self._failures -= 1
            raise OSError("journal unavailable")
        is_new = await self.journal.call(self.journal.record_signal, signal)
        if is_new:
            self.new.append(signal.id)
        return is_new


def journaled(journal: Journal) -> list[str]:
    return sorted(signal.id for signal in journal.unprocessed_signals())


class Running:
    """`subscriber.run()` on its own event loop in a thread, until `stop()` cancels it."""

    def __init__(self, subscriber: MqttSubscriber) -> None:
        self.subscriber = subscriber
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name="mqtt-subscriber", daemon=True)

    def __enter__(self) -> Running:
        self._thread.start()
        assert self._started.wait(5), "the subscriber's loop did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_connected(self) -> None:
        wait_for(lambda: self.subscriber.connected, 10, "the subscriber to connect and subscribe")

    def stop(self) -> None:
        if self._thread.is_alive():
            assert self._loop is not None and self._task is not None
            self._loop.call_soon_threadsafe(self._task.cancel)
            self._thread.join(10)
            assert not self._thread.is_alive(), "the subscriber did not stop when cancelled"
        assert self.error is None, f"run() ended with {self.error!r}"

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            self._started.set()
            await self.subscriber.run()

        try:
            asyncio.run(main())
        except asyncio.CancelledError:
            pass
        except BaseException as exc:
            self.error = exc


class RawPublisher:
    """A plain paho publisher for bytes no well-behaved sender would send."""

    def __init__(self, broker: Mosquitto, protocol: int = paho_mqtt.MQTTv5) -> None:
        self.protocol = protocol
        self.client = paho_mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-publisher-{secrets.token_hex(4)}",
            protocol=protocol,
        )
        self.client.connect("127.0.0.1", broker.port, keepalive=10)
        self.client.loop_start()
        wait_for(self.client.is_connected, 5, "the test publisher to connect")

    def publish(self, payload: bytes, *, topic: str = TOPIC, signature: str | None = None) -> None:
        properties = None
        if signature is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.UserProperty = (SIGNATURE_PROPERTY, signature)
        info = self.client.publish(topic, payload, qos=1, properties=properties)
        info.wait_for_publish(timeout=5)
        assert info.is_published(), "the broker did not acknowledge the test's publish"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def signed(payload: bytes, secret: SecretStr = SIGNING_SECRET, age_s: int = 0) -> str:
    return sign(secret.get_secret_value(), payload, int(time.time()) - age_s)


def nothing_more_after_restart(config: MqttConfig, broker: Mosquitto) -> list[str]:
    """Connect again on `config`'s session and publish a marker: what arrives before it was
    left unacknowledged (the broker redelivers unacked messages first, in order)."""
    broker.wait_gone(config.client_id)
    sink = RecordingSink()
    with Running(MqttSubscriber(config, sink, signing_secret=SIGNING_SECRET)) as running:
        running.wait_connected()
        publish(config, signal_payload("marker"), signing_secret=SIGNING_SECRET)
        wait_for(lambda: "marker" in sink.ids, 10, "the marker")
    return sink.ids[:-1]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with running_mosquitto(tmp_path / "mosquitto") as started:
        yield started


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    opened = Journal(tmp_path / "journal.sqlite3")
    yield opened
    opened.close()


# configuration ------------------------------------------------------------------------------


def test_a_missing_broker_fails_the_test_and_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mosquitto_helper.shutil, "which", lambda name: None)
    monkeypatch.setattr(mosquitto_helper.Path, "is_file", lambda self: False)

    with pytest.raises(pytest.fail.Exception, match="`make setup` installs it"):
        mosquitto_helper.find_mosquitto()


def test_config_defaults_are_the_documented_ones() -> None:
    config = MqttConfig()

    assert config.model_dump(
        include={
            "enabled",
            "host",
            "port",
            "topic",
            "source",
            "session_expiry_s",
            "shared_group",
            "username",
            "tls",
            "require_signature",
        }
    ) == {
        "enabled": False,
        "host": "127.0.0.1",
        "port": 1883,
        "topic": "signals/voiceofchain/#",
        "source": "voiceofchain",
        "session_expiry_s": 86400,
        "shared_group": "",
        "username": "",
        "tls": False,
        "require_signature": False,
    }
    assert config.client_id == "bybit-signal-bot"
    assert config.subscription == "signals/voiceofchain/#"
    assert MqttConfig(shared_group="bots").subscription == "$share/bots/signals/voiceofchain/#"


@pytest.mark.parametrize(
    "fields",
    [
        {"topic": ""},
        {"topic": "signals/#/more"},
        {"topic": "signals/voice#"},
        {"topic": "signals/+x"},
        {"topic": "$share/bots/signals/#"},
        {"client_id": ""},
        {"client_id": "has space"},
        {"shared_group": "a/b"},
        {"source": "Voice Of Chain"},
        {"reconnect_min_s": 5, "reconnect_max_s": 1},
        {"password": "never in the config"},
        {"control_topic": "signals/voiceofchain"},  # its halt is a signal for strategy halt
        {"topic": "bot/#", "control_topic": "bot/control"},
    ],
)
def test_config_refuses_what_cannot_work(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        MqttConfig(**fields)


_LEVELS = st.sampled_from(["a", "b", "halt", "resume"])


@given(
    topic=st.builds(
        lambda levels, rest: "/".join(levels + rest),
        st.lists(st.one_of(_LEVELS, st.just("+")), min_size=1, max_size=4),
        st.sampled_from([[], ["#"]]),
    ),
    control=st.lists(_LEVELS, min_size=1, max_size=3).map("/".join),
)
def test_a_control_topic_is_refused_exactly_when_the_signals_filter_takes_its_commands(
    topic: str, control: str
) -> None:
    taken = any(
        paho_mqtt.topic_matches_sub(topic, f"{control}/{command}") for command in ("halt", "resume")
    )

    try:
        MqttConfig(topic=topic, control_topic=control)
    except ValidationError as exc:
        assert taken, exc
        assert "would also match the signals' topic" in str(exc)
    else:
        assert not taken


def test_subscriber_refuses_a_required_signature_without_a_secret() -> None:
    with pytest.raises(ValueError, match="BOT_MQTT_SIGNING_SECRET"):
        MqttSubscriber(MqttConfig(require_signature=True), RecordingSink())
    with pytest.raises(ValueError, match="username"):
        MqttSubscriber(MqttConfig(), RecordingSink(), password=SecretStr("a-password-here"))


@pytest.mark.parametrize(
    ("topic_filter", "strategy", "topic"),
    [
        ("signals/voiceofchain/#", None, "signals/voiceofchain"),
        ("signals/voiceofchain/#", "follow", "signals/voiceofchain/follow"),
        ("signals/voiceofchain/+", "follow", "signals/voiceofchain/follow"),
        ("signals/fixed", "follow", "signals/fixed"),
    ],
)
def test_publish_topic_is_one_the_subscriber_receives(
    topic_filter: str, strategy: str | None, topic: str
) -> None:
    assert publish_topic(topic_filter, strategy) == topic


@pytest.mark.parametrize(
    ("topic_filter", "strategy"), [("a/+", None), ("a/+/b/#", "s"), ("#", None)]
)
def test_publish_topic_refuses_filters_it_cannot_target(
    topic_filter: str, strategy: str | None
) -> None:
    with pytest.raises(ValueError, match="pass a topic"):
        publish_topic(topic_filter, strategy)


# delivery ---------------------------------------------------------------------------------------


def test_a_signal_is_journaled_and_acked_and_a_duplicate_is_acked_too(
    broker: Mosquitto, journal: Journal
) -> None:
    config = config_for(broker)
    sink = JournalSink(journal)
    subscriber = MqttSubscriber(config, sink, signing_secret=SIGNING_SECRET)

    with Running(subscriber) as running:
        running.wait_connected()
        assert publish(config, signal_payload("s-1"), signing_secret=SIGNING_SECRET) == TOPIC
        publish(config, signal_payload("s-1", side="sell"), signing_secret=SIGNING_SECRET)
        wait_for(lambda: subscriber.counters.received == 2, 10, "both messages")
        wait_for(
            lambda: subscriber.counters.accepted + subscriber.counters.duplicates == 2,
            10,
            "both messages through the sink",
        )

    assert journaled(journal) == ["s-1"]
    assert (subscriber.counters.accepted, subscriber.counters.duplicates) == (1, 1)
    assert subscriber.counters.rejected == subscriber.counters.sink_errors == 0
    assert nothing_more_after_restart(config, broker) == []


def test_messages_published_while_the_bot_is_down_arrive_when_it_is_back(
    broker: Mosquitto, journal: Journal
) -> None:
    config = config_for(broker)
    sink = JournalSink(journal)
    with Running(MqttSubscriber(config, sink)) as running:  # creates the session
        running.wait_connected()

    publish(config, signal_payload("down-1"))
    publish(config, signal_payload("down-2"))
    broker.restart()  # the broker's persistence keeps the session and its queue
    publish(config, signal_payload("down-3"))
    with Running(MqttSubscriber(config, sink)):
        wait_for(lambda: len(sink.new) == 3, 10, "the three queued signals")

    assert journaled(journal) == ["down-1", "down-2", "down-3"]


_CRASHING_SUBSCRIBER = """
import asyncio, sys
from pathlib import Path
from signals.mqtt import MqttConfig, MqttSubscriber

port, client_id, seen = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])

async def sink(signal):
    with seen.open("a") as handle:
        handle.write(signal.id + "\\n")
    if signal.id.startswith("block"):
        await asyncio.Event().wait()  # never reaches the journal: killed first
    return True

config = MqttConfig(
    enabled=True, port=port, client_id=client_id, reconnect_min_s=0.05, reconnect_max_s=0.2
)
asyncio.run(MqttSubscriber(config, sink).run())
"""


def test_a_subscriber_killed_before_journaling_gets_the_message_again(
    broker: Mosquitto, journal: Journal, tmp_path: Path
) -> None:
    config = config_for(broker, client_id="crashing-bot")
    with Running(MqttSubscriber(config, RecordingSink())) as running:  # creates the session
        running.wait_connected()
    publish(config, signal_payload("ok-1"))
    publish(config, signal_payload("block-1"))
    seen = tmp_path / "seen.txt"
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_SUBSCRIBER, str(broker.port), config.client_id, str(seen)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def child_blocked() -> bool:
        assert child.poll() is None, f"the child subscriber died: {child.communicate()[1]!r}"
        return seen.exists() and "block-1" in seen.read_text().split()

    try:
        wait_for(child_blocked, 15, "the child to block on block-1")
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=5)
    assert seen.read_text().split() == ["ok-1", "block-1"]
    broker.wait_gone(config.client_id)

    sink = JournalSink(journal)
    with Running(MqttSubscriber(config, sink)) as running:
        running.wait_connected()
        publish(config, signal_payload("after-1"))
        wait_for(lambda: "after-1" in sink.new, 10, "the marker after the crash")

    # block-1 was never acked, so it came back; ok-1 was acked, so it did not.
    assert sink.calls == ["block-1", "after-1"]
    assert journaled(journal) == ["after-1", "block-1"]


def test_a_signal_the_journal_cannot_take_is_not_acked_and_comes_back(
    broker: Mosquitto, journal: Journal
) -> None:
    config = config_for(broker)
    sink = JournalSink(journal, failures=2)
    subscriber = MqttSubscriber(config, sink)

    with Running(subscriber) as running:
        running.wait_connected()
        publish(config, signal_payload("s-1"))
        publish(config, signal_payload("s-2"))
        wait_for(lambda: len(sink.new) == 2, 10, "both signals journaled after the failures")

    assert journaled(journal) == ["s-1", "s-2"]
    assert subscriber.counters.sink_errors == 2
    assert subscriber.counters.accepted == 2
    assert subscriber.counters.connections >= 2  # reconnected so the broker redelivered
    assert nothing_more_after_restart(config, broker) == []


def test_a_journal_that_cannot_write_is_said_in_one_line_not_once_per_redelivery(
    broker: Mosquitto, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reproduced on a full disk: each redelivery of a signal the journal could not take
    logged a traceback of 17 lines that named the error only as `OperationalError`, then a
    WARNING and two INFO lines for the reconnect, at every backoff while the disk was full."""
    config = config_for(broker)
    record_signal = journal.record_signal
    failures = 4

    def full_at_first(signal: Signal) -> bool:
        nonlocal failures
        if failures:
            failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return record_signal(signal)

    monkeypatch.setattr(journal, "record_signal", full_at_first)
    sink = JournalSink(journal)
    subscriber = MqttSubscriber(config, sink)
    records: list[str] = []
    handler = logger.add(records.append, level="INFO", format="{level} {message}{exception}")
    try:
        with Running(subscriber) as running:
            running.wait_connected()
            publish(config, signal_payload("s-1"))
            wait_for(lambda: sink.new == ["s-1"], 10, "the signal journaled once there is room")
    finally:
        logger.remove(handler)

    assert sink.calls == ["s-1"] * 5  # redelivered until journaled: nothing lost
    assert journaled(journal) == ["s-1"]
    assert all(record.count("\n") == 1 for record in records), records  # one line each
    failed = [record for record in records if "could not be journaled" in record]
    assert len(failed) == 1, records  # the repeats within a minute are not said again
    assert failed[0].startswith(
        "ERROR mqtt: signal s-1 could not be journaled (database or disk is full): not "
        "acknowledged, the broker redelivers it; make the journal writable"
    )
    assert sum("connecting to" in record for record in records) == 1  # the first connection
    assert any("signal s-1 journaled after 4 failed attempts" in record for record in records)


def test_a_signal_the_journal_could_not_take_and_the_broker_lost_is_named_once(
    broker: Mosquitto, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker restarted without its saved state while the journal refused a signal: the
    signal was not redelivered, nothing said so, and its failures, never reset, kept the
    reconnect lines at DEBUG and were put to the account of the next signal journaled."""
    config = config_for(broker)
    record_signal = journal.record_signal
    disk_full = True

    def full_disk(signal: Signal) -> bool:
        if disk_full:
            raise sqlite3.OperationalError("database or disk is full")
        return record_signal(signal)

    monkeypatch.setattr(journal, "record_signal", full_disk)
    sink = JournalSink(journal)
    subscriber = MqttSubscriber(config, sink)
    records: list[str] = []
    handler = logger.add(records.append, level="INFO", format="{level} {message}")
    try:
        with Running(subscriber) as running:
            running.wait_connected()
            publish(config, signal_payload("s-1"))
            wait_for(lambda: len(sink.calls) >= 2, 10, "s-1 refused and redelivered")
            broker.stop()
            for saved in broker.data.iterdir():
                saved.unlink()
            disk_full = False
            broker.start()
            wait_for(lambda: any("is lost" in r for r in records), 10, "s-1 named lost")
            running.wait_connected()
            publish(config, signal_payload("s-2"))
            wait_for(lambda: sink.new == ["s-2"], 10, "the next signal journaled")
    finally:
        logger.remove(handler)

    lost = [record.rstrip("\n") for record in records if "is lost" in record]
    assert lost == [
        "ERROR mqtt: signal s-1, which the journal could not take, is lost: the broker lost "
        "the session that kept it for redelivery; have its sender send it again"
    ]
    assert not any("failed attempts" in record for record in records), records
    assert journaled(journal) == ["s-2"]
    assert subscriber._sink_failures == 0


def test_a_broker_killed_mid_stream_loses_nothing_published_after_it_is_back(
    broker: Mosquitto, journal: Journal
) -> None:
    config = config_for(broker)
    sink = JournalSink(journal)
    subscriber = MqttSubscriber(config, sink)
    before = [f"before-{n}" for n in range(20)]
    after = [f"after-{n}" for n in range(20)]

    with Running(subscriber) as running:
        running.wait_connected()
        publisher = RawPublisher(broker)
        for signal_id in before:
            publisher.publish(json.dumps(signal_payload(signal_id)).encode())
        broker.stop(kill=True)  # whatever was in flight is in flight
        publisher.client.loop_stop()
        wait_for(lambda: not subscriber.connected, 10, "the subscriber to notice")
        broker.start()
        running.wait_connected()
        for signal_id in after:
            publish(config, signal_payload(signal_id))
        wait_for(lambda: set(after) <= set(sink.new), 15, "every signal published after")

    assert all(sink.new.count(signal_id) == 1 for signal_id in after)
    assert len(sink.new) == len(set(sink.new))  # a redelivered one was a duplicate, no more
    assert set(journaled(journal)) >= set(after)
    assert subscriber.counters.connections >= 2


def shared_between_two(
    broker: Mosquitto, tmp_path: Path, ids: list[str], before: Callable[[JournalSink], None]
) -> list[JournalSink]:
    """Publish `ids` to two bots (client ids bot-a, bot-b) sharing the group `bots`, after
    `before(bot-a's sink)`; each bot's sink once every id was delivered (and a moment more,
    for a wrong second delivery to show)."""
    journals = [Journal(tmp_path / f"journal-{name}.sqlite3") for name in ("a", "b")]
    sinks = [JournalSink(j) for j in journals]
    before(sinks[0])
    subscribers = [
        MqttSubscriber(config_for(broker, client_id=f"bot-{n}", shared_group="bots"), sink)
        for n, sink in zip("ab", sinks, strict=True)
    ]
    with Running(subscribers[0]) as first, Running(subscribers[1]) as second:
        first.wait_connected()
        second.wait_connected()
        for signal_id in ids:
            publish(subscribers[0]._config, signal_payload(signal_id))
        wait_for(lambda: sum(len(s.new) for s in sinks) >= len(ids), 10, "every signal")
        time.sleep(0.3)
    for opened in journals:
        opened.close()
    return sinks


def test_a_shared_subscription_splits_the_stream_between_instances(
    broker: Mosquitto, tmp_path: Path
) -> None:
    ids = [f"s-{n}" for n in range(30)]

    sinks = shared_between_two(broker, tmp_path, ids, lambda sink: None)

    assert sorted(sinks[0].new + sinks[1].new) == sorted(ids)
    assert sorted(sinks[0].calls + sinks[1].calls) == sorted(ids)  # each delivered once
    assert sinks[0].new and sinks[1].new  # both instances took a share


def test_a_bot_that_joins_a_shared_group_drops_its_old_plain_subscription(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """Its resumed session still held the plain filter: it got every signal plus its share,
    so half the stream was handled by two bots (MQTT probe)."""
    ids = [f"g-{n}" for n in range(30)]

    def alone_first(sink: JournalSink) -> None:
        with Running(MqttSubscriber(config_for(broker, client_id="bot-a"), sink)) as alone:
            alone.wait_connected()  # a session with the plain filter, kept by the broker

    sinks = shared_between_two(broker, tmp_path, ids, alone_first)

    assert sorted(sinks[0].calls + sinks[1].calls) == sorted(ids)  # each delivered once


# rejection and authentication ---------------------------------------------------------------


def test_invalid_messages_are_rejected_counted_and_acked_while_valid_ones_flow(
    broker: Mosquitto,
) -> None:
    config = config_for(broker, require_signature=True)
    sink = RecordingSink()
    rejections: list[tuple[str, str]] = []

    async def on_reject(kind: str, reason: str, topic: str) -> None:
        rejections.append((reason, topic))

    subscriber = MqttSubscriber(config, sink, signing_secret=SIGNING_SECRET, on_reject=on_reject)
    valid = json.dumps(signal_payload("ok-v5")).encode()
    deep = json.dumps(signal_payload("deep", extra=json.loads("[" * 30 + "]" * 30))).encode()
    bad_field = json.dumps(signal_payload("bad id!")).encode()
    large = json.dumps(signal_payload("large", pad="x" * 20_000)).encode()
    follow = f"{TOPIC}/follow"
    strategy_clash = json.dumps(signal_payload("clash", strategy="other")).encode()
    wrongly_signed_311 = sign_payload("wrong-secret", signal_payload("bad-311"), int(time.time()))
    # (payload, topic, x-signature, what the reason says, reported): each is counted; one
    # from a sender no valid signature names is reported (logged, journaled) only if it is
    # the first such within a minute (here the 3.1.1 one, sent first).
    bad: list[tuple[bytes, str, str | None, str, bool]] = [
        (b"not json {", TOPIC, "sign", "not JSON", True),
        (b"\xff\xfe\x00", TOPIC, "sign", "not JSON", True),
        (b"[1, 2]", TOPIC, "sign", "must be a JSON object", True),
        (bad_field, TOPIC, "sign", "invalid signal: id", True),
        (deep, TOPIC, "sign", "nested more than", True),
        (large, TOPIC, "sign", "over the limit", False),  # checked before its signature
        (valid, TOPIC, None, "unsigned", False),
        (valid, TOPIC, signed(valid, SecretStr("wrong-secret")), "does not match", False),
        (valid, TOPIC, signed(valid, age_s=3 * 86_400), "from the server's clock", False),
        (valid, TOPIC, "t=1,v1=zz", "malformed", False),
        (strategy_clash, follow, "sign", "contradicts", True),
        (valid, f"{TOPIC}/no spaces", "sign", "not a strategy name", True),
    ]

    with Running(subscriber) as running:
        running.wait_connected()
        v5, v311 = RawPublisher(broker), RawPublisher(broker, paho_mqtt.MQTTv311)
        v311.publish(wrongly_signed_311)
        wait_for(lambda: len(rejections) == 1, 10, "the first refusal of an unknown sender")
        for payload, topic, signature, _, _ in bad:
            v5.publish(
                payload,
                topic=topic,
                signature=signed(payload) if signature == "sign" else signature,
            )
        v5.publish(valid, signature=signed(valid))
        v311.publish(
            sign_payload(
                SIGNING_SECRET.get_secret_value(), signal_payload("ok-311"), int(time.time())
            )
        )
        routed = json.dumps(signal_payload("ok-topic")).encode()
        v5.publish(routed, topic=follow, signature=signed(routed))
        total = len(bad) + 4
        wait_for(lambda: subscriber.counters.received == total, 10, "every message")
        reported = [item for item in bad if item[4]]
        wait_for(lambda: len(rejections) == len(reported) + 1, 10, "the reported rejections")
        wait_for(lambda: subscriber.counters.accepted == 3, 10, "the valid ones through the sink")
        v5.close()
        v311.close()

    assert sink.ids == ["ok-v5", "ok-311", "ok-topic"]
    assert sink.signals[2].strategy == "follow"
    assert "signature" not in sink.signals[1].raw  # transport, not signal content
    assert subscriber.counters.rejected == len(bad) + 1
    assert subscriber.counters.accepted == 3
    assert len(rejections) == len(reported) + 1
    first, *others = rejections
    assert first[1] == TOPIC
    assert "'signature' field" in first[0]
    assert "does not match" in first[0]
    for (reason, topic), (_, sent_to, _, expected, _) in zip(others, reported, strict=True):
        assert expected in reason, reason
        assert topic == sent_to
    assert all("\n" not in reason and len(reason) <= 300 for reason, _ in rejections)
    assert nothing_more_after_restart(config, broker) == []


def test_a_rotating_signing_secret_accepts_either_while_it_rotates(broker: Mosquitto) -> None:
    old, new = "old-signing-secret-value", "new-signing-secret-value"
    config = config_for(broker, require_signature=True)
    sink = RecordingSink()
    rejections: list[str] = []
    subscriber = MqttSubscriber(
        config,
        sink,
        signing_secret=SecretStr(f"{old}\n{new}\n"),  # a secret file, one value per line
        on_reject=lambda _, reason, __: rejections.append(reason),
    )

    with Running(subscriber) as running:
        running.wait_connected()
        publish(config, signal_payload("by-old"), signing_secret=SecretStr(old))
        publish(config, signal_payload("by-new"), signing_secret=SecretStr(new))
        publish(config, signal_payload("by-both"), signing_secret=SecretStr(f"{old}\n{new}"))
        publish(config, signal_payload("by-other"), signing_secret=SecretStr("another-secret"))
        wait_for(lambda: subscriber.counters.received == 4, 10, "every message")
        wait_for(lambda: subscriber.counters.accepted == 3, 10, "the signed ones")

    assert sink.ids == ["by-old", "by-new", "by-both"]
    assert len(rejections) == 1 and "does not match" in rejections[0]


def test_reconnects_forever_logging_each_attempt_and_never_a_secret(broker: Mosquitto) -> None:
    password = SecretStr("broker-password-never-logged")
    config = config_for(broker, username="bot", require_signature=True)
    sink = RecordingSink()
    subscriber = MqttSubscriber(config, sink, password=password, signing_secret=SIGNING_SECRET)
    lines: list[str] = []
    handler = logger.add(lines.append, level="DEBUG", format="{message} | {extra} | {exception}")
    try:
        broker.stop()
        with Running(subscriber):
            wait_for(lambda: sum("reconnecting" in line for line in lines) >= 3, 10, "3 attempts")
            assert not subscriber.connected
            broker.start()
            wait_for(lambda: subscriber.connected, 10, "a connection once the broker is back")
            publish(config, signal_payload("s-1"), signing_secret=SIGNING_SECRET)
            wait_for(lambda: sink.ids == ["s-1"], 10, "the signal")
    finally:
        logger.remove(handler)

    assert subscriber.last_error is not None
    text = "\n".join(lines)
    assert "attempt 3" in text
    for secret in (password, SIGNING_SECRET):
        assert secret.get_secret_value() not in text


class HangUpServer:
    """A loopback port that is no MQTT broker's: it takes each connection, reads what the
    client sends and closes it unanswered (as a TLS listener does with a plain CONNECT)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, name="hang-up", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.connections += 1
                conn.recv(4096)

    def close(self) -> None:
        self.sock.close()


def test_a_connection_closed_before_connack_is_reported_as_such() -> None:
    # aiomqtt alone waits out connect_timeout_s and says "Operation timed out": a plain
    # client on a TLS port looked like a slow broker, and each attempt stalled that long.
    server = HangUpServer()
    config = MqttConfig(enabled=True, port=server.port, connect_timeout_s=5, reconnect_max_s=0.5)
    subscriber = MqttSubscriber(config, RecordingSink())
    try:
        with Running(subscriber):
            wait_for(lambda: subscriber.last_error is not None, 30, "the first failed attempt")
    finally:
        server.close()

    error = subscriber.last_error or ""
    assert "the broker closed the connection before answering CONNECT" in error, error
    assert "is it a TLS listener (mqtt.tls is false)" in error, error


class ConnackThenHangUpServer:
    """A broker that accepts each CONNECT (CONNACK, MQTT v5) and at once ends the connection:
    with `then` (a DISCONNECT, as mosquitto sends when it stops) or by closing it; with
    `on_subscribe`, once the SUBSCRIBE came."""

    def __init__(self, then: bytes = b"", *, on_subscribe: bool = False) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self._then = then
        self._on_subscribe = on_subscribe
        self._thread = threading.Thread(target=self._serve, name="connack-hang-up", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.connections += 1
                conn.recv(4096)
                conn.sendall(b"\x20\x03\x00\x00\x00")  # CONNACK: accepted
                if self._on_subscribe:
                    conn.recv(4096)
                conn.sendall(self._then)
                if self._then:
                    time.sleep(0.5)  # the client reads the DISCONNECT before the close

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(
    ("then", "on_subscribe", "reason"),
    [
        (b"\xe0\x02\x8b\x00", False, "Server shutting down"),
        (b"", False, ""),
        (b"", True, ""),
    ],
    ids=["disconnect", "close", "close-on-subscribe"],
)
def test_a_connection_the_broker_ends_right_after_connack_is_one_clear_line(
    then: bytes, on_subscribe: bool, reason: str
) -> None:
    # aiomqtt lost such an end: its exception was logged as "Future exception was never
    # retrieved" (an ERROR of three lines), and the subscribe went to a dead connection,
    # reported as "not currently connected" or stalled connect_timeout_s into "Operation
    # timed out".
    server = ConnackThenHangUpServer(then, on_subscribe=on_subscribe)
    config = MqttConfig(
        enabled=True,
        port=server.port,
        connect_timeout_s=20,
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
    )
    subscriber = MqttSubscriber(config, RecordingSink())
    lines: list[str] = []
    handler = logger.add(lines.append, level="WARNING", format="{message} | {exception}")
    unretrieved: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _, context: unretrieved.append(context)
        )
        task = asyncio.create_task(subscriber.run())
        try:
            while server.connections < 3:  # noqa: ASYNC110 - a thread's counter
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        gc.collect()  # a future dropped with its exception unread reports it now
        await asyncio.sleep(0)

    started = time.monotonic()
    try:
        asyncio.run(main())
    finally:
        logger.remove(handler)
        server.close()

    assert time.monotonic() - started < 10, "each attempt waited out connect_timeout_s"
    assert unretrieved == []
    error = subscriber.last_error or ""
    assert "the broker closed the connection right after accepting it" in error, error
    assert reason in error
    assert subscriber.counters.connections == 0
    for line in lines:
        assert "\n" not in line.rstrip(" |\n"), line


def test_a_broker_whose_certificate_a_private_ca_signed_is_trusted_through_tls_ca_file(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(tmp_path / "mosquitto")
    ca_file = tls_listener(broker)
    broker.start()
    try:
        system_cas = config_for(broker, tls=True, connect_timeout_s=5, reconnect_max_s=0.5)
        refused = MqttSubscriber(system_cas, RecordingSink())
        with Running(refused):
            wait_for(lambda: refused.last_error is not None, 30, "the first failed attempt")
        assert "CERTIFICATE_VERIFY_FAILED" in (refused.last_error or ""), refused.last_error

        config = config_for(broker, tls=True, tls_ca_file=ca_file)
        sink = RecordingSink()
        subscriber = MqttSubscriber(config, sink)
        with Running(subscriber) as running:
            running.wait_connected()
            publish(config, signal_payload("over-tls"))
            wait_for(lambda: sink.ids == ["over-tls"], 10, "the signal over TLS")
    finally:
        broker.stop()


@pytest.mark.parametrize(
    ("content", "said"),
    [(None, "No such file or directory"), (b"not a certificate", "NO_CERTIFICATE_OR_CRL_FOUND")],
)
def test_a_tls_ca_file_that_cannot_serve_is_refused_with_the_config(
    tmp_path: Path, content: bytes | None, said: str
) -> None:
    ca_file = tmp_path / "ca.pem"
    if content is not None:
        ca_file.write_bytes(content)

    with pytest.raises(ValidationError) as refused:
        MqttConfig(tls=True, tls_ca_file=ca_file)

    message = refused.value.errors()[0]["msg"]
    assert f"{ca_file} cannot be read as PEM CA certificates" in message
    assert said in message
    with pytest.raises(ValidationError, match="set tls = true"):
        MqttConfig(tls_ca_file=private_ca_certificate(tmp_path / "certificates")[0])


def test_the_control_topic_reads_its_tls_ca_file_once_not_at_each_reconnect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CA file that could not be read at a reconnect (replaced in two steps, removed)
    raised out of the control loop, and its TaskGroup took the whole bot down mid-trade."""
    ca_file = private_ca_certificate(tmp_path / "certificates")[0]
    with closing(socket.socket()) as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    attempts: list[int] = []

    def delay(config: MqttConfig, failures: int) -> float:
        attempts.append(failures)
        if len(attempts) == 2:
            raise asyncio.CancelledError  # a second attempt was made and failed as the first
        ca_file.unlink()  # gone before the next attempt
        return 0.0

    monkeypatch.setattr(mqtt_module, "_reconnect_delay_s", delay)
    config = MqttConfig(
        enabled=True,
        port=port,
        control_topic="bot/control",
        tls=True,
        tls_ca_file=ca_file,
        connect_timeout_s=5,
    )
    control = MqttControl(config, None, secret=SecretStr("s"))  # type: ignore[arg-type]

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(control.run())

    assert attempts == [1, 2]


@pytest.mark.parametrize("kind", ["subscriber", "control"])
def test_a_cancel_the_connection_turns_into_an_mqtt_error_still_ends_run(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # aiomqtt raises MqttError for a cancel that meets a DISCONNECT it cannot finish: the
    # loop must end, not take it for the broker's failure and reconnect (a shutdown hangs).
    config = MqttConfig(enabled=True, reconnect_min_s=0.01, reconnect_max_s=0.01)
    runner = (
        MqttSubscriber(config, RecordingSink())
        if kind == "subscriber"
        else MqttControl(config, apply=lambda *args: None, secret=SIGNING_SECRET)  # type: ignore[arg-type]
    )
    connecting = asyncio.Event()

    async def connection(*args: object) -> None:
        connecting.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise aiomqtt.MqttError("Operation timed out") from None

    monkeypatch.setattr(runner, "_connection", connection)

    async def cancel_while_connected() -> None:
        task = asyncio.create_task(runner.run())
        await asyncio.wait_for(connecting.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)

    asyncio.run(cancel_while_connected())


def test_a_second_bot_under_the_same_client_id_is_named_and_the_takeovers_back_off(
    broker: Mosquitto,
) -> None:
    # Two instances under one client id take the session from each other at every connect:
    # each must say why it was dropped and wait longer each time, not fight at full speed.
    config = config_for(broker, reconnect_min_s=0.05, reconnect_max_s=5)
    first = MqttSubscriber(config, RecordingSink())
    second = MqttSubscriber(config, RecordingSink())
    lines: list[str] = []
    handler = logger.add(lines.append, level="WARNING", format="{message}")
    try:
        with Running(first) as running:
            running.wait_connected()
            with Running(second):
                time.sleep(4)
    finally:
        logger.remove(handler)

    text = "\n".join(lines)
    assert "is another client connected under our client id?" in text
    assert "every bot instance needs its own mqtt.client_id (test-bot)" in text
    # Each takeover doubles the wait: 0.05, 0.1, 0.2 ... 3.2 s, a dozen connections at most,
    # where reconnecting at once made them take turns some 20 times a second.
    assert first.counters.connections + second.counters.connections < 20


def test_a_broker_restarting_again_and_again_is_not_taken_for_a_second_bot(
    broker: Mosquitto,
) -> None:
    # Each restart ends a connection soon after it was made, as a takeover would; but the
    # attempts in between find no broker, which no takeover does: blaming the client id
    # sent the operator after a second bot that does not exist.
    config = config_for(broker, reconnect_min_s=0.05, reconnect_max_s=5)
    subscriber = MqttSubscriber(config, RecordingSink())
    lines: list[str] = []
    handler = logger.add(lines.append, level="WARNING", format="{message}")
    try:
        with Running(subscriber) as running:
            for restart in range(1, 4):
                running.wait_connected()
                assert subscriber.counters.connections == restart
                broker.stop()
                wait_for(
                    lambda: any("Connection refused" in line for line in lines[-1:]),
                    10,
                    "an attempt that finds no broker",
                )
                broker.start()
            running.wait_connected()
    finally:
        logger.remove(handler)

    text = "\n".join(lines)
    assert "Connection refused" in text
    assert "client id" not in text, text


# arbitrary bytes ------------------------------------------------------------------------------

_JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
_JSON = st.recursive(
    _JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
_SIGNAL_LIKE = st.fixed_dictionaries(
    {
        "id": st.from_regex(r"[A-Za-z0-9._:-]{1,10}", fullmatch=True) | _JSON,
        "symbol": st.sampled_from(["BTCUSDT", "ethusdt", "B", "BTC/USDT"]) | _JSON,
        "ts": st.sampled_from([now_ms(), "2025-01-01T00:00:00Z", 12, "yesterday"]) | _JSON,
    },
    optional={
        "side": st.sampled_from(["buy", "sell", "long", "short", "up"]) | _JSON,
        "action": st.sampled_from(["open", "close", "flip"]) | _JSON,
        "entry": st.decimals(allow_nan=False, places=2).map(str) | _JSON,
        "stop_loss": st.floats() | _JSON,
        "take_profit": st.lists(st.floats(min_value=-1, max_value=1e6), max_size=3) | _JSON,
        "leverage": st.integers(-2, 200) | _JSON,
        "strategy": st.sampled_from(["follow", "bad name"]) | _JSON,
        "signature": _JSON,
    },
)
_VALID_SIGNALS = st.fixed_dictionaries(
    {
        "id": st.from_regex(r"[A-Za-z0-9._:-]{1,10}", fullmatch=True),
        "symbol": st.sampled_from(["BTCUSDT", "ethusdt"]),
        "side": st.sampled_from(["buy", "sell", "long", "short"]),
        "ts": st.sampled_from([now_ms(), "2025-01-01T00:00:00Z"]),
    },
    optional={
        "entry": st.integers(1, 10**6),
        "take_profit": st.lists(st.floats(min_value=0.5, max_value=1e6), max_size=3),
        "strategy": st.just("follow"),
        "note": _JSON,
    },
)
_PAYLOADS = st.one_of(
    st.binary(max_size=256),
    _VALID_SIGNALS.map(lambda value: json.dumps(value).encode()),
    _JSON.map(lambda value: json.dumps(value).encode()),
    _SIGNAL_LIKE.map(lambda value: json.dumps(value).encode()),
)


def _is_valid_signal(payload: bytes) -> bool:
    """What the subscriber must conclude (no secret: unsigned is fine): a JSON object as the
    bot reads JSON (`load_json`, whose own rules test_messages checks: UTF-8, no NaN or
    Infinity, no key twice, ...) that the webhook's rules take as a signal."""
    try:
        document = load_json(payload)
    except ValueError:
        return False
    if not isinstance(document, dict):
        return False
    document.pop("signature", None)
    try:
        parse_signal("voiceofchain", document)
    except SignalError:
        return False
    return True


@pytest.fixture
def fuzz_target(broker: Mosquitto) -> Iterator[tuple[MqttSubscriber, RecordingSink, RawPublisher]]:
    sink = RecordingSink()
    subscriber = MqttSubscriber(config_for(broker), sink)
    with Running(subscriber) as running:
        running.wait_connected()
        publisher = RawPublisher(broker)
        yield subscriber, sink, publisher
        publisher.close()


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=_PAYLOADS)
def test_arbitrary_payloads_never_stop_the_subscriber_nor_pass_as_signals(
    fuzz_target: tuple[MqttSubscriber, RecordingSink, RawPublisher], payload: bytes
) -> None:
    subscriber, sink, publisher = fuzz_target
    received, calls, rejected = (
        subscriber.counters.received,
        sink.calls,
        subscriber.counters.rejected,
    )

    publisher.publish(payload)
    wait_for(lambda: subscriber.counters.received == received + 1, 10, "the message")
    wait_for(lambda: sink.calls + subscriber.counters.rejected > calls + rejected, 10, "a verdict")

    valid = _is_valid_signal(payload)
    event("a valid signal" if valid else "an invalid payload")
    assert sink.calls == calls + valid, payload
    assert subscriber.counters.rejected == rejected + (not valid), payload
    assert subscriber.connected


def test_a_flood_from_senders_not_known_is_counted_but_reported_once_a_minute(
    broker: Mosquitto,
) -> None:
    config = config_for(broker, require_signature=True)
    rejections: list[tuple[str, str]] = []

    async def on_reject(kind: str, reason: str, topic: str) -> None:
        rejections.append((reason, topic))

    subscriber = MqttSubscriber(
        config, RecordingSink(), signing_secret=SIGNING_SECRET, on_reject=on_reject
    )
    unsigned = json.dumps(signal_payload("flood")).encode()
    invalid = json.dumps(signal_payload("bad id!")).encode()

    def counted(kind: str) -> float:
        labels = {"source": config.source, "kind": kind}
        return REGISTRY.get_sample_value("bot_signal_rejections_total", labels) or 0.0

    before = {kind: counted(kind) for kind in ("unauthorized", "invalid")}
    with Running(subscriber) as running:
        running.wait_connected()
        publisher = RawPublisher(broker)
        for index in range(200):  # on topics of the flooder's choosing
            publisher.publish(unsigned, topic=f"{TOPIC}/s{index}")
        for _ in range(3):  # a known sender's mistakes are each reported
            publisher.publish(invalid, signature=signed(invalid))
        wait_for(lambda: subscriber.counters.rejected == 203, 10, "every message counted")
        publisher.close()

    assert [reason.split(":")[0] for reason, _ in rejections] == ["unsigned message"] + [
        "invalid signal"
    ] * 3
    # Every one is in the metrics, as the webhook's refusals are.
    assert {kind: counted(kind) - before[kind] for kind in before} == {
        "unauthorized": 200,
        "invalid": 3,
    }


@pytest.mark.parametrize("signing_secret", [None, SIGNING_SECRET], ids=["no secret", "secret"])
def test_without_required_signatures_each_refusal_is_reported(
    broker: Mosquitto, signing_secret: SecretStr | None
) -> None:
    # Unsigned messages are traded here: a publisher's mistakes must each say why they were
    # refused, not vanish after the first one of the minute. A bad signature stays a flood.
    config = config_for(broker)
    rejections: list[str] = []
    subscriber = MqttSubscriber(
        config,
        RecordingSink(),
        signing_secret=signing_secret,
        on_reject=lambda kind, reason, topic: rejections.append(reason),
    )
    payloads = [b"not json", b"", json.dumps(signal_payload("bad id!")).encode(), b"[1]"]
    with Running(subscriber) as running:
        running.wait_connected()
        publisher = RawPublisher(broker)
        for payload in payloads:
            publisher.publish(payload, topic=f"{TOPIC}/follow")
        if signing_secret is not None:
            for _ in range(3):
                publisher.publish(b"{}", signature="t=1,v1=" + "0" * 64)
        wait_for(
            lambda: subscriber.counters.rejected == len(payloads) + 3 * bool(signing_secret),
            10,
            "every message refused",
        )
        publisher.close()

    unauthorized = [r for r in rejections if r.startswith(SIGNATURE_PROPERTY)]
    assert len(rejections) - len(unauthorized) == len(payloads), rejections
    assert rejections[1] == "payload is empty", rejections
    assert len(unauthorized) == (1 if signing_secret is not None else 0), rejections


async def carried_out(control: MqttControl, message: aiomqtt.Message) -> None:
    """`message` handled by the control topic, and the command it admitted carried out."""
    await (await control._handle(message))


def test_control_commands_nobody_signed_are_logged_once_in_a_while_but_all_counted() -> None:
    applied: list[str] = []

    async def apply(command: str, body: bytes) -> str:
        applied.append(command)
        return "done"

    secret = SecretStr("admin-secret")
    control = MqttControl(
        MqttConfig(enabled=True, control_topic="bot/control"), apply, secret=secret
    )

    def message(body: bytes, *, signed: bool, retain: bool = False) -> aiomqtt.Message:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if signed:
            header = sign(secret.get_secret_value(), body, int(time.time()))
            properties.UserProperty = [(SIGNATURE_PROPERTY, header)]
        return aiomqtt.Message("bot/control/halt", body, 1, retain, 1, properties)

    async def flood_then_a_retained_command() -> None:
        for _ in range(500):
            await control._handle(message(b"{}", signed=False))
        await control._handle(message(b'{"reason": "kept"}', signed=True, retain=True))

    lines: list[str] = []
    handler = logger.add(lines.append, format="{message}", level="WARNING")
    try:
        asyncio.run(flood_then_a_retained_command())
    finally:
        logger.remove(handler)

    assert control.refused == 501 and applied == []
    assert len(lines) == 2, lines  # the first unsigned one, and the signed retained one
    assert "a retained command is refused" in lines[1]


def test_the_broker_never_sends_a_message_far_over_the_payload_limit(broker: Mosquitto) -> None:
    # A message of megabytes would be read whole and held before it could be rejected: the
    # subscriber tells the broker its Maximum Packet Size, and the broker drops it for us.
    sink = RecordingSink()
    subscriber = MqttSubscriber(config_for(broker), sink)
    huge = json.dumps(signal_payload("huge", pad="x" * 2_000_000)).encode()
    valid = json.dumps(signal_payload("after-huge")).encode()

    with Running(subscriber) as running:
        running.wait_connected()
        publisher = RawPublisher(broker)
        publisher.publish(huge)
        publisher.publish(valid)
        wait_for(lambda: subscriber.counters.accepted == 1, 10, "the valid one through")
        publisher.close()

    assert sink.ids == ["after-huge"]
    assert (subscriber.counters.received, subscriber.counters.rejected) == (1, 0)


def test_the_control_topic_reconnects_at_once_after_a_connection_that_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its backoff grew with every broker restart (0.3 s to 26 s), so a halt published
    right after one trailed the signals published after it."""
    waits: list[int] = []

    def delay(config: MqttConfig, failures: int) -> float:
        waits.append(failures)
        if len(waits) == 6:
            raise asyncio.CancelledError  # enough
        return 0.0

    async def connected_then_lost(self: MqttControl, tls: object) -> None:
        self.connected = True
        self._connected_at = time.monotonic() - config.reconnect_max_s  # it held
        raise aiomqtt.MqttError("the broker restarted")

    monkeypatch.setattr(mqtt_module, "_reconnect_delay_s", delay)
    monkeypatch.setattr(MqttControl, "_connection", connected_then_lost)
    config = MqttConfig(enabled=True, control_topic="bot/control")
    control = MqttControl(config, None, secret=SecretStr("s"))  # type: ignore[arg-type]

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(control.run())

    assert waits == [1] * 6  # as after a first failure, every time


def control_warnings(
    monkeypatch: pytest.MonkeyPatch,
    client_id: str,
    connection: Callable[..., Any],
    delay: Callable[[MqttConfig, int], float],
) -> list[str]:
    """The WARNING lines of a control topic's `run()` whose connections are `connection`
    and its backoff `delay`, until one of them raises CancelledError."""
    monkeypatch.setattr(mqtt_module, "_reconnect_delay_s", delay)
    monkeypatch.setattr(MqttControl, "_connection", connection)
    config = MqttConfig(enabled=True, control_topic="bot/control", client_id=client_id)
    control = MqttControl(config, None, secret=SecretStr("s"))  # type: ignore[arg-type]
    logged: list[str] = []
    handler = logger.add(logged.append, format="{message}", level="WARNING")
    try:
        with pytest.raises(asyncio.CancelledError):
            asyncio.run(control.run())
    finally:
        logger.remove(handler)
    return logged


def test_the_control_topic_backs_off_when_each_connection_is_ended_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two bots under one client id took the control session from each other at every
    reconnect (`reconnect_min_s`), forever."""
    waits: list[int] = []

    def delay(config: MqttConfig, failures: int) -> float:
        waits.append(failures)
        if len(waits) == 4:
            raise asyncio.CancelledError  # enough
        return 0.0

    async def taken_over(self: MqttControl, tls: object) -> None:
        self.connected = True
        self._connected_at = time.monotonic()
        raise aiomqtt.MqttError("Disconnected during message iteration")

    logged = control_warnings(monkeypatch, "twin", taken_over, delay)

    assert waits == [1, 2, 3, 4]
    assert "needs its own mqtt.client_id (twin)" in logged[-1]


def test_the_control_topic_does_not_blame_a_second_bot_for_a_restarting_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A broker restarting again and again ends each connection soon after it was made, as a
    takeover does; but the attempts in between find no broker, which no takeover does."""
    attempts = iter(range(8))

    def delay(config: MqttConfig, failures: int) -> float:
        return 0.0

    async def restarting(self: MqttControl, tls: object) -> None:
        attempt = next(attempts, None)
        if attempt is None:
            raise asyncio.CancelledError  # enough
        if attempt % 2:  # the broker went away: the attempt after each end finds none
            raise ConnectionRefusedError(111, "Connection refused")
        self.connected = True
        self._connected_at = time.monotonic()
        raise aiomqtt.MqttError("Disconnected during message iteration")

    logged = control_warnings(monkeypatch, "alone", restarting, delay)

    assert sum("Connection refused" in line for line in logged) == 4, logged
    assert not any("client_id" in line for line in logged), logged


def _command_the_journal_fails_once(broker: Mosquitto, command: str, body: bytes) -> list[str]:
    """Publish a signed `command` on the control topic, whose first record the journal fails
    (a disk I/O error); the commands carried out, once one is (or the bot refused it)."""
    secret = SecretStr("admin-secret-for-tests")
    applied: list[str] = []
    failures = [OSError("disk I/O error")]

    async def apply(command: str, payload: bytes) -> str:
        applied.append(command)
        return "done"

    async def remember(digest: bytes, until: float, now: float, redelivered: bool) -> bool:
        if failures:
            raise failures.pop()
        return True

    config = config_for(broker, control_topic="bot/control")
    control = MqttControl(config, apply, secret=secret, used=UsedSignatures(remember=remember))
    with Running(control) as running:  # type: ignore[arg-type]
        wait_for(lambda: control.connected, 10, "the control topic")
        publisher = RawPublisher(broker)
        publisher.publish(
            body,
            topic=f"bot/control/{command}",
            signature=sign(secret.get_secret_value(), body, int(time.time())),
        )
        wait_for(lambda: applied or control.refused, 10, "the command carried out, or refused")
        publisher.close()
        running.stop()
    assert control.refused == 0
    return applied


def test_a_command_the_journal_could_not_record_is_not_acked_and_comes_back(
    broker: Mosquitto,
) -> None:
    """A halt that met a journal hiccup was refused and acknowledged: lost, its sender told
    only by a log line. Unacknowledged, the broker delivers it again and it is carried out."""
    assert _command_the_journal_fails_once(broker, "halt", b'{"reason": "incident"}') == ["halt"]


def test_a_command_the_journal_could_not_record_is_said_in_one_line(broker: Mosquitto) -> None:
    """A resume is not carried out unrecorded: each delivery the journal could not take logged
    a traceback naming the error only as `OSError`."""
    records: list[str] = []
    handler = logger.add(records.append, level="ERROR", format="{message}{exception}")
    try:
        applied = _command_the_journal_fails_once(broker, "resume", b'{"reason": "all clear"}')
    finally:
        logger.remove(handler)

    assert applied == ["resume"]
    assert records == [
        "mqtt control: the command on bot/control/resume could not be journaled (disk I/O "
        "error): not acknowledged, the broker redelivers it; make the journal writable "
        "(GET /healthz names its problem)\n"
    ]


def test_a_command_is_carried_out_at_once_though_one_before_it_is_still_running(
    broker: Mosquitto,
) -> None:
    """A halt of the whole bot waited behind another command's flatten (seconds at a slow
    venue) while trading went on; the admin route carries each out at once (MQTT probe).
    Both are still acknowledged once carried out: the broker holds neither for a new
    session."""
    secret = SecretStr("admin-secret-for-tests")
    release = threading.Event()
    started: list[bytes] = []
    ended: list[bytes] = []

    async def apply(command: str, payload: bytes) -> str:
        started.append(payload)
        if payload.startswith(b"slow"):
            await asyncio.to_thread(release.wait, 10)
        ended.append(payload)
        return "done"

    config = config_for(broker, control_topic="bot/control")
    publisher = RawPublisher(broker)
    signed: dict[bytes, bytes] = {}  # body -> its digest as the journal keeps it
    acted: list[bytes] = []

    async def noted(digest: bytes) -> None:
        acted.append(digest)

    def command(body: bytes) -> None:
        at = int(time.time())
        signed[body] = command_digest(at, body)
        publisher.publish(
            body, topic="bot/control/halt", signature=sign(secret.get_secret_value(), body, at)
        )

    control = MqttControl(config, apply, secret=secret, used=UsedSignatures(acted=noted))
    with Running(control):  # type: ignore[arg-type]
        wait_for(lambda: control.connected, 10, "the control topic")
        command(b"slow: a strategy's flatten")
        command(b"the whole bot")
        wait_for(lambda: ended == [b"the whole bot"], 10, "the second carried out")
        assert started == [b"slow: a strategy's flatten", b"the whole bot"]
        # Superseded by the second while it ran: a redelivery after a crash is not acted on
        # again over the second (a halt's flatten over a later resume).
        assert signed[b"slow: a strategy's flatten"] in acted
        release.set()
        wait_for(lambda: len(ended) == 2, 10, "the first carried out")
        time.sleep(0.2)  # the acknowledgements on their way
    publisher.close()

    again = MqttControl(config, apply, secret=secret)  # the same session, new memory
    with Running(again):  # type: ignore[arg-type]
        wait_for(lambda: again.connected, 10, "the control topic again")
        time.sleep(0.5)  # room for a redelivery
    assert len(started) == 2 and again.applied == again.refused == 0


def test_a_control_topic_the_broker_refuses_is_reported_not_taken_for_listening(
    tmp_path: Path,
) -> None:
    """An ACL that lets the bot read signals but not its control topic: the broker refused the
    subscription, yet the bot said it took commands there, and a halt sent to it was lost."""
    broker = Mosquitto(tmp_path / "mosquitto")
    dynamic_security(broker, {"subscribe": False}, subscribe=["signals/#"])
    broker.start()
    config = config_for(broker, control_topic="bot/control")

    async def apply(command: str, payload: bytes) -> str:
        return "done"

    control = MqttControl(config, apply, secret=SecretStr("admin-secret-of-the-test"))
    lines: list[str] = []
    handler = logger.add(lines.append, level="INFO", format="{message}")
    try:
        with Running(control):  # type: ignore[arg-type]
            wait_for(
                lambda: sum("refused the subscription" in line for line in lines) >= 2,
                10,
                "the refusal, at each attempt",
            )
            assert not control.connected
    finally:
        logger.remove(handler)
        broker.stop()

    text = "\n".join(lines)
    assert "the broker refused the subscription to bot/control/+: Not authorized" in text
    assert "commands on bot/control" not in text


def test_a_command_a_crash_cut_short_is_carried_out_when_the_broker_delivers_it_again(
    tmp_path: Path,
) -> None:
    """A halt with a flatten, killed mid-flatten, came back from the broker and was refused
    as a replay: the flatten never happened (MQTT probe)."""
    secret = SecretStr("admin-secret")
    body = b'{"reason": "incident", "flatten": true}'
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    header = sign(secret.get_secret_value(), body, int(time.time()))
    properties.UserProperty = [(SIGNATURE_PROPERTY, header)]
    message = aiomqtt.Message("bot/control/halt", body, 1, False, 1, properties)
    applied: list[str] = []

    async def apply(command: str, payload: bytes) -> str:
        applied.append(command)
        return "done"

    def started(journal: Journal) -> MqttControl:
        async def remember(digest: bytes, until: float, now: float, redelivered: bool) -> bool:
            return journal.record_used_command(digest, until, now, redelivered=redelivered)

        async def acted(digest: bytes) -> None:
            journal.record_command_acted(digest)

        used = UsedSignatures(
            remembered=journal.used_commands(time.time(), carried_out=True),
            remember=remember,
            acted=acted,
        )
        return MqttControl(
            MqttConfig(enabled=True, control_topic="bot/control"), apply, secret=secret, used=used
        )

    with closing(Journal(tmp_path / "j.sqlite3")) as journal:
        killed = started(journal)  # it took the command, then died before carrying it out
        assert asyncio.run(killed._used.first_use(header, body, time.time()))
        restarted = started(journal)
        asyncio.run(carried_out(restarted, message))  # the broker's redelivery
        asyncio.run(carried_out(started(journal), message))  # now a replay

    assert applied == ["halt"]
