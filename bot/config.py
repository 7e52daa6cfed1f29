"""Configuration: one TOML file, overridden by `BOT_<SECTION>__<FIELD>` environment variables.

Every section is a frozen model with `extra="forbid"`: a misspelt key is a start-up error that
names the key and the file, never a silently ignored setting; so is a `BOT_` variable that is
neither a setting nor one the bot reads (a secret, `BOT_CONFIG`), with the closest valid name.
A bad value is one line naming the setting, the value, where it came from and what is allowed.
A list may be given in a variable as `A,B` (or JSON). A relative `state_dir` written in the
file is relative to the file's directory. Secrets are not configuration and never live here;
see `bot.secrets`.
"""

from __future__ import annotations

import enum
import os
import re
import tomllib
import types
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from difflib import get_close_matches
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from bot.execution.config import ExecutionConfig
from bot.files import FileTooLargeError, NotRegularFileError, read_small_file
from bot.messages import error_said, load_json
from bot.risk.config import RiskConfig, StrategyRiskConfig
from bot.secrets import (
    ADMIN_SECRET_NAME,
    SecretResolver,
    api_key_names,
    webhook_secret_name,
    webhook_token_name,
)
from signals.config import PASSWORD_SECRET_NAME as MQTT_PASSWORD_NAME
from signals.config import SIGNING_SECRET_NAME as MQTT_SIGNING_SECRET_NAME
from signals.config import MqttConfig, WebhookSourceConfig

__all__ = [
    "CONFIG_VARIABLE",
    "DEFAULT_CONFIG_PATH",
    "SECRETS_DIR_VARIABLE",
    "AuditConfig",
    "BotSettings",
    "ConfigError",
    "Environment",
    "HttpConfig",
    "KeyConfig",
    "NotifyConfig",
    "NotifyEvent",
    "RiskConfig",
    "StrategyConfig",
    "VenueConfig",
    "describe_section",
    "load_settings",
    "path_problem",
    "secret_names",
    "secret_resolver",
    "setting_origin",
]

DEFAULT_CONFIG_PATH: Final = Path("config/bot.toml")
#: Names of keys that hold secrets: never accepted in the configuration file.
_SECRET_WORDS: Final = re.compile(
    r"(?:^|_)(?:secret|api_?key|api_?secret|password|passphrase)$|^(?:token|urls?)$", re.IGNORECASE
)
#: The first mainnet opt-in must be written in the file: an environment variable cannot give it.
_MAINNET_OPT_IN_VARIABLE: Final = "BOT_ALLOW_MAINNET"
#: Overrides are `BOT_<SECTION>__<FIELD>`, e.g. BOT_HTTP__PORT.
_ENV_PREFIX: Final = "BOT_"
_ENV_DELIMITER: Final = "__"
#: The configuration file, when --config is not given.
CONFIG_VARIABLE: Final = "BOT_CONFIG"
#: The secrets directory, when --secrets-dir is not given.
SECRETS_DIR_VARIABLE: Final = "BOT_SECRETS_DIR"
#: The `BOT_` variables the bot reads that are not settings, as named where they are read
#: (`*`: a key's or a source's name); a module that reads a new one adds it here, or, if it
#: imports this module (bot.notify), in `_other_variables`.
_OTHER_VARIABLES: Final = (
    CONFIG_VARIABLE,
    SECRETS_DIR_VARIABLE,
    ADMIN_SECRET_NAME,
    MQTT_PASSWORD_NAME,
    MQTT_SIGNING_SECRET_NAME,
    webhook_secret_name("*"),
    webhook_token_name("*"),
    *api_key_names("*"),
)
#: A value shown in an error is cut to this many characters.
_SHOWN_CHARS: Final = 60
# Linux's limits on one name in a path and on a whole path, in bytes.
_NAME_MAX: Final = 255
_PATH_MAX: Final = 4096

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
    max_connections: int = Field(
        1000,
        ge=1,
        le=60000,
        description="open connections at most; past it, the one idle longest is closed for a "
        "new one, or the new one when all are busy (a flood cannot take the file descriptors "
        "the bot needs)",
    )
    head_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="a request's line and headers must arrive within this, else 408 and the "
        "connection is closed",
    )

    @field_validator("host")
    @classmethod
    def _an_address(cls, host: str) -> str:
        """uvicorn takes "" as every interface: that must be said, as 0.0.0.0."""
        if not host.strip():
            raise ValueError(
                "no address: give 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
            )
        if any(character <= " " or character in "\x7f/[]" for character in host):
            raise ValueError(
                "not an address: give the address alone, without spaces, brackets, scheme or "
                "path, e.g. 127.0.0.1, ::1 or 0.0.0.0"
            )
        return host


