"""Logging: registered secrets never reach the output, whatever carries them."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import secrets
import sys
import threading
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from bot import logs
from bot.logs import logger


@pytest.fixture
def capture() -> io.StringIO:
    return io.StringIO()


@pytest.fixture(autouse=True)
def _restore_hooks() -> Iterator[None]:
    """`configure()` installs the uncaught-exception hooks; put the test run's back."""
    hooks = sys.excepthook, threading.excepthook, sys.unraisablehook
    yield
    sys.excepthook, threading.excepthook, sys.unraisablehook = hooks


def awkward(kind: str) -> str:
    """A fresh secret (unique, random-looking first 8 characters) holding `kind`."""
    return f"{secrets.token_hex(6)}{kind}{secrets.token_hex(8)}"


#: Secrets with every character class an escape changes.
AWKWARD = {
    "double quote": '"',
    "single quote": "'",
    "both quotes": "'\"",
    "backslash": "\\",
    "newline and tab": "\n\t",
    "non-ascii": "é€",
    "astral": "😀",
    "everything": "\"'\\\n\x7fé😀 /?&=%",
}


EMPTY: dict[str, str] = {}


def forms(secret: str) -> dict[str, str]:
    """The spellings a leak test looks for: the value, its first 8 characters, and the value
    JSON-escaped (both ensure_ascii ways) and repr-escaped (as in a KeyError), and both nested."""
    repr_inner = repr(secret)[1:-1]
    return {
        "value": secret,
        "first 8": secret[:8],
        "json": json.dumps(secret)[1:-1],
        "json unicode": json.dumps(secret, ensure_ascii=False)[1:-1],
        "repr": repr_inner,
        "repr with both quotes": repr(f"'\"{secret}")[4:-1],
        "json of repr": json.dumps(repr_inner, ensure_ascii=False)[1:-1],
        "bytes repr": repr(secret.encode())[2:-1],
    }


def leaks(text: str, secret: str) -> list[str]:
    return [name for name, form in forms(secret).items() if form in text]


@pytest.fixture(params=sorted(AWKWARD), ids=sorted(AWKWARD))
def awkward_secret(request: pytest.FixtureRequest) -> str:
    secret = awkward(AWKWARD[request.param])
    logs.redact(secret)
    return secret


def test_a_console_line_adds_the_context_its_message_does_not_show(
    capture: io.StringIO,
) -> None:
    logs.configure(stream=capture)

    logger.bind(strategy="follow").warning(
        "reconnecting in {delay:.2f} s (attempt {n}, {late:g} s late)",
        delay=0.4674788,
        n=3,
        late=3.0,  # "3" could be any number of the line: not taken as shown
        host="broker",
        ratio=0.123456789,
    )

    line = capture.getvalue().splitlines()[0]
    assert line.endswith(
        "reconnecting in 0.47 s (attempt 3, 3 s late) strategy=follow late=3.0 host=broker "
        "ratio=0.123456789"
    ), line


def test_secret_is_redacted_in_messages_and_context_in_json(capture: io.StringIO) -> None:
    secret = "s3cr3t-value-for-redaction-test"
    logs.redact(secret)
    logs.configure(json=True, stream=capture)

    logger.bind(header=f"X-BAPI-SIGN {secret}", data={"k": secret}).info("signing with {}", secret)

    text = capture.getvalue()
    assert secret not in text
    line = json.loads(text.splitlines()[0])
    assert line["message"] == "signing with ***"
    assert line["header"] == "X-BAPI-SIGN ***"


def test_secret_is_redacted_from_chained_exceptions(capture: io.StringIO) -> None:
    secret = "another-secret-in-an-exception"
    logs.redact(secret)
    logs.configure(stream=capture)

    try:
        try:
            raise KeyError(f"key {secret}")
        except KeyError as inner:
            raise ValueError("outer") from inner
    except ValueError:
        logger.exception("failed")

    text = capture.getvalue()
    assert secret not in text
    assert "key ***" in text


