"""Configuration: one TOML file, overridden by `BOT_<SECTION>__<FIELD>` environment variables.

Every section is a frozen model with `extra="forbid"`: a misspelt key is a start-up error that
names the key and the file, never a silently ignored setting. Secrets are not configuration
and never live here; see `bot.secrets`.
"""

from __future__ import annotations

import enum
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bot.execution.config import ExecutionConfig
from bot.risk.config import RiskConfig, StrategyRiskConfig
from bot.secrets import api_key_names
from signals.config import WebhookSourceConfig
from signals.mqtt import MqttConfig

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "BotSettings",
    "ConfigError",
    "Environment",
    "HttpConfig",
    "KeyConfig",
    "RiskConfig",
    "StrategyConfig",
    "VenueConfig",
    "load_settings",
]

DEFAULT_CONFIG_PATH: Final = Path("config/bot.toml")
#: Names of keys that hold secrets: never accepted in the configuration file.
_SECRET_WORDS: Final = re.compile(
    r"(?:^|_)(?:secret|api_?key|api_?secret|password|passphrase)$|^token$", re.IGNORECASE
)
#: The first mainnet opt-in must be written in the file: an environment variable cannot give it.
_MAINNET_OPT_IN_VARIABLE: Final = "BOT_ALLOW_MAINNET"

Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]


class ConfigError(Exception):
    """The configuration cannot be used; the message says what is wrong and where."""


class Environment(enum.StrEnum):
    """Where orders go. Keys are bound to exactly one; `mainnet` is real money."""

    SIM = "sim"
    TESTNET = "testnet"
    DEMO = "demo"
    MAINNET = "mainnet"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpConfig(_Section):
    """The HTTP server that receives webhooks and serves /healthz and /metrics."""

    host: str = Field("127.0.0.1", description="bind address; loopback unless behind a proxy")
    port: int = Field(8080, ge=0, le=65535, description="0 picks a free port")


class VenueConfig(_Section):
    """How the bot talks to Bybit (or the simulator) through pybit."""

    sim_url: str = Field(
        "",
        description="in `sim`, use a simulator already running here (`bot sim`) instead of "
        "starting one in-process",
        pattern=r"^(|https?://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?/?)$",
    )
    recv_window_ms: int = Field(5000, ge=1000, le=60000)
    timeout_s: float = Field(5.0, gt=0, le=60, description="per HTTP request to the venue")
    market_cache_s: float = Field(
        1.0, ge=0, le=60, description="how long a fetched price or equity is reused for sizing"
    )


class KeyConfig(_Section):
    """An API key: credentials come from secrets, this only binds and scopes it."""

    environment: Environment = Field(
        description="the only environment this key may trade in; it alone decides the URLs"
    )
    shared: bool = Field(
        False, description="true lets several strategies use this key; never implicit"
    )


class StrategyConfig(_Section):
    """One strategy instance: which plug-in, which key, which sources feed it."""

    plugin: str = Field(
        description="`module:Class` from any importable module, a module name in "
        "`strategies/` with one Strategy, or an entry point of the group `bot.strategies`"
    )
    key: Name
    sources: tuple[str, ...] = ("voiceofchain",)
    params: dict[str, Any] = Field(default_factory=dict)
    time_budget_ms: int = Field(
        50,
        gt=0,
        le=60_000,
        description="longest a call of the strategy's code may take; past it the call fails",
    )
    max_failures: int = Field(
        3, ge=1, description="failed calls in a row (raised or overran) that halt the strategy"
    )
    risk: StrategyRiskConfig = Field(
        default_factory=StrategyRiskConfig,
        description="this strategy's own limits; each can only tighten `[risk]`",
    )


