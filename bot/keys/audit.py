"""The audit of an API key: what `/v5/user/query-api` says it may do, against what it must do.

Every key trades USDT linear perpetuals for its strategies, so it must hold ContractTrade
`Order` and `Position` (set-leverage) on a unified trading account, and nothing more:

- refused: a read-only key; any Wallet permission (a key that can transfer or withdraw is a
  key that can empty the account); a permission beyond trading (Spot, Options, Exchange, ...);
  a classic (non-UTA) account; an expired key; a key the venue does not accept at all (of
  another environment, mistyped, deleted);
- warned about: no IP binding; expiry within `EXPIRY_WARNING_DAYS`;
- unreachable: the venue could not be asked (network, outage); nothing is known.

The audit runs at start-up (a refused or unreachable key stops the start), daily while the bot
runs, on every rotated key before it is used, and in `bot keys check`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol

from bot.config import BotSettings, Environment
from bot.messages import utc_now
from bot.secrets import first_two_sharing
from bot.venue.errors import KeyFatalError, VenueError
from bot.venue.shapes import KeyInfo

__all__ = [
    "EXPIRY_WARNING_DAYS",
    "TRADING_RIGHTS",
    "KeyAudit",
    "KeyInfoSource",
    "Verdict",
    "audit_key",
    "judge",
    "one_account",
    "strategies_by_key",
]

#: What a trading key needs, group by group: everything else is more than it needs.
TRADING_RIGHTS: Final[Mapping[str, frozenset[str]]] = {
    "ContractTrade": frozenset({"Order", "Position"}),
}
#: Rights a UTA key may show for the same trading (Bybit's Derivatives group on UTA).
_ALSO_TRADING: Final[Mapping[str, frozenset[str]]] = {
    "Derivatives": frozenset({"DerivativesTrade"}),
}
WALLET_GROUP: Final = "Wallet"
EXPIRY_WARNING_DAYS: Final = 14


class Verdict(enum.StrEnum):
    OK = "ok"
    WARN = "warn"  # usable, with something to fix
    REFUSED = "refused"
    UNREACHABLE = "unreachable"

    @property
    def usable(self) -> bool:
        return self in (Verdict.OK, Verdict.WARN)


class KeyInfoSource(Protocol):
    """A venue reached with the key being audited."""

    @property
    def endpoint(self) -> str: ...

    async def api_key_info(self) -> KeyInfo: ...


@dataclass(frozen=True)
class KeyAudit:
    """One key's audit: the verdict, why, and what the venue reported."""

    key: str
    environment: Environment
    strategies: tuple[str, ...]
    verdict: Verdict
    problems: tuple[str, ...]  # why it is refused or unreachable
    warnings: tuple[str, ...]
    info: KeyInfo | None
    checked_at: datetime

    @property
    def reason(self) -> str:
        """Everything to fix, most serious first ("" when nothing)."""
        return "; ".join((*self.problems, *self.warnings))

    @property
    def days_left(self) -> int | None:
        if self.info is None or self.info.expires_at is None:
            return None
        return (self.info.expires_at - self.checked_at).days

    def row(self) -> dict[str, str]:
        """The audit as `bot keys check` shows it (no secret, ever: none is known here)."""
        info = self.info
        if info is None:
            permissions = ip_binding = expiry = "?"
        else:
            permissions = (
                " ".join(
                    f"{group}:{','.join(rights)}" for group, rights in info.permissions.items()
                )
                or "none"
            )
            if info.read_only:
                permissions = f"read-only {permissions}"
            ip_binding = ",".join(info.ips) if info.ip_bound else "none"
            expiry = (
                "never"
                if info.expires_at is None
                else f"{info.expires_at:%Y-%m-%d} ({self.days_left} days)"
            )
        return {
            "key": self.key,
            "environment": self.environment.value,
            "strategies": ",".join(self.strategies),
            "permissions": permissions,
            "ip_binding": ip_binding,
            "expiry": expiry,
            "verdict": self.verdict.value,
            "reason": self.reason,
        }


def one_account(audits: Iterable[KeyAudit]) -> str | None:
    """Why these keys cannot all be in service together, or None: two configured keys of one
    account would be one account shared under two names, implicitly. The account's private
    stream reports every order and fill of the account to each of its keys, so each key's
    books would take the other's trades, and in one-way mode the strategies' positions net
    at the venue while the books hold both."""
    shared = first_two_sharing(
        (audit.key, audit.info.user_id)
        for audit in audits
        if audit.info is not None and audit.info.user_id
    )
    if shared is None:
        return None
    first, second, account = shared
    return (
        f"keys {first} and {second} are keys of one account (UID {account}): a key is "
        "never shared implicitly; give each a key of its own account (a sub-account), "
        "or name one key in both strategies with keys.<name>.shared = true"
    )


