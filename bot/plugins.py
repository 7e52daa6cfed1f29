"""Loading strategies named in the configuration.

`plugin` says where a strategy's class lives, in one of three forms:

- `module:Class`: any importable module (a package installed in the environment, or a module
  next to the configuration file or in the working directory), and the class in it;
- `name`: an installed package's entry point of the group `bot.strategies` with that name
  (pointing at a class, or at a module holding one), else a module `strategies/name.py`
  shipped with the bot, else an importable module `name`; the module must define exactly one
  Strategy;
- `package.module`: an importable module with exactly one Strategy.

Every problem is a `ConfigError` naming the strategy, the field and the configuration file,
raised before anything starts.
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType
from typing import Final

from pydantic import ValidationError

from bot.config import ConfigError, StrategyConfig, describe_section, setting_origin
from bot.runner import plugin_error_said
from strategies.base import INTERFACE_VERSION, Strategy

__all__ = ["ENTRY_POINT_GROUP", "load_strategy"]

ENTRY_POINT_GROUP: Final = "bot.strategies"
#: What a plug-in's code may raise while it is loaded: anything, its `sys.exit()` included,
#: which must not end the bot without a word about which strategy did it.
_PLUGIN_ERRORS: Final = (Exception, SystemExit, KeyboardInterrupt)


def load_strategy(name: str, config: StrategyConfig, source: Path | None = None) -> Strategy:
    """Instantiate `config.plugin` as strategy `name`, its params validated; `source` is the
    configuration file (named in errors, and its folder searched for plug-in modules)."""
    where = " " + setting_origin(("strategies", name, "plugin"), source)
    if source is not None:
        _search(source.resolve().parent)
    _search(Path.cwd())
    cls = _strategy_class(name, config.plugin, where)
    if cls.INTERFACE_VERSION != INTERFACE_VERSION:
        raise ConfigError(
            f"strategies.{name}.plugin{where}: {cls.__name__} is written for strategy interface "
            f"{cls.INTERFACE_VERSION}, this bot provides {INTERFACE_VERSION}; see "
            "docs/strategies.md"
        )
    try:
        params = cls.Params(**config.params)
    except ValidationError as exc:
        raise ConfigError(
            describe_section(exc, ("strategies", name, "params"), source, cls.Params)
        ) from None
    except _PLUGIN_ERRORS as exc:  # a validator of its own raised what pydantic does not wrap
        raise ConfigError(
            f"strategies.{name}.params{where}: {cls.__name__}.Params raised "
            f"{plugin_error_said(exc)}"
        ) from None
    try:
        strategy = cls(name, params)
        # The instance's: its constructor may set them (from its params, say).
        timer = _timer_problem(strategy.timer_interval_s, strategy.timer_symbols)
    except _PLUGIN_ERRORS as exc:  # the plug-in's own constructor: still named, before any start
        raise ConfigError(
            f"strategies.{name}.plugin{where}: {cls.__name__}({name!r}, params) raised "
            f"{plugin_error_said(exc)}"
        ) from None
    if timer is not None:
        raise ConfigError(f"strategies.{name}.plugin{where}: {cls.__name__}.{timer}")
    return strategy


def _timer_problem(interval: object, symbols: object) -> str | None:
    """What is wrong with a strategy's timer attributes, or None: an interval of 0 (or NaN)
    would tick without pause, and a string of symbols would tick each of its letters."""
    if interval is not None and (
        isinstance(interval, bool)
        or not isinstance(interval, int | float)
        or not math.isfinite(interval)
        or interval <= 0
    ):
        return f"timer_interval_s must be a positive number of seconds or None, not {interval!r}"
    if not isinstance(symbols, tuple | list) or not all(
        isinstance(symbol, str) and symbol for symbol in symbols
    ):
        return f"timer_symbols must be a tuple of symbols, such as ('BTCUSDT',), not {symbols!r}"
    return None


def _search(folder: Path) -> None:
    """Let plug-in modules in `folder` be imported (appended: never shadowing the bot's)."""
    if str(folder) not in sys.path:
        sys.path.append(str(folder))


def _strategy_class(name: str, plugin: str, where: str) -> type[Strategy]:
    field = f"strategies.{name}.plugin{where}"
    module_name, colon, class_name = plugin.partition(":")
    bundled = [] if "." in module_name else [f"strategies.{module_name}"]
    if colon:  # the module as named first (a user's own `follow`), then a bundled one
        module = _import(field, [module_name, *bundled], named=True)
        return _named_class(field, module, class_name)
    entry = _entry_point(plugin)
    if entry is not None:
        try:
            loaded = entry.load()
        except _PLUGIN_ERRORS as exc:  # the package's own import error
            raise ConfigError(
                f"{field}: entry point {plugin} ({entry.value}) cannot be loaded: "
                f"{plugin_error_said(exc)}"
            ) from None
        if inspect.isclass(loaded):
            return _checked(field, loaded, entry.value)
        if isinstance(loaded, ModuleType):
            return _only_class(field, loaded)
        raise ConfigError(f"{field}: entry point {plugin} is neither a class nor a module")
    return _only_class(field, _import(field, [*bundled, module_name]))


def _entry_point(name: str) -> EntryPoint | None:
    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    return next(iter(found), None)


def _import(field: str, candidates: list[str], *, named: bool = False) -> ModuleType:
    """The first of `candidates` that exists; an error inside a module that exists is its
    own (not "not found"). `named`: the plug-in was given as module:Class."""
    for module_name in candidates:
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # This candidate (or a package it is in) does not exist: try the next. A missing
            # module that merely starts the same (`talib` for `talib_signals`) is its own error.
            if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
                continue
            raise ConfigError(f"{field}: importing {module_name} failed: {exc}") from None
        except _PLUGIN_ERRORS as exc:  # the plug-in's own bug at import time (or its exit)
            raise ConfigError(
                f"{field}: importing {module_name} failed: {plugin_error_said(exc)}"
            ) from None
    tried = " or ".join(candidates)
    raise ConfigError(
        f"{field}: no module {tried}; put it next to the configuration file or install it"
        + ("" if named else ", or name it as module:Class")
    )


def _named_class(field: str, module: ModuleType, class_name: str) -> type[Strategy]:
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError(f"{field}: module {module.__name__} has no {class_name}")
    return _checked(field, cls, f"{module.__name__}:{class_name}")


def _checked(field: str, cls: object, what: str) -> type[Strategy]:
    if not (inspect.isclass(cls) and issubclass(cls, Strategy)):
        raise ConfigError(
            f"{field}: {what} is not a Strategy class (subclass strategies.base.Strategy)"
        )
    if inspect.isabstract(cls):
        raise ConfigError(f"{field}: {what} does not implement on_signal")
    return cls


def _only_class(field: str, module: ModuleType) -> type[Strategy]:
    found = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, Strategy)
        and not inspect.isabstract(obj)
        and obj.__module__ == module.__name__
    ]
    if len(found) != 1:
        raise ConfigError(
            f"{field}: expected one Strategy in {module.__name__}, found {len(found)}; name it "
            "as module:Class"
        )
    return found[0]
