"""The bot's own simulator, in its process (`sim` without a `venue.sim_url`), or alone
(`bot sim`): configured from the bot's settings, an account for every sim key with the bot's
own secrets, and, in-process, each account set back to where the journal last saw it.

Imported only where a simulator is started: the service of a testnet or mainnet bot, or of
one pointed at a simulator elsewhere, starts without it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from difflib import get_close_matches

from pydantic import ValidationError

from bot.config import BotSettings, ConfigError, Environment, describe_section, setting_origin
from bot.execution.orders import OPEN_AT_VENUE
from bot.journal import Journal, WaitingExit
from bot.logs import logger
from bot.messages import Execution, PositionUpdate, Side
from bot.secrets import SecretResolver, same_api_key
from bot.sim import (
    ResumedOrder,
    ResumedPosition,
    SimAccountSpec,
    SimExchange,
    SimKeyProfile,
    SimServer,
    SimulatorConfig,
)

__all__ = ["sim_accounts", "simulator_config", "start_simulator"]


def simulator_config(settings: BotSettings) -> SimulatorConfig:
    """The `[sim]` section as the simulator's own model; a bad key is a ConfigError."""
    try:
        config = SimulatorConfig.model_validate(settings.sim)
    except ValidationError as exc:
        raise ConfigError(
            describe_section(exc, ("sim",), settings.source, SimulatorConfig)
        ) from None
    sim_keys = sorted(
        name for name, key in settings.keys.items() if key.environment is Environment.SIM
    )
    for name in config.key_profiles:
        if name not in sim_keys:  # a misspelt name: the key it meant keeps the default profile
            close = get_close_matches(name, sim_keys, n=1)
            where = setting_origin(("sim", "key_profiles", name), settings.source)
            raise ConfigError(
                f"sim.key_profiles.{name} {where} is the profile of no sim key in [keys]: "
                + (f"did you mean '{close[0]}'? " if close else "")
                + f"name one of {sim_keys} or remove it"
            )
    return config


def sim_accounts(settings: BotSettings, resolver: SecretResolver) -> list[SimAccountSpec]:
    """The simulator accounts for every configured sim key, with the bot's own credentials and
    the key's profile from `[sim.key_profiles.<name>]` (default: trading rights, bound to
    127.0.0.1, the only place a generated sim key is ever used). A profile that does not set
    `ips` keeps that binding: one that sets only `expired_at`, say, must not also unbind the key
    (an audit warning the user did not ask for)."""
    profiles = simulator_config(settings).key_profiles
    accounts = []
    given = {
        name: resolver.credentials(name)
        for name, key in settings.keys.items()
        if key.environment is Environment.SIM
    }
    problem = same_api_key(given.values())
    if problem is not None:  # one account per API key: the second would not fit
        raise ConfigError(problem)
    for name, key in settings.keys.items():
        if key.environment is Environment.SIM:
            credentials = given[name]
            profile = profiles.get(name) or SimKeyProfile()
            if "ips" not in profile.model_fields_set:
                profile = profile.model_copy(update={"ips": ["127.0.0.1"]})
            try:
                account = SimAccountSpec(
                    **profile.model_dump(),
                    api_key=credentials.api_key.get_secret_value(),
                    api_secret=credentials.api_secret,
                    note=name,
                )
            except ValidationError as exc:  # the message never holds the value
                first = exc.errors(include_url=False)[0]
                where = ".".join(str(part) for part in first["loc"])
                raise ConfigError(
                    f"the secrets of sim key {name} do not fit the simulator: {where}: "
                    f"{first['msg']}"
                ) from None
            accounts.append(account)
    return accounts


def start_simulator(
    settings: BotSettings,
    resolver: SecretResolver,
    journal: Journal | None = None,
) -> SimServer:
    """The simulator, in this process, with an account for every configured sim key; with the
    bot's `journal`, each account resumes where the journal last saw it (`_resume`)."""
    exchange = SimExchange(simulator_config(settings))
    for account in sim_accounts(settings, resolver):
        exchange.add_account(account)
    if journal is not None:
        _resume(exchange, settings, resolver, journal)
    server = SimServer(exchange)
    server.start()
    logger.info("simulator running in-process at {url}", url=server.url)
    return server


