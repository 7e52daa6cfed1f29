"""The order executor: approved intents become exactly one venue order each.

For every intent it derives the deterministic orderLinkId, journals the order as Pending
*before* sending it, sends it through the strategy's own key, and journals what came back.
An order whose orderLinkId the journal already holds is never sent blindly again: the venue
is asked first. A key the venue calls bad (KeyFatalError) is switched off for all of its
strategies until the bot restarts.

After an ambiguous failure (timeout, lost answer, 10016, 5xx) the order is looked up by its
orderLinkId once; if the venue does not show it (yet), it is journaled Unknown. Not built
yet: bounded resends of retryable and ambiguous failures, and start-up reconciliation of
Unknown and Pending orders; a retryable failure (rate limit, clock drift) is journaled
Rejected.
"""

from __future__ import annotations

from collections.abc import Mapping

from bot.execution.ids import order_link_id
from bot.journal import Journal
from bot.logs import logger
from bot.messages import OrderEvent, OrderIntent, OrderRequest, OrderStatus
from bot.venue.base import Venue
from bot.venue.errors import (
    AmbiguousError,
    DuplicateOrderError,
    KeyFatalError,
    OrderRejectedError,
    RetryableError,
    VenueError,
)

__all__ = ["Executor", "build_request"]


def build_request(intent: OrderIntent, key_name: str) -> OrderRequest:
    """The venue order for an approved intent, named by its deterministic orderLinkId."""
    return OrderRequest(
        order_link_id=order_link_id(
            intent.strategy, intent.signal_source, intent.signal_id, intent.leg
        ),
        key_name=key_name,
        strategy=intent.strategy,
        signal_source=intent.signal_source,
        signal_id=intent.signal_id,
        leg=intent.leg,
        symbol=intent.symbol,
        side=intent.side,
        order_type=intent.order_type,
        qty=intent.qty,
        price=intent.price,
        stop_loss=intent.stop_loss,
        take_profit=intent.take_profit,
        reduce_only=intent.reduce_only,
    )


class Executor:
    """Places approved intents, each through the key its strategy is bound to."""

    def __init__(self, journal: Journal, venues: Mapping[str, Venue]) -> None:
        """`venues` maps key name to the venue reached with that key."""
        self._journal = journal
        self._venues = venues
        self._disabled_keys: dict[str, str] = {}

    async def execute(self, intent: OrderIntent, key_name: str) -> OrderEvent:
        """Place the order for `intent` (once, ever) with `key_name`, the key that the
        configuration binds to the strategy (never one the intent names), and return the
        order's latest known state."""
        venue = self._venues[key_name]
        request = build_request(intent, key_name)
        log = logger.bind(order_link_id=request.order_link_id, strategy=intent.strategy)

        if not await self._journal.call(self._journal.record_order, request):
            known = await self._journal.call(self._journal.order, request.order_link_id)
            if known is not None and known.status not in (OrderStatus.PENDING, OrderStatus.UNKNOWN):
                log.info("order already journaled as {status}; not sent again", status=known.status)
                return _event_of(request.order_link_id, known.status, known.order_id, known.reason)
            found = await self._lookup(venue, request)
            if found is not None:
                log.info("order found at the venue; not sent again")
                return found

        if key_name in self._disabled_keys:
            return await self._record(
                OrderEvent(
                    order_link_id=request.order_link_id,
                    status=OrderStatus.REJECTED,
                    reason=f"key {key_name} is disabled: {self._disabled_keys[key_name]}",
                )
            )
        try:
            ack = await venue.place_order(request)
        except (DuplicateOrderError, AmbiguousError) as exc:
            # The order may exist (110072 says it does): look before anything else, never
            # guess; what the venue does not show is journaled Unknown.
            found = await self._lookup(venue, request)
            return found if found is not None else await self._failed(request, exc)
        except VenueError as exc:
            return await self._failed(request, exc)
        await self._record(ack)
        log.info("order placed", order_id=ack.order_id)
        return await self._refresh(venue, request, ack)

    async def _refresh(self, venue: Venue, request: OrderRequest, ack: OrderEvent) -> OrderEvent:
        """Read the order back once, to journal an immediate fill (market orders)."""
        try:
            current = await venue.get_order(request.order_link_id, request.symbol)
        except VenueError as exc:
            logger.warning("could not read the order back", error=str(exc))
            return ack
        if current is None or current.status is OrderStatus.NEW:
            return ack
        return await self._record(current)

    async def _lookup(self, venue: Venue, request: OrderRequest) -> OrderEvent | None:
        try:
            found = await venue.get_order(request.order_link_id, request.symbol)
        except VenueError as exc:
            logger.warning(
                "order lookup failed", order_link_id=request.order_link_id, error=str(exc)
            )
            return None
        return None if found is None else await self._record(found)

    async def _failed(self, request: OrderRequest, exc: VenueError) -> OrderEvent:
        if isinstance(exc, KeyFatalError):
            self._disabled_keys[request.key_name] = exc.message
            logger.error(
                "key {key} refused by the venue; its strategies are stopped", key=request.key_name
            )
        terminal = isinstance(exc, OrderRejectedError | KeyFatalError | RetryableError)
        status = OrderStatus.REJECTED if terminal else OrderStatus.UNKNOWN
        logger.warning(
            "order not placed: {error}", error=str(exc), order_link_id=request.order_link_id
        )
        return await self._record(
            OrderEvent(
                order_link_id=request.order_link_id,
                status=status,
                reason=exc.message,
                ret_code=exc.ret_code,
            )
        )

    async def _record(self, event: OrderEvent) -> OrderEvent:
        await self._journal.call(self._journal.record_order_event, event)
        return event


def _event_of(link_id: str, status: OrderStatus, order_id: str | None, reason: str) -> OrderEvent:
    return OrderEvent(order_link_id=link_id, status=status, order_id=order_id, reason=reason)