def test_short_values_are_not_treated_as_secrets(capture: io.StringIO) -> None:
    logs.redact("abc")
    logs.configure(stream=capture)

    logger.info("abc is fine")

    assert "abc is fine" in capture.getvalue()


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "console"])
def test_awkward_secret_is_redacted_from_message_and_extra(
    capture: io.StringIO, awkward_secret: str, as_json: bool
) -> None:
    logs.configure(json=as_json, stream=capture)

    logger.bind(
        header=f"X-BAPI-SIGN {awkward_secret}",
        body={"secret": awkward_secret, "nested": [awkward_secret]},
        raw=json.dumps({"secret": awkward_secret}).encode(),
        text=json.dumps({"secret": awkward_secret}),
    ).info("signing with {} and {!r}", awkward_secret, awkward_secret)

    text = capture.getvalue()
    assert leaks(text, awkward_secret) == []
    if as_json:
        line = json.loads(text)  # still one valid JSON line
        # repr quotes a value holding `'` with `"`
        assert line["message"].replace('"', "'") == "signing with *** and '***'"
        assert line["header"] == "X-BAPI-SIGN ***"
        assert line["body"] == {"secret": "***", "nested": ["***"]}
        assert line["text"] == '{"secret": "***"}'


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "console"])
def test_awkward_secret_is_redacted_from_exception_text_and_traceback(
    capture: io.StringIO, awkward_secret: str, as_json: bool
) -> None:
    logs.configure(json=as_json, stream=capture)

    try:
        try:
            EMPTY[awkward_secret]  # KeyError: the traceback shows the key's repr
        except KeyError as inner:
            raise RuntimeError(f"signing failed for {awkward_secret}") from inner
    except RuntimeError:
        logger.exception("venue call failed")

    text = capture.getvalue()
    assert leaks(text, awkward_secret) == []
    assert "KeyError" in text
    assert "signing failed for ***" in (json.loads(text)["exception"] if as_json else text)
    if as_json:
        assert json.loads(text)["exception"].endswith("RuntimeError: signing failed for ***")


def test_standard_logging_is_scrubbed_too(capture: io.StringIO, awkward_secret: str) -> None:
    logs.configure(json=True, stream=capture)

    try:
        raise ValueError(awkward_secret)
    except ValueError:
        logging.getLogger("uvicorn.error").exception("request with %r failed", awkward_secret)

    text = capture.getvalue()
    assert leaks(text, awkward_secret) == []
    message = json.loads(text)["message"]
    assert message.replace('"', "'") == "request with '***' failed"


def test_a_dropped_websocket_is_a_warning_not_an_error(capture: io.StringIO) -> None:
    logs.configure(json=True, stream=capture)
    logs.configure(json=True, stream=capture)  # configured again: still one filter

    logging.getLogger("websocket").error("Connection to remote host was lost. - goodbye")
    logging.getLogger("websocket").error("error from callback <handler>: boom")

    levels = [json.loads(line)["level"] for line in capture.getvalue().splitlines()]
    assert levels == ["WARNING", "ERROR"]  # a failing callback is still an error
    assert len(logging.getLogger("websocket").filters) == 1


def test_a_broker_connection_reset_is_a_warning_not_an_error(capture: io.StringIO) -> None:
    # paho-mqtt (aiomqtt's "mqtt" logger) logged a broker's restart as ERRORs, each followed
    # by the bot's own WARNING of the same end: an alert on ERROR fired for a routine event.
    logs.configure(json=True, stream=capture)
    logs.configure(json=True, stream=capture)

    mqtt = logging.getLogger("mqtt")
    mqtt.error("failed to receive on socket: %s", ConnectionResetError(104, "reset by peer"))
    mqtt.error("Error: Unrecognised command %s", 0)
    mqtt.error("Caught exception in on_message: boom")

    levels = [json.loads(line)["level"] for line in capture.getvalue().splitlines()]
    assert levels == ["WARNING", "WARNING", "ERROR"]
    assert len(mqtt.filters) == 1


def test_a_flood_of_malformed_requests_is_logged_once_a_minute() -> None:
    now = [0.0]
    once = logs._OncePerMinute("Invalid HTTP request received.", clock=lambda: now[0])

    def passed(message: str) -> str | None:
        record = logging.LogRecord("uvicorn.error", logging.WARNING, "", 0, message, None, None)
        return record.getMessage() if once.filter(record) else None

    first = [passed("Invalid HTTP request received.") for _ in range(1000)]
    other = passed("Something else.")
    now[0] = 61
    next_minute = passed("Invalid HTTP request received.")

    assert first[0] == "Invalid HTTP request received."
    assert first[1:] == [None] * 999
    assert other == "Something else."  # only the named message is held back
    assert next_minute == "Invalid HTTP request received. (999 more in the last minute)"


