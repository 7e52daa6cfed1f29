"""The gate's trading states as a state machine: time passing (across UTC midnight too),
fills booking losses and gains, a person's halts and resumes of the bot or a strategy, and
opening and reduce-only intents, in any order, against an independent model of the documented
rules:

- a loss today (realized plus fees, UTC) at or over `max_daily_loss_usdt` puts the strategy
  (its own limit), or over all strategies the bot (the global one), in REDUCING, entered by a
  rule (`automatic`), announced through `state_entered` when the fill that books it is applied;
- a rule's state ends with its UTC day; that lift is the rule's own, not a person's resume;
- a person's halt stays until a person's resume; a person's resume while the scope's loss today
  is at its limit waives the daily loss rule for that scope until the UTC day ends;
- a strategy's effective state is the stricter of its own and the bot's; only an ACTIVE one
  lets an opening intent pass; a reduce-only intent passes in every state.

Every other limit is out of reach, so only the trading states decide. The model is eager (each
scope's state as of now), the gate lazy (rules applied when asked): the checks compare only what
the gate answers when asked, and the journal that `state_entered` and the person's commands
write must replay to the gate's own states, every report a change.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Final

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from bot.messages import OrderIntent, OrderType, Side
from bot.risk.config import StrategyRiskConfig
from bot.risk.gate import ApprovedOrder, RiskGate
from bot.risk.states import BOT_SCOPE, ScopeState, TradingState
from tests.factories import UNLIMITED, make_execution, make_intent

ZERO: Final = Decimal(0)
STRATEGIES: Final = ("alpha", "beta")
SCOPES: Final = (BOT_SCOPE, *STRATEGIES)
#: Runs start late in a UTC day: many see the next one begin.
START: Final = datetime(2026, 11, 24, 22, 30, tzinfo=UTC)
PRICE: Final = Decimal(50000)
_RANK: Final = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}


@dataclass(frozen=True)
class Held:
    """The model's state of one scope: what, whether a rule entered it, and on which UTC day."""

    state: TradingState
    automatic: bool
    day: date


class TradingStatesMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = [START]
        self.pnl: dict[tuple[date, str], Decimal] = {}  # (UTC day, strategy) -> realized - fees
        self.model: dict[str, Held] = {}  # each scope's state as of the last step (ACTIVE if none)
        self.waived: dict[str, date] = {}  # scope -> the UTC day a person resumed it at its limit
        self.reports: list[ScopeState] = []  # what the gate's `state_entered` heard
        self.journal: dict[str, ScopeState] = {}  # every scope's last state entered and journaled
        self.seen = 0  # reports already taken into the journal
        self.ids = itertools.count()

    @initialize(
        bot_limit=st.integers(1, 8).map(lambda n: Decimal(50 * n)),
        own_limits=st.tuples(*(st.none() | st.integers(1, 8) for _ in STRATEGIES)),
    )
    def build(self, bot_limit: Decimal, own_limits: tuple[int | None, ...]) -> None:
        """A gate whose only limits within reach are the daily loss ones: the bot's and,
        for a strategy with its own (looser ones are overruled), the strategy's."""
        self.bot_limit = bot_limit
        overrides = {
            name: StrategyRiskConfig(max_daily_loss_usdt=None if own is None else Decimal(50 * own))
            for name, own in zip(STRATEGIES, own_limits, strict=True)
        }
        self.limits = {BOT_SCOPE: bot_limit} | {
            name: min(bot_limit, override.max_daily_loss_usdt or bot_limit)
            for name, override in overrides.items()
        }
        self.gate = RiskGate(
            UNLIMITED.model_copy(
                update={"symbols": ("BTCUSDT",), "max_daily_loss_usdt": bot_limit}
            ),
            overrides,
            clock=lambda: self.clock[0],
            pnl_today=self.pnl_today,
            state_entered=self.reports.append,
        )

    # --- the model -----------------------------------------------------------------------

    def now(self) -> datetime:
        return self.clock[0]

    def today(self) -> date:
        return self.now().date()

    def pnl_today(self, strategy: str | None) -> Decimal:
        """The books' PnL today (UTC), one strategy's or (None) every strategy's."""
        names = STRATEGIES if strategy is None else (strategy,)
        return sum((self.pnl.get((self.today(), name), ZERO) for name in names), ZERO)

    def loss_reached(self, scope: str) -> bool:
        pnl = self.pnl_today(None if scope == BOT_SCOPE else scope)
        return -pnl >= self.limits[scope]

    def held_now(self, scope: str) -> Held:
        """The scope's own state as of now by the documented rules, kept for the next step."""
        held = self.model.get(scope, Held(TradingState.ACTIVE, False, self.today()))
        if held.automatic and held.state is not TradingState.ACTIVE and held.day < self.today():
            held = Held(TradingState.ACTIVE, True, self.today())  # the rule's day is over
        if (
            held.state is TradingState.ACTIVE
            and self.waived.get(scope) != self.today()
            and self.loss_reached(scope)
        ):
            held = Held(TradingState.REDUCING, True, self.today())
        self.model[scope] = held
        return held

    def blocking(self, strategy: str) -> set[str]:
        """The scopes whose state holds `strategy` back now: the stricter of the bot's and its
        own, both if they tie; empty if it may increase exposure."""
        held = {scope: self.held_now(scope) for scope in (BOT_SCOPE, strategy)}
        worst = max(_RANK[h.state] for h in held.values())
        return set() if worst == 0 else {s for s, h in held.items() if _RANK[h.state] == worst}

    def intent(self, strategy: str, *, reduce_only: bool) -> OrderIntent:
        return make_intent(
            strategy=strategy,
            signal_id=f"t{next(self.ids)}",
            side=Side.SELL if reduce_only else Side.BUY,
            order_type=OrderType.MARKET,
            qty=Decimal("0.001"),
            reference_price=PRICE,
            reduce_only=reduce_only,
            signal_ts=self.now(),
        )

    def take_reports(self) -> None:
        """The gate's new reports into the journal: each one a rule's, and a change."""
        for state in self.reports[self.seen :]:
            before = self.journal.get(state.scope)
            assert state.automatic, state
            assert state.state is not (before.state if before else TradingState.ACTIVE), (
                f"{state} reported again: the journal already holds {before}"
            )
            if state.state is TradingState.REDUCING:
                assert "loss today" in state.reason, state
            else:
                assert state.state is TradingState.ACTIVE, state
                assert before is not None and before.automatic, (before, state)
            self.journal[state.scope] = state
        self.seen = len(self.reports)

    def assert_applied(self, scopes: tuple[str, ...]) -> None:
        """The gate, having applied its rules to `scopes`, holds the model's state of each."""
        self.take_reports()
        for scope in scopes:
            expected = self.held_now(scope)
            own = self.gate.state_of(scope)
            assert (own.state, own.automatic and own.state is not TradingState.ACTIVE) == (
                expected.state,
                expected.automatic and expected.state is not TradingState.ACTIVE,
            ), (scope, own, expected, self.pnl_today(None if scope == BOT_SCOPE else scope))

    # --- rules ---------------------------------------------------------------------------

    @rule(minutes=st.integers(1, 59) | st.integers(1, 12).map(lambda h: 60 * h))
    def time_passes(self, minutes: int) -> None:
        """Minutes or hours pass; a UTC day may begin (its books start at zero)."""
        self.clock[0] += timedelta(minutes=minutes)

    @rule(after_s=st.sampled_from([0, 1, 59, 3600]))
    def next_utc_day(self, after_s: int) -> None:
        """Midnight UTC (or just after): a new day, whose PnL starts at zero."""
        midnight = datetime.combine(self.today() + timedelta(days=1), datetime.min.time(), UTC)
        self.clock[0] = midnight + timedelta(seconds=after_s)

    @rule(
        strategies=st.sampled_from([("alpha",), ("beta",), STRATEGIES]),
        amount=st.sampled_from([n for n in range(-8, 4) if n]).map(lambda n: Decimal(25 * n)),
    )
    def fill_booked(self, strategies: tuple[str, ...], amount: Decimal) -> None:
        """A fill books a loss (negative) or a gain for each strategy it is allocated to; the
        gate hears of it at once and enters what the loss calls for, announced."""
        for name in strategies:
            key = (self.today(), name)
            self.pnl[key] = self.pnl.get(key, ZERO) + amount
        self.gate.fill_applied(make_execution(ts=self.now()), strategies)
        self.assert_applied((*strategies, BOT_SCOPE))

    @rule(scope=st.sampled_from(SCOPES), strategy=st.sampled_from(STRATEGIES))
    def loss_reaches_limit(self, scope: str, strategy: str) -> None:
        """A fill books a loss that brings the scope's loss today exactly to its limit (the
        bot's: booked to `strategy`), or 25 USDT past it if it is there already."""
        pnl = self.pnl_today(None if scope == BOT_SCOPE else scope)
        left = self.limits[scope] + pnl
        self.fill_booked((strategy if scope == BOT_SCOPE else scope,), -left if left > 0 else -25)

    @precondition(lambda self: any(h.state is not TradingState.ACTIVE for h in self.model.values()))
    @rule(data=st.data())
    def person_resumes_held(self, data: st.DataObject) -> None:
        """`bot resume` of a scope held back (as of the last step)."""
        held = sorted(s for s, h in self.model.items() if h.state is not TradingState.ACTIVE)
        self.person_sets_state(data.draw(st.sampled_from(held)), TradingState.ACTIVE)

    @rule(scope=st.sampled_from(SCOPES), state=st.sampled_from(list(TradingState)))
    def person_sets_state(self, scope: str, state: TradingState) -> None:
        """`bot halt` / `bot resume` (or a REDUCING by hand) of the bot or one strategy,
        journaled by the kill switch. A resume at the scope's loss limit waives it today."""
        self.take_reports()
        entered = ScopeState(scope, state, f"operator: {state.value}", self.now())
        self.gate.set_state(entered)
        self.journal[scope] = entered
        self.model[scope] = Held(state, False, self.today())
        if state is TradingState.ACTIVE and self.loss_reached(scope):
            self.waived[scope] = self.today()
        assert self.gate.state_of(scope) == entered

    @rule(strategy=st.sampled_from(STRATEGIES))
    def opening_intent(self, strategy: str) -> None:
        """An opening intent passes exactly when neither the bot nor the strategy is held
        back, and is refused by the stricter state otherwise."""
        verdict = self.gate.decide(
            self.intent(strategy, reduce_only=False), price=PRICE, prices={"BTCUSDT": PRICE}
        )
        blocking = self.blocking(strategy)
        if not blocking:
            assert isinstance(verdict, ApprovedOrder), verdict.reason
        else:
            assert not verdict.approved, f"approved while {blocking} hold {strategy} back"
            assert verdict.rule in {self.model[scope].state.value for scope in blocking}
            scope = BOT_SCOPE if verdict.reason.startswith("the bot ") else strategy
            assert scope in blocking, verdict.reason
            # The later end is said: a person's hold (a resume) outlasts a rule's (the day).
            by_rules = all(self.model[holder].automatic for holder in blocking)
            until = "the next UTC day or `bot resume`" if by_rules else "`bot resume`"
            assert verdict.reason.endswith(f"until {until}"), verdict.reason
        self.assert_applied((strategy, BOT_SCOPE))

    @rule(strategy=st.sampled_from(STRATEGIES))
    def reduce_only_intent(self, strategy: str) -> None:
        """A reduce-only intent passes in every state."""
        verdict = self.gate.decide(
            self.intent(strategy, reduce_only=True), price=PRICE, prices={"BTCUSDT": PRICE}
        )
        assert isinstance(verdict, ApprovedOrder), verdict.reason

    @rule(strategy=st.sampled_from(STRATEGIES))
    def block_reason_asked(self, strategy: str) -> None:
        """The executor's question before a send: why `strategy` may not open, or None."""
        reason = self.gate.block_reason(strategy)
        blocking = self.blocking(strategy)
        if not blocking:
            assert reason is None, reason
            self.assert_applied((strategy, BOT_SCOPE))
            return
        assert reason is not None, f"no reason while {blocking} hold {strategy} back"
        scope = BOT_SCOPE if reason.startswith("the bot ") else strategy
        assert scope in blocking, reason
        held = self.model[scope]
        assert f" is {held.state.value} (" in reason, reason
        assert ("loss today" in reason) == held.automatic, reason
        self.assert_applied((strategy, BOT_SCOPE))

    @rule(scope=st.sampled_from(SCOPES))
    def state_now_asked(self, scope: str) -> None:
        """`bot risk status`: the scope's own state as of now (None: never entered)."""
        shown = self.gate.state_now(scope)
        expected = self.held_now(scope)
        state = TradingState.ACTIVE if shown is None else shown.state
        assert state is expected.state, (scope, shown, expected)
        if expected.state is TradingState.REDUCING and expected.automatic:
            assert shown is not None and shown.automatic and "loss today" in shown.reason
        self.assert_applied((scope,) if scope == BOT_SCOPE else (scope, BOT_SCOPE))

    # --- invariants ----------------------------------------------------------------------

    @invariant()
    def the_journal_holds_every_state_entered(self) -> None:
        """Replaying the journal (the rules' reports and the person's commands) gives the
        gate's own state of every scope: nothing entered unreported, nothing reported twice."""
        self.take_reports()
        for scope in SCOPES:
            journaled = self.journal.get(scope)
            own = self.gate.state_of(scope)
            if journaled is None:
                assert own.state is TradingState.ACTIVE and own.reason == "", own
            else:
                assert own == journaled, (own, journaled)


TradingStatesMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None
)
TestTradingStates = TradingStatesMachine.TestCase
