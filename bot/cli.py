"""The `bot` command: run the service, send a test signal, read the journal, run the simulator."""

from __future__ import annotations

import asyncio
import errno
import http.client
import io
import itertools
import json
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext, redirect_stdout, suppress
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, NoReturn, TypeVar

import typer
from pydantic import SecretStr, ValidationError
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bot import cpus, logs
from bot.config import (
    SECRETS_DIR_VARIABLE,
    BotSettings,
    ConfigError,
    Environment,
    HttpConfig,
    load_settings,
    path_problem,
    secret_resolver,
)
from bot.journal import (
    Journal,
    JournalError,
    JournalInUse,
    TraceRow,
    failure_message,
    lock_journal,
    stored_time,
)
from bot.messages import SignalError, is_unicode, json_number, one_line, parse_signal, utc_now
from bot.net import (
    DEFAULT_SIM_PORT,
    beyond_loopback,
    cannot_listen,
    http_url,
    loopback_off_proxies,
    tcp_listener,
)
from bot.risk.states import BOT_SCOPE, HaltWork, ScopeState, TradingState
from bot.secrets import (
    ADMIN_SECRET_NAME,
    DEFAULT_SECRETS_DIR,
    ApiCredentials,
    MissingSecretError,
    SecretResolver,
    same_api_key,
    split_secrets,
    webhook_secret_name,
)
from signals.config import PASSWORD_SECRET_NAME as MQTT_PASSWORD_NAME
from signals.config import SIGNING_SECRET_NAME as MQTT_SIGNING_SECRET_NAME
from signals.voiceofchain import SIGNATURE_HEADER, command_digest, sign

# What one command alone needs (the service, the simulator, the venue's client, replays,
# the MQTT client) is imported in that command: every other one, and --help, starts without
# them, in a fraction of the time.
if TYPE_CHECKING:
    from bot.account import AccountProjection, StrategyBook
    from bot.audit import RequestObserver
    from bot.keys.audit import KeyAudit
    from bot.replay import History, ReplayReport, StrategyReport
    from bot.risk.usage import ScopeUsage

__all__ = ["app", "main"]

SEND_TIMEOUT_S: Final = 10.0
#: How long `bot signal send` waits for the bot's /healthz to name its environment.
_HEALTH_TIMEOUT_S: Final = 3.0
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
#: A halt that cancels and flattens waits for the venue: orders in flight, then fills.
ADMIN_ACTION_TIMEOUT_S: Final = 120.0
T = TypeVar("T")

app = typer.Typer(
    help="Turn trading signals into Bybit orders, safely. Offline by default (simulator).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help as plain text: rich markup would swallow every "[...]" (defaults, "[mqtt]").
    rich_markup_mode=None,
)
signal_app = typer.Typer(help="Work with signals.", no_args_is_help=True)
app.add_typer(signal_app, name="signal")
risk_app = typer.Typer(help="The risk gate: trading states and limits.", no_args_is_help=True)
app.add_typer(risk_app, name="risk")
keys_app = typer.Typer(help="API keys: the audit of what each may do.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
#: A narrower terminal (a COLUMNS of 0 or a few, misset) would print nothing at all.
_NARROWEST_TERMINAL: Final = 20


def _terminal(*, stderr: bool = False) -> Console:
    made = Console(stderr=stderr)
    return (
        made
        if made.width >= _NARROWEST_TERMINAL
        else Console(stderr=stderr, width=_NARROWEST_TERMINAL)
    )


console = _terminal()
errors = _terminal(stderr=True)
DISTRIBUTION: Final = "bybit-signal-bot"


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"{DISTRIBUTION} {metadata.version(DISTRIBUTION)}")
        raise typer.Exit()


@app.callback()
def _bot(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """Turn trading signals into Bybit orders, safely. Offline by default (simulator)."""


def _config_file(typed: str | Path) -> Path:
    """--config, refused when empty: a path of "" would be the current directory."""
    if not str(typed).strip():
        raise typer.BadParameter(
            "is empty: give the configuration file's path, or leave --config out for "
            "$BOT_CONFIG or config/bot.toml"
        )
    return Path(typed)


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        parser=_config_file,
        metavar="<path>",
        help="configuration file",
        show_default="$BOT_CONFIG or config/bot.toml",
    ),
]


def _secrets_dir(typed: str | Path) -> Path:
    """--secrets-dir (or BOT_SECRETS_DIR), refused if it names another directory than the
    one meant, unseen in every message (a line end from an env file written on Windows)."""
    problem = path_problem(typed)
    if problem is not None:
        raise typer.BadParameter(
            f"{str(typed)[:60]!r} {problem}: name the directory of the secret files"
        )
    return Path(typed)


SecretsDirOption = Annotated[
    Path,
    typer.Option(
        "--secrets-dir",
        envvar=SECRETS_DIR_VARIABLE,
        parser=_secrets_dir,
        metavar="<path>",
        help="directory of secret files",
    ),
]
HostOption = Annotated[
    str | None, typer.Option(help="listen address", show_default="the config's http.host")
]
PortOption = Annotated[
    int | None,
    typer.Option(help="listen port", show_default="the config's http.port", min=0, max=65535),
]


def _fail(message: str, code: int = 2) -> NoReturn:
    _print_error(message)
    raise typer.Exit(code)


def _print_error(message: str) -> None:
    # escape: a message may name a section ("[sim.instruments]"), which is not markup
    errors.print(
        f"[bold red]error:[/] {escape(logs.scrub(message))}", highlight=False, soft_wrap=True
    )


def _settings(config: Path | None, host: str | None = None, port: int | None = None) -> BotSettings:
    try:
        settings = load_settings(config)
        _check_sim_section(settings)
    except ConfigError as exc:
        _fail(str(exc))
    options = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    try:  # validated as the file's values are (a copy with an update would not be)
        http = HttpConfig.model_validate(settings.http.model_dump() | options)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        name = str(error["loc"][0])
        _fail(f"--{name} {options[name]!r} is {error['msg'].removeprefix('Value error, ')}")
    return settings.model_copy(update={"http": http})


def _check_sim_section(settings: BotSettings) -> None:
    """A `[sim]` section `bot run` would refuse (validated by the simulator's own model, only
    where it starts one: `sim` without a `venue.sim_url`) is refused by every command, never
    read past: `bot orders` would show a journal, and `bot halt` journal a state, for a
    configuration no bot can start with."""
    if settings.environment is Environment.SIM and not settings.venue.sim_url:
        from bot.simulated import simulator_config

        simulator_config(settings)


@app.command()
def run(
    config: ConfigOption = None,
    secrets_dir: SecretsDirOption = DEFAULT_SECRETS_DIR,
    host: HostOption = None,
    port: PortOption = None,
    mainnet: Annotated[
        bool, typer.Option("--mainnet", help="second opt-in for real money (with allow_mainnet)")
    ] = False,
    log_json: Annotated[bool, typer.Option("--log-json", help="log JSON lines")] = False,
    log_level: Annotated[str, typer.Option(help=", ".join(LOG_LEVELS))] = "INFO",
) -> None:
    """Run the bot: webhook server, strategies, risk gate and executor."""
    logs.configure(json=log_json, level=_log_level(log_level))
    settings = _settings(config, host, port)
    import uvloop

    from bot.service import Service

    with _one_line_errors():
        cpus.pin(settings.cpus)  # before any thread starts: they all inherit it
        service = Service(settings, secrets_dir=secrets_dir, mainnet_flag=mainnet)
        uvloop.run(service.run())  # libuv's event loop: measured in bench/intake.py


def _log_level(name: str) -> str:
    """--log-level, checked here: loguru would refuse an unknown level with a traceback."""
    if name.upper() not in LOG_LEVELS:
        _fail(f"--log-level {name!r} is not a level: use one of {', '.join(LOG_LEVELS)}")
    return name.upper()


@contextmanager
def _one_line_errors(log: Path | None = None) -> Iterator[None]:
    """What a user can act on is one line and exit 2, raised directly or inside the service's
    task group; anything else is a crash: its traceback to the log (`log`: that file), exit 1."""
    try:
        yield
    except typer.Exit:
        raise
    except BaseExceptionGroup as group:  # raised inside the service's task group
        known = group.subgroup(lambda exc: _user_error(exc) is not None)
        if known is None:
            _crashed(log)
        _fail(_user_error(_first_leaf(known)) or "")
    except Exception as exc:
        problem = _user_error(exc)
        if problem is None:
            _crashed(log)
        _fail(problem)


def _user_error(exc: BaseException) -> str | None:
    """The one line to show for an error the user can act on, else None."""
    if isinstance(exc, _USER_ERRORS):
        return str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        # Another program (an sqlite3 shell, a backup) holds the journal's write lock.
        return (
            f"the journal is locked by another program ({exc}): close what holds it "
            "(an sqlite3 shell, a backup tool), then start again"
        )
    if isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc):
        return (
            f"the journal cannot be written ({exc}): the bot's user must be able to write it, "
            "its -wal and -shm files and their directory (check owner and mode, or a "
            "read-only mount)"
        )
    return None


