"""docker/compose.yaml (and the mainnet overlay, mosquitto's and Caddy's configuration) read as
Docker Compose reads them; mosquitto's configuration also run by the real broker."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from bot.config import BotSettings, load_settings
from bot.secrets import api_key_names, webhook_secret_name, webhook_token_name
from signals.mqtt import PASSWORD_SECRET_NAME
from tests.docker.deploy import (
    COMPOSE,
    COMPOSE_MAINNET,
    DOCKER_DIR,
    MOSQUITTO_CONF,
    ROOT,
    compose_config_source,
    dockerfile_stages,
    interpolate,
    load_compose,
    mosquitto_with_compose_config,
    secret_names,
    service_env,
)
from tests.docker.test_image import DIGEST_PINNED, SECRET_NAME


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose(COMPOSE)


@pytest.fixture(scope="module")
def overlay() -> dict[str, Any]:
    return load_compose(COMPOSE_MAINNET)


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def required_secrets(settings: BotSettings) -> set[str]:
    """The secret files a configuration needs at start-up (names in /run/secrets)."""
    names: set[str] = set()
    for key in settings.keys:
        names.update(name.lower() for name in api_key_names(key))
    for source, config in settings.sources.items():
        if config.enabled:
            names.add(webhook_secret_name(source).lower())
            if config.auth not in (None, "signature"):
                names.add(webhook_token_name(source).lower())
    if settings.mqtt.enabled and settings.mqtt.username:
        names.add(PASSWORD_SECRET_NAME.lower())
    return names


def settings_as_compose_runs_them(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch, config: Path
) -> BotSettings:
    """The configuration with the image's and the service's environment applied."""
    env = {**dockerfile_stages()[-1].env(), **service_env(compose)}
    for name in [n for n in env if n.startswith("BOT_") and n != "BOT_CONFIG"]:
        monkeypatch.setenv(name, env[name])
    return load_settings(config)


def test_every_service_is_hardened(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        limits = service["deploy"]["resources"]["limits"]
        logging = service["logging"]

        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name
        assert set(service.get("cap_add", [])) <= {"NET_BIND_SERVICE"}, name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service.get("restart") in {"unless-stopped", "always"}, name
        assert {"memory", "cpus", "pids"} <= set(limits), name
        assert logging["options"]["max-size"] and logging["options"]["max-file"], name
        assert "privileged" not in service and "network_mode" not in service, name
        assert str(service.get("user", "0")).split(":")[0] not in {"0", "root"}, name
        assert "env_file" not in service, f"{name}: an env file is how secrets leak"


def test_images_are_pinned_by_digest(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        if "build" in service:
            continue  # the bot: its base is pinned in the Dockerfile
        assert DIGEST_PINNED.match(service["image"]), f"{name}: {service['image']}"


def test_bot_is_built_from_the_dockerfile_and_runs_bot_run(compose: dict[str, Any]) -> None:
    bot = services(compose)["bot"]
    runtime = dockerfile_stages()[-1]
    entrypoint = runtime.all("ENTRYPOINT")[-1].args

    assert (DOCKER_DIR / bot["build"]["context"] / bot["build"]["dockerfile"]).is_file()
    assert (DOCKER_DIR / bot["build"]["context"]).resolve() == ROOT
    assert '"bot"' in entrypoint and bot["command"][0] == "run"
    assert bot["init"] is True  # SIGTERM and SIGHUP reach the bot through a real PID 1
    assert "/tmp" in " ".join(bot["tmpfs"])  # noqa: S108 - the container's tmpfs


def test_the_http_port_is_bound_to_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        public = name == "caddy"
        for port in service.get("ports", []):
            published = interpolate(str(port))
            if public:
                assert service["profiles"] == ["tls"], "a public port only behind the TLS proxy"
                assert published.split(":")[0] in {"80", "443"}, published
            else:
                assert published.startswith("127.0.0.1:"), f"{name} publishes {published}"
    assert services(compose)["bot"]["ports"], "the bot's HTTP port is not published at all"


def test_config_is_mounted_read_only_where_the_image_reads_it(compose: dict[str, Any]) -> None:
    env = dockerfile_stages()[-1].env()
    mounts = {volume["target"]: volume for volume in services(compose)["bot"]["volumes"]}

    config = mounts[env["BOT_CONFIG"]]

    assert config["type"] == "bind" and config["read_only"] is True
    assert compose_config_source(compose) == ROOT / "config" / "testnet.toml"


def test_the_journal_is_on_a_named_volume(compose: dict[str, Any]) -> None:
    env = dockerfile_stages()[-1].env()
    mounts = {volume["target"]: volume for volume in services(compose)["bot"]["volumes"]}

    state = mounts[env["BOT_STATE_DIR"]]

    assert state["type"] == "volume"
    assert state["source"] in compose["volumes"]


def test_every_secret_the_config_needs_is_a_docker_secret_file(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_as_compose_runs_them(compose, monkeypatch, compose_config_source(compose))
    mounted = secret_names(compose)

    missing = required_secrets(settings) - set(mounted)

    assert settings.mqtt.enabled, "compose runs mosquitto for the bot"
    assert not missing, f"not mounted in /run/secrets: {sorted(missing)}"
    for target, source in mounted.items():
        assert target == target.lower(), "the bot looks for lower-case file names"
        assert compose["secrets"][source]["file"] == f"./secrets/{source}"


def test_no_secret_is_an_environment_variable(compose: dict[str, Any]) -> None:
    for name in services(compose):
        environment = service_env(compose, name)
        leaking = [variable for variable in environment if SECRET_NAME.search(variable)]
        assert not leaking, f"{name}: {leaking}"


def test_the_secrets_folder_and_local_files_stay_out_of_git() -> None:
    paths = ["docker/secrets/bot_admin_secret", "docker/.env", "docker/mainnet.toml"]

    result = subprocess.run(
        ["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True, check=False
    )

    assert sorted(result.stdout.split()) == sorted(paths)


def _mosquitto_conf() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in MOSQUITTO_CONF.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            settings.setdefault(key, []).append(value.strip())
    return settings


def test_mosquitto_requires_a_login_and_persists_on_a_volume(compose: dict[str, Any]) -> None:
    conf = _mosquitto_conf()
    broker = services(compose)["mosquitto"]
    mounts = {volume["target"]: volume for volume in broker["volumes"]}

    assert conf["allow_anonymous"] == ["false"]
    (password_file,) = conf["password_file"]
    assert password_file == "/run/secrets/" + "mosquitto_passwd"
    assert "mosquitto_passwd" in secret_names(compose, "mosquitto")
    assert conf["persistence"] == ["true"]
    # saved at each change: what it acknowledged to a publisher survives its crash
    assert (conf["autosave_on_changes"], conf["autosave_interval"]) == (["true"], ["1"])
    (location,) = conf["persistence_location"]
    data = mounts[location.rstrip("/")]
    assert data["type"] == "volume" and data["source"] in compose["volumes"]
    assert mounts["/mosquitto/config/mosquitto.conf"]["read_only"] is True
    assert "ports" not in broker, "the broker is reachable from the compose network only"


def _connect(port: int, username: str | None, password: str | None) -> ReasonCode:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)
    answers: list[ReasonCode] = []
    client.on_connect = lambda _c, _u, _f, code, _p: answers.append(code)
    client.connect("127.0.0.1", port, keepalive=5)
    deadline = time.monotonic() + 5
    while not answers and time.monotonic() < deadline:
        client.loop(timeout=0.05)
    client.disconnect()
    assert answers, "no CONNACK from the broker"
    return answers[0]


def test_mosquitto_with_this_config_refuses_anonymous_and_wrong_logins(tmp_path: Path) -> None:
    with mosquitto_with_compose_config(tmp_path / "broker", {"bot": "right-password"}) as broker:
        anonymous = _connect(broker.port, None, None)
        wrong = _connect(broker.port, "bot", "wrong-password")
        right = _connect(broker.port, "bot", "right-password")

    assert anonymous.is_failure
    assert wrong.is_failure
    assert not right.is_failure


def test_caddy_forwards_only_the_webhook_over_tls(compose: dict[str, Any]) -> None:
    caddy = services(compose)["caddy"]
    caddyfile = (DOCKER_DIR / "Caddyfile").read_text(encoding="utf-8")
    mounts = {volume["target"]: volume for volume in caddy["volumes"]}

    assert mounts["/etc/caddy/Caddyfile"]["read_only"] is True
    assert re.search(r"@webhook path /webhooks/\*", caddyfile)
    assert re.search(r"handle @webhook \{[^}]*\{[^}]*\}[^}]*reverse_proxy bot:8080", caddyfile)
    assert caddyfile.count("reverse_proxy") == 1
    assert re.search(r"handle \{\s*respond 404", caddyfile)
    assert caddy["depends_on"]["bot"]["condition"] == "service_healthy"


def test_mainnet_overlay_adds_the_second_opt_in_its_key_and_its_own_journal(
    compose: dict[str, Any], overlay: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    bot = overlay["services"]["bot"]
    mounts = {volume["target"]: volume for volume in bot["volumes"]}
    base_mounts = {volume["target"]: volume for volume in compose["services"]["bot"]["volumes"]}
    settings = settings_as_compose_runs_them(compose, monkeypatch, ROOT / "config/mainnet.toml")
    # Compose appends a service's secrets from every file.
    mounted = set(secret_names(compose)) | set(secret_names(overlay))
    state_dir = dockerfile_stages()[-1].env()["BOT_STATE_DIR"]

    assert "--mainnet" in bot["command"]
    assert "testnet" not in interpolate(mounts["/etc/bot/bot.toml"]["source"])
    assert mounts["/etc/bot/bot.toml"]["read_only"] is True
    assert mounts[state_dir]["source"] != base_mounts[state_dir]["source"]
    assert mounts[state_dir]["source"] in overlay["volumes"]
    assert required_secrets(settings) <= mounted
    for source in secret_names(overlay).values():
        assert overlay["secrets"][source]["file"] == f"./secrets/{source}"
