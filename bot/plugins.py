"""Loading strategies by name from configuration."""

from __future__ import annotations

import importlib
import inspect

from pydantic import ValidationError

from bot.config import ConfigError, StrategyConfig
from strategies.base import INTERFACE_VERSION, Strategy

__all__ = ["load_strategy"]


def load_strategy(name: str, config: StrategyConfig) -> Strategy:
    """Instantiate `config.plugin` as strategy `name`, validating its params.

    `plugin` is `package.module:Class`, or a module name under `strategies/` (e.g. `follow`)
    that defines exactly one Strategy subclass.
    """
    module_name, _, class_name = config.plugin.partition(":")
    if "." not in module_name:
        module_name = f"strategies.{module_name}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"strategies.{name}.plugin: cannot import {module_name}: {exc}") from None
    cls = _strategy_class(name, module, class_name)
    if cls.INTERFACE_VERSION != INTERFACE_VERSION:
        raise ConfigError(
            f"strategies.{name}: {cls.__name__} is written for strategy interface "
            f"{cls.INTERFACE_VERSION}, this bot provides {INTERFACE_VERSION}"
        )
    try:
        params = cls.Params(**config.params)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise ConfigError(f"strategies.{name}.params: {problems}") from None
    return cls(name, params)


def _strategy_class(name: str, module: object, class_name: str) -> type[Strategy]:
    if class_name:
        cls = getattr(module, class_name, None)
        if not (inspect.isclass(cls) and issubclass(cls, Strategy)):
            raise ConfigError(f"strategies.{name}.plugin: {class_name} is not a Strategy class")
        return cls
    found = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, Strategy)
        and not inspect.isabstract(obj)
        and obj.__module__ == getattr(module, "__name__", None)
    ]
    if len(found) != 1:
        raise ConfigError(
            f"strategies.{name}.plugin: expected one Strategy in the module, found "
            f"{len(found)}; name it as module:Class"
        )
    return found[0]