def _crashed(log: Path | None = None) -> NoReturn:
    """An error nobody expected: its traceback through the (scrubbing) log, then exit 1."""
    logs.logger.exception("the bot stopped on an unexpected error")
    if log is not None:
        _fail(f"stopped on an unexpected error; its traceback is in {log}", 1)
    raise typer.Exit(1)


_USER_ERRORS: Final = (ConfigError, MissingSecretError, JournalError)


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _price(typed: str) -> Decimal:
    """A price option, read as the bot reads a signal's: digits 0-9 (Decimal alone would also
    take "97_000", "٩٧٠٠٠", full-width digits and NaN, and send the number it makes of them)."""
    try:
        number = json_number(typed)
    except ValueError:
        raise typer.BadParameter(
            f"{typed!r} is not a number: write it with the digits 0-9, e.g. 95000 or 0.5"
        ) from None
    assert isinstance(number, Decimal)  # a string always reads as one
    return number


@signal_app.command("send")
def signal_send(
    symbol: Annotated[str, typer.Option(help="Bybit symbol, e.g. BTCUSDT")],
    side: Annotated[str | None, typer.Option(help="buy or sell (long/short also work)")] = None,
    stop_loss: Annotated[
        Decimal | None, typer.Option(parser=_price, help="protective stop price")
    ] = None,
    entry: Annotated[
        Decimal | None, typer.Option(parser=_price, help="limit price; omit for market")
    ] = None,
    take_profit: Annotated[
        list[Decimal] | None,
        typer.Option(parser=_price, help="target price; repeat for several"),
    ] = None,
    action: Annotated[str, typer.Option(help="open or close")] = "open",
    strategy: Annotated[str | None, typer.Option(help="route to this strategy only")] = None,
    signal_id: Annotated[
        str | None, typer.Option("--id", help="signal id", show_default="a new random one")
    ] = None,
    source: Annotated[str, typer.Option(help="webhook source")] = "voiceofchain",
    url: Annotated[
        str | None,
        typer.Option(
            help="the bot's URL (http://host:port: the source's webhook path is added) or a "
            "full webhook URL",
            show_default="the configured server",
        ),
    ] = None,
    mqtt: Annotated[
        bool,
        typer.Option("--mqtt", help="publish to the [mqtt] broker and topic instead (QoS 1)"),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="the answer as one JSON object, with its http_status")
    ] = False,
    config: ConfigOption = None,
    secrets_dir: SecretsDirOption = DEFAULT_SECRETS_DIR,
) -> None:
    """Sign a signal with the source's webhook secret and POST it to the bot (or, with
    --mqtt, publish it to the broker, signed with BOT_MQTT_SIGNING_SECRET if set)."""
    if signal_id is not None and not signal_id.strip():
        _fail("--id is empty: give the signal's id, or leave --id out for a new random one")
    if not _SOURCE_NAME.fullmatch(source):
        _fail(
            f"--source {source[:40]!r} is not a source name: lowercase letters, digits and _, "
            "up to 32 (a [sources.<name>] of the bot's configuration)"
        )
    settings = _settings(config)
    payload: dict[str, object] = {
        "id": f"cli-{uuid.uuid4().hex[:16]}" if signal_id is None else signal_id,
        "symbol": symbol,
        "action": action,
        "ts": int(time.time() * 1000),
    }
    optional = {
        "side": side,
        "stop_loss": stop_loss,
        "entry": entry,
        "take_profit": take_profit or None,
        "strategy": strategy,
    }
    payload.update({key: value for key, value in optional.items() if value is not None})
    if mqtt:
        if url is not None:
            _fail(
                "--url names a webhook; with --mqtt the signal goes to the [mqtt] broker and "
                "topic (mqtt.host, mqtt.port): leave --url out"
            )
        with _one_line_errors():  # a blank BOT_MQTT_PASSWORD, say
            _publish(settings, secret_resolver(settings, secrets_dir), payload, as_json)
        return
    body = json.dumps(payload, default=_decimal_as_number).encode()
    target = _webhook_url(settings, source, url)
    # In `sim` a missing secret is generated, for a source of this configuration only:
    # another's (--url of another bot) would get a new one its bot never knew.
    resolver = (
        secret_resolver(settings, secrets_dir)
        if source in settings.sources
        else SecretResolver(secrets_dir)
    )
    try:
        # The first of the source's secrets (one per line while a sender rotates) signs.
        secret = split_secrets(resolver.get(webhook_secret_name(source)))[0]
    except MissingSecretError as exc:
        _fail(str(exc))
    other = _other_environment(target, settings.environment.value)
    if other is not None:
        _fail(
            f"the bot at {target} runs the {other} environment, and this configuration is "
            f"{settings.environment.value}'s: not sent. Give --config of the {other} bot, or "
            f"--url of the {settings.environment.value} one"
        )
    try:
        status, answer = _post_signed(target, body, secret)
    except AnswerLost as exc:
        _fail(
            f"no answer from {target} ({exc}); the signal may have been received: see `bot "
            "orders` before sending it again (the same id is deduplicated)"
        )
    except ConnectionError as exc:
        _fail(
            f"cannot reach the bot at {target}: {exc}. Is `bot run` running, and listening "
            "there (its [http] port, or --url)?"
        )
    except TimeoutError:
        _fail(
            f"no answer from {target} within {SEND_TIMEOUT_S:g} s; the signal may have been "
            "received: see `bot orders` before sending it again (the same id is deduplicated)"
        )
    if not _bot_answer(status, answer, "status", "id"):
        # A web server's page, a proxy's: never a 200 taken for the bot's word that it has
        # the signal, nor its page printed as the bot's answer.
        _fail(
            f"what answers at {target} is not the bot (HTTP {status}, not its JSON): the "
            "signal did not reach it; give --url of the bot (or --config with its [http] host "
            "and port)"
        )
    if as_json:
        typer.echo(_answer_json(status, str(payload["id"]), answer))
    else:  # plain lines, never wrapped: the answer is the bot's JSON
        typer.echo(f"{status} {answer}")
        typer.echo(f"signal id: {payload['id']}")
    if status == 404:
        typer.echo(
            f"no webhook at {target}: the bot serves /webhooks/<source> for each enabled "
            "[sources.<source>] (--source, --url)",
            err=True,
        )
    elif status == 401 and _MISMATCHED_SIGNATURE in answer:
        typer.echo(_other_secret(settings, webhook_secret_name(source), target), err=True)
    if status >= 300:
        raise typer.Exit(1)


def _webhook_url(settings: BotSettings, source: str, url: str | None) -> str:
    """Where `bot signal send` posts: `url` as given, or with the source's webhook path
    added if it names only the bot (no path); else the configured server's, for a source it
    has enabled (a one-line error otherwise)."""
    if url is not None:
        problem = _url_problem(url)
        if problem is not None:
            _fail(f"--url {_shown(url)!r} is {problem}: give http://host:port")
        parts = urllib.parse.urlsplit(url)
        if parts.path not in ("", "/"):
            return url
        # The path before any query: http://host:port?x=1 is http://host:port/webhooks/...?x=1
        return parts._replace(path=f"/webhooks/{source}").geturl()
    try:
        settings.require_source(source)
    except ConfigError as exc:
        _fail(str(exc))
    return f"{_bot_url(settings)}/webhooks/{source}"


#: A webhook source's name, as `[sources.<name>]` and an MQTT source allow it.
_SOURCE_NAME: Final = re.compile(r"[a-z0-9_]{1,32}")

#: A bot's 401 for a signature made with another secret (not one too old, or malformed).
_MISMATCHED_SIGNATURE: Final = "signature does not match the body and the secret"


def _other_secret(settings: BotSettings, name: str, target: str) -> str:
    """What to do when the bot at `target` refused our signature: it holds another secret
    (another bot on that port, or one run with another state directory)."""
    where = f"{name} or its file" + (
        f" (in sim, generated in {settings.state_dir.absolute() / 'secrets'})"
        if settings.environment is Environment.SIM
        else ""
    )
    return (
        f"the bot at {target} checks signatures with another secret than this command's "
        f"{where}: run the command with that bot's configuration and secrets"
    )


def _answer_json(status: int, signal_id: str, answer: str) -> str:
    """`bot signal send --json`: the bot's answer (its JSON fields, else its text as `body`)
    as one line, after the HTTP status and the signal's id."""
    try:
        body = json.loads(answer)
    except ValueError:
        body = None
    fields = body if isinstance(body, dict) else {"body": answer}
    line = {"http_status": status, "signal_id": signal_id} | fields
    return json.dumps(line, separators=(",", ":"), ensure_ascii=False)