def _resume(
    exchange: SimExchange,
    settings: BotSettings,
    resolver: SecretResolver,
    journal: Journal,
) -> None:
    """An in-process simulator starts empty: each sim key's account is set back to the
    journal's last view of it (the last prices; the balance; positions with their leverage
    and waiting TP/SL; orders under their ids: resting ones, and those the journal cannot yet
    call done whose fills it holds, so that a look-up finds them and nothing is sent twice),
    so that the books and the venue agree after a restart. A waiting exit a resumed position
    takes waits at the simulator again under its own id; one no position takes is ended."""
    reports = journal.positions()
    notes = exchange.resume_prices(_journaled_prices(reports))
    exits = journal.waiting_exits()
    # The fills are read as they are used, twice, never held all at once (see Journal.executions).
    positions, taken = _journaled_positions(reports, _fills(journal), exits)
    orders = _journaled_orders(journal)
    balances = {wallet.key_name: wallet.wallet_balance_usdt for wallet in journal.wallets()}
    for name, key in settings.keys.items():
        known = name in balances or name in positions or name in orders
        if key.environment is not Environment.SIM or not known:
            continue
        api_key = resolver.credentials(name).api_key.get_secret_value()
        held = positions.get(name, [])
        notes += exchange.resume_account(api_key, balances.get(name), held, orders.get(name, []))
        logger.info(
            "simulator: key {key} resumes from the journal ({p} positions, {o} orders)",
            key=name,
            p=sum(position.size != 0 for position in held),
            o=len(orders.get(name, [])),
        )
    journal.end_exits([exit.order_id for exit in exits if exit.order_id not in taken])
    for note in notes:
        logger.warning("simulator resume: {note}", note=note)


def _journaled_prices(reports: Sequence[PositionUpdate]) -> dict[str, Decimal]:
    """Each symbol's last mark price in the journal's position reports."""
    latest = sorted(reports, key=lambda update: update.ts)
    return {update.symbol: update.mark_price for update in latest if update.mark_price > 0}


def _fills(journal: Journal) -> Iterator[Execution]:
    return (fill for fill, _ in journal.executions())


def _journaled_positions(
    reports: Sequence[PositionUpdate], fills: Iterable[Execution], exits: Sequence[WaitingExit]
) -> tuple[dict[str, list[ResumedPosition]], set[str]]:
    """Each key's positions (flat ones too: their leverage): the last report, moved by the
    fills journaled after it (a fill fetched by REST while the stream was down comes with no
    report), with the newest waiting TP/SL that closes each (a stop of an earlier position on
    the other side is not its); and the ids of the exits so taken."""
    latest = {(report.key_name, report.symbol): report for report in reports}
    sizes = {where: report.size for where, report in latest.items()}
    entries = {where: report.entry_price for where, report in latest.items()}
    for fill in fills:
        where = (fill.key_name, fill.symbol)
        report = latest.get(where)
        if report is None or fill.ts > report.ts:
            before = sizes.get(where, Decimal(0))
            sizes[where] = before + fill.signed_qty
            if before == 0 or (before > 0) != (sizes[where] > 0):
                entries[where] = fill.price  # opened (or flipped) by this fill
    newest = {(e.key_name, e.symbol, e.kind, e.side): e for e in exits}
    positions: dict[str, list[ResumedPosition]] = {}
    taken: set[str] = set()
    for (key_name, symbol), size in sizes.items():
        closing = Side.SELL if size > 0 else Side.BUY
        levels = {
            kind: newest.get((key_name, symbol, kind, closing)) if size != 0 else None
            for kind in ("TakeProfit", "StopLoss")
        }
        report = latest.get((key_name, symbol))
        take_profit, stop_loss = levels["TakeProfit"], levels["StopLoss"]
        positions.setdefault(key_name, []).append(
            ResumedPosition(
                symbol=symbol,
                size=size,
                entry_price=entries[(key_name, symbol)],
                leverage=report.leverage if report is not None else Decimal(0),
                take_profit=take_profit.trigger_price if take_profit else None,
                stop_loss=stop_loss.trigger_price if stop_loss else None,
                take_profit_order_id=take_profit.order_id if take_profit else None,
                stop_loss_order_id=stop_loss.order_id if stop_loss else None,
            )
        )
        taken |= {level.order_id for level in levels.values() if level is not None}
    return positions, taken


def _journaled_orders(journal: Journal) -> dict[str, list[ResumedOrder]]:
    """Each key's orders the venue must still know: those it last said were open (a limit one
    rests again; a market one, whose fill the journal never got, is over) and those not yet
    done whose fills the journal holds (the fills are in the positions)."""
    unfinished = journal.unfinished_orders()
    wanted = {record.request.order_link_id for record in unfinished}
    by_link: dict[str, list[Execution]] = {}
    for fill in _fills(journal):
        if fill.order_link_id in wanted:
            by_link.setdefault(fill.order_link_id, []).append(fill)
    orders: dict[str, list[ResumedOrder]] = {}
    for record in unfinished:
        request = record.request
        own = by_link.get(request.order_link_id, [])
        filled = sum((fill.qty for fill in own), Decimal(0))
        order_id = record.order_id or (own[0].order_id if own else None)
        if order_id is None or not (record.status in OPEN_AT_VENUE or own):
            continue
        value = sum((fill.qty * fill.price for fill in own), Decimal(0))
        orders.setdefault(request.key_name, []).append(
            ResumedOrder(
                order_id=order_id,
                order_link_id=request.order_link_id,
                symbol=request.symbol,
                side=request.side.value,
                price=record.venue_price,
                qty=record.venue_qty,
                filled_qty=max(filled, record.filled_qty),
                avg_price=value / filled if filled else record.avg_price,
                reduce_only=request.reduce_only,
                take_profit=request.take_profit,
                stop_loss=request.stop_loss,
            )
        )
    return orders
