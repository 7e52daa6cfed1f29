"""Configuration: TOML plus BOT_ overrides; every mistake named with its key and file."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from bot.config import ConfigError, Environment, load_settings, unheard_sources
from bot.simulated import simulator_config

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bot.toml"
    path.write_text(text)
    return path


KEYED = """
[keys.alpha]
environment = "sim"
[strategies.follow]
plugin = "follow"
key = "alpha"
"""


def test_shipped_offline_config_loads() -> None:
    settings = load_settings(REPO / "config" / "bot.toml")

    assert settings.environment is Environment.SIM
    assert settings.strategies["follow"].key == "follow_sim"
    assert settings.http.port == 8080


def test_environment_variables_override_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BOT_HTTP__PORT", "9123")
    monkeypatch.setenv("BOT_RISK__MAX_ORDER_NOTIONAL_USDT", "250")

    settings = load_settings(write(tmp_path, "[http]\nport = 8000\n" + KEYED))

    assert settings.http.port == 9123
    assert str(settings.risk.max_order_notional_usdt) == "250"


def test_symbols_are_taken_in_upper_case_and_a_non_symbol_is_refused_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BOT_RISK__SYMBOLS", "btcusdt, EthUsdt")
    settings = load_settings(write(tmp_path, "[risk]\ndenied_symbols = ['solusdt']\n" + KEYED))
    monkeypatch.setenv("BOT_RISK__SYMBOLS", "btc-usdt")

    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, KEYED))

    assert settings.risk.symbols == ("BTCUSDT", "ETHUSDT")
    assert settings.risk.denied_symbols == ("SOLUSDT",)
    assert "invalid risk.symbols.0 = 'btc-usdt' from BOT_RISK__SYMBOLS: must be a Bybit symbol" in (
        str(caught.value)
    )


def test_unknown_key_is_named_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[risk]\nmax_notional = 5\n")

    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    assert "unknown key 'risk.max_notional'" in str(caught.value)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("enviroment = 'sim'\n", "unknown key 'enviroment' in {path}: did you mean 'environment'?"),
        (
            "[risk]\nmax_order_notional_usd = 5\n",
            "unknown key 'risk.max_order_notional_usd' in {path}: did you mean "
            "'max_order_notional_usdt'? rename or remove it",
        ),
        (
            KEYED + "[strategies.follow.risk]\nmax_position_notional = 5\n",
            "unknown key 'strategies.follow.risk.max_position_notional' in {path}: did you mean "
            "'max_position_notional_usdt'?",
        ),
        ("[sim]\nstarting_balance = 5\n", "did you mean 'starting_balance_usdt'?"),
    ],
)
def test_misspelt_key_is_told_the_closest_valid_one(tmp_path: Path, text: str, said: str) -> None:
    """As a misspelt BOT_ variable is: 'check its spelling' alone left the user to find
    max_order_notional_usdt in the comments of config/bot.toml."""
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as caught:
        simulator_config(load_settings(path))

    assert said.format(path=path) in str(caught.value)


def test_unknown_key_like_no_valid_one_gets_no_guess(tmp_path: Path) -> None:
    path = write(tmp_path, "[risk]\nzzz = 5\n")

    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    assert str(caught.value) == f"unknown key 'risk.zzz' in {path}: remove it or check its spelling"


def test_bad_value_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"http.port"):
        load_settings(write(tmp_path, "[http]\nport = 'eighty'\n"))


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ("max_total_sends = 2", "max_total_sends (2) must be at least max_send_attempts (6)"),
        ("backoff_max_s = 0.01", "backoff_max_s (0.01) must be at least backoff_base_s (0.1)"),
    ],
)
def test_execution_bounds_that_contradict_each_other_are_refused(
    tmp_path: Path, settings: str, said: str
) -> None:
    path = write(tmp_path, f"[execution]\n{settings}\n")

    with pytest.raises(ConfigError) as refused:
        load_settings(path)

    assert said in str(refused.value) and str(path) in str(refused.value)


@pytest.mark.parametrize(
    ("section", "where"),
    [
        ("[risk]", "risk"),
        (
            '[strategies.follow]\nplugin = "follow"\nkey = "k"\n[strategies.follow.risk]',
            "strategies.follow.risk",
        ),
    ],
)
def test_a_max_leverage_no_order_can_carry_is_refused_at_the_start(
    tmp_path: Path, section: str, where: str
) -> None:
    # Accepted, it would have failed every approved order as it was built, leaving each
    # signal unprocessed for ever.
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, f"{section}\nmax_leverage = 1e16\n"))

    assert f"invalid {where}.max_leverage = 1e+16" in str(caught.value)
    assert "less than or equal to 1E+15" in str(caught.value)


def test_an_empty_state_dir_is_refused_not_taken_as_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match=r"invalid state_dir = '' in .*: is empty"):
        load_settings(write(tmp_path, 'state_dir = ""\n'))
    monkeypatch.setenv("BOT_STATE_DIR", "")
    with pytest.raises(ConfigError, match=r"invalid state_dir = '' from BOT_STATE_DIR: is empty"):
        load_settings(write(tmp_path, ""))


def test_missing_file_and_bad_toml_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--config PATH or set BOT_CONFIG"):
        load_settings(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[http\n"))
    with pytest.raises(ConfigError, match="is a directory; pass the path of a TOML file"):
        load_settings(tmp_path)


def test_arrays_nested_too_deeply_are_an_error_not_a_recursion_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a few kilobytes, well under the 1 MiB a config file may have: tomllib recurses per level
    deep = write(tmp_path, "x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_settings(deep)
    monkeypatch.setenv("BOT_RISK__SYMBOLS", "[" * 20000 + "]" * 20000)
    with pytest.raises(ConfigError, match=r"^invalid risk\.symbols = .* from BOT_RISK__SYMBOLS"):
        load_settings(write(tmp_path, ""))


def test_a_config_path_that_never_ends_is_refused_not_read_forever(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # opening it would wait for a writer for ever
    huge = write(tmp_path, "# " + "x" * 1024 * 1024)

    with pytest.raises(ConfigError, match=r"^config file /dev/zero is not a regular file"):
        load_settings(Path("/dev/zero"))
    with pytest.raises(ConfigError, match=r"^config file .*fifo.toml is not a regular file"):
        load_settings(fifo)
    with pytest.raises(ConfigError, match=r"^config file .* is larger than 1 MiB"):
        load_settings(huge)


def test_config_path_comes_from_bot_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_CONFIG", str(write(tmp_path, "[http]\nport = 8111\n")))

    assert load_settings().http.port == 8111


def test_strategy_cannot_use_a_key_of_another_environment(tmp_path: Path) -> None:
    text = KEYED.replace('environment = "sim"', 'environment = "mainnet"')

    with pytest.raises(ConfigError, match="bound to mainnet, but the bot runs in sim"):
        load_settings(write(tmp_path, text))


def test_sharing_a_key_must_be_explicit(tmp_path: Path) -> None:
    text = KEYED + '[strategies.other]\nplugin = "follow"\nkey = "alpha"\n'

    with pytest.raises(ConfigError, match=r"sharing a key must be explicit: set keys.alpha.shared"):
        load_settings(write(tmp_path, text))
    shared = text.replace('environment = "sim"', 'environment = "sim"\nshared = true')
    assert load_settings(write(tmp_path, shared)).keys["alpha"].shared


def test_an_enabled_source_no_strategy_takes_signals_from_is_warned_of(tmp_path: Path) -> None:
    # Seen following config/bot.toml's comment: [sources.tradingview] enabled, its alerts
    # answered 202 and every one declined ("no strategy subscribes"), with nothing said at
    # the start.
    sources = '[sources.voiceofchain]\n[sources.tradingview]\nauth = "body_token"\n'
    assert unheard_sources(load_settings(write(tmp_path, KEYED + sources))) == [
        "sources.tradingview is enabled, but no strategy's sources name it: every signal it "
        "receives is declined; add 'tradingview' to the sources of the strategies it is for, "
        "or set sources.tradingview.enabled = false"
    ]

    heard = KEYED + 'sources = ["voiceofchain", "tradingview"]\n' + sources
    assert unheard_sources(load_settings(write(tmp_path, heard))) == []
    off = KEYED + sources + "enabled = false\n"
    assert unheard_sources(load_settings(write(tmp_path, off))) == []


@pytest.mark.parametrize(
    ("section", "variable"),
    [
        ("[keys.alpha]\napi_secret", "BOT_KEY_ALPHA_API_SECRET"),
        ("[keys.alpha]\napi_key", "BOT_KEY_ALPHA_API_KEY"),
        ("[sources.voiceofchain]\nsecret", "BOT_ secret variable"),
    ],
)
def test_a_secret_in_the_config_file_is_refused_without_echoing_it(
    tmp_path: Path, section: str, variable: str
) -> None:
    text = KEYED.replace("[keys.alpha]\n", "") + f'{section} = "s3cr3t-value-1234"\n'
    text += 'environment = "sim"\n' if section.startswith("[keys") else ""

    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text))

    message = str(caught.value)
    assert "secrets never go in the configuration file" in message
    assert variable in message
    assert "s3cr3t" not in message


def test_the_mainnet_opt_in_cannot_come_from_an_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BOT_ALLOW_MAINNET", "true")

    with pytest.raises(ConfigError, match="must be written in the configuration file"):
        load_settings(write(tmp_path, KEYED))


def test_strategy_naming_a_missing_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="names 'ghost', which is not in \\[keys\\]"):
        load_settings(write(tmp_path, '[strategies.f]\nplugin = "follow"\nkey = "ghost"\n'))


def test_a_misspelt_variable_is_refused_with_the_closest_valid_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BOT_RISK_MAX_ORDER_NOTIONAL_USDT", "250")
    monkeypatch.setenv("BOT_KEY_ALPHA_API_SECRT", "s3cr3t-value-1234")

    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, KEYED))

    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert "BOT_KEY_ALPHA_API_SECRT" in lines[0]
    assert "did you mean BOT_KEY_ALPHA_API_SECRET?" in lines[0]
    assert "did you mean BOT_RISK__MAX_ORDER_NOTIONAL_USDT?" in lines[1]
    assert "s3cr3t" not in str(caught.value)


@pytest.mark.parametrize(
    "variable",
    [
        "BOT_CONFIG",
        "BOT_SECRETS_DIR",
        "BOT_STATE_DIR",
        "BOT_ADMIN_SECRET",
        "BOT_MQTT_PASSWORD",
        "BOT_MQTT_SIGNING_SECRET",
        "BOT_NOTIFY_URLS",
        "BOT_WEBHOOK_SECRET_TRADINGVIEW",
        "BOT_WEBHOOK_TOKEN_TRADINGVIEW",
        "BOT_KEY_ANY_OTHER_API_KEY",
        "BOT_KEY_ALPHA_API_SECRET",
        "BOT_STRATEGIES__FOLLOW__PARAMS__RISK_FRACTION",
        "BOT_SIM__STARTING_BALANCE_USDT",
        "BOT_SOURCES__VOICEOFCHAIN__MAPPING__FIELDS__SYMBOL",
    ],
)
def test_secrets_controls_and_open_tables_are_not_unknown_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, str(tmp_path))

    assert load_settings(write(tmp_path, KEYED)).keys["alpha"]


@pytest.mark.parametrize(
    ("value", "symbols"),
    [
        ("BTCUSDT", ("BTCUSDT",)),
        ("BTCUSDT, ETHUSDT", ("BTCUSDT", "ETHUSDT")),
        ('["BTCUSDT", "SOLUSDT"]', ("BTCUSDT", "SOLUSDT")),
    ],
)
def test_a_list_variable_is_comma_separated_or_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, symbols: tuple[str, ...]
) -> None:
    monkeypatch.setenv("BOT_RISK__SYMBOLS", value)
    monkeypatch.setenv("BOT_STRATEGIES__FOLLOW__RISK__SYMBOLS", value)  # optional: `| None`

    settings = load_settings(write(tmp_path, KEYED))

    assert settings.risk.symbols == symbols
    assert settings.strategies["follow"].risk.symbols == symbols


@pytest.mark.parametrize(("value", "cpus"), [("", []), ("  ", []), ("1", [1]), ("0,1", [0, 1])])
def test_an_empty_list_variable_is_an_empty_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, cpus: list[int]
) -> None:
    monkeypatch.setenv("BOT_CPUS", value)

    assert load_settings(write(tmp_path, KEYED)).cpus == cpus


def test_an_empty_list_variable_in_a_section_is_an_empty_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BOT_RISK__SYMBOLS", "")
    monkeypatch.setenv("BOT_RISK__DENIED_SYMBOLS", "  ")
    monkeypatch.setenv("BOT_STRATEGIES__FOLLOW__RISK__SYMBOLS", "")

    settings = load_settings(write(tmp_path, KEYED))

    assert (settings.risk.symbols, settings.risk.denied_symbols) == ((), ())
    assert settings.strategies["follow"].risk.symbols == ()
    monkeypatch.setenv("BOT_HTTP__PORT", "")  # empty is no value for a setting not a list
    with pytest.raises(ConfigError, match=r"invalid http\.port = '' from BOT_HTTP__PORT"):
        load_settings(write(tmp_path, KEYED))


def test_a_bad_value_is_one_line_naming_setting_value_origin_and_what_is_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BOT_JOURNAL_SYNCHRONOUS", "OFF")
    path = write(tmp_path, "[http]\nport = 70000\n")

    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    assert str(caught.value).splitlines() == [
        "invalid journal_synchronous = 'OFF' from BOT_JOURNAL_SYNCHRONOUS: "
        "Input should be 'NORMAL' or 'FULL'",
        f"invalid http.port = 70000 in {path}: Input should be less than or equal to 65535",
    ]


def test_a_relative_state_dir_in_the_file_is_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    folder = tmp_path / "conf"
    folder.mkdir()

    written = load_settings(write(folder, 'state_dir = "../state"\n'))
    default = load_settings(write(folder, ""))
    monkeypatch.setenv("BOT_STATE_DIR", "typed")  # typed in a shell: where the command runs
    typed = load_settings(write(folder, 'state_dir = "../state"\n'))

    assert written.journal_path == tmp_path / "state" / "journal.sqlite3"
    assert default.state_dir == folder / "var"
    assert typed.state_dir == Path("typed")


def test_a_simulator_price_variable_moves_one_symbol_and_keeps_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Variable names are not case-sensitive: the symbol arrives as `btcusdt`.
    monkeypatch.setenv("BOT_SIM__PRICES__BTCUSDT", "90000")

    config = simulator_config(load_settings(write(tmp_path, KEYED)))

    assert config.prices["BTCUSDT"] == 90000
    assert config.prices["ETHUSDT"] == 3500  # the built-in price stays


def test_the_simulators_order_create_limit_can_come_from_a_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A variable's value is text: `order_create_per_s` (the earlier name of the create entry
    # of rate_limits_per_s) takes "5" as the file's 5.
    monkeypatch.setenv("BOT_SIM__ORDER_CREATE_PER_S", "5")

    config = simulator_config(load_settings(write(tmp_path, KEYED)))

    assert config.rate_limits_per_s["/v5/order/create"] == 5
    assert config.rate_limits_per_s["/v5/order/amend"] == 10  # the rest of the table stays


def test_a_simulator_price_for_an_unlisted_symbol_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BOT_SIM__PRICES__XRPUSDT", "1")

    with pytest.raises(ConfigError) as caught:
        simulator_config(load_settings(write(tmp_path, KEYED)))

    assert "BOT_SIM__PRICES__XRPUSDT" in str(caught.value)
    assert "['XRPUSDT'] have no entry in instruments" in str(caught.value)


def test_one_symbol_in_two_cases_is_refused(tmp_path: Path) -> None:
    text = KEYED + "[sim.prices]\nBTCUSDT = 1\nbtcusdt = 2\n"

    with pytest.raises(ConfigError, match="BTCUSDT is given twice, in two cases: keep one"):
        simulator_config(load_settings(write(tmp_path, text)))


def test_a_variable_not_in_upper_case_is_refused_not_taken_past_the_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reproduced: settings matched `bot_allow_mainnet` (names are not case-sensitive) while
    # the check that refuses the mainnet opt-in from a variable looked for BOT_ALLOW_MAINNET.
    monkeypatch.setenv("bot_allow_mainnet", "true")

    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, KEYED))

    assert "bot_allow_mainnet not in upper case" in str(caught.value)
    assert "(BOT_ALLOW_MAINNET); rename or unset them" in str(caught.value)


@pytest.mark.parametrize(
    ("variables", "problem"),
    [
        ({"BOT_STRATEGIES__FOLLOW__SOURCES": ""}, "strategies.follow.sources is empty"),
        (
            {"BOT_MQTT__ENABLED": "true", "BOT_MQTT__SOURCE": "nosuch"},
            "mqtt.source is 'nosuch', which no strategy's sources name",
        ),
        (
            {"BOT_KEYS__EXTRA__ENVIRONMENT": "mainnet"},
            "keys.extra is bound to mainnet, but the bot runs in sim",
        ),
    ],
)
def test_a_setting_that_would_silently_drop_signals_or_mix_environments_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], problem: str
) -> None:
    # Reproduced: each started without a word; every signal was then declined at INFO, or
    # `bot keys check` ended in a traceback on the other environment's key.
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_settings(write(tmp_path, KEYED))


def test_a_byte_order_mark_an_editor_wrote_is_no_error(tmp_path: Path) -> None:
    path = tmp_path / "bot.toml"
    path.write_text("\ufeff[http]\nport = 8123\n" + KEYED, encoding="utf-8")

    assert load_settings(path).http.port == 8123


def test_a_simulator_table_given_as_json_in_one_variable_is_read_as_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reproduced: "Input should be a valid dictionary" for the dictionary given.
    monkeypatch.setenv("BOT_SIM__PRICES", '{"BTCUSDT": 90000}')
    monkeypatch.setenv("BOT_SIM__FAULTS", '{"http_5xx": 0.5}')

    config = simulator_config(load_settings(write(tmp_path, KEYED)))

    assert (config.prices["BTCUSDT"], config.prices["ETHUSDT"]) == (90000, 3500)
    assert config.faults.http_5xx == 0.5