def _publish(
    settings: BotSettings,
    resolver: SecretResolver,
    payload: dict[str, object],
    as_json: bool = False,
) -> None:
    """`bot signal send --mqtt`: one signal to the configured broker."""
    from signals.mqtt import MqttPublishError, publish_signal

    numbers = json.loads(json.dumps(payload, default=_decimal_as_number))
    if not settings.mqtt.enabled:
        typer.echo(
            "note: [mqtt] is off in this configuration, so a bot run with it does not "
            "subscribe (mqtt.enabled = true turns it on)",
            err=True,
        )
    try:  # the bot would refuse it, and the broker cannot say so: refused here instead
        parse_signal(settings.mqtt.source, numbers)
    except SignalError as exc:
        _fail(f"not published: {exc}")
    try:
        topic = asyncio.run(
            publish_signal(
                settings.mqtt,
                numbers,
                password=resolver.optional(MQTT_PASSWORD_NAME),
                signing_secret=resolver.optional(MQTT_SIGNING_SECRET_NAME),
            )
        )
    except MqttPublishError as exc:
        _fail(str(exc) if exc.refused else f"{exc}; is the broker running (mqtt.host, mqtt.port)?")
    if as_json:
        line = {"published_to": topic, "signal_id": payload["id"]}
        typer.echo(json.dumps(line, separators=(",", ":")))
        return
    typer.echo(f"published to {topic}")
    typer.echo(f"signal id: {payload['id']}")


def _bot_url(settings: BotSettings) -> str:
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # a server on every address: loopback
    return http_url(wildcard.get(settings.http.host, settings.http.host), settings.http.port)


def _url_problem(url: str) -> str | None:
    """Why `url` cannot be posted to, worded to follow "<url> is", or None if it can: not
    a URL, a port out of range (which http.client would wrap: 99999 to 34463), not http(s),
    no host."""
    if "@" in url:  # before parsing: a password holding / ? # would parse as host or port
        return "a URL with a user name or password (the signature authenticates: leave them out)"
    if any(character <= " " or character == "\x7f" for character in url):
        # http.client refuses them only once sending, which read as "cannot reach the bot"
        return "a URL holding a space or a control character (a line break?)"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - read for its ValueError
    except ValueError as exc:
        return f"not a usable URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "not an http:// or https:// URL with a host"
    return None


