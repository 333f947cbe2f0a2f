"""A real Mosquitto broker on a free loopback port, for the tests and the sink benchmark.

Debian's ``mosquitto`` (``make install`` installs it). The broker keeps its state in a folder
(persistence on), so a restart on the same port keeps durable subscriptions and their queued
messages, as a production broker would.
"""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from benchmarks.serving import free_port
from pipeline.types import VigilError


def mosquitto_path() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if Path(p).is_file()), None
    )


class Mosquitto:
    """``start()``/``stop()`` (SIGTERM: state saved); the same port each time. With ``users``
    (name -> password) clients must log in; with ``tls`` (CA, certificate, key files) the
    listener speaks TLS only."""

    def __init__(
        self,
        folder: Path,
        port: int | None = None,
        users: dict[str, str] | None = None,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        exe = mosquitto_path()
        if exe is None:
            raise VigilError("mosquitto is not installed (make install installs it)")
        self.exe = exe
        self.folder = folder
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        lines = [  # run as whoever we are (as root it would switch to a "mosquitto" user)
            f"user {getpass.getuser()}",
            f"listener {self.port} 127.0.0.1", f"allow_anonymous {str(not users).lower()}",
            "persistence true", f"persistence_location {folder}/", "autosave_interval 1",
            "max_queued_messages 100000", f"log_dest file {folder}/mosquitto.log",
        ]  # fmt: skip
        if users:
            passwords = folder / "passwords"
            passwords.write_text("")
            for name, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwords), name, password],
                               check=True, capture_output=True)  # fmt: skip
            lines.append(f"password_file {passwords}")
        if tls:
            ca, cert, key = tls
            lines += [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 20.0) -> Mosquitto:
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = self.folder / "mosquitto.log"
                    tail = log.read_text()[-500:] if log.exists() else ""
                    raise VigilError(f"mosquitto did not start on {self.port}: {tail}") from None
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def self_signed(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for ``host`` (openssl): (ca, cert, key)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    cert, key, csr = folder / "server.pem", folder / "server.key", folder / "server.csr"
    ext = folder / "san.cnf"
    ext.write_text(f"subjectAltName=IP:{host}\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for cmd in (
        ["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=vigil-test-ca"],
        ["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", f"/CN={host}"],
        ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "2", "-extfile", ext],
    ):  # fmt: skip
        subprocess.run([str(c) for c in cmd], check=True, capture_output=True)
    return ca, cert, key
