"""Loading strategies by `module:Class`, by name, by entry point; every problem a ConfigError
naming the strategy, the field and the configuration file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from bot.config import ConfigError, StrategyConfig
from bot.plugins import ENTRY_POINT_GROUP, load_strategy
from strategies.follow import Follow
from strategies.ladder import TakeProfitLadder
from strategies.selective import Selective

GOOD = """
from decimal import Decimal

from strategies.base import Strategy, StrategyParams


class {name}(Strategy):
    class Params(StrategyParams):
        size: Decimal = Decimal("0.001")

    def on_signal(self, signal, context):
        return self.decline("test plug-in")
"""


class Plugins:
    """Plug-in modules written for one test, under names no other test uses."""

    def __init__(self, tmp_path: Path) -> None:
        self.folder = tmp_path / "config"
        self.folder.mkdir()
        self.config = self.folder / "bot.toml"  # errors name it; its folder is searched
        self.config.write_text("# the strategies are given to load_strategy directly\n")
        self.names: list[str] = []

    def module(self, source: str, folder: Path | None = None, name: str | None = None) -> str:
        """Write `source` as a new module (next to the configuration file); its name."""
        name = name or f"plugin_{uuid.uuid4().hex[:10]}"
        (folder or self.folder).joinpath(f"{name}.py").write_text(textwrap.dedent(source))
        self.names.append(name)
        return name

    def load(self, plugin: str, name: str = "mine", **params: object) -> object:
        config = StrategyConfig(plugin=plugin, key="k", params=params)
        return load_strategy(name, config, self.config)

    def refused(self, plugin: str, **params: object) -> str:
        """The message of the ConfigError loading `plugin` as strategy `mine` raises."""
        with pytest.raises(ConfigError) as refused:
            self.load(plugin, "mine", **params)
        message = str(refused.value)
        assert str(self.config) in message, message
        return message


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Plugins]:
    # The loader adds the configuration's folder to sys.path: undone after each test.
    monkeypatch.setattr(sys, "path", list(sys.path))
    made = Plugins(tmp_path)
    yield made
    for name in made.names:
        sys.modules.pop(name, None)


# where a plug-in comes from -----------------------------------------------------------------


def test_module_colon_class_from_a_module_next_to_the_configuration_file(
    plugins: Plugins,
) -> None:
    module = plugins.module(GOOD.format(name="Mine") + GOOD.format(name="Other"))

    strategy = plugins.load(f"{module}:Mine", size="0.5")

    assert type(strategy).__name__ == "Mine"
    assert type(strategy).__module__ == module
    assert strategy.name == "mine"  # type: ignore[attr-defined]
    assert strategy.params.size == Decimal("0.5")  # type: ignore[attr-defined]


@pytest.mark.parametrize("plugin", ["follow:Follow", "strategies.follow:Follow"])
def test_a_bundled_strategy_named_as_module_colon_class_loads(
    plugins: Plugins, plugin: str
) -> None:
    # "follow" loads the bundled example; "follow:Follow" said "no module follow".
    assert type(plugins.load(plugin)) is Follow


@pytest.mark.parametrize(
    ("plugin", "cls"),
    [("follow", Follow), ("ladder", TakeProfitLadder), ("selective", Selective)],
)
def test_a_name_under_strategies_loads_the_example(
    plugins: Plugins, plugin: str, cls: type
) -> None:
    strategy = plugins.load(plugin, name="mine", risk_fraction="0.02")

    assert type(strategy) is cls
    assert strategy.params.risk_fraction == Decimal("0.02")  # type: ignore[attr-defined]


def test_a_bare_module_name_next_to_the_configuration_loads_its_one_strategy(
    plugins: Plugins,
) -> None:
    module = plugins.module(GOOD.format(name="Only"))

    assert type(plugins.load(module)).__name__ == "Only"


def test_an_imported_base_does_not_count_as_a_second_strategy(plugins: Plugins) -> None:
    module = plugins.module(
        """
        from strategies.follow import Follow

        class Cautious(Follow):
            pass
        """
    )

    assert type(plugins.load(module)).__name__ == "Cautious"


def installed(site: Path, dist: str, entry_points: str) -> None:
    """The metadata pip would install for distribution `dist` in `site`: a real dist-info."""
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry_points}\n")


@pytest.fixture
def site(tmp_path: Path, plugins: Plugins) -> Path:
    """A folder on sys.path holding installed distributions (sys.path is restored after)."""
    folder = tmp_path / "site-packages"
    folder.mkdir()
    sys.path.insert(0, str(folder))
    return folder


def test_an_entry_point_naming_a_class(plugins: Plugins, site: Path) -> None:
    module = plugins.module(GOOD.format(name="Packaged"), folder=site)
    point = f"packaged_{uuid.uuid4().hex[:8]}"
    installed(site, f"dist_{point}", f"{point} = {module}:Packaged")

    strategy = plugins.load(point, size="0.25")

    assert type(strategy).__name__ == "Packaged"
    assert strategy.params.size == Decimal("0.25")  # type: ignore[attr-defined]


def test_an_entry_point_naming_a_module_with_one_strategy(plugins: Plugins, site: Path) -> None:
    module = plugins.module(GOOD.format(name="InModule"), folder=site)
    point = f"packaged_{uuid.uuid4().hex[:8]}"
    installed(site, f"dist_{point}", f"{point} = {module}")

    assert type(plugins.load(point)).__name__ == "InModule"


def test_an_entry_point_that_cannot_be_loaded_says_so(plugins: Plugins, site: Path) -> None:
    module = plugins.module("raise RuntimeError('missing licence file')\n", folder=site)
    point = f"packaged_{uuid.uuid4().hex[:8]}"
    installed(site, f"dist_{point}", f"{point} = {module}:Anything")

    message = plugins.refused(point)

    assert message.startswith(f"strategies.mine.plugin in {plugins.config}: entry point {point}")
    assert "cannot be loaded: RuntimeError: missing licence file" in message


# parameters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plugin", "params", "expected"),
    [
        (
            "follow",
            {"risk_fraction": "0.5"},
            "invalid strategies.mine.params.risk_fraction = '0.5' in {config}: Input should be "
            "less than or equal to 0.1",
        ),
        (
            "follow",
            {"risk_fracton": "0.01"},
            "unknown key 'strategies.mine.params.risk_fracton' in {config}: did you mean "
            "'risk_fraction'? rename or remove it",
        ),
        ("ladder", {"weights": [1, 0]}, "invalid strategies.mine.params.weights = [1, 0] in "),
        ("ladder", {"weights": [1, "lots"]}, "invalid strategies.mine.params.weights.1 = 'lots'"),
        ("selective", {"sides": ["up"]}, "invalid strategies.mine.params.sides.0 = 'up' in "),
    ],
)
def test_wrong_params_name_the_strategy_the_field_and_the_file(
    plugins: Plugins, plugin: str, params: dict[str, object], expected: str
) -> None:
    message = plugins.refused(plugin, **params)

    assert message.startswith(expected.format(config=plugins.config)), message
    assert f" in {plugins.config}: " in message


def test_a_rule_across_params_names_the_params(plugins: Plugins) -> None:
    module = plugins.module(
        """
        from pydantic import model_validator

        from strategies.base import Strategy, StrategyParams


        class Banded(Strategy):
            class Params(StrategyParams):
                low: int = 1
                high: int = 2

                @model_validator(mode="after")
                def _ordered(self):
                    if self.low >= self.high:
                        raise ValueError("low must be below high")
                    return self

            def on_signal(self, signal, context):
                return []
        """
    )

    message = plugins.refused(f"{module}:Banded", low=3)

    assert message.startswith("invalid strategies.mine.params = {'low': 3} in ")
    assert message.endswith(": low must be below high")


# what cannot be loaded ----------------------------------------------------------------------


def test_an_unknown_module(plugins: Plugins) -> None:
    assert "no module strategies.no_such_x or no_such_x" in plugins.refused("no_such_x")
    assert "no module no_such_x or strategies.no_such_x;" in plugins.refused("no_such_x:Thing")


def test_a_module_named_in_any_language_loads(plugins: Plugins) -> None:
    module = plugins.module(GOOD.format(name="Mine"), name=f"stratégie_{uuid.uuid4().hex[:6]}")

    assert type(plugins.load(f"{module}:Mine")).__name__ == "Mine"


@pytest.mark.parametrize("plugin", ["follow\n", "fol low", "", "follow\x00"])
def test_a_plugin_name_with_space_or_control_characters_is_refused(plugin: str) -> None:
    """Shown in its error, a newline would have split the one line in two."""
    with pytest.raises(ValueError, match="without spaces or control characters"):
        StrategyConfig(plugin=plugin, key="k")


def test_an_unknown_class(plugins: Plugins) -> None:
    module = plugins.module(GOOD.format(name="Mine"))

    assert f"module {module} has no Nope" in plugins.refused(f"{module}:Nope")


@pytest.mark.parametrize("named", [False, True], ids=["by-name", "module:Class"])
def test_a_module_whose_own_import_fails_reports_its_error_not_not_found(
    plugins: Plugins, named: bool
) -> None:
    module = plugins.module("import talib_not_installed_x\n" + GOOD.format(name="Mine"))

    message = plugins.refused(f"{module}:Mine" if named else module)

    assert f"importing {module} failed" in message
    assert "No module named 'talib_not_installed_x'" in message
    assert "no module" not in message


def test_a_missing_dependency_whose_name_starts_the_modules_name_is_its_own_error(
    plugins: Plugins,
) -> None:
    # `talib_signals` importing a missing `talib` must not read as "no module talib_signals".
    dependency = f"dep_{uuid.uuid4().hex[:10]}"
    module = plugins.module(f"import {dependency}\n", name=f"{dependency}_signals")

    message = plugins.refused(module)

    assert f"importing {module} failed" in message
    assert f"No module named '{dependency}'" in message


def test_a_module_raising_at_import(plugins: Plugins) -> None:
    module = plugins.module("raise RuntimeError('needs an API key')\n")

    message = plugins.refused(module)

    assert f"importing strategies.{module} failed" not in message
    assert f"importing {module} failed: RuntimeError: needs an API key" in message


UNSAYABLE = """
from strategies.base import Strategy