class VenueConfig(_Section):
    """How the bot talks to Bybit (or the simulator) through pybit."""

    sim_url: str = Field(
        "",
        description="in `sim`, use a simulator already running here (`bot sim`) instead of "
        "starting one in-process",
        pattern=r"^(|https?://(127\.0\.0\.1|localhost|\[::1\])(:[0-9]+)?/?)$",
    )
    recv_window_ms: int = Field(5000, ge=1000, le=60000)
    timeout_s: float = Field(5.0, gt=0, le=60, description="per HTTP request to the venue")
    market_cache_s: float = Field(
        1.0, ge=0, le=60, description="how long a fetched price or equity is reused for sizing"
    )
    start_wait_s: float = Field(
        120.0,
        ge=0,
        le=3600,
        description="at start-up, how long a key check the venue does not answer (an outage, "
        "a network still coming up) is asked again before the bot refuses to start",
    )
    unready_after_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="a key's REST requests failing, or its private stream down, this long "
        "makes /healthz not ready",
    )


class AuditConfig(_Section):
    """The audit log of every signed request to the venue, in `<state_dir>/audit/`."""

    max_file_mb: float = Field(
        20.0, gt=0, le=1024, description="the current file is rotated once it would pass this"
    )
    retention_days: int = Field(90, ge=1, description="rotated files older than this are deleted")
    max_files: int = Field(50, ge=1, description="rotated files kept at most; the oldest go first")


class KeyConfig(_Section):
    """An API key: credentials come from secrets, this only binds and scopes it."""

    environment: Environment = Field(
        description="the only environment this key may trade in; it alone decides the URLs"
    )
    shared: bool = Field(
        False, description="true lets several strategies use this key; never implicit"
    )


#: The kinds of event a notification can be about; each tagged log call names one.
NotifyEvent = Literal[
    "fill", "rejection", "foreign", "trading_state", "key", "venue_error", "stream"
]


class NotifyConfig(_Section):
    """Notifications (bot/notify.py) to the apprise URLs of the secret BOT_NOTIFY_URLS; with no
    URL set they are off. Per kind, the first event is sent at once and the rest of its window
    as one summary."""

    events: tuple[NotifyEvent, ...] = Field(
        get_args(NotifyEvent), description="the kinds of event sent; [] turns notifications off"
    )
    min_interval_s: float = Field(
        60.0,
        gt=0,
        le=86_400,
        description="per kind: after one is sent, the others of this long go as one summary",
    )
    timeout_s: float = Field(
        10.0, gt=0, le=120, description="longest one notification may take to reach every URL"
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
        description="CPU time a call of the strategy's code may spend (one that waits instead: "
        "this plus 1 s of wall time); past it the call fails",
    )
    max_failures: int = Field(
        3, ge=1, description="failed calls in a row (raised or overran) that halt the strategy"
    )
    risk: StrategyRiskConfig = Field(
        default_factory=StrategyRiskConfig,
        description="this strategy's own limits; each can only tighten `[risk]`",
    )

    @field_validator("plugin")
    @classmethod
    def _names_a_plugin(cls, value: str) -> str:
        if not value or not value.isprintable() or any(char.isspace() for char in value):
            raise ValueError(
                "must be module:Class, a module name or an entry point's name, without "
                "spaces or control characters"
            )
        return value


