"""The kill switch over HTTP: `POST /admin/halt` and `POST /admin/resume`.

The body is `{"strategy": null | "<name>", "reason": "..."}`, plus for a halt optionally
`"cancel_open": true` (cancel the scope's open orders) and `"flatten": true` (close its
positions with reduce-only market orders), and optionally `"environment"`: the environment of
the bot the command is meant for (`bot halt` and `bot resume` send their configuration's), which
a bot of another environment refuses, and `"journal"`: the id of that bot's journal (they send
their configuration's journal's, once a bot has run on it), which a bot keeping another journal
refuses. It is signed exactly like a webhook
(`X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>`) with the secret
`BOT_ADMIN_SECRET`. A halt takes effect for the very next intent, queued ones included; the
answer says what was cancelled and flattened. The routes exist only when an admin secret does
(generated in `sim`, like the webhook secret).
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    ValidationError,
    field_validator,
)

from bot.bodies import BodyRefused, read_body
from bot.config import Environment
from bot.logs import logger
from bot.messages import field_problems, is_unicode, load_json, shape_problem, utc_now
from bot.risk.states import BOT_SCOPE, ScopeState, TradingState
from bot.secrets import ADMIN_SECRET_NAME
from signals.voiceofchain import (
    COMMAND_MAX_SKEW_S,
    SIGNATURE_HEADER,
    UsedSignatures,
    one_signature_header,
    signature_problem,
)

__all__ = ["ADMIN_SECRET_NAME", "MAX_REASON_CHARS", "AdminCommand", "AdminRoutes", "parse_command"]

_MAX_BODY_BYTES: Final = 4096
_BODY_TIMEOUT_S: Final = 10.0


#: Unicode categories a one-line reason must not hold: controls (NUL, CR, LF...), format
#: characters (bidi overrides) and line and paragraph separators.
_NOT_TEXT: Final = frozenset({"Cc", "Cf", "Zl", "Zp"})


#: The longest reason a halt or resume journals.
MAX_REASON_CHARS: Final = 200


class AdminCommand(BaseModel):
    """The body of a halt or resume: which scope (null: the whole bot), why, and (a halt
    only) whether to cancel the scope's open orders and flatten its positions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: str | None = None
    reason: str = Field("", max_length=MAX_REASON_CHARS)
    # true or false only: "yes" or 0 for a flag that cancels and closes is a mistake to name.
    cancel_open: StrictBool = False
    flatten: StrictBool = False
    #: the environment of the bot the command is for (None: whichever gets it)
    environment: Environment | None = None
    #: the id of the journal of the bot the command is for (None: whichever gets it)
    journal: str | None = Field(None, max_length=64)

    @field_validator("reason")
    @classmethod
    def _printable(cls, reason: str) -> str:
        """One line of text: it is logged, journaled and shown by `bot risk status`."""
        if not is_unicode(reason) or any(unicodedata.category(c) in _NOT_TEXT for c in reason):
            raise ValueError("must be one line of printable text (no control characters)")
        return reason


#: Enters a state for the operator, cancelling and flattening as asked; returns the report.
Apply = Callable[[ScopeState, AdminCommand], Awaitable[dict[str, Any]]]