def _shown(url: str) -> str:
    """`url` with what may be a user name and password masked (it is shown in an error):
    everything before its last `@` but a scheme."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, separator, _ = head.partition("://")
    return f"{scheme}{separator}***@{tail}" if separator else f"***@{tail}"


class AnswerLost(ConnectionError):
    """The request went out whole, and the connection broke before an answer came: what
    received it (the bot, killed meanwhile?) may have acted on it."""


def _post_signed(
    target: str,
    body: bytes,
    secret: SecretStr,
    timeout_s: float = SEND_TIMEOUT_S,
    signed_at: int | None = None,
) -> tuple[int, str]:
    """POST `body` signed with `secret` (X-Signature) at `signed_at` (default now);
    ConnectionError if nothing listens or what answers is not HTTP (AnswerLost: the
    connection broke after the request went out), TimeoutError if no whole answer came within
    `timeout_s` (the whole exchange: a server that answers a byte at a time cannot hold the
    command)."""
    problem = _url_problem(target)
    if problem is not None:
        raise ConnectionError(f"{target!r} is {problem}")
    request = urllib.request.Request(  # noqa: S310 - an http(s) URL of the user's own bot
        target,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(
                secret.get_secret_value(),
                body,
                int(time.time()) if signed_at is None else signed_at,
            ),
        },
    )
    answer = _exchange_within(request, timeout_s)
    if isinstance(answer, BaseException):
        raise answer
    return answer


def _exchange_within(
    request: urllib.request.Request, timeout_s: float
) -> tuple[int, str] | OSError:
    """`_exchange`, or TimeoutError if no whole answer came within `timeout_s` (a server
    that answers a byte at a time would hold urllib's per-read timeout for good)."""
    outcome: list[tuple[int, str] | OSError] = []
    exchange = threading.Thread(
        target=lambda: outcome.append(_exchange(request, timeout_s)), daemon=True
    )
    exchange.start()
    exchange.join(timeout_s)
    return outcome[0] if outcome else TimeoutError(f"no whole answer within {timeout_s:g} s")


def _other_environment(target: str, environment: str) -> str | None:
    """The environment of the bot serving `target` when its /healthz names one other than
    `environment` (a signal of a testnet configuration would trade on a sim or mainnet bot
    listening on the same port: signals carry no environment), else None. One that does
    not answer is not judged here: the send says what is wrong."""
    parts = urllib.parse.urlsplit(target)
    health = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/healthz", "", ""))
    request = urllib.request.Request(health, method="GET")  # noqa: S310 - the user's bot
    answer = _exchange_within(request, _HEALTH_TIMEOUT_S)
    if isinstance(answer, BaseException):
        return None
    try:
        found = json.loads(answer[1]).get("environment")
    except (ValueError, AttributeError):
        return None  # not the bot's /healthz (a proxy's page, say)
    return found if isinstance(found, str) and found != environment else None


def _exchange(request: urllib.request.Request, timeout_s: float) -> tuple[int, str] | OSError:
    """One request and its answer (status, text); the failure as ConnectionError or
    TimeoutError, returned for the waiting thread to raise."""
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except TimeoutError as exc:
        return exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            return exc.reason
        return ConnectionError(str(exc.reason))
    except (http.client.RemoteDisconnected, ConnectionResetError) as exc:
        # Raised bare (not as URLError) only once the request was sent.
        return AnswerLost(f"no answer ({type(exc).__name__}: {exc})")
    except (http.client.HTTPException, ValueError, OSError) as exc:
        return ConnectionError(f"not an HTTP answer ({type(exc).__name__}: {exc})")


@app.command()
def halt(
    strategy: Annotated[
        str | None, typer.Option(help="halt one strategy", show_default="the bot: all")
    ] = None,
    reason: Annotated[str, typer.Option(help="why; journaled")] = "halted by the operator",
    cancel_open: Annotated[
        bool, typer.Option("--cancel-open", help="also cancel the scope's open orders")
    ] = False,
    flatten: Annotated[
        bool,
        typer.Option("--flatten", help="also close the scope's positions (reduce-only market)"),
    ] = False,
    config: ConfigOption = None,
    secrets_dir: SecretsDirOption = DEFAULT_SECRETS_DIR,
) -> None:
    """Kill switch: from the very next intent, only orders that reduce exposure pass."""
    from bot.admin import MAX_REASON_CHARS  # fastapi's import: only for the commands using it

    if len(reason) > MAX_REASON_CHARS:
        _fail(f"--reason is {len(reason)} characters: the journal keeps at most {MAX_REASON_CHARS}")
    command: dict[str, Any] = {"strategy": strategy, "reason": reason}
    if cancel_open or flatten:
        command |= {"cancel_open": cancel_open, "flatten": flatten}
    _switch(TradingState.HALTED, command, config, secrets_dir)


@app.command()
def resume(
    strategy: Annotated[
        str | None, typer.Option(help="resume one strategy", show_default="the bot: all")
    ] = None,
    config: ConfigOption = None,
    secrets_dir: SecretsDirOption = DEFAULT_SECRETS_DIR,
) -> None:
    """Trade again: the scope goes back to ACTIVE."""
    command = {"strategy": strategy, "reason": "resumed by the operator"}
    _switch(TradingState.ACTIVE, command, config, secrets_dir)


def _switch(
    state: TradingState, command: dict[str, Any], config: Path | None, secrets_dir: Path
) -> None:
    """Tell the running bot (signed admin route); if none runs, journal the state for its
    start (cancelling and flattening need the running bot)."""
    from bot.admin import parse_command

    settings = _settings(config)
    # For this configuration's bot only: a bot of another environment, or keeping another
    # journal, on that port refuses it.
    command = {**command, "environment": settings.environment.value}
    journal_id = _journal_identity(settings.journal_path)
    if journal_id is not None:
        command["journal"] = journal_id
    body = json.dumps(command).encode()
    try:  # checked here as the bot checks it: also when it is journaled for a stopped bot
        scope, _ = parse_command(body, state, settings.strategies, settings.environment)
    except ValueError as exc:
        _fail(str(exc))
    route = "halt" if state is TradingState.HALTED else "resume"
    acting = bool(command.get("cancel_open") or command.get("flatten"))
    target = f"{_bot_url(settings)}/admin/{route}"
    # Cancelling and flattening wait for the venue (up to ADMIN_ACTION_TIMEOUT_S): a spinner.
    waiting = "the bot cancels and flattens" if acting and errors.is_terminal else None
    signed_at = int(time.time())
    try:
        secret = secret_resolver(settings, secrets_dir).get(ADMIN_SECRET_NAME)
        with errors.status(waiting) if waiting else nullcontext():
            status, answer = _post_signed(
                target,
                body,
                secret,
                ADMIN_ACTION_TIMEOUT_S if acting else SEND_TIMEOUT_S,
                signed_at,
            )
    except MissingSecretError as exc:
        _fail(f"{exc} (the admin secret signs halt and resume)")
    except (TimeoutError, AnswerLost) as exc:
        lost = isinstance(exc, AnswerLost)
        unanswered = "closed the connection without an answer" if lost else "gave no answer in time"
        if not _bot_may_have_taken(settings.journal_path, command_digest(signed_at, body)):
            # Another program on the port (a database's): never "the bot stopped?".
            _fail(
                f"what listens at {target} {unanswered}, and no bot runs on this "
                f"configuration's journal ({settings.journal_path.absolute()}), which holds no "
                "record of the command: it is not the bot; nothing was changed: run this "
                "command with the configuration ([http] host and port) of the bot it is for"
            )
        # Never "nothing was cancelled", nor exit 2 ("nothing was changed"): the bot may have
        # begun (a close it journaled is sent when it starts again), or, stalled, may still.
        _fail(
            f"{target} took the command and {unanswered} (the bot "
            f"{'stopped' if lost else 'is stalled or very busy'}?): the {route} may have been "
            "carried out, in part or in full; see `bot risk status`, `bot orders` and `bot "
            "positions`, and run this command again once the bot answers",
            1,
        )
    except ConnectionError:
        with _one_line_errors():
            _journal_while_stopped(settings, scope, target)
        console.print(
            f"the bot is not running: {scope.scope} {state.value} is journaled (in "
            f"{settings.journal_path.absolute()}) and applies when it starts",
            highlight=False,
            soft_wrap=True,  # one line: a path is never cut in two
        )
        if acting:
            _fail(
                "nothing was cancelled or flattened: that needs the running bot; start it "
                "(the halt holds) and run this command again"
            )
        return
    if not _bot_answer(status, answer, "state"):
        # Another program on the port (a web server's page): never "the bot refused", and
        # never a 200 taken for the bot's word that the halt holds.
        _fail(
            f"what answers at {target} is not the bot (HTTP {status}, not its JSON): nothing "
            "was changed; run this command with the configuration ([http] host and port) of "
            "the bot it is for"
        )
    if status == 401 and _MISMATCHED_SIGNATURE in answer:
        hint = _other_secret(settings, ADMIN_SECRET_NAME, target)
        _fail(f"the bot refused: {status} {answer}; {hint}")
    if status != 200:
        _fail(f"the bot refused: {status} {answer}")
    typer.echo(answer)  # the bot's JSON, never wrapped
    undone = _undone(answer)
    if undone:
        # A flatten superseded: a later command (a resume) changed the state meanwhile, so
        # the halt may hold no longer; `bot risk status` says what does.
        report = json.loads(answer)
        holds = (
            f"the {route} was followed by another command (see `bot risk status`)"
            if report.get("superseded") is True
            else f"the {route} holds"
        )
        then = (
            f"the bot does them again by itself, {report['finishing']} (and when it starts "
            "again, if it stops first), and logs when they are done; check `bot orders` and "
            "`bot positions`"
            if report.get("finishing")
            else "check `bot orders` and `bot positions`, then run this command again"
        )
        _fail(f"{holds}, but {undone} did not complete (see each row's status above): {then}", 1)


def _bot_may_have_taken(path: Path, digest: bytes) -> bool:
    """Whether a bot of the journal at `path` may have taken the command of `digest` (its
    answer lost): one runs on the journal, or the journal records the command (a bot took it,
    then stopped). Yes when that cannot be told (the journal unreadable); no when there is no
    journal (a bot makes it before it listens)."""
    if not path.is_file():
        return False
    try:
        lock_journal(path).close()  # taken for an instant: a running bot holds it
    except JournalError:  # JournalInUse among them
        return True
    return _read_or(path, lambda journal: digest in journal.used_commands(time.time()), True)


def _journal_identity(path: Path) -> str | None:
    """The id of the journal at `path` (`Journal.identity`); None if it has none yet or
    cannot be read: the command then goes to whichever bot answers, as before a bot ran."""
    if not path.is_file():
        return None
    return _read_or(path, Journal.identity_if_made, None)


def _read_or(path: Path, read: Callable[[Journal], T], unreadable: T) -> T:
    """`read` of the journal at `path`, opened read-only; `unreadable` if it cannot be."""
    try:
        journal = Journal(path, read_only=True)
    except (JournalError, sqlite3.Error):
        return unreadable
    try:
        return read(journal)
    except sqlite3.Error:
        return unreadable
    finally:
        journal.close()


def _bot_answer(status: int, text: str, *names: str) -> bool:
    """Whether `text` can be the bot's answer: a JSON object, holding each of `names` when it
    says 2xx (another program's page on the port could say 200 too, never in the bot's words)."""
    try:
        document = json.loads(text)
    except ValueError:
        return False
    return isinstance(document, dict) and (status >= 300 or all(n in document for n in names))


def _undone(answer: str) -> str:
    """What a halt's answer reports as not done: its rows of "cancelled" and "flattened"
    whose `done` is false, counted ("1 cancel and 2 closes"), and a flatten `superseded`;
    "" when everything was done."""
    try:
        report = json.loads(answer)
    except ValueError:
        return ""
    if not isinstance(report, dict):
        return ""
    counts = [
        (sum(1 for row in report.get(part, ()) if row.get("done") is False), noun)
        for part, noun in (("cancelled", "cancel"), ("flattened", "close"))
    ]
    undone = [f"{count} {noun}{'s' if count > 1 else ''}" for count, noun in counts if count]
    if report.get("superseded") is True:
        undone.append("the flatten (a resume came while it waited)")
    if report.get("journaled") is False:
        undone.append(
            "its journal record (the journal could not write: it is journaled once it can; "
            "a restart before that forgets it)"
        )
    return " and ".join(undone)


def _journal_while_stopped(settings: BotSettings, scope: ScopeState, target: str) -> None:
    """Journal `scope` for the bot's next start, if no bot holds the journal. One that does
    runs but did not answer at `target` (it is still starting, or listens elsewhere, say
    `bot run --port`): then nothing is journaled and the user is told to reach it, never
    that it is not running.
    A journal another environment's bot wrote is never changed (JournalError): a resume
    there would lift that bot's halt at its next start."""
    path = settings.journal_path
    try:
        lock = lock_journal(path)
    except JournalInUse as exc:
        raise JournalError(
            f"no bot answered at {target}, but bot PID {exc.pid} is running on this journal: "
            "it is still starting (it answers once start-up has settled) or listens "
            "elsewhere. Nothing was changed: run this command again in a few seconds, or "
            "with the config (http.host, http.port) that bot runs with"
        ) from None
    try:
        journal = Journal(path)
        try:
            journal.claim_environment(settings.environment.value)
            journal.record_trading_state(scope)
        finally:
            journal.close()
    finally:
        lock.close()


@keys_app.command("check")
def keys_check(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    wide: Annotated[
        bool, typer.Option("--wide", help="the strategies, permissions and reasons in full")
    ] = False,
    config: ConfigOption = None,
    secrets_dir: SecretsDirOption = DEFAULT_SECRETS_DIR,
) -> None:
    """Audit every configured key through Bybit's /v5/user/query-api: permissions, IP
    binding, expiry, account type; exits 1 when a key is refused or cannot be asked. Needs no
    journal: run it before the first `bot run`."""
    from bot.audit import AuditLog
    from bot.keys.audit import Verdict

    logs.configure(level="ERROR")
    settings = _settings(config)
    resolver = secret_resolver(settings, secrets_dir)
    with ExitStack() as resources:
        sim_url = ""
        if settings.environment is Environment.SIM:
            sim_url = settings.venue.sim_url
            if not sim_url:
                from bot.simulated import start_simulator

                try:
                    server = start_simulator(settings, resolver)
                except (ConfigError, MissingSecretError) as exc:
                    _fail(str(exc))
                resources.callback(server.stop)
                sim_url = server.url
        try:
            audit_log = AuditLog(settings.audit_dir, settings.audit)  # signed requests too
        except ConfigError as exc:  # a state_dir that is a file, or another user's
            _fail(str(exc))
        resources.callback(audit_log.close)
        audited: list[tuple[dict[str, str], ApiCredentials | None, KeyAudit | None]] = []
        with _progress("auditing keys", len(settings.keys)) as advance:
            for name in sorted(settings.keys):
                audited.append(_key_audit(settings, name, resolver, sim_url, audit_log.write))
                advance()
        rows = _refuse_shared(settings, audited)
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row, separators=(",", ":")))
    else:
        hidden = () if wide else ("strategies",)  # configuration, not the audit
        giving_way = {"permissions": 11, "ip_binding": 9, "reason": 12}
        _print_table(rows, giving_way, hidden=hidden, wide=wide)
    if any(row["verdict"] not in (Verdict.OK, Verdict.WARN) for row in rows):
        raise typer.Exit(1)


