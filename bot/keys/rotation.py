"""Keys kept trustworthy while the bot runs: audited daily, and rotated without a restart.

A key's secrets are read again every `poll_s` (and at once on SIGHUP). Changed secrets are
audited first; only a key that passes replaces the old one, for new requests (requests in
flight finish on the old key; the key's name, and with it its rate limiter and its journal
identity, stay). A refused new key leaves the old one in service with an alert; the same
secrets are audited again only on SIGHUP (the operator fixed on the venue what the refusal
named), not at every look; ones the venue could not be asked about (an outage) are audited
again `_RETRY_UNANSWERED_NEW_S` later. Every day the
keys in service are audited again: one refused since (expired, permissions changed) is
switched off with an alert; one about to expire is warned about. Values are never logged:
only key names, verdicts and reasons.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Final

from bot.keys.audit import KeyAudit, Verdict
from bot.logs import logger
from bot.secrets import ApiCredentials, MissingSecretError, same_api_key

__all__ = ["DAILY_S", "KeyGuard"]

DAILY_S: Final = 86_400.0
#: After an audit the venue could not answer, the next try comes this much sooner than daily.
_RETRY_UNREACHABLE_S: Final = 600.0
#: New secrets the venue could not be asked about are audited again this much later.
_RETRY_UNANSWERED_NEW_S: Final = 60.0

#: Audits one key's credentials (a fresh session with them, asking `/v5/user/query-api`).
Audit = Callable[[ApiCredentials], Awaitable[KeyAudit]]


def _fingerprint(credentials: ApiCredentials) -> bytes:
    """Tells two credentials apart without keeping another copy of either value."""
    pair = f"{credentials.api_key.get_secret_value()}\0{credentials.api_secret.get_secret_value()}"
    return hashlib.sha256(pair.encode()).digest()


class KeyGuard:
    """Watches every key in service for new secrets and audits them daily."""

    def __init__(
        self,
        current: Mapping[str, ApiCredentials],
        *,
        resolve: Callable[[str], ApiCredentials],
        audit: Audit,
        swap: Callable[[ApiCredentials], None],
        switch_off: Callable[[str, str], None],
        introduce: Callable[[ApiCredentials, ApiCredentials], None] | None = None,
        poll_s: float = 2.0,
        audit_interval_s: float = DAILY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`current` is each key's credentials in service; `resolve(name)` reads them again
        (blocking: run in a thread); `swap` puts audited credentials in service; `switch_off
        (name, reason)` stops a key refused by a daily audit; `introduce(old, new)` tells the
        bot's own simulator of a new key (in `sim` only)."""
        self._current = dict(current)
        self._fingerprints = {name: _fingerprint(c) for name, c in current.items()}
        # New secrets that did not pass, and when they may be audited again: refused ones
        # never (until SIGHUP), ones the venue could not be asked about a while later.
        self._not_before: dict[str, tuple[bytes, float]] = {}
        self._wakes = 0  # SIGHUPs so far: one during an audit asks for another
        self._clock = clock
        self._resolve = resolve
        self._audit = audit
        self._swap = swap
        self._switch_off = switch_off
        self._introduce = introduce
        self._poll_s = poll_s
        self._audit_interval_s = audit_interval_s
        self._wake = asyncio.Event()
        self.rotations = 0
        #: each key's account (Bybit's userID) as its audits reported it
        self._accounts: dict[str, str] = {}

    def remember_accounts(self, audits: Iterable[KeyAudit]) -> None:
        """Each key's account, from the audits of the keys in service (start-up's): a new
        key is put in service only if it is of the same account."""
        for audit in audits:
            if audit.info is not None and audit.info.user_id:
                self._accounts[audit.key] = audit.info.user_id

    def wake(self) -> None:
        """Look at the secrets now (SIGHUP), auditing again secrets refused before: what the
        refusal named (a key not yet created, a permission) is fixed on the venue, not in the
        files, so the files alone never say it is worth another audit."""
        self._not_before.clear()
        self._wakes += 1
        self._wake.set()

    async def run(self) -> None:
        """Until cancelled: rotations every `poll_s` (or on `wake`), audits every day."""
        loop = asyncio.get_running_loop()
        next_audit = loop.time() + self._audit_interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_s)
            self._wake.clear()
            for name in list(self._current):
                await self.check_secrets(name)
            if loop.time() >= next_audit:
                unanswered = await self.audit_in_service()
                next_audit = loop.time() + (
                    _RETRY_UNREACHABLE_S if unanswered else self._audit_interval_s
                )

    async def check_secrets(self, name: str) -> None:
        """Read key `name`'s secrets again; audit and swap in new ones that pass."""
        try:
            fresh = await asyncio.to_thread(self._resolve, name)
        except MissingSecretError as exc:  # a file being rewritten: the old key stays
            logger.warning("key {key}: {error}; the key in service stays", key=name, error=exc)
            return
        fingerprint = _fingerprint(fresh)
        if fingerprint == self._fingerprints[name]:
            return
        held = self._not_before.get(name)
        if held is not None and held[0] == fingerprint and self._clock() < held[1]:
            return
        others = [c for other, c in self._current.items() if other != name]
        taken = same_api_key([*others, fresh])
        if taken is not None:
            self._not_before[name] = (fingerprint, math.inf)
            logger.bind(notify="key").critical(
                "ALERT: the new secrets of key {key} were refused ({reason}); the old key "
                "stays in service",
                key=name,
                reason=taken,
            )
            return
        logger.info("key {key}: new secrets found; auditing them before use", key=name)
        if self._introduce is not None:
            self._introduce(self._current[name], fresh)
        wakes = self._wakes
        verdict = await self._audit(fresh)
        if not verdict.verdict.usable:
            again = "audited again on SIGHUP"
            if verdict.verdict is Verdict.UNREACHABLE:
                retry_at = self._clock() + _RETRY_UNANSWERED_NEW_S
                self._not_before[name] = (fingerprint, retry_at)
                again = f"audited again in {_RETRY_UNANSWERED_NEW_S:.0f} s"
            elif wakes == self._wakes:  # a SIGHUP meanwhile asks for another audit
                self._not_before[name] = (fingerprint, math.inf)
            logger.bind(notify="key").critical(
                "ALERT: the new secrets of key {key} were {verdict} ({reason}); the old key "
                "stays in service; they are {again}",
                key=name,
                verdict=verdict.verdict.value,
                reason=verdict.reason,
                again=again,
            )
            return
        account = verdict.info.user_id if verdict.info is not None else ""
        in_service = self._accounts.get(name, "")
        if account and in_service and account != in_service:
            self._not_before[name] = (fingerprint, math.inf)
            logger.bind(notify="key").critical(
                "ALERT: the new secrets of key {key} were refused (a key of another account, "
                "UID {account}, where the key in service is of UID {in_service}: its journal, "
                "positions and orders are that account's; create the new key on the same "
                "account); the old key stays in service",
                key=name,
                account=account,
                in_service=in_service,
            )
            return
        self._swap(fresh)
        if account:
            self._accounts[name] = account
        self._current[name], self._fingerprints[name] = fresh, fingerprint
        self._not_before.pop(name, None)
        self.rotations += 1
        logger.bind(notify="key").warning(
            "key {key} rotated: the new key passed its audit ({verdict}{reason}); new requests "
            "use it, requests in flight finish on the old one",
            key=name,
            verdict=verdict.verdict.value,
            reason=f": {verdict.reason}" if verdict.reason else "",
        )

    async def audit_in_service(self) -> bool:
        """Audit every key in service again; True if the venue could not answer for one."""
        unanswered = False
        for name, credentials in list(self._current.items()):
            verdict = await self._audit(credentials)
            if verdict.verdict is Verdict.REFUSED:
                logger.bind(notify="key").critical(
                    "ALERT: key {key} failed its daily audit ({reason}); its strategies are "
                    "stopped until a key that passes is in place",
                    key=name,
                    reason=verdict.reason,
                )
                self._switch_off(name, verdict.reason)
            elif verdict.verdict is Verdict.UNREACHABLE:
                unanswered = True
                logger.bind(notify="key").warning(
                    "key {key}: {reason}", key=name, reason=verdict.reason
                )
            elif verdict.warnings:
                logger.bind(notify="key").warning(
                    "key {key}: {reason}", key=name, reason=verdict.reason
                )
        return unanswered