class _Environment(EnvSettingsSource):
    """The `BOT_` variables, where a list setting may also be written `BTCUSDT,ETHUSDT`."""

    def decode_complex_value(self, field_name: str, field: FieldInfo | None, value: Any) -> Any:
        """JSON when it looks like JSON; else, for a list, its comma-separated items (none
        when the value is empty). What is neither goes to validation as it is, which names
        the setting, the value and what fits (pydantic-settings would raise a bare parse
        error instead)."""
        text = str(value).strip()
        if not text.startswith(("[", "{")):
            if not _is_list(field):
                return value
            return [item.strip() for item in text.split(",")] if text else []
        try:
            return super().decode_complex_value(field_name, field, value)  # type: ignore[arg-type]
        except (ValueError, RecursionError):  # RecursionError: nested deeper than json reads
            return value

    def explode_env_vars(
        self, field_name: str, field: FieldInfo, env_vars: Mapping[str, str | None]
    ) -> dict[str, Any]:
        """The nested settings (`BOT_RISK__SYMBOLS`), where an empty value of a list setting
        is an empty list: pydantic-settings passes an empty value on undecoded."""
        exploded = super().explode_env_vars(field_name, field, env_vars)
        prefix = f"{self.env_prefix}{field_name}{self.env_nested_delimiter}"
        prefix = prefix if self.case_sensitive else prefix.lower()  # as env_vars' names are
        for env_name, env_val in env_vars.items():
            if env_val or not env_name.startswith(prefix):
                continue
            *keys, last_key = env_name[len(prefix) :].split(self.env_nested_delimiter)
            parent: Any = exploded
            target: FieldInfo | None = field
            for key in keys:
                target = self.next_field(target, key, self.case_sensitive)
                parent = parent.get(key) if isinstance(parent, dict) else None
            target = self.next_field(target, last_key, self.case_sensitive)
            if isinstance(parent, dict) and _is_list(target):
                parent[last_key] = []
        return _json_decoded(exploded) if _is_open_table(field) else exploded


def _is_open_table(field: FieldInfo | None) -> bool:
    """A section validated by its own model later (`dict[str, Any]`, e.g. `sim`): nothing
    here tells which of its values are JSON."""
    annotation = field.annotation if field is not None else None
    return get_origin(annotation) is dict and get_args(annotation)[1] is Any


def _json_decoded(value: Any) -> Any:
    """`value` with each string that is a JSON object or array (`BOT_SIM__PRICES='{...}'`)
    decoded; what does not parse stays as it is, for validation to name."""
    if isinstance(value, dict):
        return {key: _json_decoded(item) for key, item in value.items()}
    if isinstance(value, str) and value.strip().startswith(("{", "[")):
        try:
            return load_json(value)
        except ValueError:
            return value
    return value


def _is_list(field: FieldInfo | None) -> bool:
    """A list setting: a tuple or list, perhaps optional (`tuple[str, ...] | None`)."""
    annotation = field.annotation if field is not None else None
    return any(get_origin(member) in (tuple, list) for member in _members(annotation))


def _members(annotation: Any) -> tuple[Any, ...]:
    """The members of a union (`X | None`), or the annotation itself."""
    if get_origin(annotation) in (Union, types.UnionType):
        return get_args(annotation)
    return (annotation,)


