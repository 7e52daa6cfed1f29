"""A real mosquitto broker per test: its own loopback port, config and persistence directory.

`make setup` installs mosquitto; without it the MQTT tests fail (they never skip silently).
"""

from __future__ import annotations

import getpass
import ipaddress
import json
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import free_port

__all__ = [
    "Mosquitto",
    "dynamic_security",
    "find_mosquitto",
    "mosquitto",
    "private_ca_certificate",
    "running_mosquitto",
    "tls_listener",
]

_CONFIG = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence true
persistence_location {data}/
# Save after every change, so even a SIGKILLed broker keeps its sessions.
autosave_on_changes true
autosave_interval 1
log_dest stderr
log_type error
log_type warning
log_type notice
log_timestamp_format %H:%M:%S
# When started as root, stay this user instead of dropping to `mosquitto` (which could not
# write the test's directory).
user {user}
"""
_START_TIMEOUT_S = 10.0


def find_mosquitto() -> str:
    """The broker's path, or fail the test saying how to install it."""
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").is_file() else None
    )
    if found is None:
        pytest.fail(
            "mosquitto is not installed (the MQTT tests need a real broker): `make setup` "
            "installs it",
            pytrace=False,
        )
    return found


class Mosquitto:
    """One broker process on 127.0.0.1:`port`; stop and start it again keeping its state."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.binary = find_mosquitto()
        self.folder = folder
        self.port = port or free_port()
        self.data = folder / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.config = folder / "mosquitto.conf"
        self.config.write_text(
            _CONFIG.format(port=self.port, data=self.data, user=getpass.getuser())
        )
        self.log = folder / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the broker and return once it accepts connections (bounded)."""
        assert self._process is None, "already running"
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [self.binary, "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._accepts():
            if self._process.poll() is not None:
                self._process = None
                pytest.fail(f"mosquitto exited at start:\n{self.log_tail()}", pytrace=False)
            if time.monotonic() > deadline:
                self.stop(kill=True)
                pytest.fail(
                    f"mosquitto did not accept connections within {_START_TIMEOUT_S} s:\n"
                    f"{self.log_tail()}",
                    pytrace=False,
                )
            time.sleep(0.02)

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (the broker saves its state) or SIGKILL (it saved after each change)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait_gone(self, client_id: str, timeout_s: float = 10.0) -> None:
        """Wait until the broker has finished with every connection of `client_id`.

        mosquitto reads one packet per client per loop turn, and a new connection under the
        same id takes the session over at once, dropping what the old connection had sent but
        the broker had not read yet (acks included: harmless redelivery, but a test that checks
        "acked means not redelivered" must reconnect only after the broker read them).
        """
        deadline = time.monotonic() + timeout_s
        while self.connected(client_id):
            if time.monotonic() > deadline:
                pytest.fail(f"mosquitto still has a connection of {client_id!r}", pytrace=False)
            time.sleep(0.01)

    def connected(self, client_id: str) -> bool:
        """Whether the broker's log shows a connection of `client_id` it has not finished with."""
        name = re.escape(client_id)
        opened = re.compile(rf"New client connected from \S+ as {name} \(")
        closed = re.compile(
            rf"Client {name} (disconnected|closed its connection)|"
            rf"Socket error on client {name},|Client {name} has exceeded timeout"
        )
        text = self.log.read_text(errors="replace")
        return len(opened.findall(text)) > len(closed.findall(text))

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False


def dynamic_security(
    broker: Mosquitto, access: Mapping[str, bool], subscribe: Sequence[str] = ()
) -> None:
    """Before `broker.start()`: mosquitto's dynamic security plugin as the ACL of every client
    (anonymous ones included). `access` overrides its defaults (`publishClientSend`,
    `publishClientReceive`, `subscribe`, `unsubscribe`); `subscribe` lists the topic patterns
    any client may subscribe to all the same. A SUBSCRIBE or PUBLISH it refuses is answered with
    reason code 0x87, Not authorized (MQTT v5), as EMQX or HiveMQ answer one their ACL refuses."""
    plugins = sorted(Path("/usr/lib").glob("*/mosquitto_dynamic_security.so"))
    if not plugins:
        pytest.fail(
            "mosquitto's dynamic security plugin is missing (Debian's mosquitto package has it)",
            pytrace=False,
        )
    defaults = {"publishClientSend": True, "publishClientReceive": True, "subscribe": True}
    acls = [{"acltype": "subscribePattern", "topic": topic, "allow": True} for topic in subscribe]
    document = {
        "defaultACLAccess": {**defaults, "unsubscribe": True, **access},
        "clients": [],
        "groups": [{"groupname": "anyone", "roles": [{"rolename": "anyone"}]}],
        "anonymousGroup": "anyone",
        "roles": [{"rolename": "anyone", "acls": acls}],
    }
    rules = broker.folder / "dynamic-security.json"
    rules.write_text(json.dumps(document))
    with broker.config.open("a") as config:
        config.write(f"plugin {plugins[0]}\nplugin_opt_config_file {rules}\n")


def tls_listener(broker: Mosquitto) -> Path:
    """Before `broker.start()`: its listener speaks TLS only, with a certificate for
    127.0.0.1 that a CA made here signed (as a private broker's is). Returns the CA's PEM
    file, which clients must trust: the system's CAs do not know it."""
    ca_file, certificate, key = private_ca_certificate(broker.folder)
    with broker.config.open("a") as config:
        config.write(f"certfile {certificate}\nkeyfile {key}\n")
    return ca_file


def private_ca_certificate(folder: Path) -> tuple[Path, Path, Path]:
    """A CA of its own, and a certificate it signed for 127.0.0.1 with its key: three PEM
    files in `folder` (ca.pem, broker.pem, broker.key)."""
    now = datetime.now(UTC)

    def signed(subject: str, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
        )

    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test broker CA")])
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        signed("test broker CA", ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        signed("127.0.0.1", key)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = {
        "ca.pem": ca.public_bytes(serialization.Encoding.PEM),
        "broker.pem": certificate.public_bytes(serialization.Encoding.PEM),
        "broker.key": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder / "ca.pem", folder / "broker.pem", folder / "broker.key"


@contextmanager
def running_mosquitto(folder: Path) -> Iterator[Mosquitto]:
    """A started broker keeping its files in `folder`, stopped on leaving."""
    broker = Mosquitto(folder)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running broker for one test (files in tmp_path/mosquitto), stopped afterwards."""
    with running_mosquitto(tmp_path / "mosquitto") as broker:
        yield broker
