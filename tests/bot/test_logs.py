"""Logging: registered secrets never reach the output, whatever carries them."""

from __future__ import annotations

import io
import json

import pytest

from bot import logs
from bot.logs import logger


@pytest.fixture
def capture() -> io.StringIO:
    return io.StringIO()


def test_secret_is_redacted_in_messages_and_context_in_json(capture: io.StringIO) -> None:
    secret = "s3cr3t-value-for-redaction-test"
    logs.redact(secret)
    logs.configure(json=True, stream=capture)

    logger.bind(header=f"X-BAPI-SIGN {secret}", data={"k": secret}).info("signing with {}", secret)

    text = capture.getvalue()
    assert secret not in text
    record = json.loads(text.splitlines()[0])["record"]
    assert record["message"] == "signing with ***"
    assert record["extra"]["header"] == "X-BAPI-SIGN ***"


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