def test_a_lasting_failure_is_said_at_once_then_once_a_minute_and_when_it_is_over() -> None:
    now = [0.0]
    notes = logs.RepeatedNotes(clock=lambda: now[0])

    first = [notes.say("full") for _ in range(60)]  # one a second
    now[0] = 59.9
    within = notes.say("full")
    now[0] = 60
    next_minute = notes.say("full")
    held = notes.say("full")
    too_soon = notes.over("full")  # one worked, under 5 s after a failure: not over
    held_still = notes.say("full")
    now[0] = 65
    over = notes.over("full")  # 5 s since the last failure
    again = notes.say("full")  # a new failure, within the minute: said at once

    assert first == ["", *[None] * 59]
    assert within is None
    assert next_minute == " (60 more in the last minute)"
    assert (held, too_soon, held_still, over, again) == (None, None, None, 2, "")
    assert logs.RepeatedNotes().over("full") is None  # nothing said: nothing to end


def test_url_encoded_secret_is_redacted(capture: io.StringIO) -> None:
    secret = awkward("/+ &=?")
    logs.redact(secret)
    logs.configure(stream=capture)
    from urllib.parse import quote, quote_plus

    logger.info("GET /webhooks/x?token={} {}", quote(secret, safe=""), quote_plus(secret))

    assert capture.getvalue().count("***") == 2


def test_a_secret_holding_another_goes_whole(capture: io.StringIO) -> None:
    inner = secrets.token_hex(8)
    outer = f"prefix-{inner}-suffix"
    logs.redact(inner)
    logs.redact(outer)
    logs.configure(stream=capture)

    logger.info("a {} b {}", outer, inner)

    assert capture.getvalue().rstrip().endswith("a *** b ***")


def test_a_secret_made_only_of_escaped_characters_is_redacted(capture: io.StringIO) -> None:
    secret = "\"'\\\n" * 3 + "é"  # nothing every spelling keeps unchanged
    logs.redact(secret)
    logs.configure(json=True, stream=capture)

    logger.bind(value=secret).info("value {!r}", secret)

    text = capture.getvalue()
    assert json.dumps(secret)[1:-1] not in text
    assert json.dumps(repr(secret)[1:-1])[1:-1] not in text
    assert json.loads(text)["value"] == "***"


def test_each_spelling_is_precomputed_once() -> None:
    secret = awkward('"\\é')
    spellings = logs.spellings(secret)

    assert {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]} <= (
        spellings
    )
    assert repr(secret)[1:-1] in spellings
    assert json.dumps(json.dumps(secret)[1:-1])[1:-1] in spellings  # JSON inside JSON
    assert logs.spellings("plain-secret-123") == {"plain-secret-123"}


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "console"])
def test_an_uncaught_exception_is_logged_scrubbed(
    capture: io.StringIO, awkward_secret: str, as_json: bool
) -> None:
    logs.configure(json=as_json, stream=capture)

    try:
        EMPTY[awkward_secret]
    except KeyError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)

    text = capture.getvalue()
    assert leaks(text, awkward_secret) == []
    assert "uncaught KeyError" in text
    assert "Traceback" in (json.loads(text)["exception"] if as_json else text)


def test_an_exception_ending_a_thread_is_logged_scrubbed(
    capture: io.StringIO, awkward_secret: str
) -> None:
    logs.configure(json=True, stream=capture)

    def fail() -> None:
        raise RuntimeError(f"stream auth failed: {awkward_secret!r}")

    thread = threading.Thread(target=fail, name="stream")
    thread.start()
    thread.join(5)

    text = capture.getvalue()
    assert leaks(text, awkward_secret) == []
    assert "uncaught RuntimeError in thread stream" in text


def test_a_warning_is_a_scrubbed_log_line_not_raw_stderr(
    capture: io.StringIO, awkward_secret: str
) -> None:
    # Reproduced: a plug-in's `warnings.warn` with a secret in it went to stderr as Python
    # prints it, unscrubbed (and, under --log-json, not a JSON line).
    with warnings.catch_warnings():  # puts the test run's showwarning back
        warnings.simplefilter("always")
        logs.configure(json=True, stream=capture)
        warnings.warn(f"signing with {awkward_secret}", UserWarning, stacklevel=1)

    line = json.loads(capture.getvalue())
    assert leaks(capture.getvalue(), awkward_secret) == []
    assert line["level"] == "WARNING"
    assert "UserWarning: signing with ***" in line["message"]