class BotSettings(BaseSettings):
    """The whole configuration; built by `load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=_ENV_PREFIX, env_nested_delimiter=_ENV_DELIMITER, extra="forbid", frozen=True
    )

    environment: Environment = Environment.SIM
    allow_mainnet: bool = Field(
        False, description="first of the two opt-ins for real money; the other is --mainnet"
    )
    state_dir: Path = Field(Path("var"), description="journal and generated sim secrets")
    journal_synchronous: Literal["NORMAL", "FULL"] = Field(
        "NORMAL",
        description="SQLite synchronous mode of the journal's promises (WAL): NORMAL survives "
        "a crash or kill -9 of the bot (a commit is ~10 us); FULL also survives a power loss "
        "of the machine for what was promised: the signal before its sender is answered, the "
        "decisions and Pending orders before they are sent, trading states (each of those "
        "commits waits for the disk, ~0.2-1 ms, two on each signal's way to its order). "
        "Every other commit is NORMAL: after a power loss the venue tells it again",
    )
    cpus: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list,
        description="CPUs (Linux) every thread of `bot run` is pinned to, e.g. [1]; [] lets the "
        "system choose. One CPU costs less CPU per signal than several (see bot.cpus)",
    )
    http: HttpConfig = HttpConfig()
    venue: VenueConfig = VenueConfig()
    execution: ExecutionConfig = ExecutionConfig()
    audit: AuditConfig = AuditConfig()
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
    notify: NotifyConfig = NotifyConfig()
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
        return (_Environment(settings_cls), init_settings)

    @field_validator("state_dir", mode="before")
    @classmethod
    def _names_a_directory(cls, value: object) -> object:
        # An empty value would be the current directory: a journal wherever the bot starts.
        if isinstance(value, str) and not value.strip():
            raise ValueError("is empty: name the directory of the journal, e.g. var")
        problem = path_problem(value) if isinstance(value, str | Path) else None
        if problem is not None:
            raise ValueError(f"{problem}: name a directory the bot can create, e.g. var")
        return value

    #: the configuration file these settings were read from (None: built in code)
    _source: Path | None = PrivateAttr(None)

    @property
    def source(self) -> Path | None:
        return self._source

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "journal.sqlite3"

    @property
    def audit_dir(self) -> Path:
        return self.state_dir / "audit"

    def require_source(self, source: str) -> WebhookSourceConfig:
        """The webhook source `source`; ConfigError unless it is configured and enabled."""
        receiving = self.sources.get(source)
        if receiving is None or not receiving.enabled:
            raise ConfigError(
                f"source '{source}' is not an enabled [sources.{source}] of the configuration; "
                f"it has {sorted(self.sources)} (--source chooses)"
            )
        return receiving


#: Far beyond any configuration (the shipped one is 8 KB); what is larger (`--config
#: /dev/zero`) is refused before it fills the memory.
_MAX_CONFIG_BYTES: Final = 1024 * 1024


def _config_text(path: Path) -> str:
    """The configuration file's text: a regular file of at most `_MAX_CONFIG_BYTES`, less
    the byte-order mark some editors write first (TOML would refuse it at line 1)."""
    try:
        return read_small_file(path, _MAX_CONFIG_BYTES).decode("utf-8").removeprefix("\ufeff")
    except FileTooLargeError:
        raise ConfigError(
            f"config file {path} is larger than {_MAX_CONFIG_BYTES // 1024 // 1024} MiB: is it the "
            "configuration? pass --config PATH with a TOML file"
        ) from None
    except NotRegularFileError:
        raise ConfigError(
            f"config file {path} is not a regular file (a pipe or a device?): pass --config "
            "PATH with a TOML file"
        ) from None


def secret_resolver(settings: BotSettings, secrets_dir: Path) -> SecretResolver:
    """Secrets for this environment; only `sim` may generate missing ones (in the state dir)."""
    generated = settings.state_dir / "secrets" if settings.environment is Environment.SIM else None
    return SecretResolver(secrets_dir, generated_dir=generated)


def secret_names(settings: BotSettings) -> list[str]:
    """The name of every secret `settings` may use: each key's two, each source's secret and
    token, the admin, MQTT and notification secrets."""
    from bot.notify import NOTIFY_URLS_NAME  # bot.notify imports this module

    names = [name for key in sorted(settings.keys) for name in api_key_names(key)]
    for source in sorted(settings.sources):
        names += [webhook_secret_name(source), webhook_token_name(source)]
    return [
        *names,
        ADMIN_SECRET_NAME,
        MQTT_PASSWORD_NAME,
        MQTT_SIGNING_SECRET_NAME,
        NOTIFY_URLS_NAME,
    ]


def load_settings(path: Path | None = None) -> BotSettings:
    """Read the TOML file (`path`, else $BOT_CONFIG, else config/bot.toml) plus env overrides.

    Raises `ConfigError` with every problem, each naming the key and the file.
    """
    path = path or Path(os.environ.get(CONFIG_VARIABLE) or DEFAULT_CONFIG_PATH)
    lower = sorted(
        name for name in os.environ if name.upper().startswith(_ENV_PREFIX) and name != name.upper()
    )
    if lower:  # settings would take them (their names are not case-sensitive), checks not
        raise ConfigError(
            f"environment variable(s) {', '.join(lower)} not in upper case: the bot's variables "
            f"are upper case ({', '.join(name.upper() for name in lower)}); rename or unset them"
        )
    if _MAINNET_OPT_IN_VARIABLE in os.environ:
        raise ConfigError(
            f"{_MAINNET_OPT_IN_VARIABLE} is not accepted: the mainnet opt-in must be written in "
            f"the configuration file ({path}: allow_mainnet = true) and given as --mainnet on the "
            f"command line; unset {_MAINNET_OPT_IN_VARIABLE}"
        )
    problem = path_problem(path)
    if problem is not None:
        raise ConfigError(
            f"config file {_shown(str(path))} {problem}: pass --config PATH with a TOML file, "
            f"or set {CONFIG_VARIABLE} to one"
        )
    try:
        data = tomllib.loads(_config_text(path))
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found; pass --config PATH or set {CONFIG_VARIABLE}"
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            f"config file {path} is a directory; pass the path of a TOML file, e.g. "
            f"{path / 'bot.toml'}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read config file {path}: {exc}; check its permissions and encoding (UTF-8)"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses per level of nested arrays and inline tables
        raise ConfigError(
            f"{path} is not valid TOML for the bot: its arrays or inline tables are nested too "
            "deeply; a configuration nests a few levels at most"
        ) from None
    unknown = _unknown_variables(os.environ, data)
    if unknown:
        raise ConfigError("\n".join(unknown))
    try:
        settings = BotSettings(**_state_dir_beside(data, path))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path, model=BotSettings)) from None
    _check_bindings(settings, path)
    settings._source = path
    return settings


def _state_dir_beside(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """A relative `state_dir` written in the file (or the default) is relative to the file's
    directory, so every command finds the same journal wherever it runs; BOT_STATE_DIR, set in
    a shell, is relative to where the command runs, as any path typed there."""
    state_dir = data.get("state_dir", BotSettings.model_fields["state_dir"].default)
    if not isinstance(state_dir, str | Path) or not str(state_dir).strip():
        return data  # for validation to refuse
    if path_problem(state_dir) is not None:
        return data  # likewise
    return {**data, "state_dir": (path.parent / Path(state_dir).expanduser()).resolve()}


def path_problem(value: str | Path) -> str | None:
    """What makes `value` a path no file system call can take, if anything."""
    text = str(value)
    if "\0" in text:
        return "holds a NUL character"
    # Each would name another directory than the one meant, unseen in every message: a
    # line end from a file written on Windows (an env file's `var\r`), a space at an end.
    control = next((char for char in text if unicodedata.category(char) == "Cc"), None)
    if control is not None:  # named: a value shown cut short may not show it
        return f"holds the control character {control!r} (a line end of a file from Windows?)"
    if text != text.strip():
        return "begins or ends with a space"
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # ~name of no such user
        return f"starts with {text.partition('/')[0]!r}, a home directory that does not exist"
    if any(len(os.fsencode(part)) > _NAME_MAX for part in path.parts):
        return f"has a name longer than {_NAME_MAX} bytes"
    if len(os.fsencode(text)) > _PATH_MAX:
        return f"is longer than {_PATH_MAX} bytes"
    return None


def _describe(
    exc: ValidationError,
    path: Path,
    section: Sequence[str] = (),
    model: type[BaseModel] | None = None,
) -> str:
    """Every problem on one line of its own, naming the setting (under `section`, for one
    validated apart by its own `model`), where it was set (the file or a BOT_ variable) and, for
    a bad value, the value and what is allowed; for an unknown key, the closest valid one. Only a
    setting's value is shown: a secret is never a setting (it is refused by name, unshown)."""
    prefix = tuple(section)
    return "\n".join(
        _problem(
            {**error, "loc": (*prefix, *error["loc"])},
            path,
            _fields_at(model, [str(part) for part in error["loc"][:-1]]) if model else [],
        )
        for error in exc.errors(include_url=False)
    )


