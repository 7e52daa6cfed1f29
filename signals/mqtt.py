"""MQTT signals: a broker's topic, each message acknowledged only once its signal is journaled.

    broker ─PUBLISH (QoS 1)─► MqttSubscriber ─► checks ─► SignalSink (journal) ─► PUBACK
                                                  │ rejected
                                                  └─► on_reject(kind, reason, topic) ─► PUBACK

Delivery: MQTT v5 with a persistent session (clean_start=False and a session expiry interval,
under a stable client id), a QoS 1 subscription, and manual acknowledgement: the PUBACK goes out
only after the sink returned, i.e. after the signal is journaled, new or duplicate. A crash
before that makes the broker redeliver on the next connection, and the journal's (source, id)
dedupe makes redelivery harmless. A message that can never become a signal is rejected,
reported, counted and acknowledged: redelivering it would not change it. When the sink raises
(journal unavailable) the message is *not* acknowledged; the subscriber drops the connection
and reconnects after a backoff, and the broker redelivers every unacknowledged message then.

Checks run cheapest first: size → signature → JSON → topic strategy → signal fields.

Authentication (optional; HMAC-SHA256 with `BOT_MQTT_SIGNING_SECRET`, the webhook's scheme and
its `signature_problem`):
- MQTT v5 publishers send the user property `x-signature: t=<unix seconds>,v1=<hex>`, the HMAC
  over `"<t>." + payload bytes` exactly as published (`signals.voiceofchain.sign`).
- MQTT 3.1.1 publishers have no properties, so the payload's top-level member `signature` holds
  the same `t=<unix seconds>,v1=<hex>` string. The signed bytes are the payload exactly as
  published with that member's value emptied: serialize the signal with `"signature": ""`,
  compute the HMAC over `"<t>." + those bytes`, then write `t=...,v1=...` between the two quotes
  of that empty string, changing no other byte (`sign_payload` does exactly this). The value
  must be written literally (no JSON escapes) and appear exactly once in the payload. The member
  is removed before the payload becomes a signal.
The user property wins when both are present. Without a signing secret no message is checked;
with one, a signed message must verify, and with `require_signature` every message must be
signed. `t` may be up to `max_signature_age_s` from now, a day by default: a persistent session
delivers messages published while the bot was down. A replay is a duplicate to the journal, and
a stale signal is the risk gate's `max_signal_age_s` to judge.

Topic: when the filter ends in a wildcard (the default `signals/voiceofchain/#`), the level that
wildcard starts at names the strategy: a message on `signals/voiceofchain/follow` is routed to
strategy `follow` unless its payload names one, and a payload naming another strategy is
rejected. Levels below that one are free for the publisher's use; a message on
`signals/voiceofchain` itself names no strategy.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import random
import re
import secrets
import sqlite3
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Self, TypeVar

import aiomqtt
import paho.mqtt.client as paho_mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import SecretStr

from bot import logs, metrics
from bot.logs import logger
from bot.messages import Signal, SignalError, clip, load_json, one_line, parse_signal
from bot.secrets import split_secrets
from signals.base import FloodNotes, SignalSink
from signals.config import PASSWORD_SECRET_NAME, SIGNING_SECRET_NAME, MqttConfig
from signals.voiceofchain import (
    COMMAND_MAX_SKEW_S,
    UsedSignatures,
    any_signature_problem,
    sign,
)

__all__ = [
    "PASSWORD_SECRET_NAME",
    "PAYLOAD_SIGNATURE_FIELD",
    "SIGNATURE_PROPERTY",
    "SIGNING_SECRET_NAME",
    "MqttConfig",
    "MqttControl",
    "MqttCounters",
    "MqttPublishError",
    "MqttSubscriber",
    "RejectHandler",
    "publish_signal",
    "publish_topic",
    "sign_payload",
]

SIGNATURE_PROPERTY: Final = "x-signature"
PAYLOAD_SIGNATURE_FIELD: Final = "signature"

_STRATEGY_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # Signal.strategy's rule
# The in-payload form is matched byte for byte, so only its exact spelling is accepted.
_LITERAL_SIGNATURE: Final = re.compile(r"t=[0-9]{1,12}(?:,v1=[0-9a-fA-F]{64})+")
_MAX_REASON_CHARS: Final = 300
_T = TypeVar("_T")

RejectHandler = Callable[[str, str, str], Awaitable[None] | None]
"""Called with (kind, reason, topic) for each rejected message, before it is acknowledged.

`kind` labels the refusal as the webhook's are (`unauthorized`, `invalid_json`, `too_large`,
`invalid`, ...); `reason` is one printable line of at most 300 characters that never holds a
secret; `topic` is the message's topic as the broker gave it (untrusted text). The handler may
be sync or async; if it raises, the error is logged and the message is acknowledged all the
same. It runs in line with the stream, so it should be quick (a journal write is fine)."""


@dataclass
class MqttCounters:
    """What the subscriber has seen since it was created (for /metrics and /healthz)."""

    received: int = 0
    accepted: int = 0  # journaled as new
    duplicates: int = 0  # already journaled; acknowledged, nothing new happens
    rejected: int = 0  # can never become a signal; reported and acknowledged
    sink_errors: int = 0  # not journaled; not acknowledged, so the broker redelivers
    connections: int = 0  # successful connect + subscribe


class MqttPublishError(Exception):
    """A signal could not be published (broker unreachable, refused, or too slow).
    `refused`: the broker was reached and answered that it does not take the signal."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


#: The refusal kind of a message whose signature is missing or wrong (as the webhook's 401).
_UNAUTHORIZED: Final = "unauthorized"


class _Rejected(Exception):
    """The message can never become a signal; the message is the one-line reason.
    `verified`: it carried a valid signature, so its sender is known. `kind` labels it in
    `bot_signal_rejections_total`, as the webhook's refusals are labelled."""

    def __init__(self, reason: str, *, verified: bool = False, kind: str = "invalid") -> None:
        super().__init__(reason)
        self.verified = verified
        self.kind = kind