def _key_audit(
    settings: BotSettings,
    name: str,
    resolver: SecretResolver,
    sim_url: str,
    observer: RequestObserver,
) -> tuple[dict[str, str], ApiCredentials | None, KeyAudit | None]:
    """One key's audit row, its credentials and its audit; a missing secret is a refusal
    with what to do. `observer` hears of the signed request (the audit log)."""
    from bot.keys.audit import Verdict, strategies_by_key
    from bot.service import audit_credentials

    try:
        credentials = resolver.credentials(name)
    except MissingSecretError as exc:
        row = {
            "key": name,
            "environment": settings.keys[name].environment.value,
            "strategies": ",".join(strategies_by_key(settings)[name]),
            "permissions": "?",
            "ip_binding": "?",
            "expiry": "?",
            "verdict": Verdict.REFUSED.value,
            "reason": str(exc),
        }
        return row, None, None
    audit = asyncio.run(audit_credentials(settings, credentials, sim_url, (observer,)))
    return audit.row(), credentials, audit


def _refuse_shared(
    settings: BotSettings,
    audited: list[tuple[dict[str, str], ApiCredentials | None, KeyAudit | None]],
) -> list[dict[str, str]]:
    """The rows, those of two keys in use holding one API key or of one account refused
    with why, as `bot run` refuses to start with them."""
    from bot.keys.audit import Verdict, one_account, strategies_by_key

    users = strategies_by_key(settings)
    rows = [dict(row) for row, _, _ in audited]
    in_use = [i for i, (row, _, _) in enumerate(audited) if users.get(row["key"])]
    for first, second in itertools.combinations(in_use, 2):
        pairs = [audited[first][1], audited[second][1]]
        problem = same_api_key(pair for pair in pairs if pair is not None)
        if problem is None:
            problem = one_account(a for a in (audited[first][2], audited[second][2]) if a)
        if problem is None:
            continue
        for row in (rows[first], rows[second]):
            row["verdict"] = Verdict.REFUSED.value
            row["reason"] = "; ".join(part for part in (problem, row["reason"]) if part)
    return rows


@risk_app.command("status")
def risk_status(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    wide: Annotated[bool, typer.Option("--wide", help="reasons in full, and since when")] = False,
    config: ConfigOption = None,
) -> None:
    """Each scope's trading state and why, its limits and what it uses of them now:
    exposure (positions and orders in flight, worst case), open orders, orders today, loss
    today (realized plus fees)."""
    from bot.risk.gate import RiskGate
    from bot.risk.usage import usage

    settings = _settings(config)
    key_of = {name: strategy.key for name, strategy in settings.strategies.items()}
    now = utc_now()
    states, halt_work, used, journal_id = _read_journal(
        config,
        lambda journal: (
            {state.scope: state for state in journal.trading_states()},
            journal.unfinished_halt_work(),
            usage(journal, key_of, now),
            journal.identity_if_made(),
        ),
    )
    # A running bot holds the states in force, which its journal may lack: a halt entered
    # while the journal could not write (a full disk) was shown as ACTIVE.
    live = _running_bot_states(settings, journal_id)
    unjournaled: frozenset[str] = frozenset()
    if isinstance(live, str):
        typer.echo(
            f"note: {live}: the states below are the journal's, and a halt the bot holds but "
            "could not journal would not show",
            err=True,
        )
    elif live is not None:
        states, unjournaled = live
    # The gate's own rules say what is in force now: the journal holds a rule's state only
    # once a running gate entered it (a loss booked while the bot was down, say, it never did).
    # A state of a strategy no longer configured is not shown, nor judged.
    states = {scope: state for scope, state in states.items() if scope in used}
    gate = RiskGate(
        settings.risk,
        {name: strategy.risk for name, strategy in settings.strategies.items()},
        clock=lambda: now,
        pnl_today=lambda strategy: used[strategy or BOT_SCOPE].pnl_today_usdt,
        last_loss_at=lambda strategy: used[strategy].last_loss_at,
    )
    for state in states.values():
        gate.set_state(state)
    rows = [
        _risk_row(scope, gate.state_now(scope), used[scope], settings)
        | {"halt_work": _halt_work_left(gate.state_now(scope), halt_work.get(scope))}
        for scope in (BOT_SCOPE, *settings.strategies)
    ]
    if as_json:
        for row in rows:
            journaled = row["scope"] not in unjournaled
            typer.echo(json.dumps({**row, "journaled": journaled}, separators=(",", ":")))
    else:
        shown = {"scope", "state", "reason", "exposure", "open_orders", "orders_today"}
        shown |= {"loss_today", *(("since", "halt_work") if wide else ())}
        hidden = [column for column in rows[0] if column not in shown]
        _print_table(rows, {"scope": 8, "reason": 10}, hidden=hidden, wide=wide)
    for scope in sorted(scope for scope in unjournaled if scope in used):
        typer.echo(
            f"warning: the halt of {scope} holds in the running bot, but its journal could not "
            "record it: a restart before it is journaled forgets it (the bot tries again each "
            "minute); make the journal writable: /healthz names its problem",
            err=True,
        )