def describe_section(
    exc: ValidationError,
    section: Sequence[str],
    path: Path | None,
    model: type[BaseModel] | None = None,
) -> str:
    """`_describe` for a section the settings keep as it was written, which its own `model`
    validates (`("sim",)`, `("strategies", name, "params")`; given, an unknown key is told its
    closest valid name); `path`: the settings' file, if they were read from one."""
    return _describe(exc, _file_of(path), section, model)


def _fields_at(model: type[BaseModel], path: Sequence[str]) -> list[str]:
    """The keys valid at `path` under `model` (["risk"] -> RiskConfig's fields), or none where
    the path leads to no model (a table of anything, a list)."""
    inner = _model_in(_annotation_at(model, path))
    return list(inner.model_fields) if inner is not None else []


def setting_origin(loc: Sequence[str], path: Path | None) -> str:
    """Where the setting at `loc` was set, for an error: "from BOT_...", or "in <file>" and
    the BOT_ variables that set something inside it (a missing setting has none)."""
    variable = _variable_of(loc)
    if variable:
        return f"from {variable}"
    setters = _variables_under(loc)
    return f"in {_file_of(path)}" + (f" and {', '.join(setters)}" if setters else "")


def _file_of(path: Path | None) -> Path:
    return path or Path(os.environ.get(CONFIG_VARIABLE) or DEFAULT_CONFIG_PATH)