class _SinkFailed(Exception):
    """The sink raised: the message stays unacknowledged and the connection is dropped."""

    def __init__(self, message: str, what: str) -> None:
        super().__init__(message)
        self.what = what  # what was not journaled: "signal <id>", "the command on <topic>"


class MqttSubscriber:
    """Subscribes to the configured topic and hands each message's signal to the bot's sink.

    `run()` runs until cancelled: it connects, subscribes, consumes, and on any failure
    reconnects forever with bounded exponential backoff and jitter, each attempt logged.
    """

    def __init__(
        self,
        config: MqttConfig,
        sink: SignalSink,
        *,
        password: SecretStr | None = None,
        signing_secret: SecretStr | Sequence[SecretStr] | None = None,
        on_reject: RejectHandler | None = None,
        clock: Callable[[], float] = time.time,
        note_once: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        """`signing_secret` may hold several secrets, one per line (or be a sequence): a message
        signed with any of them passes, so the secret rotates without downtime.
        `on_reject(kind, reason, topic)` runs for each rejected message before it is acked; the
        subscriber logs every rejection itself. `clock` gives unix seconds for signatures."""
        self._secrets = _secret_values(signing_secret)
        if config.require_signature and not self._secrets:
            raise ValueError(f"mqtt.require_signature needs the secret {SIGNING_SECRET_NAME}")
        if password is not None and not config.username:
            raise ValueError(f"{PASSWORD_SECRET_NAME} is set but mqtt.username is empty")
        if password is not None:
            logs.redact(password.get_secret_value())
        self.counters = MqttCounters()
        self.last_error: str | None = None
        self._config = config
        self._sink = sink
        self._password = password
        self._on_reject = on_reject
        self._clock = clock
        self._note_once = note_once
        self._connected = False
        self._session_present = False
        self._connect_failures = 0
        self._sink_failures = 0  # failures in a row to journal a signal
        self._unjournaled: str | None = None  # that signal ("signal <id>"), to be redelivered
        self._sink_notes = logs.RepeatedNotes()  # those failures said, once a minute
        # Connections in a row the broker ended before they held (see `_note_connection_end`).
        self._brief_connections = 0
        self._connected_at: float | None = None  # time.monotonic() of the last subscribe
        self._floods = FloodNotes()
        levels = config.topic.split("/")
        # Index of the topic level that names the strategy, if the filter ends in a wildcard.
        self._strategy_level = len(levels) - 1 if levels[-1] in ("#", "+") else None

    @property
    def connected(self) -> bool:
        """True while connected and subscribed (readiness)."""
        return self._connected

    async def run(self) -> None:
        """Receive signals until cancelled; never returns otherwise."""
        self._log_settings()
        tls = await asyncio.to_thread(self._config.tls_context)
        while True:
            self._connected_at = None
            broker_ended = True  # the broker (or the network) ended the connection, not we
            sink_failed: _SinkFailed | None = None
            try:
                await self._connection(tls)
                problem = "the broker closed the connection"
            except _SinkFailed as exc:
                self._sink_failures += 1
                self._unjournaled = exc.what
                broker_ended = False
                problem = str(exc)
                sink_failed = exc
            except aiomqtt.MqttError as exc:
                self._connect_failures += 1
                problem = f"{type(exc).__name__}: {_with_reason(exc)}"
            except OSError as exc:
                self._connect_failures += 1
                problem = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # a bug or a library surprise: log it, keep receiving
                self._connect_failures += 1
                problem = f"unexpected {type(exc).__name__}: {exc}"
                logger.opt(exception=exc).error("mqtt: {problem}", problem=problem)
            finally:
                self._connected = False
            _end_if_cancelled()
            if self._connected_at is not None and broker_ended:
                problem = self._note_connection_end(problem)
            elif self._connected_at is None and broker_ended:
                # The broker could not be reached, or refused us: the connection before this
                # attempt ended with the broker (a restart), not in another client's takeover,
                # which leaves the broker up and our next attempt taking the session back.
                self._brief_connections = 0
            self.last_error = problem
            failures = max(self._connect_failures, self._sink_failures, self._brief_connections, 1)
            delay = _reconnect_delay_s(self._config, failures)
            if sink_failed is not None:
                self._note_sink_failure(sink_failed, delay)
            else:
                logger.warning(
                    "mqtt: {problem}; reconnecting to {host}:{port} in {delay:.2f} s (attempt {n})",
                    problem=problem,
                    host=self._config.host,
                    port=self._config.port,
                    delay=delay,
                    n=failures,
                )
            await asyncio.sleep(delay)

    def _note_sink_failure(self, failed: _SinkFailed, delay: float) -> None:
        """Say that a signal could not be journaled, in one line: at once for the first failure
        in a row, then once a minute while the journal stays unwritable. The broker
        redelivers the message at each reconnect, so a full disk failed it again at every
        backoff, each time with a traceback of 17 lines that told nothing new."""
        more = self._sink_notes.say("journal")
        if more is None:
            return
        cause = failed.__cause__
        # The journal's own failures (a full disk, a lock, a read-only file) say all in their
        # words; anything else is a bug, whose traceback is wanted, once.
        known = isinstance(cause, sqlite3.Error | OSError) or self._sink_failures > 1
        logger.opt(exception=None if known else cause).error(
            "mqtt: {problem}: not acknowledged, the broker redelivers it; make the journal "
            "writable (GET /healthz names its problem); tried again in {delay:.2f} s "
            "(attempt {n}){more}",
            problem=failed,
            delay=delay,
            n=self._sink_failures,
            more=more,
        )

    def _note_connection_end(self, problem: str) -> str:
        """Count a connection the broker ended before it held (lasted `reconnect_max_s`), and
        name what ends them again and again: another client connecting under our client id
        takes the session over (the broker closes ours, with MQTT v5's reason 142 or none),
        and we take it back at our next attempt. Brief connections do not reset the backoff,
        so two such clients take turns ever more slowly, not many times a second."""
        held = _held(self._connected_at, self._config)
        self._brief_connections = 0 if held else self._brief_connections + 1
        advice = _own_client_id(self._config)
        if _SESSION_TAKEN_OVER_TEXT in problem:
            return f"{problem}: another client connected under our client id; {advice}"
        if self._brief_connections >= 2:
            return (
                f"{problem}; the broker ended {self._brief_connections} connections in a row "
                f"soon after they were made: is another client connected under our client id? "
                f"{advice}"
            )
        return problem

    def _log_settings(self) -> None:
        config = self._config
        if not self._secrets:
            logger.warning(
                "mqtt: messages are not authenticated: anyone who can publish to {topic} on the "
                "broker can send signals (set {name} and require_signature)",
                topic=config.topic,
                name=SIGNING_SECRET_NAME,
            )
        elif not config.require_signature:
            logger.info("mqtt: signed messages are checked; unsigned ones are accepted too")
        if config.session_expiry_s == 0:
            logger.warning(
                "mqtt: session_expiry_s is 0: messages published while the bot is down are lost"
            )
        if self._password is not None and not config.tls:
            logger.warning("mqtt: the broker password is sent without TLS")

    async def _connection(self, tls: ssl.SSLContext | None) -> None:
        """One connection: connect, subscribe, consume until it fails."""
        config = self._config
        client = _client(
            config,
            identifier=config.client_id,
            password=self._password,
            tls=tls,
            clean_start=False,
            session_expiry_s=config.session_expiry_s,
            receive_maximum=config.max_unacked_messages,
            timeout_s=config.connect_timeout_s,
        )
        # aiomqtt 2.x has no manual-ack API, but its paho client does: with it set before
        # connecting, paho sends no PUBACK on receipt and `ack()` sends it when we say so.
        paho = client._client
        paho.manual_ack_set(True)
        self._watch_session_flag(paho)
        # While a signal the journal could not take is redelivered at each reconnect, its
        # failure's line says all there is to say.
        quiet = "DEBUG" if self._sink_failures else "INFO"
        logger.log(
            quiet,
            "mqtt: connecting to {host}:{port} as {client_id}",
            host=config.host,
            port=config.port,
            client_id=config.client_id,
        )
        async with client:
            granted = await client.while_open(
                client.subscribe(
                    config.subscription,
                    options=SubscribeOptions(
                        qos=1,
                        # A retained signal is an old one: never replay it on (re)subscribing.
                        retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND,
                    ),
                    timeout=config.connect_timeout_s,
                )
            )
            self._check_granted(granted)
            if self._session_present and config.shared_group:
                # A session resumed from before `shared_group` was set still holds the plain
                # filter: with it, this bot would get every signal besides its share.
                await client.while_open(
                    client.unsubscribe(config.topic, timeout=config.connect_timeout_s)
                )
            had_session = await self._had_session()
            if self._session_present or not had_session:
                logger.log(
                    quiet,
                    "mqtt: subscribed to {subscription} ({session})",
                    subscription=config.subscription,
                    session="session resumed" if self._session_present else "new session",
                )
            else:
                logger.warning(
                    "mqtt: subscribed to {subscription}, but the broker had lost the session "
                    "(restarted without persistence, or session_expiry_s passed): messages "
                    "published while no session existed were not kept for the bot",
                    subscription=config.subscription,
                )
                self._note_unjournaled_lost()
            self._connected = True
            self._connected_at = time.monotonic()
            self._connect_failures = 0
            self.counters.connections += 1
            async for message in client.messages:
                await self._handle(paho, message)

    def _note_unjournaled_lost(self) -> None:
        """The signal the journal could not take went with the session that kept it for
        redelivery: say so, naming it, and stop counting its failures (they would keep the
        reconnect backoff long and the connection lines quiet, and be put to the account of
        the next signal journaled)."""
        if self._unjournaled is None:
            return
        logger.error(
            "mqtt: {what}, which the journal could not take, is lost: the broker lost the "
            "session that kept it for redelivery; have its sender send it again",
            what=self._unjournaled,
        )
        self._end_sink_failures()

    def _end_sink_failures(self) -> None:
        self._sink_failures = 0
        self._unjournaled = None
        self._sink_notes.over("journal")

    async def _had_session(self) -> bool:
        """Whether this bot has had a session with this broker under this client id before,
        in this run or (told by `note_once`, which the bot keeps in its journal) an earlier
        one: a broker that then answers with no session lost what it kept for the bot."""
        if self.counters.connections > 0:
            return True
        if self._note_once is None:
            return False
        config = self._config
        return not await self._note_once(
            f"mqtt session {config.host}:{config.port} {config.client_id}"
        )

    def _watch_session_flag(self, paho: paho_mqtt.Client) -> None:
        """Record CONNACK's session-present flag, then let aiomqtt handle CONNACK as before."""
        original = paho.on_connect
        self._session_present = False

        def on_connect(*args: Any) -> None:
            flags = args[2]
            self._session_present = bool(getattr(flags, "session_present", False))
            if original is not None:
                original(*args)

        paho.on_connect = on_connect

    def _check_granted(self, granted: tuple[int, ...] | list[ReasonCode]) -> None:
        _check_subscribed(granted, self._config.subscription)
        for code in granted:
            if int(code.value if isinstance(code, ReasonCode) else code) == 0:
                logger.warning(
                    "mqtt: the broker granted QoS 0 only: a message lost in a crash is not "
                    "redelivered"
                )

    async def _handle(self, paho: paho_mqtt.Client, message: aiomqtt.Message) -> None:
        self.counters.received += 1
        topic = message.topic.value
        try:
            signal = self._signal_from(topic, message.payload, message.properties)
        except _Rejected as exc:
            await self._reject(str(exc), topic, verified=self._known_sender(exc), kind=exc.kind)
        except Exception as exc:  # a bug in a check must not stop the stream
            logger.opt(exception=exc).error("mqtt: checking a message failed")
            await self._reject(
                f"internal error while checking: {type(exc).__name__}",
                topic,
                verified=True,
                kind="internal_error",
            )
        else:
            try:
                is_new = await self._sink(signal)
            except Exception as exc:
                self.counters.sink_errors += 1
                raise _SinkFailed(
                    f"signal {signal.id} could not be journaled ({_error_text(exc)})",
                    f"signal {signal.id}",
                ) from exc
            if self._sink_failures:
                logger.info(
                    "mqtt: the journal takes signals again: signal {id} journaled after {n} "
                    "failed attempts",
                    id=signal.id,
                    n=self._sink_failures,
                )
                self._end_sink_failures()
            if is_new:
                self.counters.accepted += 1
            else:
                self.counters.duplicates += 1
        self._ack(paho, message)

    def _ack(self, paho: paho_mqtt.Client, message: aiomqtt.Message) -> None:
        if message.qos == 0:
            return
        result = paho.ack(message.mid, message.qos)
        if result != paho_mqtt.MQTT_ERR_SUCCESS:
            # The connection is gone: the broker redelivers, and the journal finds a duplicate.
            logger.warning(
                "mqtt: could not acknowledge message {mid} ({rc}); it will be redelivered",
                mid=message.mid,
                rc=paho_mqtt.error_string(result),
            )

    def _known_sender(self, refused: _Rejected) -> bool:
        """Whether the refused message's sender is as known as any whose signals are traded:
        a secret of ours signed it, or signatures are not required and it showed no bad one.
        An unsigned message is then traded when valid, so reporting its refusal only once a
        minute would protect nothing (the sender can grow the journal with valid signals at
        its pace) and would hide a publisher's mistakes: the signal would vanish unexplained."""
        if refused.verified:
            return True
        return not self._config.require_signature and refused.kind != _UNAUTHORIZED

    async def _reject(self, reason: str, topic: str, *, verified: bool, kind: str) -> None:
        """Count a refusal (and in `bot_signal_rejections_total`, by `kind`); log it and
        report it (`on_reject`: the journal) unless its sender is not known (`_known_sender`)
        and such a refusal was reported within `FLOOD_NOTE_S`: anyone who may publish could
        otherwise grow both at their pace."""
        self.counters.rejected += 1
        metrics.SIGNAL_REJECTIONS.labels(self._config.source, kind).inc()
        # Keyed by the source, not the topic: a publisher chooses the topic's last levels.
        if not verified and not self._floods.first_in_a_while(self._config.source):
            return
        reason = _one_line(reason)
        logger.warning(
            "mqtt: rejected a message on {topic}: {reason}", topic=_one_line(topic), reason=reason
        )
        if self._on_reject is None:
            return
        try:
            result = self._on_reject(kind, reason, topic)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("mqtt: the rejection handler failed")

    def _signal_from(self, topic: str, payload: bytes, properties: Properties | None) -> Signal:
        """The message's signal, or `_Rejected` saying why it can never be one."""
        config = self._config
        if len(payload) > config.max_payload_bytes:
            raise _Rejected(
                f"payload is {len(payload)} bytes, over the limit of {config.max_payload_bytes}",
                kind="too_large",
            )
        header = _signature_property(properties)
        verified = False  # a secret of ours signed it
        if header is not None and self._secrets:
            problem = self._signature_problem(header, payload)
            if problem is not None:
                raise _Rejected(
                    f"{SIGNATURE_PROPERTY} user property: {problem}", kind=_UNAUTHORIZED
                )
            verified = True
        if not payload:
            # What clears a retained message; JSON's own words for it ("Expecting value: line
            # 1 column 1") did not say that nothing was sent.
            raise _Rejected("payload is empty", verified=verified, kind="invalid_json")
        try:
            document = load_json(payload)
        except ValueError as exc:
            raise _Rejected(
                f"payload is not JSON: {exc}", verified=verified, kind="invalid_json"
            ) from None
        signed = header is not None
        if isinstance(document, dict) and PAYLOAD_SIGNATURE_FIELD in document:
            embedded = document.pop(PAYLOAD_SIGNATURE_FIELD)
            if header is None and self._secrets and embedded is not None:
                self._check_embedded_signature(embedded, payload)
                verified = True
            signed = signed or embedded is not None
        if config.require_signature and not signed:
            raise _Rejected(
                f"unsigned message: a signature is required (the {SIGNATURE_PROPERTY} user "
                f"property, or a {PAYLOAD_SIGNATURE_FIELD!r} field)",
                kind=_UNAUTHORIZED,
            )
        strategy = self._topic_strategy(topic, verified=verified)
        if strategy is not None and isinstance(document, dict):
            named = document.get("strategy")
            if named is None:
                document["strategy"] = strategy
            elif named != strategy:
                raise _Rejected(
                    f"payload strategy {clip(repr(named), 80)} contradicts the topic's "
                    f"strategy {strategy!r}",
                    verified=verified,
                )
        try:
            return parse_signal(config.source, document)
        except SignalError as exc:
            raise _Rejected(f"invalid signal: {exc}", verified=verified) from None

    def _signature_problem(self, header: str, signed: bytes) -> str | None:
        """None when any of the secrets signed `signed`; else why the first did not."""
        return any_signature_problem(
            header, signed, self._secrets, self._clock(), self._config.max_signature_age_s
        )

    def _check_embedded_signature(self, value: object, payload: bytes) -> None:
        name = f"{PAYLOAD_SIGNATURE_FIELD!r} field"
        if not isinstance(value, str) or not _LITERAL_SIGNATURE.fullmatch(value):
            raise _Rejected(
                f"{name}: expected the string t=<unix seconds>,v1=<hex>", kind=_UNAUTHORIZED
            )
        quoted = f'"{value}"'.encode()
        if payload.count(quoted) != 1:
            raise _Rejected(
                f"{name}: its value must appear literally, and once, in the payload",
                kind=_UNAUTHORIZED,
            )
        problem = self._signature_problem(value, payload.replace(quoted, b'""', 1))
        if problem is not None:
            raise _Rejected(f"{name}: {problem}", kind=_UNAUTHORIZED)

    def _topic_strategy(self, topic: str, *, verified: bool) -> str | None:
        if self._strategy_level is None:
            return None
        levels = topic.split("/")
        if len(levels) <= self._strategy_level:
            return None
        level = levels[self._strategy_level]
        if not _STRATEGY_NAME.fullmatch(level):
            raise _Rejected(
                f"topic level {clip(repr(level), 80)} is not a strategy name "
                "(1-64 letters, digits, '_', '.', '-')",
                verified=verified,
            )
        return level


def sign_payload(secret: str, payload: Mapping[str, Any], timestamp: int) -> bytes:
    """`payload` as JSON bytes carrying its own `signature` member (the MQTT 3.1.1 form).

    The member is written first, so the emptied value is at a fixed place: the signed bytes
    are exactly the returned bytes with the signature's value replaced by "".
    """
    fields = {key: value for key, value in payload.items() if key != PAYLOAD_SIGNATURE_FIELD}
    unsigned = json.dumps(
        {PAYLOAD_SIGNATURE_FIELD: "", **fields}, separators=(",", ":"), ensure_ascii=False
    ).encode()
    prefix = f'{{"{PAYLOAD_SIGNATURE_FIELD}":""'.encode()
    value = sign(secret, unsigned, timestamp)
    return f'{{"{PAYLOAD_SIGNATURE_FIELD}":"{value}"'.encode() + unsigned[len(prefix) :]


def publish_topic(topic_filter: str, strategy: object = None) -> str:
    """The topic to publish a signal on so that a subscriber of `topic_filter` receives it:
    the filter's fixed part, plus the strategy's level when the filter ends in a wildcard."""
    levels = topic_filter.split("/")
    wildcard = levels[-1] if levels[-1] in ("#", "+") else None
    base = levels[:-1] if wildcard else levels
    if any(level in ("#", "+") for level in base):
        raise ValueError(f"topic filter {topic_filter!r} has inner wildcards: pass a topic")
    if wildcard is not None and isinstance(strategy, str) and _STRATEGY_NAME.fullmatch(strategy):
        return "/".join([*base, strategy])
    if wildcard == "+" or not base:
        raise ValueError(
            f"a subscriber of {topic_filter!r} receives only topics one level deeper: "
            "name a strategy or pass a topic"
        )
    return "/".join(base)


async def publish_signal(
    config: MqttConfig,
    payload: Mapping[str, Any],
    *,
    password: SecretStr | None,
    signing_secret: SecretStr | Sequence[SecretStr] | None,
    qos: int = 1,
    timeout_s: float = 10.0,
    topic: str | None = None,
    clock: Callable[[], float] = time.time,
) -> str:
    """Publish one signal (`bot signal send --mqtt`) and return the topic it went to.

    Signed with the `x-signature` user property when a signing secret exists (one `v1=` per
    line of it, so subscribers holding either secret accept it while it rotates). The topic is
    `publish_topic(config.topic, payload["strategy"])` unless given. With QoS 1 this returns
    once the broker acknowledged, and raises if its PUBACK refused the signal (an ACL's Not
    authorized: the broker drops it); the whole call is bounded by `timeout_s`.
    """
    target = topic or publish_topic(config.topic, payload.get("strategy"))
    body = json.dumps(dict(payload), separators=(",", ":"), ensure_ascii=False).encode()
    if len(body) > config.max_payload_bytes:
        raise MqttPublishError(
            f"the signal is {len(body)} bytes, over mqtt.max_payload_bytes "
            f"({config.max_payload_bytes}): subscribers would reject it"
        )
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.ContentType = "application/json"
    signers = _secret_values(signing_secret)
    if signers:
        timestamp = int(clock())
        digests = [
            sign(secret.get_secret_value(), body, timestamp).partition(",")[2] for secret in signers
        ]
        properties.UserProperty = (SIGNATURE_PROPERTY, ",".join([f"t={timestamp}", *digests]))
    try:
        async with asyncio.timeout(timeout_s):
            tls = await asyncio.to_thread(config.tls_context)
            client = _client(
                config,
                # Never the subscriber's id: a second connection under it would evict the bot.
                identifier=f"{config.client_id}-send-{secrets.token_hex(4)}",
                password=password,
                tls=tls,
                clean_start=True,
                session_expiry_s=0,
                receive_maximum=None,
                timeout_s=timeout_s,
            )
            refusals = _publish_refusals(client._client)
            async with client:
                await client.publish(target, body, qos=qos, properties=properties)
    except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
        detail = str(exc) or type(exc).__name__
        raise MqttPublishError(
            f"could not publish to {config.host}:{config.port} ({target}): {detail}"
        ) from exc
    if refusals:
        raise MqttPublishError(
            f"the broker at {config.host}:{config.port} refused the signal on {target}: "
            f"{refusals[0]}",
            refused=True,
        )
    return target


def _publish_refusals(paho: paho_mqtt.Client) -> list[ReasonCode]:
    """The failure reason codes of the PUBACKs `paho` will receive (aiomqtt takes any PUBACK
    for a success), collected before aiomqtt handles each as before."""
    refusals: list[ReasonCode] = []
    original = paho.on_publish

    def on_publish(*args: Any) -> None:
        code = args[3]  # (client, userdata, mid, reason_code, properties)
        if isinstance(code, ReasonCode) and code.is_failure:
            refusals.append(code)
        if original is not None:
            original(*args)

    paho.on_publish = on_publish
    return refusals


#: A control command older than this is refused: a queued resume must not act hours later.
#: Room for a message's topic (at most 65,535 bytes) and properties besides its payload.
_PACKET_MARGIN_BYTES: Final = 70_000
#: Applies one verified control command (its topic, its JSON body); returns what it did.
ControlHandler = Callable[[str, bytes], Awaitable[str]]


class MqttControl:
    """The kill switch's MQTT topic: every message must carry the admin secret's signature in
    the `x-signature` user property (at most `COMMAND_MAX_SKEW_S` from the bot's clock); the
    command is the last topic level (`<control_topic>/halt` or `/resume`) and the body is the
    admin route's JSON. A command is acknowledged once applied (a crash before means
    redelivery); a refused one is logged and acknowledged. Its own persistent session, under
    `<client_id>-control`.

    Commands are checked and journaled one at a time, in the order they came, then each is
    carried out on its own, as the admin route's are: a halt takes effect at once, not after
    the cancels and closes of a command before it (the kill switch runs those one after the
    other itself). Acknowledgements go in the order the commands came, as MQTT asks.
    """

    def __init__(
        self,
        config: MqttConfig,
        apply: ControlHandler,
        *,
        secret: SecretStr,
        password: SecretStr | None = None,
        clock: Callable[[], float] = time.time,
        used: UsedSignatures | None = None,
    ) -> None:
        """`used`: shared with every other way in for commands (the admin routes)."""
        self._config = config
        self._apply = apply
        self._secrets = _secret_values(secret)
        self._password = password
        self._clock = clock
        self._used = used or UsedSignatures()
        self._floods = FloodNotes()
        self.connected = False
        self._connected_at: float | None = None  # time.monotonic() of the last subscribe
        # Commands being carried out (their cancels and closes can take seconds), each with
        # its signature and body.
        self._carrying_out: dict[asyncio.Task[None], tuple[str, bytes]] = {}
        self.applied = 0
        self.refused = 0

    async def run(self) -> None:
        """Take commands until cancelled; reconnect with bounded backoff after a failure."""
        try:
            await self._take_commands()
        finally:
            # Stopping: one cut short was not acknowledged, nor marked done: the broker
            # delivers it again after the restart, and it is carried out then.
            for carrying_out in self._carrying_out:
                carrying_out.cancel()
            await asyncio.gather(*self._carrying_out, return_exceptions=True)

    async def _take_commands(self) -> None:
        # Read once, as the subscriber does: a CA file read at each reconnect, and missing
        # then (replaced in two steps), raised out of this loop and took the bot down.
        tls = await asyncio.to_thread(self._config.tls_context)
        failures = 0
        brief = 0  # connections in a row the broker ended before they held
        while True:
            self._connected_at = None
            try:
                await self._connection(tls)
            except (aiomqtt.MqttError, OSError) as exc:
                # Counted afresh after a connection that held: a broker's restart is not its
                # last failure's thirtieth (a halt would trail the signals published after
                # it). One the broker ended at once is no such connection: another bot
                # under our client id took the session over, and we would take it back
                # many times a second.
                held = _held(self._connected_at, self._config)
                failures = (0 if held else failures) + 1
                # An attempt that could not connect shows the broker went away (a restart):
                # the connections before it were not taken over by another client.
                brief = 0 if held or self._connected_at is None else brief + 1
                error = _with_reason(exc) if isinstance(exc, aiomqtt.MqttError) else str(exc)
                if brief >= 2:
                    error += (
                        "; the broker ends our connections soon after they are made: "
                        + _own_client_id(self._config)
                    )
                logger.warning("mqtt control: {error}; reconnecting", error=error or type(exc))
            except _SinkFailed as exc:
                failures += 1  # the journal's trouble: back off as after a failed attempt
                logger.error("mqtt control: {error}", error=exc)
            finally:
                self.connected = False
            _end_if_cancelled()
            await asyncio.sleep(_reconnect_delay_s(self._config, max(failures, 1)))

    async def _connection(self, tls: ssl.SSLContext | None) -> None:
        config = self._config
        client = _client(
            config,
            identifier=f"{config.client_id}-control",
            password=self._password,
            tls=tls,
            clean_start=False,
            session_expiry_s=config.session_expiry_s,
            receive_maximum=10,
            timeout_s=config.connect_timeout_s,
        )
        paho = client._client
        paho.manual_ack_set(True)
        async with client:
            topic = f"{config.control_topic}/+"
            # A broker's ACL may refuse it (SUBACK 0x87): the kill switch's topic is not
            # listened to then, which must be said, and tried again, not taken for listening.
            _check_subscribed(
                await client.while_open(
                    client.subscribe(topic, qos=1, timeout=config.connect_timeout_s)
                ),
                topic,
            )
            self.connected = True
            self._connected_at = time.monotonic()
            logger.info("mqtt control: commands on {topic}/halt|resume", topic=config.control_topic)
            # (its end, mid, qos): acknowledged in this order, each once it and those
            # before it have ended; forgotten with the connection (the broker delivers them
            # again to the next, and the commands still running refuse the copies).
            unacked: deque[tuple[asyncio.Future[None], int, int]] = deque()

            def ack_ended(_: object = None) -> None:
                while unacked and unacked[0][0].done():
                    _, mid, qos = unacked.popleft()
                    if qos:
                        paho.ack(mid, qos)

            try:
                async for message in client.messages:
                    ended = await self._handle(message)
                    unacked.append((ended, message.mid, message.qos))
                    ended.add_done_callback(ack_ended)
                    ack_ended()
            finally:
                unacked.clear()

    async def _handle(self, message: aiomqtt.Message) -> asyncio.Future[None]:
        """Check one command and start carrying it out, or refuse it; whatever a message
        holds, it is acknowledged (once the returned future is done) and the control loop
        (and the bot) goes on. Raises `_SinkFailed` only when the journal could not record
        the command: it is then neither acted on nor acknowledged."""
        topic = _one_line(message.topic.value)
        try:
            command, header, payload = await self._admitted(message)
        except _SinkFailed:
            raise
        except (_Rejected, ValueError) as exc:
            self._refused(topic, exc)
            refused: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            refused.set_result(None)
            return refused
        # A later command supersedes those still being carried out: each is marked done now,
        # as a command over HTTP is once taken. Else, after a crash, the broker's redelivery
        # of one (a halt whose flatten had not ended) would act again over this one (a
        # resume), closing what was opened since (a probe). The closes it journaled are
        # still settled by the next start.
        for earlier in list(self._carrying_out.values()):
            await self._used.done(*earlier)
        # Started now, in the order the commands came: a halt is in force before the next
        # command is read (`KillSwitch.enter` sets it before its first wait).
        carrying_out = asyncio.create_task(self._carry_out(topic, command, header, payload))
        self._carrying_out[carrying_out] = (header, payload)
        carrying_out.add_done_callback(lambda task: self._carrying_out.pop(task, None))
        return carrying_out

    def _refused(self, topic: str, exc: Exception) -> None:
        self.refused += 1
        # Anyone who may publish can send unsigned messages at their pace: those are logged
        # once in a while, as on the signal topic.
        verified = not isinstance(exc, _Rejected) or exc.verified
        if verified or self._floods.first_in_a_while(self._config.control_topic):
            logger.warning(
                "mqtt control: refused a command on {topic}: {why}", topic=topic, why=exc
            )

    async def _carry_out(self, topic: str, command: str, header: str, payload: bytes) -> None:
        """Apply an admitted command; said either way, and marked done (a failed one is not
        taken again)."""
        try:
            done = await self._apply(command, payload)
        except ValueError as exc:
            self._refused(topic, exc)
        except Exception:  # the command's own failure: reported, not retried
            self.refused += 1
            logger.exception("mqtt control: the command on {topic} failed", topic=topic)
        else:
            self.applied += 1
            logger.warning("mqtt control: {topic}: {done}", topic=topic, done=done)
        await self._used.done(header, payload)

    async def _admitted(self, message: aiomqtt.Message) -> tuple[str, str, bytes]:
        """Check the command's signature and journal its first use: (the command, its
        signature, its body); `_Rejected` or ValueError say why it is refused."""
        payload = message.payload if isinstance(message.payload, bytes) else b""
        header = _signature_property(message.properties)
        now = self._clock()
        problem = any_signature_problem(header, payload, self._secrets, now, COMMAND_MAX_SKEW_S)
        if problem is not None or header is None:
            raise _Rejected(problem or "unsigned")
        if message.retain:
            # The broker hands a retained message to every new subscription: a command
            # kept there would be acted on again at each start (a resume undoing a halt).
            raise _Rejected(
                "a retained command is refused: publish commands without the retain flag, "
                "and clear this one (publish an empty retained message to its topic)",
                verified=True,
            )
        command = message.topic.value.rsplit("/", 1)[-1]
        try:
            # A broker delivers again what a crash kept us from acknowledging. A halt is
            # carried out though the journal cannot remember it, as through the admin route.
            first = await self._used.first_use(
                header, payload, now, redelivered=True, unrecorded_ok=command == "halt"
            )
        except Exception as exc:
            # Not acted on, and not acknowledged: the broker delivers it again once we are
            # back, as it does a signal the journal could not take.
            raise _SinkFailed(
                f"the command on {_one_line(message.topic.value)} could not be journaled "
                f"({_error_text(exc)}): not acknowledged, the broker "
                "redelivers it; make the journal writable (GET /healthz names its problem)",
                f"the command on {_one_line(message.topic.value)}",
            ) from exc
        if not first:
            raise _Rejected("this signed command was used already; sign it anew", verified=True)
        return command, header, payload


def _client(
    config: MqttConfig,
    *,
    identifier: str,
    password: SecretStr | None,
    tls: ssl.SSLContext | None,
    clean_start: bool,
    session_expiry_s: int,
    receive_maximum: int | None,
    timeout_s: float,
) -> _Client:
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = session_expiry_s
    # The broker drops (for us) a message larger than this instead of sending it: one of
    # megabytes would otherwise be read whole, held in memory and parsed on the event loop,
    # only to be rejected. The margin holds the topic and the properties.
    properties.MaximumPacketSize = config.max_payload_bytes + _PACKET_MARGIN_BYTES
    if receive_maximum is not None:
        properties.ReceiveMaximum = receive_maximum
    client = _Client(
        config.host,
        config.port,
        username=config.username or None,
        # Unwrapped here, at the point of use; paho keeps it only to send it in CONNECT.
        password=password.get_secret_value() if password is not None else None,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=clean_start,
        keepalive=config.keepalive_s,
        timeout=timeout_s,
        properties=properties,
        tls_context=tls,
        not_mqtt_hint=(
            "is it a TLS listener (mqtt.tls is false), or not an MQTT broker's port?"
            if not config.tls
            else "is it an MQTT broker's TLS port?"
        ),
    )
    # Bounds the TCP (and TLS) connect that aiomqtt runs in a worker thread.
    client._client.connect_timeout = timeout_s
    return client


class _Client(aiomqtt.Client):
    """aiomqtt's client, told of a connection the broker ends while it is being made.

    Before CONNACK, aiomqtt ignores the end and waits out its whole timeout, then reports
    "Operation timed out": a plain client on a TLS listener (or any port that does not speak
    MQTT) looked like a slow broker. Right after CONNACK (a stopping broker's DISCONNECT, a
    proxy whose backend is gone), aiomqtt drops the end unread: the connection was taken for
    open, the subscribe waited out its timeout on it, and asyncio logged the dropped end as
    "Future exception was never retrieved", an ERROR of three lines. Here both fail the
    connect at once, saying why, and `while_open` ends a wait the connection's end cuts off.
    """

    def __init__(self, *args: Any, not_mqtt_hint: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._not_mqtt_hint = not_mqtt_hint
        self._end_reason: object | None = None  # why the broker ended it, once connected

    def _on_disconnect(self, *args: Any) -> None:
        # (client, userdata, flags, reason_code, properties); paho may call this from the
        # thread that connects, so a future is completed on the event loop.
        connected = self._connected
        if connected.cancelled():
            # The connect was given up (a shutdown): nothing waits, and aiomqtt's handler
            # would raise CancelledError reading the future, logged as an ERROR.
            return
        if not connected.done():
            self._loop.call_soon_threadsafe(self._fail_connect, connected, args[3])
        elif connected.exception() is None:
            self._end_reason = args[3]
        super()._on_disconnect(*args)
        # aiomqtt keeps the end for whoever waits on it, or drops it (above): read here, it
        # is never reported as an exception nobody retrieved.
        if self._disconnected.done() and not self._disconnected.cancelled():
            self._disconnected.exception()

    def _fail_connect(self, connected: asyncio.Future[None], reason: object) -> None:
        if not connected.done():
            connected.set_exception(
                aiomqtt.MqttError(
                    f"the broker closed the connection before answering CONNECT ({reason}): "
                    f"{self._not_mqtt_hint}"
                )
            )
            connected.exception()  # raised to the connect, if it still waits: no one else

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        if self._end_reason is not None:
            if not self._disconnected.done():
                self._disconnected.set_result(None)  # gone: no DISCONNECT to send on leaving
            await super().__aexit__(None, None, None)
            raise aiomqtt.MqttError(self._ended())
        return self

    async def while_open(self, call: Awaitable[_T]) -> _T:
        """`call`'s result, or MqttError as soon as the broker ends the connection: aiomqtt
        waits out its whole timeout for an answer (a SUBACK) a closed connection never brings."""
        task = asyncio.ensure_future(call)
        try:
            await asyncio.wait((task, self._disconnected), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await task
        raise aiomqtt.MqttError(self._ended())

    def _ended(self) -> str:
        reason = f" ({self._end_reason})" if self._end_reason is not None else ""
        return f"the broker closed the connection right after accepting it{reason}"


def _end_if_cancelled() -> None:
    """Raise CancelledError if the running task was cancelled: aiomqtt turns a cancel that
    meets a stalled DISCONNECT into an MqttError, which the reconnecting loops would take
    for a broker's failure and connect again, never ending (a shutdown waiting for ever)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _check_subscribed(granted: tuple[int, ...] | list[ReasonCode], subscription: str) -> None:
    """MqttError when SUBACK refused the subscription (an ACL, say)."""
    for code in granted:
        if isinstance(code, ReasonCode) and code.is_failure:
            raise aiomqtt.MqttError(
                f"the broker refused the subscription to {subscription}: {code}"
            )


_SESSION_TAKEN_OVER_TEXT: Final = "Session taken over"  # paho's words for reason code 142


def _held(connected_at: float | None, config: MqttConfig) -> bool:
    """Whether a connection subscribed at `connected_at` (time.monotonic(); None: never) held,
    lasting `reconnect_max_s`: one the broker ends sooner is most often taken over by another
    client under our client id, and must not reset the backoff."""
    return connected_at is not None and time.monotonic() - connected_at >= config.reconnect_max_s


def _own_client_id(config: MqttConfig) -> str:
    return f"every bot instance needs its own mqtt.client_id ({config.client_id})"


def _with_reason(exc: aiomqtt.MqttError) -> str:
    """`exc` with the reason the broker or paho gave, which aiomqtt's "Disconnected during
    message iteration" keeps in its cause (`[code:142] Session taken over`, say)."""
    cause = exc.__cause__
    return f"{exc} ({cause})" if isinstance(cause, aiomqtt.MqttError) else str(exc)


def _reconnect_delay_s(config: MqttConfig, failures: int) -> float:
    """The wait before reconnect attempt `failures` (1 = the first): doubling from
    `reconnect_min_s` up to `reconnect_max_s`, jittered."""
    ceiling = min(config.reconnect_max_s, config.reconnect_min_s * 2.0 ** min(failures - 1, 30))
    # Jitter spreads the reconnects of many instances after a broker restart.
    return ceiling * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not security


def _secret_values(secret: SecretStr | Sequence[SecretStr] | None) -> tuple[SecretStr, ...]:
    """Each secret, one per line of each given value, registered with the log redactor."""
    given = () if secret is None else (secret,) if isinstance(secret, SecretStr) else secret
    return tuple(value for item in given for value in split_secrets(item))


def _signature_property(properties: Properties | None) -> str | None:
    if properties is None:
        return None
    values = [
        value
        for name, value in getattr(properties, "UserProperty", ())
        if name.lower() == SIGNATURE_PROPERTY
    ]
    if len(values) > 1:
        raise _Rejected(f"more than one {SIGNATURE_PROPERTY} user property", kind=_UNAUTHORIZED)
    return values[0] if values else None


def _one_line(text: str) -> str:
    """`text` on one line, without control characters, clipped (it may come from anyone)."""
    return one_line(text, _MAX_REASON_CHARS)


def _error_text(exc: BaseException) -> str:
    """What `exc` says, on one line (`database or disk is full`), or else its type's name."""
    return _one_line(str(exc)) or type(exc).__name__
