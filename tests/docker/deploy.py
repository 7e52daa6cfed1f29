"""Reading the deployment files as Docker would: the Dockerfile's instructions, the compose
files, the build context that .dockerignore lets through, and mosquitto run with the compose
file's configuration. No Docker engine is needed (these machines have none)."""

from __future__ import annotations

import getpass
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # no stubs in the test extra

from tests.conftest import free_port

__all__ = [
    "COMPOSE",
    "COMPOSE_MAINNET",
    "DOCKERFILE",
    "DOCKER_DIR",
    "ROOT",
    "Broker",
    "Instruction",
    "Stage",
    "build_context",
    "compose_config_source",
    "dockerfile_stages",
    "ignored",
    "load_compose",
    "mosquitto_with_compose_config",
    "secret_names",
    "service_env",
]

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "docker"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
COMPOSE = DOCKER_DIR / "compose.yaml"
COMPOSE_MAINNET = DOCKER_DIR / "compose.mainnet.yaml"
MOSQUITTO_CONF = DOCKER_DIR / "mosquitto" / "mosquitto.conf"


# --- Dockerfile -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, ENV, ...
    args: str  # the rest of the logical line, continuations joined


@dataclass
class Stage:
    base: str  # FROM's image (as written: may be ${ARG})
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """Every ENV of the stage, as `KEY=VALUE` pairs (the only form the Dockerfile uses)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in shlex.split(instruction.args):
                name, sep, value = word.partition("=")
                assert sep, f"ENV without '=': {instruction.args!r}"
                values[name] = value
        return values


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """The logical lines of a Dockerfile: comments dropped, `\\` continuations joined."""
    instructions = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append(Instruction(keyword.upper(), " ".join(args.split())))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def dockerfile_args(path: Path = DOCKERFILE) -> dict[str, str]:
    """The global ARGs (before the first FROM) and their defaults."""
    args: dict[str, str] = {}
    for instruction in dockerfile_instructions(path):
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG":
            name, _, default = instruction.args.partition("=")
            args[name] = default
    return args


def dockerfile_stages(path: Path = DOCKERFILE) -> list[Stage]:
    stages: list[Stage] = []
    for instruction in dockerfile_instructions(path):
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append(instruction)
    return stages


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON (exec) form of ENTRYPOINT / CMD / HEALTHCHECK CMD, as a list."""
    import json

    text = instruction.args
    start = text.index("[")
    value = json.loads(text[start:])
    assert isinstance(value, list)
    return [str(part) for part in value]


# --- .dockerignore ----------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore glob (Go's filepath.Match plus `**`) as a regex on a clean
    slash-separated path relative to the context."""
    out = ""
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i)
            out += "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]"
            i = end
        else:
            out += re.escape(char)
        i += 1
    return re.compile(out + r"\Z")


def _dockerignore_rules(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
        rules.append((negated, _pattern_regex(pattern)))
    return rules


def ignored(relative: str, dockerignore: Path = ROOT / ".dockerignore") -> bool:
    """Whether `relative` (a path in the context) is kept out of the build context: the last
    rule matching the path or one of its parent folders decides, as Docker's does."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, regex in _dockerignore_rules(dockerignore):
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def build_context(destination: Path, root: Path = ROOT) -> list[str]:
    """Copy what the build context holds (the files .dockerignore lets through) to
    `destination`; returns their relative paths."""
    copied = []
    for dirpath, dirnames, filenames in os.walk(root):
        folder = Path(dirpath)
        relative_folder = folder.relative_to(root).as_posix()
        # Never descend into big folders the context leaves out entirely.
        dirnames[:] = [
            d
            for d in dirnames
            if not (d in {".git", ".venv", "venv", "var"} and relative_folder == ".")
        ]
        for name in filenames:
            relative = (folder / name).relative_to(root).as_posix()
            if ignored(relative):
                continue
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / name, target)
            copied.append(relative)
    return sorted(copied)


