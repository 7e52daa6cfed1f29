"""The key guard's decisions, with the audit and the secrets scripted."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from pydantic import SecretStr

from bot.config import Environment
from bot.keys.audit import KeyAudit, Verdict
from bot.keys.rotation import KeyGuard
from bot.secrets import ApiCredentials, MissingSecretError


def creds(key: str) -> ApiCredentials:
    return ApiCredentials("main", SecretStr(key), SecretStr(f"{key}-secret"))


def verdict(kind: Verdict, reason: str = "") -> KeyAudit:
    problems = (reason,) if kind is not Verdict.OK and reason else ()
    return KeyAudit(
        "main", Environment.SIM, ("follow",), kind, problems, (), None, datetime.now(UTC)
    )


class Script:
    """What the secrets files hold and what the audit answers for each key."""

    def __init__(self) -> None:
        self.files: ApiCredentials | None = creds("key-one")
        self.verdicts: dict[str, KeyAudit] = {}
        self.swapped: list[str] = []
        self.switched_off: list[tuple[str, str]] = []

    def resolve(self, name: str) -> ApiCredentials:
        if self.files is None:
            raise MissingSecretError("secret file is being rewritten")
        return self.files

    async def audit(self, credentials: ApiCredentials) -> KeyAudit:
        return self.verdicts.get(credentials.api_key.get_secret_value(), verdict(Verdict.OK))

    def guard(self) -> KeyGuard:
        return KeyGuard(
            {"main": creds("key-one")},
            resolve=self.resolve,
            audit=self.audit,
            swap=lambda fresh: self.swapped.append(fresh.api_key.get_secret_value()),
            switch_off=lambda name, reason: self.switched_off.append((name, reason)),
        )


def test_only_new_secrets_that_pass_are_swapped_in_and_a_refusal_is_not_retried() -> None:
    script = Script()
    guard = script.guard()
    check = guard.check_secrets

    asyncio.run(check("main"))  # unchanged: nothing happens
    script.files = None
    asyncio.run(check("main"))  # unreadable: the key in service stays
    script.files = creds("key-bad")
    script.verdicts["key-bad"] = verdict(Verdict.REFUSED, "Wallet permissions")
    asyncio.run(check("main"))
    asyncio.run(check("main"))  # the same refused secrets are not audited again
    script.files = creds("key-two")
    asyncio.run(check("main"))

    assert script.swapped == ["key-two"]
    assert guard.rotations == 1


def test_the_daily_audit_switches_off_a_key_refused_since() -> None:
    script = Script()
    guard = script.guard()
    script.verdicts["key-one"] = verdict(Verdict.REFUSED, "expired on 2026-11-28")

    unanswered = asyncio.run(guard.audit_in_service())

    assert not unanswered
    assert script.switched_off == [("main", "expired on 2026-11-28")]


def test_an_unanswered_daily_audit_is_retried_sooner_and_switches_nothing_off() -> None:
    script = Script()
    script.verdicts["key-one"] = verdict(Verdict.UNREACHABLE, "no answer")

    assert asyncio.run(script.guard().audit_in_service())
    assert script.switched_off == []
