"""Secrets: webhook secrets and API keys, from environment variables or files, never config.

Each secret has one name, e.g. `BOT_KEY_FOLLOW_SIM_API_SECRET`, looked up as an environment
variable, then as a file of the same name in lower case in the secrets directory (Docker
secrets: /run/secrets). In `sim` only, a missing secret is generated once and kept (mode 0600)
in the state directory, so the offline bot needs no set-up. Values are `SecretStr` and every
resolved value is registered with the log redactor.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pydantic import SecretStr

from bot import logs
from bot.files import FileTooLargeError, NotRegularFileError, read_small_file
from bot.messages import is_unicode
from signals.config import SIGNING_SECRET_NAME as MQTT_SIGNING_SECRET_NAME

__all__ = [
    "ADMIN_SECRET_NAME",
    "DEFAULT_SECRETS_DIR",
    "MIN_SIGNING_SECRET_LENGTH",
    "ApiCredentials",
    "MissingSecretError",
    "SecretResolver",
    "UnusableSecretError",
    "api_key_names",
    "first_two_sharing",
    "same_api_key",
    "split_secrets",
    "webhook_secret_name",
    "webhook_token_name",
]

DEFAULT_SECRETS_DIR: Final = Path("/run/secrets")
#: Far beyond any secret (an RSA private key in PEM is about 2 KiB); a larger file, or
#: /dev/zero, is refused before it fills the memory.
_MAX_SECRET_BYTES: Final = 64 * 1024
#: What to do when the folder of generated secrets (in the state directory) is not one.
_STATE_DIR_HINT: Final = "is the state directory right?"
#: Signs the kill switch's halt and resume commands (the /admin routes, the MQTT control topic).
ADMIN_SECRET_NAME: Final = "BOT_ADMIN_SECRET"  # noqa: S105 - a name, not a secret


class MissingSecretError(Exception):
    """A required secret is neither in the environment nor in the secrets directory."""


class UnusableSecretError(MissingSecretError):
    """A secret is set but cannot be used (blank, not text, an unreadable file): an error
    even where the secret is optional, since its owner meant to set it."""


#: What separates the values one secret may hold (webhook secrets, notify URLs).
_SECRET_PARTS: Final = re.compile(r"[\s,;]+")
#: The shortest signing (HMAC) secret accepted: webhook, admin and MQTT signing secrets.
MIN_SIGNING_SECRET_LENGTH: Final = 16
#: Secret files already said to be open to every user (each said once per process).
_OPEN_FILES_SAID: set[Path] = set()


def _signs(name: str) -> bool:
    """Whether the secret `name` is an HMAC signing secret (not an API key, a password or a
    token, each checked by what uses it)."""
    return name in (ADMIN_SECRET_NAME, MQTT_SIGNING_SECRET_NAME) or name.startswith(
        webhook_secret_name("")
    )


def webhook_secret_name(source: str) -> str:
    return f"BOT_WEBHOOK_SECRET_{source.upper()}"


def split_secrets(secret: SecretStr) -> list[SecretStr]:
    """A secret holding several values, one per line (an old and a new one while a sender
    rotates): each of them, each registered with the log redactor."""
    values = [line.strip() for line in secret.get_secret_value().splitlines() if line.strip()]
    for value in values:
        logs.redact(value)
    return [SecretStr(value) for value in values]


def webhook_token_name(source: str) -> str:
    """The token of a source whose `auth` is `body_token` or `query_token`."""
    return f"BOT_WEBHOOK_TOKEN_{source.upper()}"


def api_key_names(key: str) -> tuple[str, str]:
    """The secret names of the API key and API secret of the configured key `key`."""
    return f"BOT_KEY_{key.upper()}_API_KEY", f"BOT_KEY_{key.upper()}_API_SECRET"


@dataclass(frozen=True, repr=False)
class ApiCredentials:
    """One Bybit API key pair; the repr never shows either value."""

    name: str
    api_key: SecretStr
    api_secret: SecretStr

    def __repr__(self) -> str:
        return f"ApiCredentials(name={self.name!r})"


def same_api_key(credentials: Iterable[ApiCredentials]) -> str | None:
    """Why these credentials cannot all be in service together, or None: two configured
    keys holding one API key would be one key shared under two names, implicitly (each
    name's strategies trading one account, past each name's rate limiter and books)."""
    shared = first_two_sharing((pair.name, pair.api_key.get_secret_value()) for pair in credentials)
    if shared is None:
        return None
    first, second, _ = shared
    return (
        f"keys {first} and {second} hold the same API key ({api_key_names(first)[0]} "
        f"and {api_key_names(second)[0]}): a key is never shared implicitly; give "
        f"each its own key, or name one key in both strategies with "
        f"keys.<name>.shared = true"
    )


def first_two_sharing(named_values: Iterable[tuple[str, str]]) -> tuple[str, str, str] | None:
    """The first two names (sorted) of `named_values` given one value, and that value; None
    if each value has one name (a name given twice with one value is one holder)."""
    holder: dict[str, str] = {}
    for name, value in named_values:
        other = holder.setdefault(value, name)
        if other != name:
            first, second = sorted((other, name))
            return first, second, value
    return None


class SecretResolver:
    """Looks secrets up by name: environment, then `secrets_dir/<name lower>`, then (sim) state."""

    def __init__(
        self,
        secrets_dir: Path = DEFAULT_SECRETS_DIR,
        *,
        generated_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """`generated_dir` is set only in `sim`: there a missing secret is created and kept."""
        self._secrets_dir = secrets_dir
        self._generated_dir = generated_dir
        self._environ = os.environ if environ is None else environ

    def get(self, name: str) -> SecretStr:
        """The secret `name`, or `MissingSecretError` naming the variable and the file."""
        value = self._lookup(name)
        if not value and self._generated_dir is not None:
            value = self._generated(name)
        if not value:
            empty = " (it is in the environment, empty)" if self.empty_in_environment(name) else ""
            raise MissingSecretError(
                f"secret {name} is not set{empty}: export the environment variable {name} or "
                f"put it in the file {self._secrets_dir / name.lower()} (use --secrets-dir to "
                "change the directory)"
            )
        logs.redact(value)
        return SecretStr(value)

    def empty_in_environment(self, name: str) -> bool:
        """Whether the environment holds `name` empty: taken as not set (a compose file's
        `NAME: ${NAME}` passes one), which the user may not mean."""
        return self._environ.get(name) == ""

    def optional(self, name: str) -> SecretStr | None:
        """An optional secret, or None when it is not set (never generated, even in `sim`)."""
        value = self._lookup(name)
        if not value:
            return None
        logs.redact(value)
        return SecretStr(value)

    def redact_early(self, names: Iterable[str]) -> None:
        """Register with the log redactor the value of each secret of `names` that is set
        (or was generated), before code that may fail with one in its message runs (a
        strategy plug-in's import, in the same process as the secrets); each line and each
        comma- or space-separated part too (a webhook secret's several values, the notify
        URLs). Nothing is checked or generated here: an unusable secret is refused where it
        is used."""
        for name in names:
            value = ""
            with contextlib.suppress(MissingSecretError):
                value = self._given(name)
                if not value and self._generated_dir is not None:
                    value = self._read(self._generated_dir / name.lower(), _STATE_DIR_HINT)
            for part in (value, *_SECRET_PARTS.split(value)):
                logs.redact(part.strip())

    def _lookup(self, name: str) -> str:
        """The secret `name` as set ("" if it is not), refused if unusable: a signing secret
        (each line of a webhook's) must be long enough not to be guessed from one signed
        message."""
        value = self._given(name)
        if value and _signs(name):
            # A webhook secret may hold several, one per line (`split_secrets`).
            parts = value.splitlines() if name.startswith(webhook_secret_name("")) else [value]
            shortest = min(len(part.strip()) for part in parts if part.strip())
            if shortest < MIN_SIGNING_SECRET_LENGTH:
                raise UnusableSecretError(
                    f"secret {name} is shorter than {MIN_SIGNING_SECRET_LENGTH} characters: one "
                    "signed message lets a short one be guessed offline; use a random one, e.g. "
                    "`openssl rand -hex 32`"
                )
        return value

    def _given(self, name: str) -> str:
        value = self._environ.get(name)
        if not value:
            path = self._secrets_dir / name.lower()
            value = self._read(path)
            if value and self._generated_dir is None:  # a testnet or mainnet secret
                _warn_if_open_to_everyone(path)
            return value
        if not is_unicode(value):  # bytes that are not UTF-8, as Python decodes the environment
            raise UnusableSecretError(
                f"the environment variable {name} is not UTF-8 text: set the secret as text "
                "(hex or base64 for random bytes)"
            )
        if not value.strip():
            raise UnusableSecretError(
                f"the environment variable {name} is blank: set the secret, or unset it"
            )
        return value.strip()  # as a file's: a trailing newline is not part of it

    def credentials(self, key: str) -> ApiCredentials:
        key_name, secret_name = api_key_names(key)
        return ApiCredentials(
            name=key, api_key=self.get(key_name), api_secret=self.get(secret_name)
        )

    @staticmethod
    def _read(
        path: Path, folder_hint: str = "pass --secrets-dir (BOT_SECRETS_DIR) a directory"
    ) -> str:
        """The secret in file `path`; "" if there is no such file. `folder_hint` says what to
        do if its folder is not a directory."""
        try:
            value = read_small_file(path, _MAX_SECRET_BYTES).decode("utf-8").strip()
        except FileNotFoundError:
            if path.is_symlink():  # set, but broken: never taken for a secret not set
                raise UnusableSecretError(
                    f"secret file {path} is a link to {os.readlink(path)}, which does not "
                    "exist: point it at the secret's file, or remove it"
                ) from None
            return ""
        except IsADirectoryError:  # Docker makes one where a bind-mounted file is missing
            raise UnusableSecretError(
                f"secret file {path} is a directory (a bind mount of a missing host file?): "
                "write the secret into a file there, or remove the directory"
            ) from None
        except NotADirectoryError:
            raise UnusableSecretError(
                f"{path.parent}, where secret files are read, is not a directory: {folder_hint}"
            ) from None
        except NotRegularFileError:
            raise UnusableSecretError(
                f"secret file {path} is not a regular file (a pipe or a device?): write the "
                "secret into a file"
            ) from None
        except FileTooLargeError:
            raise UnusableSecretError(
                f"secret file {path} is larger than {_MAX_SECRET_BYTES // 1024} KiB: is it the "
                "secret? write only the secret into it"
            ) from None
        except PermissionError:
            raise UnusableSecretError(
                f"cannot read secret file {path}: permission denied (the bot's user must be "
                "able to read it)"
            ) from None
        except UnicodeDecodeError:
            raise UnusableSecretError(
                f"secret file {path} is not UTF-8 text: write the secret as text (hex or "
                "base64 for random bytes)"
            ) from None
        except OSError as exc:  # e.g. out of file descriptors, an I/O error: never a crash
            raise UnusableSecretError(f"cannot read secret file {path}: {exc.strerror}") from None
        if not value:
            raise UnusableSecretError(
                f"secret file {path} is empty: write the secret into it, or delete it"
            )
        return value

    def _generated(self, name: str) -> str:
        assert self._generated_dir is not None
        path = self._generated_dir / name.lower()
        existing = self._read(path, _STATE_DIR_HINT)  # whole, if there: see _publish_whole
        if existing:
            return existing
        try:
            self._generated_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise UnusableSecretError(
                f"cannot create the directory {self._generated_dir} for generated secrets: "
                f"{exc.strerror} (is the state directory right?)"
            ) from None
        _remove_dead_spares(path)
        value = secrets.token_hex(24)
        try:
            if _publish_whole(path, value + "\n"):
                return value
        except OSError as exc:
            raise UnusableSecretError(
                f"cannot write the generated secret file {path}: {exc.strerror}"
            ) from None
        return self._read(path, _STATE_DIR_HINT)  # another process made it first: theirs


def _publish_whole(path: Path, text: str) -> bool:
    """Create `path` holding `text` (mode 0600), whole or not at all: written and synced
    under another name, then linked into place; False if `path` exists already (another
    process made it first). A kill, or power lost, in between leaves no empty file that
    every later start would refuse."""
    spare = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        _write_synced(spare, text)
        try:
            os.link(spare, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: created, then written, at once
            try:
                _write_synced(path, text)
            except FileExistsError:
                return False
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(path)  # never left empty or cut short
                raise
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the new name survives a power cut too
        finally:
            os.close(folder)
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(spare)


def _remove_dead_spares(path: Path) -> None:
    """Delete the spares of `path` (see `_publish_whole`) left by processes killed while
    writing one: each holds a secret that was never used, and nothing else would remove it.
    A spare of a process still alive is its own, in use."""
    for spare in path.parent.glob(f".{path.name}.*.*"):
        pid = spare.name.removeprefix(f".{path.name}.").partition(".")[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            with contextlib.suppress(OSError):
                spare.unlink()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or a number no process can have
        return False
    except OSError:  # another user's process (EPERM): alive
        return True
    return True


def _write_synced(path: Path, text: str) -> None:
    """A new file `path` (mode 0600; FileExistsError if there is one) holding `text`, synced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _warn_if_open_to_everyone(path: Path) -> None:
    """Say once if any user of the machine may read or change the secret file `path`."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:  # it was just read: gone since, nothing to say about its mode
        return
    if mode & stat.S_IRWXO and path not in _OPEN_FILES_SAID:
        _OPEN_FILES_SAID.add(path)
        logs.logger.warning(
            "secret file {path} is open to every user of this machine (mode {mode:04o}): "
            "make it the bot's user's alone (chmod 0400, owned by that user)",
            path=str(path),
            mode=mode,
        )
