"""A real Mosquitto broker on a free loopback port, for the tests and the sink benchmark.

Debian's ``mosquitto`` (``make install`` installs it). The broker keeps its state in a folder
(persistence on), so a restart on the same port keeps durable subscriptions and their queued
messages, as a production broker would.
"""

from __future__ import annotations

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
    """``start()``/``stop()`` (SIGTERM, state saved) / ``kill()`` (SIGKILL); same port each time."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        exe = mosquitto_path()
        if exe is None:
            raise VigilError("mosquitto is not installed (make install installs it)")
        self.exe = exe
        self.folder = folder
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nautosave_interval 1\nmax_queued_messages 100000\n"
            f"log_dest file {folder}/mosquitto.log\n"
        )

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