class BotSettings(BaseSettings):
    """The whole configuration; built by `load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="BOT_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    environment: Environment = Environment.SIM
    allow_mainnet: bool = Field(
        False, description="first of the two opt-ins for real money; the other is --mainnet"
    )
    state_dir: Path = Field(Path("var"), description="journal and generated sim secrets")
    journal_synchronous: Literal["NORMAL", "FULL"] = Field(
        "NORMAL",
        description="SQLite synchronous mode of the journal (WAL): NORMAL survives a crash or "
        "kill -9 of the bot (a commit is ~10 us); FULL also survives a power loss of the "
        "machine (each commit waits for the disk, ~0.2-1 ms, three of them on each signal's "
        "way to its order)",
    )
    http: HttpConfig = HttpConfig()
    venue: VenueConfig = VenueConfig()
    execution: ExecutionConfig = ExecutionConfig()
    sim: dict[str, Any] = Field(
        default_factory=dict,
        description="the in-process simulator's settings (`bot.sim.SimulatorConfig`); "
        "validated by the `sim` wiring, so this module never imports the simulator",
    )
    risk: RiskConfig = RiskConfig()
    sources: dict[Name, WebhookSourceConfig] = Field(
        default_factory=lambda: {"voiceofchain": WebhookSourceConfig()}
    )
    mqtt: MqttConfig = MqttConfig()
    keys: dict[Name, KeyConfig] = Field(default_factory=dict)
    strategies: dict[Name, StrategyConfig] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first so it overrides the file (passed as init values); no .env files
        # and no secrets here: secrets are resolved separately and never become settings.
        return (env_settings, init_settings)

    #: the configuration file these settings were read from (None: built in code)
    _source: Path | None = PrivateAttr(None)

    @property
    def source(self) -> Path | None:
        return self._source

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "journal.sqlite3"


def load_settings(path: Path | None = None) -> BotSettings:
    """Read the TOML file (`path`, else $BOT_CONFIG, else config/bot.toml) plus env overrides.

    Raises `ConfigError` with every problem, each naming the key and the file.
    """
    path = path or Path(os.environ.get("BOT_CONFIG") or DEFAULT_CONFIG_PATH)
    if _MAINNET_OPT_IN_VARIABLE in os.environ:
        raise ConfigError(
            f"{_MAINNET_OPT_IN_VARIABLE} is not accepted: the mainnet opt-in must be written in "
            f"the configuration file ({path}: allow_mainnet = true) and given as --mainnet on the "
            f"command line; unset {_MAINNET_OPT_IN_VARIABLE}"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found; pass --config PATH or set BOT_CONFIG"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    try:
        settings = BotSettings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None
    _check_bindings(settings, path)
    settings._source = path
    return settings


def _describe(exc: ValidationError, path: Path) -> str:
    """Every problem on its own line, naming the key; never a value (it may be a secret)."""
    lines = [f"invalid configuration in {path} (or a BOT_ environment variable):"]
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        key = ".".join(loc)
        if error["type"] == "extra_forbidden" and _SECRET_WORDS.search(loc[-1]):
            lines.append(f"  {key}: {_secret_in_config(loc, path)}")
        elif error["type"] == "extra_forbidden":
            lines.append(f"  unknown key '{key}': remove it or check its spelling")
        else:
            lines.append(f"  {key}: {error['msg']}")
    return "\n".join(lines)


def _secret_in_config(loc: list[str], path: Path) -> str:
    """What to do about a secret written into the configuration file."""
    if len(loc) == 3 and loc[0] == "keys":
        names = " / ".join(api_key_names(loc[1]))
        where = f"the environment variables {names} (or files of those names in lower case)"
    else:
        where = "its BOT_ secret variable or secrets file (see README, Configuration)"
    return (
        f"secrets never go in the configuration file: delete it from {path} (and rotate it if "
        f"the file was ever shared or committed), then provide it through {where}"
    )


def _check_bindings(settings: BotSettings, path: Path) -> None:
    """Keys are bound to one environment and scoped to the strategies that name them."""
    problems = []
    users: dict[str, list[str]] = {}
    for name, strategy in settings.strategies.items():
        key = settings.keys.get(strategy.key)
        if key is None:
            problems.append(f"strategies.{name}.key names '{strategy.key}', which is not in [keys]")
            continue
        users.setdefault(strategy.key, []).append(name)
        if key.environment is not settings.environment:
            problems.append(
                f"strategies.{name} uses key '{strategy.key}' bound to {key.environment}, "
                f"but the bot runs in {settings.environment}"
            )
        for source in strategy.sources:
            if source not in settings.sources:
                problems.append(f"strategies.{name}.sources names '{source}', not in [sources]")
    if settings.risk.max_price_age_s < settings.venue.market_cache_s:
        problems.append(
            f"risk.max_price_age_s ({settings.risk.max_price_age_s:g}) is below "
            f"venue.market_cache_s ({settings.venue.market_cache_s:g}): a cached price would "
            "refuse every market order; raise the first or lower the second"
        )
    for key_name, names in users.items():
        if len(names) > 1 and not settings.keys[key_name].shared:
            problems.append(
                f"key '{key_name}' is used by {', '.join(sorted(names))}; sharing a key must be "
                f"explicit: set keys.{key_name}.shared = true, or give each strategy its own key"
            )
    if problems:
        raise ConfigError(f"invalid configuration in {path}:\n  " + "\n  ".join(problems))