class AdminRoutes:
    """The signed admin routes; `apply` enters a state (journaled, then effective)."""

    def __init__(
        self,
        secret: SecretStr,
        apply: Apply,
        strategies: Collection[str],
        clock: Callable[[], float] = time.time,
        used: UsedSignatures | None = None,
        environment: Environment | None = None,
        journal_id: str | None = None,
    ) -> None:
        """`used`: shared with every other way in for commands (the MQTT control topic);
        `environment` and `journal_id`: the bot's, refusing commands meant for another."""
        self._secret = secret
        self._apply = apply
        self._strategies = frozenset(strategies)
        self._environment = environment
        self._journal_id = journal_id
        self._clock = clock
        self._used = used or UsedSignatures()

    def router(self) -> APIRouter:
        router = APIRouter()
        # The body is read and checked by hand (its signature covers the exact bytes): the
        # document still says what it holds.
        refusals = {
            str(code): {"description": what, "content": {"application/json": {}}}
            for code, what in (
                (401, "missing, malformed or wrong signature, or too old"),
                (408, "the body was not sent in time"),
                (409, "this signed command was used already"),
                (413, "body too large"),
                (422, "not a command; `detail` says what is wrong"),
                (503, "not recorded or not carried out: see `detail`"),
            )
        }
        documented = {
            "responses": refusals,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": AdminCommand.model_json_schema()}},
            },
            "parameters": [
                {
                    "name": SIGNATURE_HEADER,
                    "in": "header",
                    "required": True,
                    "description": "t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.' + body> "
                    "with the admin secret",
                    "schema": {"type": "string"},
                }
            ],
        }

        @router.post(
            "/admin/halt",
            summary="Halt the bot or one strategy (optionally cancel and flatten)",
            openapi_extra=documented,
        )
        async def halt(request: Request) -> JSONResponse:
            return await self._handle(request, TradingState.HALTED)

        @router.post(
            "/admin/resume", summary="Resume the bot or one strategy", openapi_extra=documented
        )
        async def resume(request: Request) -> JSONResponse:
            return await self._handle(request, TradingState.ACTIVE)

        return router

    async def _handle(self, request: Request, state: TradingState) -> JSONResponse:
        try:
            body = await read_body(request, _MAX_BODY_BYTES, _BODY_TIMEOUT_S, "a command")
        except BodyRefused as refused:
            return _answer(refused.status, refused.kind, refused.detail)
        try:
            header = one_signature_header(request.headers.getlist(SIGNATURE_HEADER))
        except ValueError as several:
            return _answer(401, "unauthorized", str(several))
        problem = signature_problem(header, body, self._secret, self._clock(), COMMAND_MAX_SKEW_S)
        if problem is not None or header is None:
            return _answer(401, "unauthorized", problem or "unsigned")
        try:
            entered, command = parse_command(
                body, state, self._strategies, self._environment, self._journal_id
            )
        except ValueError as exc:
            return _answer(422, "invalid", str(exc))
        try:
            # A halt is carried out though the journal cannot remember it (`KillSwitch.enter`):
            # refused when the journal cannot write (a full disk), trading could not be stopped
            # when it most needs to be.
            first = await self._used.first_use(
                header, body, self._clock(), unrecorded_ok=state is TradingState.HALTED
            )
        except Exception as exc:  # the journal could not remember it: not acted on
            logger.error("admin {route}: not done: {error}", route=state.value, error=exc)
            return _answer(503, "not stored", f"the journal could not record it ({exc}); retry")
        if not first:
            return _answer(409, "replayed", "this signed command was used already; sign it anew")
        try:
            report = await self._apply(entered, command)
        except Exception as exc:  # the operator gets the reason, never a bare 500
            logger.exception("admin {route} failed", route=state.value)
            await self._used.done(header, body)  # failed, not cut short: not taken again
            return _answer(503, "failed", f"{type(exc).__name__}: {exc}; see the bot's log")
        await self._used.done(header, body)
        return JSONResponse(report)


def parse_command(
    body: bytes,
    state: TradingState,
    strategies: Collection[str],
    environment: Environment | None = None,
    journal_id: str | None = None,
) -> tuple[ScopeState, AdminCommand]:
    """The state a halt or resume body enters, and the command; ValueError saying what is
    wrong (the HTTP routes and the MQTT control topic read commands alike). A command meant
    for a bot of another environment than `environment` is refused: a testnet `bot resume`
    sent to the mainnet bot's port (one admin secret for both) must not resume real money.
    So is one meant for the bot of another journal than `journal_id`'s: a halt sent to
    another bot's port (`BOT_HTTP__PORT` of the other) must not halt that one instead."""
    expected = "expected {strategy, reason, cancel_open, flatten, environment, journal}"
    if not body.strip():  # never the whole bot by default: a body lost on the way is not {}
        raise ValueError(f"{expected}: the body is empty; send {{}} for the whole bot")
    try:
        document = load_json(body)
    except ValueError as exc:
        raise ValueError(f"{expected}: the body is not JSON ({exc})") from None
    problem = shape_problem(document)
    if problem is not None:
        raise ValueError(f"{expected}: the body {problem}")
    try:
        command = AdminCommand.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(f"{field}: {message}" for field, message in field_problems(exc))
        raise ValueError(f"{expected}: {problems}") from None
    if environment is not None and command.environment not in (None, environment):
        raise ValueError(
            f"the command is for a bot in {command.environment}, but this bot runs in "
            f"{environment}: send it with that bot's configuration (its [http] address)"
        )
    if journal_id is not None and command.journal not in (None, journal_id):
        raise ValueError(
            f"the command is for the bot of journal {command.journal}, but this bot keeps "
            f"journal {journal_id}: another bot answers at this address; send it with that "
            "bot's configuration (its [http] address)"
        )
    if command.strategy is not None and command.strategy not in strategies:
        raise ValueError(
            f"strategy {command.strategy!r} is not configured; it is one of {sorted(strategies)}"
        )
    if state is TradingState.ACTIVE and (command.cancel_open or command.flatten):
        raise ValueError("cancel_open and flatten go with a halt, not a resume")
    default = "halted by the operator" if state is TradingState.HALTED else "resumed"
    entered = ScopeState(command.strategy or BOT_SCOPE, state, command.reason or default, utc_now())
    return entered, command


def _answer(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)