def _problem(error: ErrorDetails, path: Path, valid_keys: Sequence[str] = ()) -> str:
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc)
    if error["type"] == "extra_forbidden" and _SECRET_WORDS.search(loc[-1]):
        return f"{key}: {_secret_in_config(loc, path)}"
    where = setting_origin(loc, path)
    if error["type"] == "extra_forbidden":
        close = get_close_matches(loc[-1], valid_keys, n=1)
        if close:
            return f"unknown key '{key}' {where}: did you mean '{close[0]}'? rename or remove it"
        return f"unknown key '{key}' {where}: remove it or check its spelling"
    if error["type"] == "missing":  # perhaps of a section a misspelt variable created
        setters = _variables_under(loc[:-1])  # the section's, not the missing key's
        also = f"; {'.'.join(loc[:-1])} is also set by {', '.join(setters)}" if setters else ""
        return f"{key} is required {where}{also}: {error['msg']}"
    return f"invalid {key} = {_shown(error['input'])} {where}: {error_said(error)}"


def _variable_of(loc: Sequence[str]) -> str | None:
    """The BOT_ variable that set the value at `loc`, or a section holding it, if one did."""
    for end in range(len(loc), 0, -1):
        name = _variable_name(loc[:end])
        if name in os.environ:
            return name
    return None


def _variables_under(loc: Sequence[str]) -> list[str]:
    """The BOT_ variables that set something inside the section at `loc`."""
    prefix = _variable_name(loc) + _ENV_DELIMITER
    return sorted(name for name in os.environ if name.startswith(prefix))


def _variable_name(loc: Sequence[str]) -> str:
    """["risk", "max_leverage"] -> BOT_RISK__MAX_LEVERAGE"""
    return _ENV_PREFIX + _ENV_DELIMITER.join(loc).upper()


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _unknown_variables(environ: Mapping[str, str], data: Mapping[str, Any]) -> list[str]:
    """A line for each BOT_ variable that is neither a setting nor one the bot reads, with the
    closest valid name: a misspelt override must stop the start, not be ignored."""
    patterns = _other_variables()
    unknown = [
        name
        for name in sorted(environ)
        if name.startswith(_ENV_PREFIX)
        and not _names_a_setting(BotSettings, _setting_path(name))
        and not any(fnmatchcase(name, pattern) for pattern in patterns)
    ]
    if not unknown:
        return []
    fields = BotSettings.model_fields
    named = [*_configured(fields["keys"], data.get("keys"))]
    named += _configured(fields["sources"], data.get("sources"))
    valid = [*_setting_variables(BotSettings, data, _ENV_PREFIX), *_other_variables(named)]
    return [_unknown_variable(name, valid) for name in unknown]


def _unknown_variable(name: str, valid: Sequence[str]) -> str:
    close = get_close_matches(name, valid, n=1)
    hint = (
        f"did you mean {close[0]}?"
        if close
        else f"settings are {_ENV_PREFIX}<SECTION>{_ENV_DELIMITER}<FIELD>, e.g. BOT_HTTP__PORT"
    )
    return (
        f"environment variable {name} is neither a setting nor a variable this bot reads "
        f"({hint}): rename or unset it (see README, Configuration)"
    )


def _setting_path(variable: str) -> list[str]:
    """BOT_RISK__MAX_LEVERAGE -> ["risk", "max_leverage"], the inverse of `_variable_name`"""
    return variable.removeprefix(_ENV_PREFIX).lower().split(_ENV_DELIMITER)


def _names_a_setting(annotation: Any, path: Sequence[str]) -> bool:
    """Whether `path` leads to a setting (or a section) under `annotation`; in a table of
    sections (strategies, keys, sources) any name leads on, and `dict[str, Any]` (`sim`,
    `params`) takes anything: the simulator and the strategy validate those."""
    return _annotation_at(annotation, path) is not None


