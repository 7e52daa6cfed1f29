"""Secrets: environment, then files, then (sim only) generated; never shown."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bot.logs import REDACTED, logger, scrub
from bot.secrets import MissingSecretError, SecretResolver, UnusableSecretError


def test_environment_wins_over_file(tmp_path: Path) -> None:
    (tmp_path / "bot_webhook_secret_voiceofchain").write_text("from-file-secret\n")
    resolver = SecretResolver(
        tmp_path, environ={"BOT_WEBHOOK_SECRET_VOICEOFCHAIN": "from-env-1-long-enough"}
    )

    assert (
        resolver.get("BOT_WEBHOOK_SECRET_VOICEOFCHAIN").get_secret_value()
        == "from-env-1-long-enough"
    )


def test_file_in_lower_case_is_read_and_stripped(tmp_path: Path) -> None:
    (tmp_path / "bot_key_main_api_key").write_text("key-from-file\n")
    (tmp_path / "bot_key_main_api_secret").write_text("secret-from-file\n")

    credentials = SecretResolver(tmp_path, environ={}).credentials("main")

    assert credentials.api_key.get_secret_value() == "key-from-file"
    assert "secret-from-file" not in repr(credentials)


def test_missing_secret_names_variable_and_file(tmp_path: Path) -> None:
    resolver = SecretResolver(tmp_path, environ={})

    with pytest.raises(MissingSecretError) as caught:
        resolver.get("BOT_KEY_MAIN_API_SECRET")

    assert "BOT_KEY_MAIN_API_SECRET" in str(caught.value)
    assert str(tmp_path / "bot_key_main_api_secret") in str(caught.value)


def test_a_secret_empty_in_the_environment_is_taken_as_not_set_and_said_so(
    tmp_path: Path,
) -> None:
    """`BOT_ADMIN_SECRET=` (a compose file's `${VAR}` of an unset one) turned the kill
    switch's routes off, and `bot halt` said only that the secret was not set (probe)."""
    resolver = SecretResolver(tmp_path, environ={"BOT_ADMIN_SECRET": ""})

    with pytest.raises(MissingSecretError, match=r"^secret BOT_ADMIN_SECRET is not set \(it is in"):
        resolver.get("BOT_ADMIN_SECRET")
    assert resolver.empty_in_environment("BOT_ADMIN_SECRET")
    assert not SecretResolver(tmp_path, environ={}).empty_in_environment("BOT_ADMIN_SECRET")


def test_a_secret_file_that_is_a_pipe_a_device_or_huge_is_refused_not_read(
    tmp_path: Path,
) -> None:
    """A FIFO would block the start for ever and /dev/zero fill the memory: each is one line."""
    os.mkfifo(tmp_path / "bot_key_pipe_api_key")
    (tmp_path / "bot_key_zero_api_key").symlink_to("/dev/zero")
    (tmp_path / "bot_key_huge_api_key").write_text("x" * (64 * 1024 + 1))
    resolver = SecretResolver(tmp_path, environ={})

    for key, problem in [
        ("pipe", "is not a regular file"),
        ("zero", "is not a regular file"),
        ("huge", "is larger than 64 KiB"),
    ]:
        with pytest.raises(MissingSecretError, match=f"^secret file .*_{key}_api_key {problem}"):
            resolver.get(f"BOT_KEY_{key.upper()}_API_KEY")


def test_sim_generates_once_with_mode_0600(tmp_path: Path) -> None:
    generated = tmp_path / "state" / "secrets"
    resolver = SecretResolver(tmp_path / "none", generated_dir=generated, environ={})

    first = resolver.get("BOT_WEBHOOK_SECRET_VOICEOFCHAIN").get_secret_value()
    second = resolver.get("BOT_WEBHOOK_SECRET_VOICEOFCHAIN").get_secret_value()

    path = generated / "bot_webhook_secret_voiceofchain"
    assert first == second
    assert len(first) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_processes_racing_to_generate_a_secret_all_get_the_one_that_won(tmp_path: Path) -> None:
    generated = tmp_path / "secrets"
    values: list[str] = []

    def generate() -> None:
        resolver = SecretResolver(tmp_path / "none", generated_dir=generated, environ={})
        values.append(resolver.get("BOT_ADMIN_SECRET").get_secret_value())

    racers = [threading.Thread(target=generate) for _ in range(8)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(10)

    assert len(values) == 8 and len(set(values)) == 1
    assert [path.name for path in generated.iterdir()] == ["bot_admin_secret"]  # no spare left


def test_a_generated_secret_that_could_not_be_written_whole_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Created first and written after, a kill (or a full disk) in between left an empty file,
    which every later start refused ("is empty: write the secret into it, or delete it")."""
    generated = tmp_path / "secrets"
    resolver = SecretResolver(tmp_path / "none", generated_dir=generated, environ={})

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(os, "fsync", disk_full)
        with pytest.raises(UnusableSecretError, match="No space left on device"):
            resolver.get("BOT_ADMIN_SECRET")
    assert list(generated.iterdir()) == []

    assert len(resolver.get("BOT_ADMIN_SECRET").get_secret_value()) >= 32  # the next start


def test_spares_of_processes_killed_while_generating_are_removed(tmp_path: Path) -> None:
    """A kill between writing the spare and unlinking it left `.name.pid.hex` behind, holding
    a secret, forever; a live process's spare is its own and stays."""
    generated = tmp_path / "secrets"
    generated.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (generated / f".bot_admin_secret.{dead}.0badc0de").write_text("left\n")
    mine = generated / f".bot_admin_secret.{os.getpid()}.5ca1ab1e"
    mine.write_text("in use\n")
    other = generated / f".bot_webhook_secret_x.{dead}.0badc0de"
    other.write_text("another name's\n")

    resolver = SecretResolver(tmp_path / "none", generated_dir=generated, environ={})
    resolver.get("BOT_ADMIN_SECRET")

    assert sorted(path.name for path in generated.iterdir()) == sorted(
        ["bot_admin_secret", mine.name, other.name]
    )


def test_a_secret_is_generated_on_a_file_system_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(source: object, target: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    generated = tmp_path / "secrets"
    resolver = SecretResolver(tmp_path / "none", generated_dir=generated, environ={})

    value = resolver.get("BOT_ADMIN_SECRET").get_secret_value()

    assert (generated / "bot_admin_secret").read_text().strip() == value
    assert [path.name for path in generated.iterdir()] == ["bot_admin_secret"]


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"BOT_ADMIN_SECRET": " "}, "BOT_ADMIN_SECRET is blank"),
        ({"BOT_ADMIN_SECRET": " \n"}, "BOT_ADMIN_SECRET is blank"),
        ({"BOT_ADMIN_SECRET": "\udcff-not-text"}, "BOT_ADMIN_SECRET is not UTF-8 text"),
    ],
)
def test_a_secret_set_but_unusable_is_an_error_even_where_it_is_optional(
    tmp_path: Path, environ: dict[str, str], problem: str
) -> None:
    """A blank admin secret was a key anyone could sign with: ' ' halted the bot."""
    resolver = SecretResolver(tmp_path, environ=environ)

    for lookup in (resolver.get, resolver.optional):
        with pytest.raises(UnusableSecretError, match=problem):
            lookup("BOT_ADMIN_SECRET")