def _running_bot_states(
    settings: BotSettings, journal_id: str | None
) -> tuple[dict[str, ScopeState], frozenset[str]] | str | None:
    """The trading states the bot at the configuration's address holds (its /healthz), and
    the scopes whose state there the journal lacks; None when no bot listens there; else
    why they could not be had (one keeping another journal than `journal_id`'s: another
    bot's states are not this journal's)."""
    target = f"{_bot_url(settings)}/healthz"
    request = urllib.request.Request(target, method="GET")  # noqa: S310 - the user's bot
    answer = _exchange_within(request, _HEALTH_TIMEOUT_S)
    if isinstance(answer, ConnectionError) and not isinstance(answer, AnswerLost):
        return None  # not running there: the journal holds its states
    if isinstance(answer, BaseException):
        return f"the bot at {target} did not answer ({answer or type(answer).__name__})"
    try:
        document = json.loads(answer[1])
    except ValueError:
        document = None
    if not isinstance(document, dict) or "environment" not in document:
        return f"what answers at {target} is not the bot (HTTP {answer[0]})"
    environment = settings.environment.value
    if document["environment"] != environment:
        # Whatever answers there wrote it: one line, never a terminal's control sequence.
        found = one_line(str(document["environment"]), 40)
        return f"the bot at {target} runs in {found}, not in this configuration's {environment}"
    if journal_id is not None and document.get("journal_id") not in (None, journal_id):
        return (
            f"the bot at {target} keeps another journal than "
            f"{settings.journal_path.absolute()} (another bot answers there)"
        )
    try:
        entered = document["trading_states"]
        states = {
            scope: ScopeState(
                scope,
                TradingState(held["state"]),
                one_line(str(held["reason"])),
                datetime.fromisoformat(held["since"]),
                automatic=held["automatic"] is True,
            )
            for scope, held in entered.items()
        }
        unjournaled = frozenset(
            scope for scope, held in entered.items() if held["journaled"] is False
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return f"the bot at {target} does not say its trading states (another version?)"
    return states, unjournaled


def _halt_work_left(state: ScopeState | None, work: HaltWork | None) -> str:
    """What the halt `state` was asked to do and has not done yet, as the journal says ("" if
    nothing, or the scope is not halted: a later state ended it)."""
    halted = state is not None and state.state is TradingState.HALTED
    return work.value if halted and work is not None else ""


def _risk_row(
    scope: str, state: ScopeState | None, used: ScopeUsage, settings: BotSettings
) -> dict[str, str]:
    """One scope of `bot risk status`: every number as a plain string; the table shows the
    "used / limit" columns, JSON has each number on its own too."""
    bot = scope == BOT_SCOPE
    limits = settings.risk if bot else settings.risk.tightened(settings.strategies[scope].risk)
    max_exposure = limits.max_total_exposure_usdt if bot else limits.max_strategy_exposure_usdt
    loss_today = max(-used.pnl_today_usdt, Decimal(0))

    def of(count: int, limit: int) -> str:
        """Count limits apply to each strategy; the bot's row shows the sum alone."""
        return str(count) if bot else f"{count} / {limit}"

    return {
        "scope": scope,
        "state": state.state.value if state else TradingState.ACTIVE.value,
        "reason": state.reason if state else "",
        "since": state.since.isoformat() if state else "",
        "exposure": f"{used.exposure_usdt:.2f} / {_plain(max_exposure)}",
        "open_orders": of(used.open_orders, limits.max_open_orders),
        "orders_today": of(used.orders_today, limits.max_orders_per_day),
        "loss_today": f"{loss_today:.2f} / {_plain(limits.max_daily_loss_usdt)}",
        "exposure_usdt": _plain(used.exposure_usdt),
        "max_exposure_usdt": _plain(max_exposure),
        "open_orders_count": str(used.open_orders),
        "orders_today_count": str(used.orders_today),
        "pnl_today_usdt": _plain(used.pnl_today_usdt),
        "max_daily_loss_usdt": _plain(limits.max_daily_loss_usdt),
        "max_order_notional_usdt": _plain(limits.max_order_notional_usdt),
        "max_position_notional_usdt": _plain(limits.max_position_notional_usdt),
        "max_open_orders": str(limits.max_open_orders),
        "max_orders_per_minute": str(limits.max_orders_per_minute),
        "max_orders_per_day": str(limits.max_orders_per_day),
        "max_leverage": _plain(limits.max_leverage),
    }


#: Python writes no int of more digits (`sys.get_int_max_str_digits`).
_INT_DIGITS_MAX: Final = 4300


def _decimal_as_number(value: object) -> object:
    """A Decimal as the JSON number it was typed as: whole, an int (99000, never 99000.0);
    else the float of the same digits, read back exactly (shortest repr); a value no float
    spells exactly (over 15 digits) as a numeric string, which the bot reads exactly too."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            return str(value)  # refused by the bot, by field name
        if value.adjusted() >= _INT_DIGITS_MAX:  # no JSON int: refused by the bot as too large
            return str(value)
        if value == value.to_integral_value():
            return int(value)
        number = float(value)
        return number if Decimal(repr(number)) == value else str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


@app.command()
def orders(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    limit: Annotated[int, typer.Option(min=1, help="latest N signals")] = 50,
    wide: Annotated[
        bool, typer.Option("--wide", help="every value in full: date, ids, decision and reason")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """What the journal holds: each signal, its decisions and its orders (times in UTC)."""
    rows = _read_journal(config, lambda journal: journal.trace(limit))
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row.as_dict(), separators=(",", ":")))
        return
    if not rows:
        typer.echo("no signals journaled yet (`bot signal send` sends one)", err=True)
        return
    today = utc_now().date()
    _print_table(
        [_wide_order_row(row) if wide else _order_row(row, today) for row in rows],
        _ORDER_COLUMNS_GIVING_WAY,
        wide=wide,
    )


#: `bot orders`' columns that give way to fit the terminal, and their narrowest width.
_ORDER_COLUMNS_GIVING_WAY: Final = {"signal": 9, "status": 15, "orderLinkId": 13}


def _order_row(row: TraceRow, today: date) -> dict[str, str]:
    """A row of `bot orders` at a glance: the time of day (with the date when not today), the
    order's status or else the decision and why; an exit (stop, target) of the order above is
    marked ↳ with its trigger. The strategy shows in full with --wide (and an orderLinkId
    starts with it)."""
    received = stored_time(row.received_at, "signals.received_at")
    return {
        "time": f"{received:%H:%M:%S}" if received.date() == today else f"{received:%m-%d %H:%M}",
        "signal": f"↳ {row.reason}" if row.decision == "exit" else row.signal_id,
        "order": f"{row.side} {row.qty} {row.symbol}" if row.side else "",
        "status": row.status or (f"{row.decision}: {row.reason}" if row.reason else row.decision),
        "fill": row.avg_price or "",
        "orderLinkId": row.order_link_id or "",
    }


def _wide_order_row(row: TraceRow) -> dict[str, str]:
    """A row of `bot orders --wide`: every field whole, a rejection with the risk gate's rule
    (`rejected STOP_LOSS: ...`)."""
    approved = row.decision == "approved"
    decision = f"{row.decision} {row.rule}" if row.rule else row.decision  # the gate's rule
    return {
        "time": f"{stored_time(row.received_at, 'signals.received_at'):%Y-%m-%d %H:%M:%S}",
        "signal": row.signal_id,
        "strategy": row.strategy or "",
        "decision": row.decision if approved or not row.reason else f"{decision}: {row.reason}",
        "order": f"{row.side} {row.qty} {row.symbol}" if row.side else "",
        "status": row.status or "",
        "fill": row.avg_price or "",
        "filled": row.filled_qty or "",
        "orderLinkId": row.order_link_id or "",
    }


@app.command()
def audit(
    since: Annotated[
        str | None,
        typer.Option(help="only requests since then: 30m, 1h, 2d, or an ISO-8601 time"),
    ] = None,
    key: Annotated[str | None, typer.Option(help="only the requests of this key")] = None,
    limit: Annotated[int, typer.Option(min=0, help="the latest N requests (0: all)")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    config: ConfigOption = None,
) -> None:
    """The audit log: every signed request to the venue (time in UTC, key, endpoint,
    orderLinkId, retCode, latency), newest last, from <state_dir>/audit/. Needs no running
    bot."""
    from bot.audit import iter_audit, parse_since, read_audit, summary

    settings = _settings(config)
    try:
        start = None if since is None else parse_since(since, utc_now())
    except ValueError as exc:
        _fail(str(exc))
    try:
        if settings.state_dir.is_file():  # as every other command refuses it: no "no match"
            _fail(
                f"state_dir {settings.state_dir} is a file, not a directory: move it away, or "
                "choose another state_dir (--config or BOT_STATE_DIR)"
            )
        if as_json and not limit:  # every line, printed as read: never all of them in memory
            printed = 0
            for row in iter_audit(settings.audit_dir, since=start, key=key):
                typer.echo(json.dumps(row, separators=(",", ":")))
                printed += 1
            if not printed:
                _no_audit_match(settings, key)
            return
        rows = read_audit(settings.audit_dir, since=start, key=key, limit=limit)
    except PermissionError as exc:  # the bot's own files (mode 0600), read by another user
        _fail(
            f"cannot read the audit log {exc.filename or settings.audit_dir}: permission "
            "denied: run `bot audit` as the bot's user, or give this user read access (check "
            "owner and mode)"
        )
    if not rows:
        _no_audit_match(settings, key)
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row, separators=(",", ":")))
        return
    _print_table([summary(row) for row in rows], {"key": 8, "endpoint": 12, "answer": 6})


def _no_audit_match(settings: BotSettings, key: str | None) -> None:
    unknown = key is not None and key not in settings.keys
    named = f" (no key {key!r} is configured: {', '.join(settings.keys) or 'none'})"
    errors.print(
        f"no signed requests match in {settings.audit_dir}{named if unknown else ''}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def positions(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    wide: Annotated[bool, typer.Option("--wide", help="key and strategy names in full")] = False,
    config: ConfigOption = None,
) -> None:
    """Positions per key and strategy, from the journal: each strategy's own fills, marked at
    the venue's last reported price, realized PnL and fees of today (UTC); then each key's
    equity and the venue's own closed PnL of today (net of fees), the cross-check."""
    from bot.account import AccountProjection

    projection = _read_journal(config, AccountProjection.from_journal)
    positions = [  # open now, or traded today
        row
        for row in map(partial(_position_row, projection), projection.books())
        if any(row[k] != "0" for k in ("size", "realized_pnl_today", "fees_today"))
    ]
    accounts = [_account_row(projection, key) for key in projection.key_names()]
    if as_json:
        for row in positions + accounts:
            typer.echo(json.dumps(row, separators=(",", ":")))
        return
    if not positions and not accounts:
        typer.echo("no positions or balances journaled yet", err=True)
        return
    _print_table(
        positions,
        {"key": 6, "strategy": 6},
        hidden=("row",),
        labels={"unrealized_pnl": "uPnL", "realized_pnl_today": "rPnL today"},
        wide=wide,
    )
    _print_table(accounts, {"key": 6}, hidden=("row",), wide=wide)


def _position_row(projection: AccountProjection, book: StrategyBook) -> dict[str, str]:
    # A closed position (listed for today's PnL) has nothing to mark: its venue position is
    # gone, so the last mark journaled would be stale.
    mark = projection.mark_price(book.key_name, book.symbol) if book.size else None
    realized, fees = book.today()
    return {
        "row": "position",
        "key": book.key_name,
        "strategy": book.strategy,
        "symbol": book.symbol,
        "side": "Buy" if book.size > 0 else "Sell" if book.size < 0 else "",
        "size": _plain(abs(book.size)),
        "entry": _plain(book.entry_price) if book.size else "",
        "mark": _plain(mark) if mark is not None else "",
        "unrealized_pnl": _plain(book.unrealized_pnl(mark)) if mark is not None else "",
        "realized_pnl_today": _plain(realized),
        "fees_today": _plain(fees),
    }


def _account_row(projection: AccountProjection, key_name: str) -> dict[str, str]:
    wallet = projection.wallet(key_name)
    return {
        "row": "account",
        "key": key_name,
        "equity": _plain(wallet.equity_usdt) if wallet else "",
        "available": _plain(wallet.available_usdt) if wallet else "",
        "venue_closed_pnl_today": _plain(projection.venue_closed_pnl_today(key_name)),
    }


def _print_table(
    rows: Sequence[Mapping[str, str]],
    giving_way: Mapping[str, int] | None = None,
    *,
    hidden: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
    wide: bool = False,
) -> None:
    """Rows of one shape as a table, their keys as headers (or their `labels`; `hidden` ones
    left out), each row on one line. To fit the terminal, headers wrap between words first;
    then the columns in `giving_way` are cut short with "…", none below the width it gives
    (in a terminal too narrow for even that, down to a few characters). `wide`: every value
    whole, however long the lines."""
    if not rows:
        return
    columns = [column for column in rows[0] if column not in hidden]
    headers = [(labels or {}).get(column, column.replace("_", " ")) for column in columns]
    values = [[row[column] for column in columns] for row in rows]
    natural = [
        max(cell_len(text) for text in (header, *(line[i] for line in values)))
        for i, header in enumerate(headers)
    ]
    gaps = _COLUMN_GAP * (len(columns) - 1)
    if wide:  # as wide as it takes: a narrower terminal folds the lines, never the table
        widths, out = natural, Console(width=sum(natural) + gaps, highlight=False)
    else:
        words = [  # a header may wrap between its words; a value never does
            max(cell_len(text) for text in (*header.split(), *(line[i] for line in values)))
            for i, header in enumerate(headers)
        ]
        widths = _fit(natural, words, console.width - gaps)
        giving = giving_way or {}
        for least in (giving, dict.fromkeys(giving, _NARROWEST_COLUMN)):
            floors = [
                min(width, least.get(column, width))
                for column, width in zip(columns, widths, strict=True)
            ]
            widths = _fit(widths, floors, console.width - gaps)
        # A terminal narrower than even that (or COLUMNS=0): the table as narrow as it goes,
        # folded by the terminal, never cut to nothing.
        too_narrow = sum(widths) + gaps > console.width
        out = Console(width=sum(widths) + gaps, highlight=False) if too_narrow else console
    table = Table(box=None, padding=(0, _COLUMN_GAP, 0, 0), pad_edge=False, header_style="bold")
    for header, width in zip(headers, widths, strict=True):
        table.add_column(Text(header, overflow="ellipsis"), width=width)
    for line in values:
        table.add_row(*(Text(text, no_wrap=True, overflow="ellipsis") for text in line))
    out.print(table)


#: Spaces between two columns of a table.
_COLUMN_GAP: Final = 2
#: A column that gives way keeps at least this much of its values, with "…".
_NARROWEST_COLUMN: Final = 4


def _fit(widths: Sequence[int], floors: Sequence[int], room: int) -> list[int]:
    """`widths` narrowed to `room` in all: the widest column that can give way (above its
    floor) loses a character at a time; what no column can give stays over."""
    fitted = list(widths)
    while sum(fitted) > room:
        narrowable = [i for i, width in enumerate(fitted) if width > floors[i]]
        if not narrowable:
            break
        fitted[max(narrowable, key=lambda i: fitted[i])] -= 1
    return fitted


def _plain(value: Decimal) -> str:
    """Decimal for people: plain notation, at most 8 decimals, no trailing zeros."""
    try:
        text = format(value.quantize(Decimal("1e-8")).normalize(), "f")
    except InvalidOperation:  # more digits than 8 decimals leave room for: huge, kept whole
        text = format(value, "f").partition(".")[0]
    return "0" if text in ("-0", "0") else text


def _read_journal(config: Path | None, read: Callable[[Journal], T]) -> T:
    """Open the configured journal read-only, read, close; a missing journal is a clear error."""
    settings = _settings(config)
    try:
        journal = Journal(settings.journal_path, read_only=True)
    except JournalError as exc:
        _fail(str(exc))
    try:
        owner = journal.environment()
        if owner is not None and owner != settings.environment.value:
            typer.echo(
                f"note: {settings.journal_path.absolute()} is the journal of a bot in {owner}, "
                f"not of this configuration's {settings.environment.value}: what follows is "
                "that bot's (--config or BOT_STATE_DIR choose another)",
                err=True,
            )
        return read(journal)
    except sqlite3.Error as exc:
        _fail(failure_message(settings.journal_path, exc, "read"))
    except JournalError as exc:  # a row that cannot be read (JournalDamaged)
        _fail(f"{settings.journal_path.absolute()}: {exc}")
    finally:
        journal.close()


@app.command("replay")
def replay_history(
    history_file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            help='JSON lines: signals (the webhook\'s schema) and price points {"ts": ..., '
            '"prices": {"BTCUSDT": 97000}}, in any order',
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot", help="draw prices, signals and equity per strategy to this image (.png)"
        ),
    ] = None,
    source: Annotated[str, typer.Option(help="the webhook source the signals come from")] = (
        "voiceofchain"
    ),
    state_dir: Annotated[
        str | None,  # a str: typer would make '' the current directory
        typer.Option(
            "--state-dir",
            help="keep the replay's journal and log in this new (or empty) directory",
            show_default="a temporary one, removed after a clean run",
        ),
    ] = None,
    config: ConfigOption = None,
    secrets_dir: SecretsDirOption = DEFAULT_SECRETS_DIR,
) -> None:
    """Replay a signal history through the real bot against the simulator, on a virtual clock
    (a month in seconds), and report per strategy: signals, intents, approvals and rejections
    per rule, orders, fills, fees, realized and unrealized PnL, win rate, max drawdown.

    Never touches the configured journal: the replay has a state directory of its own (see
    `BOT_STATE_DIR=DIR bot orders` after --state-dir DIR). Exit 0 when it ran, 2 for a file,
    configuration or option it cannot use (one line naming it), 1 when the bot could not finish
    or the --plot chart could not be written (the report is printed first).
    """
    from bot.replay import HistoryError, check_replayable, read_history
    from bot.replay import plot as replay_plot

    settings = _settings(config)
    try:
        check_replayable(settings, source)
    except ConfigError as exc:
        _fail(str(exc))
    if plot is not None:
        try:
            replay_plot.check_target(plot)  # before the replay, not after it ran
        except replay_plot.PlotUnavailable as exc:
            _fail(str(exc))
    try:
        history = read_history(history_file, source)
    except HistoryError as exc:
        _fail(str(exc))
    state = _replay_state_dir(settings, state_dir)
    keep = state_dir is not None
    try:
        # What a plug-in prints goes to stderr: stdout holds the report (one JSON line).
        with redirect_stdout(sys.stderr):
            report, unplotted = _replay_report(settings, history, state, secrets_dir, source, plot)
    except typer.Exit as stopped:
        keep = keep or stopped.exit_code == 1  # the bot could not finish: its log says why
        raise
    finally:
        if not keep:
            shutil.rmtree(state, ignore_errors=True)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), default=_json_value, separators=(",", ":")))
    else:
        _print_replay(report)
        if plot is not None and unplotted is None:
            console.print(f"plot: {plot}", highlight=False)
    if unplotted is not None:  # after the report, which stands: the chart alone is missing
        _fail(unplotted, 1)