class Unprintable(Exception):
    def __str__(self):
        raise ValueError("no text")


class Mine(Strategy):
    def __init__(self, name, params):
        raise {error}

    def on_signal(self, signal, context):
        return None
"""


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (
            "RuntimeError('model file missing\\nsee the log')",
            "RuntimeError: model file missing see",
        ),
        ("Unprintable()", "Unprintable: (its message could not be made)"),
    ],
    ids=["two-lines", "unprintable"],
)
def test_a_constructor_error_is_said_in_one_line_whatever_its_message(
    plugins: Plugins, error: str, said: str
) -> None:
    # Reproduced: a message of two lines made a two-line error, and an exception whose
    # __str__ raised ended `bot run` in a traceback, where a failing on_start is one line.
    module = plugins.module(UNSAYABLE.format(error=error))

    message = plugins.refused(f"{module}:Mine")

    assert "\n" not in message
    assert f"Mine('mine', params) raised {said}" in message


def test_two_strategies_in_a_module_need_the_class_named(plugins: Plugins) -> None:
    module = plugins.module(GOOD.format(name="One") + GOOD.format(name="Two"))

    message = plugins.refused(module)

    assert f"expected one Strategy in {module}, found 2; name it as module:Class" in message
    assert type(plugins.load(f"{module}:Two")).__name__ == "Two"


def test_an_abstract_strategy(plugins: Plugins) -> None:
    module = plugins.module(
        """
        from strategies.base import Strategy

        class Unfinished(Strategy):
            pass
        """
    )

    assert f"{module}:Unfinished does not implement on_signal" in plugins.refused(
        f"{module}:Unfinished"
    )
    assert f"expected one Strategy in {module}, found 0" in plugins.refused(module)


def test_something_that_is_not_a_strategy(plugins: Plugins) -> None:
    module = plugins.module("class Helper:\n    pass\n")

    assert "is not a Strategy class (subclass strategies.base.Strategy)" in plugins.refused(
        f"{module}:Helper"
    )


def test_a_strategy_written_for_another_interface_version(plugins: Plugins) -> None:
    module = plugins.module(GOOD.format(name="Old") + "\nOld.INTERFACE_VERSION = 1\n")

    message = plugins.refused(f"{module}:Old")

    assert message.startswith(f"strategies.mine.plugin in {plugins.config}: Old is written for")
    assert "strategy interface 1, this bot provides 2" in message


def test_a_strategy_whose_constructor_raises(plugins: Plugins) -> None:
    fussy = (
        "    def __init__(self, name, params):\n        raise RuntimeError('model file missing')\n"
    )
    module = plugins.module(GOOD.format(name="Fussy") + fussy)

    message = plugins.refused(f"{module}:Fussy")

    assert message.startswith(f"strategies.mine.plugin in {plugins.config}: Fussy")
    assert "RuntimeError: model file missing" in message


# through the real command line --------------------------------------------------------------


def test_bot_run_with_a_bad_param_exits_with_one_line_naming_strategy_field_and_file(
    sim_config: Callable[..., Path],
) -> None:
    config = sim_config(extra="max_leverage = 500\n")  # in [strategies.follow.params]

    result = subprocess.run(
        [sys.executable, "-m", "bot", "run", "--config", str(config)],
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "strategies.follow.params.max_leverage" in lines[0]
    assert str(config) in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("exit_call", ["sys.exit('bye')", "raise KeyboardInterrupt"])
def test_a_module_exiting_at_import_is_a_config_error_naming_it(
    plugins: Plugins, exit_call: str
) -> None:
    module = plugins.module(f"import sys\n{exit_call}\n")

    message = plugins.refused(module)

    assert f"strategies.mine.plugin in {plugins.config}: importing {module} failed" in message


def test_a_strategy_whose_constructor_exits_is_a_config_error_naming_it(plugins: Plugins) -> None:
    leaving = "    def __init__(self, name, params):\n        import sys; sys.exit(3)\n"
    module = plugins.module(GOOD.format(name="Leaving") + leaving)

    message = plugins.refused(f"{module}:Leaving")

    assert message.startswith(f"strategies.mine.plugin in {plugins.config}: Leaving")
    assert "SystemExit: 3" in message


def test_a_params_validator_raising_what_pydantic_does_not_wrap(plugins: Plugins) -> None:
    picky = """
        from pydantic import field_validator

        from strategies.base import Strategy, StrategyParams


        class Picky(Strategy):
            class Params(StrategyParams):
                size: int = 1

                @field_validator("size")
                @classmethod
                def _size(cls, size):
                    raise TypeError("size must come from the model file")

            def on_signal(self, signal, context):
                return self.decline("test plug-in")
        """
    module = plugins.module(picky)

    message = plugins.refused(f"{module}:Picky", size=2)

    assert message.startswith(f"strategies.mine.params in {plugins.config}: Picky.Params")
    assert "TypeError: size must come from the model file" in message


@pytest.mark.parametrize(
    ("attributes", "said"),
    [
        ("timer_interval_s = 0", "timer_interval_s must be a positive number"),
        ("timer_interval_s = float('nan')", "timer_interval_s must be a positive number"),
        ("timer_interval_s = '5'", "timer_interval_s must be a positive number"),
        ("timer_symbols = 'BTCUSDT'", "timer_symbols must be a tuple of symbols"),
    ],
)
def test_a_strategy_with_timer_attributes_that_cannot_tick(
    plugins: Plugins, attributes: str, said: str
) -> None:
    """Refused at start: an interval of 0 queued ticks without pause (hundreds of thousands
    a second, a drain that never ends), a string ticked each of its letters."""
    module = plugins.module(
        GOOD.format(name="Ticking")
        + f"\n    timer_symbols = ('BTCUSDT',)\n    timer_interval_s = 1.0\n    {attributes}\n"
    )

    message = plugins.refused(f"{module}:Ticking")

    assert message.startswith(f"strategies.mine.plugin in {plugins.config}: Ticking.{said}")


def test_timer_attributes_a_constructor_sets_are_checked_too(plugins: Plugins) -> None:
    """A plug-in may take its timer symbols from its params in `__init__`: the instance's
    attributes are the ones that tick, so they are the ones checked."""
    module = plugins.module(
        GOOD.format(name="FromParams")
        + "\n    timer_interval_s = 1.0"
        + "\n    def __init__(self, name, params):"
        + "\n        super().__init__(name, params)"
        + "\n        self.timer_symbols = 'BTCUSDT'\n"
    )

    message = plugins.refused(f"{module}:FromParams")

    assert "FromParams.timer_symbols must be a tuple of symbols" in message
