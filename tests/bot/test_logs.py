"""Logging: registered secrets never reach a sink, in text or JSON, messages or tracebacks."""

from __future__ import annotations

import io
import json

from bot import logs
from bot.logs import logger


def capture(*, as_json: bool) -> io.StringIO:
    logs.configure(json=as_json)
    sink = io.StringIO()
    logger.add(sink, serialize=as_json, format="{message} {extra}", diagnose=False)
    return sink


def test_secret_is_redacted_in_messages_context_and_json() -> None:
    secret = "s3cr3t-value-for-redaction-test"
    logs.redact(secret)
    sink = capture(as_json=True)

    logger.bind(header=f"X-BAPI-SIGN {secret}").info("signing with {}", secret)

    text = sink.getvalue()
    assert secret not in text
    assert logs.REDACTED in json.loads(text.splitlines()[0])["record"]["message"]


def test_secret_is_redacted_from_exception_text() -> None:
    secret = "another-secret-in-an-exception"
    logs.redact(secret)
    sink = capture(as_json=False)

    try:
        raise ValueError(f"bad key {secret}")
    except ValueError:
        logger.exception("failed")

    assert secret not in sink.getvalue()
    assert "bad key ***" in sink.getvalue()


def test_short_values_are_not_treated_as_secrets() -> None:
    logs.redact("abc")
    sink = capture(as_json=False)

    logger.info("abc is fine")

    assert "abc is fine" in sink.getvalue()