def _replay_report(
    settings: BotSettings,
    history: History,
    state: Path,
    secrets_dir: Path,
    source: str,
    plot: Path | None,
) -> tuple[ReplayReport, str | None]:
    """Run the replay (the bot logging to `state`/bot.log, a progress bar on the screen) and
    read its report; every failure is one line. With `plot`, draw the chart too: the second
    item says why it could not be written (None: it was, or none was asked for)."""
    from bot.replay import HistoryError, ReplayError, build_report, replay
    from bot.replay import plot as replay_plot

    log = state / "bot.log"
    with log.open("w", encoding="utf-8") as log_stream:
        logs.configure(stream=log_stream)
        with _one_line_errors(log), _progress("replaying", len(history.records)) as advance:
            try:
                run = replay(
                    settings,
                    history,
                    state_dir=state,
                    secrets_dir=secrets_dir,
                    source=source,
                    on_record=lambda record: advance(),
                )
            except HistoryError as exc:
                _fail(str(exc))
            except ReplayError as exc:
                _fail(f"{exc} (journal and log kept in {state})", 1)
            report = build_report(history, run, settings.strategies)
            if plot is not None:
                try:
                    replay_plot.draw(report, history, run.start_prices, plot)
                except replay_plot.PlotUnavailable as exc:
                    return report, str(exc)
    return report, None


