"""The image's install steps, reproduced without Docker: a fresh virtual environment filled from
docker/requirements.txt exactly as the Dockerfile does it (hashes required, wheels only, no
dependency resolution), the bot's wheel built from the build context .dockerignore lets
through and installed without dependencies; then `bot run` from that environment, laid out as
compose runs it: the configuration compose mounts, every secret as a file in a /run/secrets
style folder, the state in its own folder, the image's and the service's environment, and
mosquitto with compose's configuration. /livez and /healthz must answer, a signed webhook must
be accepted, and nothing may be written outside the state folder and /tmp (the image's root
filesystem is read-only).

Packages come from the registries `make setup` installs from, through pip as configured on the
machine. What differs from the container, and why: Bybit's testnet cannot be reached from here,
so the configuration's environment is switched to `sim` by two BOT_ variables; the HTTP server
binds 127.0.0.1 (not 0.0.0.0) and the broker is on loopback; the wheel is built with build
isolation because this machine's Python has an older setuptools than the base image's.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from bot.config import load_settings
from signals.voiceofchain import sign
from tests.conftest import free_port
from tests.docker.deploy import (
    ROOT,
    build_context,
    compose_config_source,
    dockerfile_stages,
    load_compose,
    mosquitto_with_compose_config,
    secret_names,
    service_env,
)

pytestmark = pytest.mark.slow

_PIP_TIMEOUT_S = 900
_START_TIMEOUT_S = 90


def _run(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False
    )
    assert result.returncode == 0, (
        f"{shlex.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    )
    return result


def _dockerfile_pip_installs() -> list[list[str]]:
    """The arguments of each `/opt/bot/bin/pip install` in the build stage, in order."""
    build = dockerfile_stages()[0]
    installs = []
    for run in build.all("RUN"):
        for found in re.findall(r"/opt/bot/bin/pip install ([^&]+)", run.args):
            installs.append(shlex.split(found))
    return installs


def _snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    files = {}
    for folder in folders:
        for path in folder.rglob("*"):
            info = path.lstat()
            files[str(path)] = (info.st_size, info.st_mtime_ns)
    return files


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_image_install_steps_then_bot_run_answers_livez_and_healthz(tmp_path: Path) -> None:
    # Arrange: the image's build stage, step by step.
    venv = tmp_path / "opt-bot"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    requirements, project = _dockerfile_pip_installs()
    assert "--require-hashes" in requirements and "--no-deps" in project
    _run([str(python), "-m", "pip", "install", "--quiet", *requirements], cwd=ROOT)
    context = tmp_path / "context"
    build_context(context)
    dist = tmp_path / "dist"
    wheel = ["wheel", "--quiet", "--no-deps", "--wheel-dir", str(dist), "."]
    _run([str(python), "-m", "pip", *wheel], cwd=context)
    wheels = [str(wheel) for wheel in dist.glob("*.whl")]
    assert len(wheels) == 1, wheels
    project_args = [arg for arg in project if not arg.endswith(".whl")]
    _run([str(python), "-m", "pip", "install", "--quiet", *project_args, *wheels])
    _run([str(python), "-m", "pip", "check"])  # every dependency came from the requirements
    assert "bybit-signal-bot" in _run([str(venv / "bin" / "bot"), "--version"]).stdout

    # Arrange: the container's filesystem as compose lays it out.
    compose = load_compose()
    image_env = dockerfile_stages()[-1].env()
    root = tmp_path / "container"
    config = root / image_env["BOT_CONFIG"].lstrip("/")
    config.parent.mkdir(parents=True)
    shutil.copyfile(compose_config_source(compose), config)
    config.chmod(0o444)
    run_secrets = root / "run" / "secrets"
    run_secrets.mkdir(parents=True)
    values = {name: secrets.token_hex(24) for name in secret_names(compose)}
    for name, value in values.items():
        (run_secrets / name).write_text(value + "\n")
        (run_secrets / name).chmod(0o400)
    state = root / image_env["BOT_STATE_DIR"].lstrip("/")
    state.mkdir(parents=True, mode=0o700)
    tmp = root / "tmp"
    tmp.mkdir()
    service = service_env(compose)
    settings = load_settings(config)
    port = free_port()

    with mosquitto_with_compose_config(
        tmp_path / "mosquitto", {service["BOT_MQTT__USERNAME"]: values["bot_mqtt_password"]}
    ) as broker:
        env = {
            **image_env,
            **service,
            "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(root / "nonexistent"),
            "LANG": "C.UTF-8",
            "TMPDIR": str(tmp),
            "BOT_CONFIG": str(config),
            "BOT_STATE_DIR": str(state),
            "BOT_SECRETS_DIR": str(run_secrets),  # Docker's /run/secrets, the bot's default
            "BOT_HTTP__HOST": "127.0.0.1",
            "BOT_HTTP__PORT": str(port),
            "BOT_MQTT__HOST": "127.0.0.1",
            "BOT_MQTT__PORT": str(broker.port),
            # Bybit's testnet is out of reach here: the same configuration, against the
            # simulator.
            "BOT_ENVIRONMENT": "sim",
            **{f"BOT_KEYS__{key.upper()}__ENVIRONMENT": "sim" for key in settings.keys},
        }
        command = [
            *json.loads(dockerfile_stages()[-1].all("ENTRYPOINT")[-1].args),
            *compose["services"]["bot"]["command"],
        ]
        command[0] = str(venv / "bin" / command[0])
        before = _snapshot(venv, config.parent, run_secrets)
        log = tmp_path / "bot.log"
        with log.open("wb") as out:
            bot = subprocess.Popen(command, cwd=state, env=env, stdout=out, stderr=out)
        try:
            # Act
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + _START_TIMEOUT_S
            live: tuple[int, dict[str, Any]] | None = None
            while live is None or live[0] != 200:
                assert bot.poll() is None, f"bot run exited:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"no /livez:\n{log.read_text()}"
                try:
                    live = _get(base + "/livez")
                except OSError:
                    time.sleep(0.1)
            health = _get(base + "/healthz")
            while health[0] != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
                health = _get(base + "/healthz")
            signal_json = {"id": "docker-1", "symbol": "BTCUSDT", "side": "buy"}
            body = json.dumps({**signal_json, "ts": int(time.time() * 1000)}).encode()
            request = urllib.request.Request(  # noqa: S310 - loopback
                base + "/webhooks/voiceofchain",
                data=body,
                headers={
                    "Content-Type": "application/json",
                    "X-Signature": sign(
                        values["bot_webhook_secret_voiceofchain"], body, int(time.time())
                    ),
                },
            )
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
                accepted = response.status
        finally:
            bot.send_signal(signal.SIGTERM)
            try:
                code = bot.wait(timeout=30)
            except subprocess.TimeoutExpired:
                bot.kill()
                code = bot.wait(timeout=10)
    output = log.read_text(errors="replace")

    # Assert
    assert live == (200, {"live": True})
    assert health[0] == 200, f"/healthz: {health}\n{output}"
    assert health[1]["ready"] is True
    assert set(health[1]["checks"].values()) == {"ok"}
    # Logged in to mosquitto with the secret file's password (anonymous access is off).
    assert health[1]["signal_sources"]["mqtt:voiceofchain"]["state"] == "connected"
    assert accepted == 202
    assert code == 0, output
    assert (state / "journal.sqlite3").is_file()
    assert _snapshot(venv, config.parent, run_secrets) == before, (
        "bot run wrote outside its state folder and /tmp"
    )
    assert not (root / "nonexistent").exists()
    for value in values.values():
        assert value not in output, "a secret was logged"
    assert "webhooks on http://127.0.0.1" in output
    assert os.stat(config).st_mode & 0o777 == 0o444