def test_an_environment_secret_is_stripped_as_a_files_is(tmp_path: Path) -> None:
    resolver = SecretResolver(
        tmp_path, environ={"BOT_ADMIN_SECRET": "admin-secret-1-long-enough\n"}
    )

    assert resolver.get("BOT_ADMIN_SECRET").get_secret_value() == "admin-secret-1-long-enough"


def test_a_broken_secret_file_is_unusable_not_missing(tmp_path: Path) -> None:
    (tmp_path / "bot_admin_secret").write_bytes(b"\xff\xfe binary")
    resolver = SecretResolver(tmp_path, environ={})

    with pytest.raises(UnusableSecretError, match="is not UTF-8 text"):
        resolver.get("BOT_ADMIN_SECRET")


def test_an_empty_generated_secret_says_to_delete_it(tmp_path: Path) -> None:
    generated = tmp_path / "secrets"
    generated.mkdir()
    (generated / "bot_admin_secret").write_text("")
    resolver = SecretResolver(tmp_path / "none", generated_dir=generated, environ={})

    with pytest.raises(UnusableSecretError, match="bot_admin_secret is empty: write the secret"):
        resolver.get("BOT_ADMIN_SECRET")


def test_a_blank_secret_file_is_unusable_not_missing(tmp_path: Path) -> None:
    """Read as 'not set', a blank admin secret file turned the kill switch's routes off, and in
    `sim` a generated secret quietly took the place of the one meant."""
    (tmp_path / "bot_admin_secret").write_text(" \n")
    resolver = SecretResolver(tmp_path, generated_dir=tmp_path / "generated", environ={})

    for lookup in (resolver.get, resolver.optional):
        with pytest.raises(UnusableSecretError, match="bot_admin_secret is empty"):
            lookup("BOT_ADMIN_SECRET")
    assert not (tmp_path / "generated").exists()


