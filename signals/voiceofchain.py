"""VoiceOfChain's signature scheme, the one every signed route of the bot uses (webhooks,
the admin routes, MQTT messages). The webhook itself is `signals.webhook`; the VoiceOfChain
source is its `voiceofchain` preset (`signals.presets`).

Signature (header `X-Signature: t=<unix seconds>,v1=<hex>`): HMAC-SHA256 with the source's
secret over `"<t>." + raw body`, compared in constant time; `t` must be within
`max_clock_skew_s` of now. Several `v1=` entries are allowed, so a sender can sign with an old
and a new secret while rotating.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

from pydantic import SecretStr

from bot.briefly import JOURNAL_WAIT_S, ended_within
from bot.logs import logger

__all__ = [
    "COMMAND_MAX_SKEW_S",
    "SIGNATURE_HEADER",
    "UsedSignatures",
    "any_signature_problem",
    "command_digest",
    "one_signature_header",
    "sign",
    "signature_problem",
    "signed_at",
]

SIGNATURE_HEADER: Final = "X-Signature"
#: How far a signed command's time may be from the bot's clock, either way: the admin routes
#: and the MQTT control topic alike, and so how long `UsedSignatures` must remember one.
COMMAND_MAX_SKEW_S: Final = 300.0
_UNIX_SECONDS: Final = re.compile(r"[0-9]{1,12}")
_HEX_DIGEST: Final = re.compile(r"[0-9a-f]{64}")


class _Malformed(Exception):
    """The header is not `t=<unix seconds>,v1=<hex>`."""


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The `X-Signature` header value a sender puts on `body` (used by `bot signal send`)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def one_signature_header(values: Sequence[str]) -> str | None:
    """The request's `X-Signature` header, of the `values` it came with (None: unsigned).
    ValueError for two or more: a proxy and the bot could each read another, so a request
    carrying several is not taken as signed by any of them."""
    if len(values) > 1:
        raise ValueError(
            f"{len(values)} {SIGNATURE_HEADER} headers: send one (several v1= values may share it)"
        )
    return values[0] if values else None


def signature_problem(
    header: str | None, body: bytes, secret: SecretStr, now: float, max_skew_s: float
) -> str | None:
    """Why an `X-Signature` header does not authenticate `body` under `secret`, or None.

    The one check of every signed route: HMAC-SHA256 over "<t>." + body, compared in constant
    time, with `t` within `max_skew_s` of `now`; several `v1=` values are accepted.
    """
    if header is None:
        return f"missing {SIGNATURE_HEADER} header (t=<unix seconds>,v1=<hex>)"
    try:
        timestamp, candidates = _parse_signature(header)
    except _Malformed as exc:
        return str(exc)
    skew = abs(now - timestamp)
    if skew > max_skew_s:
        return (
            f"signature timestamp is {skew:.0f} s from the server's clock "
            f"(limit {max_skew_s} s); sign with the current time"
        )
    expected = sign(secret.get_secret_value(), body, timestamp).split("v1=", 1)[1]
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        return "signature does not match the body and the secret"
    return None


def any_signature_problem(
    header: str | None,
    body: bytes,
    secrets: Sequence[SecretStr],
    now: float,
    max_skew_s: float,
) -> str | None:
    """None when any of `secrets` signed `body` (a secret being rotated has two); else why
    the first did not."""
    problems = [signature_problem(header, body, secret, now, max_skew_s) for secret in secrets]
    if None in problems:
        return None
    return problems[0] if problems else "no signing secret is configured"


def signed_at(header: str) -> int:
    """The time (unix seconds) a verified `X-Signature` header was signed at."""
    return _parse_signature(header)[0]


class UsedSignatures:
    """The signed commands already acted on, each remembered for as long as its signature is
    accepted (`max_skew_s` past its time), so that one captured command cannot be replayed,
    to the same route or another (a halt's body sent again as a resume). A signature covers
    the time and the body, so that pair is what is remembered: in memory, and through
    `remember` (the journal) before the command is acted on, so that a restart forgets none
    (`remembered`: those the journal holds carried out). `acted` tells the journal the
    command was carried out (or failed): one a crash cut short before that is taken once
    more if a broker delivers it again (a halt with a flatten then finishes its flatten);
    through the HTTP routes, never."""

    def __init__(
        self,
        max_skew_s: float = COMMAND_MAX_SKEW_S,
        *,
        remembered: Mapping[bytes, float] | None = None,
        remember: Callable[[bytes, float, float, bool], Awaitable[bool]] | None = None,
        acted: Callable[[bytes], Awaitable[None]] | None = None,
        journal_wait_s: float = JOURNAL_WAIT_S,
    ) -> None:
        self._max_skew_s = max_skew_s
        # sha256 of "<t>." + body -> when it expires
        self._until: dict[bytes, float] = dict(remembered or {})
        self._remember = remember
        self._acted = acted
        self._journal_wait_s = journal_wait_s

    async def first_use(
        self,
        header: str,
        body: bytes,
        now: float,
        *,
        redelivered: bool = False,
        unrecorded_ok: bool = False,
    ) -> bool:
        """Record a command whose signature was verified; False if it was already used (but
        `redelivered`: a broker's delivery of one a crash cut short). Raises what `remember`
        raises (the command is then not recorded: not acted on), but with `unrecorded_ok`
        (a halt, carried out though the journal cannot write): then it is remembered in
        memory only, refused again until the bot stops; so it is too when the journal has
        not answered within `journal_wait_s` (its record may follow)."""
        self._until = {key: until for key, until in self._until.items() if until > now}
        key = _command_key(header, body)
        if key in self._until:
            return False
        until = signed_at(header) + self._max_skew_s
        self._until[key] = until  # before the await: a second copy arriving now is refused
        if self._remember is None:
            return True
        recording = asyncio.ensure_future(self._remember(key, until, now, redelivered))
        if unrecorded_ok:
            recording.add_done_callback(_warn_if_not_remembered)
        try:
            if unrecorded_ok and not await self._ended_in_time(recording):
                return True
            return await recording  # False: a replay
        except Exception:
            if unrecorded_ok:
                return True  # said by `_warn_if_not_remembered`
            del self._until[key]
            raise
        except BaseException:
            recording.cancel()
            del self._until[key]
            raise

    async def done(self, header: str, body: bytes) -> None:
        """The command `first_use` let through was carried out, or failed: it is not taken
        again. A journal that cannot record so, or not within `journal_wait_s` (the record
        may follow), costs no more than the command done once more if a broker delivers it
        again after a restart (a WARNING if it fails)."""
        if self._acted is None:
            return
        noting = asyncio.ensure_future(self._acted(_command_key(header, body)))
        noting.add_done_callback(_warn_if_not_noted)
        await self._ended_in_time(noting)

    async def _ended_in_time(self, write: asyncio.Future[Any]) -> bool:
        """Whether the journal's `write` ended within `journal_wait_s`; if not, it goes on
        (`ended_within`)."""
        return await ended_within(write, self._journal_wait_s)


def _warn_if_not_remembered(recording: asyncio.Future[bool]) -> None:
    """A command carried out though the journal could not record its use (a halt), now or
    after its wait: a restart forgets the signature, so the same signed bytes sent again
    before they expire would be taken once more."""
    if not recording.cancelled() and (exc := recording.exception()) is not None:
        logger.warning(
            "a signed command was carried out, but the journal could not record its signature "
            "as used ({error}): sent again after a restart, before its signature expires, it "
            "would be taken again",
            error=exc,
        )


def _warn_if_not_noted(noting: asyncio.Future[None]) -> None:
    if not noting.cancelled() and (exc := noting.exception()) is not None:
        logger.warning(
            "a signed command was carried out, but the journal could not record so: {error}",
            error=exc,
        )


def _command_key(header: str, body: bytes) -> bytes:
    """What a command's signature covers, hashed: its time and its body."""
    return command_digest(signed_at(header), body)


def command_digest(timestamp: int, body: bytes) -> bytes:
    """How the journal knows a command signed at `timestamp` (`used_commands`)."""
    return hashlib.sha256(f"{timestamp}.".encode() + body).digest()


def _parse_signature(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        # ASCII only: str.isdigit() accepts "²" and compare_digest refuses non-ASCII text.
        if name == "t" and _UNIX_SECONDS.fullmatch(value):
            timestamp = int(value)
        elif name == "v1" and _HEX_DIGEST.fullmatch(value.lower()):
            candidates.append(value.lower())
    if timestamp is None or not candidates:
        raise _Malformed(f"malformed {SIGNATURE_HEADER} header: expected t=<unix seconds>,v1=<hex>")
    return timestamp, candidates