def _replay_state_dir(settings: BotSettings, typed: str | None) -> Path:
    """The replay's own state directory: the one `typed`, if it holds no journal yet, or a
    new temporary one."""
    if typed is None:
        return Path(tempfile.mkdtemp(prefix="bot-replay-"))
    if not typed.strip():
        _fail(f"--state-dir {typed!r} names no directory: give a new directory's path")
    problem = path_problem(typed)
    if problem is not None:
        _fail(f"--state-dir {typed[:60]!r} {problem}: give a new directory's path")
    chosen = Path(typed)
    journal = settings.model_copy(update={"state_dir": chosen}).journal_path
    if journal.exists():
        _fail(f"--state-dir {chosen} already holds a journal; give a new directory")
    if chosen.is_dir() and any(chosen.iterdir()):  # its secrets, audit and log land there
        _fail(f"--state-dir {chosen} is not empty; give a new or empty directory")
    try:
        chosen.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file of that name, a read-only place, ...
        _fail(f"--state-dir {chosen}: cannot make it a directory ({exc.strerror}); give a new one")
    return chosen


@contextmanager
def _progress(what: str, total: int) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr while `what` goes on (when stderr is a terminal)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn(escape(what)),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=errors,
        transient=True,
        disable=not errors.is_terminal,
    )
    task = progress.add_task(what, total=total)
    with progress:
        yield lambda: progress.advance(task)


def _print_replay(report: ReplayReport) -> None:
    """The report as people read it: a line of totals, then one column per strategy."""
    console.print(
        f"{report.signals} signals and {report.price_points} price points from "
        f"{report.start:%Y-%m-%d %H:%M} to {report.end:%Y-%m-%d %H:%M} UTC replayed in "
        f"{report.elapsed_s:.1f} s ({report.signals_per_s:.0f} signals/s); "
        f"{report.duplicates} duplicates, {len(report.refused)} refused by the webhook",
        highlight=False,
    )
    strategies = report.strategies
    _print_table(_replay_rows(strategies), {"figure": 12})
    console.print(
        f"funding paid (all keys; in no PnL above): {report.funding_paid_usdt:.2f} USDT",
        highlight=False,
    )
    for answer in report.refused:
        console.print(
            f"line {answer.line}: {answer.signal_id} refused ({answer.status}): {answer.detail}",
            highlight=False,
        )


def _replay_rows(strategies: Sequence[StrategyReport]) -> list[dict[str, str]]:
    """One row per figure, one column per strategy (a few strategies, many figures)."""
    screens = sorted({rule for strategy in strategies for rule in strategy.screened})
    rules = sorted({rule for strategy in strategies for rule in strategy.rejected})
    figures: list[tuple[str, Callable[[StrategyReport], object]]] = [
        ("signals", lambda s: s.signals),
        *((f"refused {rule}", partial(_screened, rule)) for rule in screens),
        ("declined by the strategy", lambda s: s.declined),
        ("intents", lambda s: s.intents),
        ("approved", lambda s: s.approved),
        *((f"rejected {rule}", partial(_rejected, rule)) for rule in rules),
        ("orders (filled, open)", lambda s: f"{s.orders} ({s.filled_orders}, {s.open_orders})"),
        ("fills", lambda s: s.fills),
        ("fees (USDT)", lambda s: f"{s.fees_usdt:.2f}"),
        ("realized PnL (USDT)", lambda s: f"{s.realized_pnl_usdt:.2f}"),
        ("unrealized PnL (USDT)", lambda s: f"{s.unrealized_pnl_usdt:.2f}"),
        ("net PnL (USDT)", lambda s: f"{s.net_pnl_usdt:.2f}"),
        ("trades closed (won)", lambda s: f"{len(s.trades)} ({s.wins})"),
        ("win rate", lambda s: "-" if s.win_rate is None else f"{s.win_rate:.0%}"),
        ("max drawdown (USDT)", lambda s: f"{s.max_drawdown_usdt:.2f}"),
    ]
    return [
        {"figure": name} | {strategy.strategy: str(value(strategy)) for strategy in strategies}
        for name, value in figures
    ]


def _screened(rule: str, strategy: StrategyReport) -> int:
    return strategy.screened[rule]


def _rejected(rule: str, strategy: StrategyReport) -> int:
    return strategy.rejected[rule]


def _json_value(value: object) -> object:
    """Decimals as exact plain strings (like every JSON row of the CLI), times in ISO-8601."""
    if isinstance(value, Decimal):
        return _plain(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


@app.command()
def sim(
    host: Annotated[str, typer.Option(help="listen address (keep it loopback)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="listen port", min=0, max=65535)] = DEFAULT_SIM_PORT,
    config: ConfigOption = None,
    secrets_dir: SecretsDirOption = DEFAULT_SECRETS_DIR,
    faults: Annotated[
        str | None,
        typer.Option(
            "--faults",
            help='faults from start-up, as JSON, e.g. \'{"http_5xx": 0.05, "delay": 0.1, '
            '"delay_ms": 200}\' (see docs/simulator.md)',
        ),
    ] = None,
) -> None:
    """Run the Bybit-V5 simulator alone, with an account for every configured sim key.

    Point a bot at it with `venue.sim_url = "http://127.0.0.1:PORT"` (or BOT_VENUE__SIM_URL);
    it keeps its orders and balances while bots restart.
    """
    from bot.sim import SimExchange, parse_faults, run_forever
    from bot.simulated import sim_accounts, simulator_config

    logs.configure()
    settings = _settings(config)
    try:
        injected = parse_faults(faults) if faults is not None else None
    except ValueError as exc:
        _fail(f"--faults: {exc}")
    try:
        exchange = SimExchange(simulator_config(settings))
        accounts = sim_accounts(settings, secret_resolver(settings, secrets_dir))
    except (ConfigError, MissingSecretError) as exc:
        _fail(str(exc))
    for account in accounts:
        exchange.add_account(account)
    if injected is not None:
        exchange.set_faults(injected)
    try:
        sock = tcp_listener(host, port)
    except OSError as exc:
        _fail(
            cannot_listen(
                host, port, exc, who="a simulator", host_option="--host", port_option="--port"
            )
        )
    if beyond_loopback(sock):
        typer.echo(
            f"warning: --host {host} opens the simulator to other machines: its API answers "
            "anyone holding a sim key's secret (its /sim admin routes answer this machine "
            "only); use --host 127.0.0.1 unless a container or another machine must reach it",
            err=True,
        )
    console.print(
        f"simulator on {http_url(host, sock.getsockname()[1])} with keys: "
        + (", ".join(account.note for account in accounts) or "(none)"),
        highlight=False,
    )
    run_forever(exchange, host, port, sock=sock)


def main() -> None:
    loopback_off_proxies()  # the bot, its simulator and its streams are this machine's
    for stream in (sys.stdout, sys.stderr):
        # A terminal of another encoding than UTF-8 (a latin-1 locale, PYTHONIOENCODING):
        # a table's "…" or "↳" shown as "?", never a UnicodeEncodeError instead of the output.
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="replace")
    for position, argument in enumerate(sys.argv[1:], 1):
        if not is_unicode(argument):  # Python keeps undecodable bytes as lone surrogates
            shown = argument.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            _print_error(
                f"argument {position} ({shown!r}) is not UTF-8 text: names, reasons and paths "
                "are read as UTF-8; check the terminal's encoding (locale)"
            )
            sys.exit(2)
    try:
        # Not standalone: a mistyped command or option is said on one line, as every other
        # refusal is, not in click's four (usage, hint, blank, error).
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # click's usage and parameter errors
        message = exc.format_message()
        if "\n" in message:  # a group run bare answers with its help: shown as it is
            errors.print(message, highlight=False, markup=False)
            sys.exit(exc.exit_code)
        context = getattr(exc, "ctx", None)
        where = context.command_path if context is not None else _typed_command()
        _print_error(f"{message.rstrip('.')}; see `{where} --help`")
        sys.exit(exc.exit_code)
    except typer.Abort:  # Ctrl-D at a prompt
        _print_error("aborted")
        sys.exit(1)
    except JournalError as exc:  # a journal row read after the journal closed (JournalDamaged)
        _print_error(str(exc))
        sys.exit(2)
    except OSError as exc:
        if exc.errno not in _OUTPUT_FULL:
            raise
        # `bot orders --json > file` on a full disk, say: what could not be written is lost,
        # and exiting must not try to write it again (a second error, as a traceback).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        with suppress(OSError):  # stderr may be on that disk too
            _print_error(f"cannot write the output: {exc.strerror}; the output is incomplete")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _typed_command() -> str:
    """The command typed (`bot orders`), for an error click raises without it (an option's
    value left out): its help, not `bot --help`, has the option."""
    program = Path(sys.argv[0]).name
    path = ["python -m bot" if program == "__main__.py" else program or "bot"]
    command = typer.main.get_command(app)
    for word in sys.argv[1:]:
        sub = getattr(command, "commands", {}).get(word)
        if sub is None:
            break
        path.append(word)
        command = sub
    return " ".join(path)


#: Why writing the output fails though the command worked: a full disk or quota, a file
#: too large, an I/O error (a command's own files say what failed in their own errors).
_OUTPUT_FULL: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})