def test_a_state_directory_where_secrets_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "secrets").write_text("a file, not a directory")
    resolver = SecretResolver(tmp_path / "none", generated_dir=tmp_path / "secrets", environ={})

    with pytest.raises(UnusableSecretError, match="is not a directory: is the state directory"):
        resolver.get("BOT_ADMIN_SECRET")


def test_a_secret_file_that_is_a_directory_is_unusable_not_missing(tmp_path: Path) -> None:
    # Docker creates a directory where a bind-mounted host file is missing: read as "not
    # set", the kill switch's routes went off outside sim.
    (tmp_path / "bot_admin_secret").mkdir()
    resolver = SecretResolver(tmp_path, environ={})

    with pytest.raises(UnusableSecretError, match="bot_admin_secret is a directory"):
        resolver.optional("BOT_ADMIN_SECRET")


def test_a_secret_file_that_is_a_link_to_nothing_is_unusable_not_missing(tmp_path: Path) -> None:
    # Read as "not set", the admin secret's routes went off outside sim, and in sim (where
    # the generated file could not be made over the link) too, with an INFO line.
    generated = tmp_path / "generated"
    generated.mkdir()
    for folder in (tmp_path, generated):
        (folder / "bot_admin_secret").symlink_to(tmp_path / "gone")
    given = SecretResolver(tmp_path, environ={})
    in_sim = SecretResolver(tmp_path / "none", generated_dir=generated, environ={})

    for lookup in (given.get, given.optional, in_sim.get):
        with pytest.raises(UnusableSecretError, match=r"bot_admin_secret is a link to .*gone,"):
            lookup("BOT_ADMIN_SECRET")
    assert not (tmp_path / "gone").exists()


def test_a_secrets_dir_that_is_a_file_is_unusable(tmp_path: Path) -> None:
    (tmp_path / "secrets").write_text("not a directory")
    resolver = SecretResolver(tmp_path / "secrets", environ={})

    with pytest.raises(UnusableSecretError, match="is not a directory: pass --secrets-dir"):
        resolver.optional("BOT_ADMIN_SECRET")


@pytest.mark.parametrize(
    "name", ["BOT_ADMIN_SECRET", "BOT_MQTT_SIGNING_SECRET", "BOT_WEBHOOK_SECRET_VOICEOFCHAIN"]
)
def test_a_signing_secret_too_short_to_resist_guessing_is_refused(
    tmp_path: Path, name: str
) -> None:
    # Reproduced: `x1` signed admin commands; one captured signature sufficed to find it.
    held = "a-long-enough-old-one\nx1" if "WEBHOOK" in name else "x1"
    resolver = SecretResolver(tmp_path, environ={name: held})

    with pytest.raises(UnusableSecretError, match=f"{name} is shorter than 16 characters"):
        resolver.optional(name)