def _annotation_at(annotation: Any, path: Sequence[str]) -> Any:
    """What `path` leads to under `annotation`: a field's annotation, a table's entry's, `Any`
    once a table takes anything (`dict[str, Any]`); None where it leads nowhere."""
    for part in path:
        if annotation is Any:
            return Any
        model = _model_in(annotation)
        if model is not None:
            field = model.model_fields.get(part)
            if field is None:
                return None
            annotation = field.annotation
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
        else:
            return None
    return annotation


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model `annotation` is, or has as a union member (`FieldMapping | None`)."""
    for member in _members(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member
    return None


def _setting_variables(model: type[BaseModel], data: object, prefix: str) -> Iterator[str]:
    """Every setting's variable under `model`, for a table of sections under each name it
    has in `data` (the file) or by default: the candidates for a misspelt name."""
    values = data if isinstance(data, Mapping) else {}
    for name, field in model.model_fields.items():
        variable = prefix + name.upper()
        yield variable
        section = _model_in(field.annotation)
        entry = _table_entry(field.annotation)
        if section is not None:
            yield from _setting_variables(section, values.get(name), variable + _ENV_DELIMITER)
        elif entry is not None:
            for entry_name, entry_data in _configured(field, values.get(name)).items():
                yield from _setting_variables(
                    entry,
                    entry_data,
                    f"{variable}{_ENV_DELIMITER}{entry_name.upper()}{_ENV_DELIMITER}",
                )


def _table_entry(annotation: Any) -> type[BaseModel] | None:
    """The section model of a table of sections (`dict[Name, StrategyConfig]`), if it is one."""
    return _model_in(get_args(annotation)[-1]) if get_origin(annotation) is dict else None


def _configured(field: FieldInfo, table: object) -> Mapping[str, Any]:
    """A table of sections (strategies, keys, sources) by name: the file's, else the default."""
    if isinstance(table, Mapping):
        return table
    default = field.get_default(call_default_factory=True)
    return default if isinstance(default, Mapping) else {}


def _other_variables(names: Iterable[str] = ("*",)) -> list[str]:
    """The non-setting variables, `*` standing for each of `names` (a key's or a source's);
    by default `*` stays, for `fnmatchcase`."""
    # Imported here: bot.notify imports this module for its section.
    from bot.notify import NOTIFY_URLS_NAME

    patterns = (*_OTHER_VARIABLES, NOTIFY_URLS_NAME)
    return sorted({pattern.replace("*", name.upper()) for pattern in patterns for name in names})


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


def subscribed_sources(settings: BotSettings) -> set[str]:
    """The sources some strategy takes signals from."""
    return {source for strategy in settings.strategies.values() for source in strategy.sources}


def unheard_sources(settings: BotSettings) -> list[str]:
    """The enabled webhook sources no strategy takes signals from, each as a line to warn
    with: what they receive is answered 202, then declined (no strategy subscribes)."""
    subscribed = subscribed_sources(settings)
    return [
        f"sources.{name} is enabled, but no strategy's sources name it: every signal it "
        f"receives is declined; add '{name}' to the sources of the strategies it is for, or "
        f"set sources.{name}.enabled = false"
        for name, receiving in sorted(settings.sources.items())
        if receiving.enabled and name not in subscribed
    ]


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
        if not strategy.sources:
            problems.append(
                f"strategies.{name}.sources is empty: it would never get a signal; name the "
                'sources it takes signals from, e.g. ["voiceofchain"]'
            )
    for name, key in settings.keys.items():
        if key.environment is not settings.environment and name not in users:
            problems.append(
                f"keys.{name} is bound to {key.environment}, but the bot runs in "
                f"{settings.environment}: a configuration holds one environment's keys only; "
                "move it to that environment's configuration file"
            )
    if settings.venue.sim_url and settings.environment is not Environment.SIM:
        problems.append(
            f"venue.sim_url = {settings.venue.sim_url!r} "
            f"{setting_origin(['venue', 'sim_url'], path)}, but the bot runs in "
            f"{settings.environment}, whose keys go to Bybit's {settings.environment} venue, "
            "never to a simulator: unset venue.sim_url, or run in sim"
        )
    mqtt = settings.mqtt
    subscribed = subscribed_sources(settings)
    if mqtt.enabled and mqtt.source not in subscribed:
        problems.append(
            f"mqtt.source is '{mqtt.source}', which no strategy's sources name: every MQTT "
            f"signal would be declined; subscribe a strategy to it or set mqtt.source to one of "
            f"{sorted(subscribed)}"
        )
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
    if problems:  # each on a line of its own, as `_describe` says them: one problem, one line
        raise ConfigError("\n".join(f"invalid configuration in {path}: {p}" for p in problems))
