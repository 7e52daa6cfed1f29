"""The key guard's decisions, with the audit and the secrets scripted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

from pydantic import SecretStr

from bot.config import Environment
from bot.keys.audit import KeyAudit, Verdict
from bot.keys.rotation import KeyGuard
from bot.secrets import ApiCredentials, MissingSecretError
from bot.venue.shapes import KeyInfo


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

    def guard(self, clock: Callable[[], float] = time.monotonic) -> KeyGuard:
        return KeyGuard(
            {"main": creds("key-one")},
            resolve=self.resolve,
            audit=self.audit,
            swap=lambda fresh: self.swapped.append(fresh.api_key.get_secret_value()),
            switch_off=lambda name, reason: self.switched_off.append((name, reason)),
            clock=clock,
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


def test_new_secrets_the_venue_could_not_be_asked_about_are_audited_again_a_minute_later() -> None:
    # Reproduced: an outage during a rotation was remembered as a refusal, and the same
    # secrets were never audited again until SIGHUP: the old key stayed in service for good.
    now = [0.0]
    script = Script()
    guard = script.guard(clock=lambda: now[0])
    script.files = creds("key-two")
    script.verdicts["key-two"] = verdict(Verdict.UNREACHABLE, "venue did not answer")
    asyncio.run(guard.check_secrets("main"))
    del script.verdicts["key-two"]  # the venue is back
    now[0] = 30.0
    asyncio.run(guard.check_secrets("main"))  # too soon: not asked again
    assert script.swapped == []

    now[0] = 61.0
    asyncio.run(guard.check_secrets("main"))

    assert script.swapped == ["key-two"]


def test_a_sighup_during_the_audit_of_refused_secrets_asks_for_another() -> None:
    script = Script()
    guard = script.guard()
    script.files = creds("key-two")
    script.verdicts["key-two"] = verdict(Verdict.REFUSED, "not created yet")

    async def refused_while_woken(credentials: ApiCredentials) -> KeyAudit:
        guard.wake()  # the operator fixed it on the venue while this audit ran
        del script.verdicts["key-two"]
        return verdict(Verdict.REFUSED, "not created yet")

    guard._audit = refused_while_woken
    asyncio.run(guard.check_secrets("main"))
    guard._audit = script.audit
    asyncio.run(guard.check_secrets("main"))

    assert script.swapped == ["key-two"]


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


def test_new_secrets_holding_another_configured_keys_api_key_are_refused_unaudited() -> None:
    # Reproduced: the other strategy's key file copied over this key's passed its audit (a
    # good key, of the other account) and was swapped in, so that this key's strategies traded
    # with a key no one had declared shared, on the other strategy's account.
    audited: list[str] = []
    swapped: list[str] = []
    other = ApiCredentials("other", SecretStr("key-other"), SecretStr("key-other-secret"))
    files = {"main": creds("key-one"), "other": other}

    async def audit(credentials: ApiCredentials) -> KeyAudit:
        audited.append(credentials.api_key.get_secret_value())
        return verdict(Verdict.OK)

    guard = KeyGuard(
        {"main": creds("key-one"), "other": other},
        resolve=lambda name: files[name],
        audit=audit,
        swap=lambda fresh: swapped.append(fresh.api_key.get_secret_value()),
        switch_off=lambda name, reason: None,
    )
    files["main"] = ApiCredentials("main", other.api_key, other.api_secret)

    asyncio.run(guard.check_secrets("main"))
    asyncio.run(guard.check_secrets("main"))  # not audited again while the files stay

    assert (swapped, audited, guard.rotations) == ([], [], 0)

    files["main"] = creds("key-two")
    asyncio.run(guard.check_secrets("main"))
    assert swapped == ["key-two"]


def of_account(user_id: str) -> KeyAudit:
    info = KeyInfo(
        read_only=False,
        permissions={"ContractTrade": ("Order", "Position")},
        ips=("127.0.0.1",),
        expires_at=None,
        uta=True,
        note="",
        user_id=user_id,
    )
    return KeyAudit(
        "main", Environment.SIM, ("follow",), Verdict.OK, (), (), info, datetime.now(UTC)
    )


def test_a_new_key_of_another_account_is_refused_and_one_of_the_same_account_swapped_in() -> None:
    # Reproduced: a good key of another account passed the rotation's audit and was swapped
    # in; the key's strategies then traded there, while its journal, positions, stops and
    # open orders were the first account's (a `close` found no position to close).
    script = Script()
    guard = script.guard()
    guard.remember_accounts([of_account("1001")])
    script.verdicts["key-elsewhere"] = of_account("2002")
    script.verdicts["key-two"] = of_account("1001")

    script.files = creds("key-elsewhere")
    asyncio.run(guard.check_secrets("main"))
    asyncio.run(guard.check_secrets("main"))  # refused once: not audited again
    assert (script.swapped, guard.rotations) == ([], 0)

    script.files = creds("key-two")
    asyncio.run(guard.check_secrets("main"))
    assert script.swapped == ["key-two"]