def test_an_api_key_is_not_held_to_a_signing_secrets_length(tmp_path: Path) -> None:
    resolver = SecretResolver(tmp_path, environ={"BOT_KEY_MAIN_API_KEY": "short"})

    assert resolver.get("BOT_KEY_MAIN_API_KEY").get_secret_value() == "short"


def test_redact_early_registers_every_value_given_without_checking_or_generating_any(
    tmp_path: Path,
) -> None:
    tag = os.urandom(6).hex()
    urls = f"json://127.0.0.1/{tag}-first-url, tgram://{tag}-bot-token/chat"
    (tmp_path / "bot_notify_urls").write_text(urls)
    (tmp_path / "bot_mqtt_signing_secret").write_text(f"{tag[:8]}-short")  # 14: refused where used
    generated = tmp_path / "generated"
    generated.mkdir()
    (generated / "bot_admin_secret").write_text(f"{tag}-generated-admin-secret\n")
    resolver = SecretResolver(
        tmp_path,
        generated_dir=generated,
        environ={"BOT_WEBHOOK_SECRET_X": f"{tag}-old-webhook-secret\n{tag}-new-webhook-secret"},
    )

    resolver.redact_early(
        [
            "BOT_WEBHOOK_SECRET_X",
            "BOT_NOTIFY_URLS",
            "BOT_MQTT_SIGNING_SECRET",
            "BOT_ADMIN_SECRET",
            "BOT_KEY_MAIN_API_KEY",  # not set: nothing to do, nothing generated
        ]
    )

    line = (
        f"{tag}-new-webhook-secret json://127.0.0.1/{tag}-first-url tgram://{tag}-bot-token/chat "
        f"{tag[:8]}-short {tag}-generated-admin-secret"
    )
    assert scrub(line) == " ".join([REDACTED] * 5)
    assert sorted(path.name for path in generated.iterdir()) == ["bot_admin_secret"]


@pytest.mark.parametrize(
    ("mode", "open_to_everyone"), [(0o644, True), (0o604, True), (0o640, False), (0o400, False)]
)
def test_a_secret_file_every_user_may_read_is_said_once(
    tmp_path: Path, mode: int, open_to_everyone: bool
) -> None:
    path = tmp_path / f"bot_key_mode_{mode:o}_api_secret"
    path.write_text("secret-from-file\n")
    path.chmod(mode)
    resolver = SecretResolver(tmp_path, environ={})
    said: list[str] = []
    sink = logger.add(lambda m: said.append(m.record["message"]), level="WARNING")
    try:
        for _ in range(2):
            assert resolver.get(path.name.upper()).get_secret_value() == "secret-from-file"
    finally:
        logger.remove(sink)

    expected = (
        f"secret file {path} is open to every user of this machine (mode {mode:04o}): make "
        "it the bot's user's alone (chmod 0400, owned by that user)"
    )
    assert said == ([expected] if open_to_everyone else [])


def test_sim_secrets_are_not_held_to_file_modes(tmp_path: Path) -> None:
    # In `sim` the keys are the simulator's and move no money.
    path = tmp_path / "bot_key_sim_api_secret"
    path.write_text("sim-secret-from-file\n")
    path.chmod(0o644)
    resolver = SecretResolver(tmp_path, generated_dir=tmp_path / "generated", environ={})
    said: list[str] = []
    sink = logger.add(lambda m: said.append(m.record["message"]), level="WARNING")
    try:
        resolver.get("BOT_KEY_SIM_API_SECRET")
    finally:
        logger.remove(sink)

    assert said == []