def test_lines_without_secrets_are_left_alone() -> None:
    for kind in AWKWARD.values():
        logs.redact(awkward(kind))
    line = json.dumps({"message": "an ordinary log line\n" * 10, "n": 1})

    assert logs.scrub(line) == line


def test_an_exception_ignored_in_a_finalizer_is_logged_scrubbed(
    capture: io.StringIO, awkward_secret: str
) -> None:
    logs.configure(json=True, stream=capture)

    class Connection:
        def __del__(self) -> None:
            raise RuntimeError(f"close failed: {awkward_secret!r}")

    Connection()  # dropped at once: its __del__ raises into sys.unraisablehook

    text = capture.getvalue()
    assert leaks(text, awkward_secret) == []
    assert "Exception ignored in" in text
    assert "close failed: " in text


def test_a_json_line_is_compact_time_level_message_and_bound_fields(
    capture: io.StringIO,
) -> None:
    logs.configure(json=True, stream=capture)

    logger.bind(order_link_id="follow-0-k3jq4m2z7xw5v8ryt6a9d", strategy="follow").info(
        "order {id} filled at {price}", id="follow-0-k3jq4m2z7xw5v8ryt6a9d", price=Decimal("99000")
    )

    text = capture.getvalue()
    assert text.count("\n") == 1
    assert len(text.encode()) < 300  # loguru's whole record was about 1 KB
    line = json.loads(text)
    assert list(line) == ["time", "level", "message", "order_link_id", "strategy", "id", "price"]
    assert line["level"] == "INFO"
    assert line["message"] == "order follow-0-k3jq4m2z7xw5v8ryt6a9d filled at 99000"
    assert (line["strategy"], line["price"]) == ("follow", "99000")
    assert line["time"].endswith("Z")
    logged = datetime.fromisoformat(line["time"])
    assert logged.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - logged) < timedelta(seconds=60)


def test_a_json_line_carries_the_exception_text_only_when_there_is_one(
    capture: io.StringIO,
) -> None:
    logs.configure(json=True, stream=capture)

    logger.info("quiet")
    try:
        raise ValueError("venue said no")
    except ValueError:
        logger.exception("venue call failed")

    quiet, failed = map(json.loads, capture.getvalue().splitlines())
    assert "exception" not in quiet
    assert failed["message"] == "venue call failed"
    assert failed["exception"].startswith("Traceback (most recent call last):")
    assert failed["exception"].endswith("ValueError: venue said no")


def test_a_bound_field_named_like_a_line_field_is_kept_apart(capture: io.StringIO) -> None:
    logs.configure(json=True, stream=capture)

    logger.bind(time="09:30", level=3, message="theirs").warning("ours")

    line = json.loads(capture.getvalue())
    assert (line["level"], line["message"]) == ("WARNING", "ours")
    renamed = (line["extra.time"], line["extra.level"], line["extra.message"])
    assert renamed == ("09:30", 3, "theirs")


def test_a_bound_value_json_cannot_hold_still_makes_one_scrubbed_line(
    capture: io.StringIO, awkward_secret: str
) -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError(awkward_secret)

        __repr__ = __str__

    logs.configure(json=True, stream=capture)

    logger.bind(by_pair={("BTCUSDT", awkward_secret): 1}).info("odd context")
    logger.bind(broken=Unprintable(), key=awkward_secret).info("unprintable context")

    text = capture.getvalue()
    assert leaks(text, awkward_secret) == []
    odd, unprintable = map(json.loads, text.splitlines())
    assert odd["message"] == "odd context"
    assert "BTCUSDT" in odd["by_pair"]
    assert unprintable["broken"] == "<Unprintable>"
    assert unprintable["key"].replace('"', "'") == "'***'"  # its repr, scrubbed


def test_a_lone_surrogate_in_a_line_is_escaped_not_a_logging_error() -> None:
    """A plug-in's text may hold one; a UTF-8 stream could not encode the line."""
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", errors="strict")
    logs.configure(stream=stream)
    with contextlib.redirect_stderr(io.StringIO()) as errors:
        logger.info("strategy said {what}", what="bad \ud800 reason")
    stream.flush()

    assert "strategy said bad \\ud800 reason" in raw.getvalue().decode()
    assert "Logging error" not in errors.getvalue()