# --- compose ----------------------------------------------------------------------------------


def load_compose(path: Path = COMPOSE) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(text: str, environ: dict[str, str] | None = None) -> str:
    """Compose's `${NAME:-default}` with `environ` (empty: every default)."""
    values = environ or {}
    return _VARIABLE.sub(lambda m: values.get(m.group(1)) or (m.group(2) or ""), text)


def compose_config_source(compose: dict[str, Any], service: str = "bot") -> Path:
    """The host file compose mounts read-only as the bot's configuration (defaults applied)."""
    for volume in compose["services"][service]["volumes"]:
        if volume.get("target") == "/etc/bot/bot.toml":
            return (DOCKER_DIR / interpolate(volume["source"])).resolve()
    raise AssertionError("no configuration mounted at /etc/bot/bot.toml")


def secret_names(compose: dict[str, Any], service: str = "bot") -> dict[str, str]:
    """The service's secrets: file name in /run/secrets -> the compose secret's name."""
    names = {}
    for entry in compose["services"][service].get("secrets", []):
        source = entry if isinstance(entry, str) else entry["source"]
        target = source if isinstance(entry, str) else entry.get("target", source)
        names[target] = source
    return names


def service_env(compose: dict[str, Any], service: str = "bot") -> dict[str, str]:
    """The service's environment as compose sets it, every `${NAME:-default}` at its default."""
    environment = compose["services"][service].get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {str(k): interpolate(str(v)) for k, v in environment.items()}


# --- mosquitto as compose runs it -------------------------------------------------------------


def find_binary(name: str, fallback: str) -> str:
    found = shutil.which(name) or (fallback if Path(fallback).is_file() else None)
    if found is None:
        pytest.fail(f"{name} is not installed: `make setup` installs mosquitto", pytrace=False)
    return found


@dataclass
class Broker:
    port: int
    log: Path


def hashed_password_file(path: Path, users: dict[str, str]) -> None:
    """The documented way (docs/deploy-vps.md): `user:password` lines, then
    `mosquitto_passwd -U` hashes them in place."""
    path.write_text("".join(f"{user}:{password}\n" for user, password in users.items()))
    path.chmod(0o600)
    tool = find_binary("mosquitto_passwd", "/usr/bin/mosquitto_passwd")
    subprocess.run([tool, "-U", str(path)], check=True, capture_output=True, timeout=30)


@contextmanager
def mosquitto_with_compose_config(folder: Path, users: dict[str, str]) -> Iterator[Broker]:
    """docker/mosquitto/mosquitto.conf run by the real broker, with only what must differ
    outside a container changed: the listener (a free loopback port), the password file and
    persistence paths (from /run/secrets and the volume to `folder`), and the user to run as."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    passwd = folder / "mosquitto_passwd"
    hashed_password_file(passwd, users)
    data = folder / "data"
    data.mkdir()
    lines = []
    for line in MOSQUITTO_CONF.read_text(encoding="utf-8").splitlines():
        key = line.split(" ", 1)[0]
        if key == "listener":
            line = f"listener {port} 127.0.0.1"
        elif key == "password_file":
            line = f"password_file {passwd}"
        elif key == "persistence_location":
            line = f"persistence_location {data}/"
        elif key == "log_dest":
            line = "log_dest stderr"
        lines.append(line)
    lines.append(f"user {getpass.getuser()}")  # as root it would switch to `mosquitto`
    config = folder / "mosquitto.conf"
    config.write_text("\n".join(lines) + "\n")
    log = folder / "mosquitto.log"
    binary = find_binary("mosquitto", "/usr/sbin/mosquitto")
    with log.open("ab") as out:
        process = subprocess.Popen(
            [binary, "-c", str(config)], stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"mosquitto with docker/mosquitto/mosquitto.conf did not start:\n"
                        f"{log.read_text(errors='replace')}",
                        pytrace=False,
                    )
                time.sleep(0.02)
        yield Broker(port=port, log=log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