def strategies_by_key(settings: BotSettings) -> dict[str, tuple[str, ...]]:
    """Each configured key and the strategies that trade with it."""
    users: dict[str, list[str]] = {name: [] for name in settings.keys}
    for name, strategy in settings.strategies.items():
        users.setdefault(strategy.key, []).append(name)
    return {key: tuple(names) for key, names in users.items()}


async def audit_key(
    key: str,
    environment: Environment,
    strategies: Sequence[str],
    venue: KeyInfoSource,
    now: datetime | None = None,
) -> KeyAudit:
    """Ask the venue what `key` may do and judge it; never raises for a venue failure."""
    checked_at = now or utc_now()

    def verdict(kind: Verdict, problem: str) -> KeyAudit:
        return KeyAudit(key, environment, tuple(strategies), kind, (problem,), (), None, checked_at)

    try:
        info = await venue.api_key_info()
    except KeyFatalError as exc:
        said = exc.message.rstrip(".")  # Bybit's messages end in a full stop already
        remedy = (
            # The sim's keys are made by the configuration, not on a website: a standalone
            # `bot sim` (venue.sim_url) holds those of the secrets it started with, which a
            # bot of another state_dir or secrets directory does not share.
            "With a standalone `bot sim` (venue.sim_url), run it and this command with the same "
            "configuration, state_dir and secrets directory: it knows only the sim keys whose "
            "secrets it started with"
            if environment is Environment.SIM
            else f"Create a {environment} key and write its secrets again"
        )
        return verdict(
            Verdict.REFUSED,
            f"the {environment} venue ({venue.endpoint}) refused the key: {said}. Is it "
            f"a key of another environment, mistyped, expired or deleted? {remedy}",
        )
    except VenueError as exc:
        return verdict(
            Verdict.UNREACHABLE,
            f"could not ask the {environment} venue ({venue.endpoint}) about the key: {exc}",
        )
    return judge(key, environment, strategies, info, checked_at)


def judge(
    key: str,
    environment: Environment,
    strategies: Sequence[str],
    info: KeyInfo,
    now: datetime,
) -> KeyAudit:
    """The verdict on a key the venue described as `info`."""
    problems: list[str] = []
    warnings: list[str] = []
    if strategies and info.read_only:
        users = (
            f"strategy {strategies[0]} trades"
            if len(strategies) == 1
            else f"strategies {', '.join(strategies)} trade"
        )
        problems.append(
            f"read-only, but {users} with it: give it Read-Write with "
            "ContractTrade Orders and Positions"
        )
    wallet = info.permissions.get(WALLET_GROUP, ())
    if wallet:
        problems.append(
            f"Wallet permissions ({', '.join(wallet)}) let the key move money out of the "
            "account: remove every Wallet permission on Bybit"
        )
    extra = _beyond_trading(info)
    if extra:
        problems.append(
            f"permissions beyond what its strategies trade ({extra}): remove them on Bybit; "
            "USDT perpetuals need only ContractTrade Orders and Positions"
        )
    missing = sorted(
        TRADING_RIGHTS["ContractTrade"] - set(info.permissions.get("ContractTrade", ()))
    )
    if strategies and missing and not info.read_only:
        problems.append(
            f"ContractTrade {' and '.join(missing)} missing: its strategies cannot trade "
            "(Orders) or set leverage (Positions); add them on Bybit"
        )
    if not info.uta:
        problems.append(
            "the account is not a unified trading account (UTA): this bot trades linear "
            "contracts on UTA; upgrade the account or use a key of a UTA account"
        )
    if info.expires_at is not None:
        days = (info.expires_at - now).total_seconds() / 86400
        if days <= 0:
            problems.append(f"expired on {info.expires_at:%Y-%m-%d}: create a new key")
        elif days < EXPIRY_WARNING_DAYS:
            warnings.append(
                f"expires on {info.expires_at:%Y-%m-%d}, in {int(days)} days: rotate it before "
                "then (docs/keys.md)"
            )
    if not info.ip_bound:
        warnings.append(
            "not bound to an IP address: anyone holding it can trade from anywhere; bind it to "
            "this server's IP on Bybit (bound keys also never expire)"
        )
    kind = Verdict.REFUSED if problems else Verdict.WARN if warnings else Verdict.OK
    return KeyAudit(
        key, environment, tuple(strategies), kind, tuple(problems), tuple(warnings), info, now
    )


def _beyond_trading(info: KeyInfo) -> str:
    """Rights outside what trading needs, e.g. "Spot:SpotTrade Exchange:ExchangeHistory"."""
    extra = []
    for group, rights in info.permissions.items():
        if group == WALLET_GROUP:
            continue  # refused on its own, with its own reason
        allowed = TRADING_RIGHTS.get(group) or _ALSO_TRADING.get(group) or frozenset()
        beyond = [right for right in rights if right not in allowed]
        if beyond:
            extra.append(f"{group}:{','.join(beyond)}")
    return " ".join(extra)
