"""Run a real scale-out deployment on loopback: a ``redis-server``, ``vigil worker`` and
``vigil gateway`` processes. The cluster tests and the scale-out figures use it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
import yaml

from benchmarks.serving import REPO, Server, free_port


class RedisServer:
    """Debian's ``redis-server`` on a free loopback port, in its own folder. With ``aof`` every
    write is fsynced to an append-only file, so a restart keeps the desired state and tokens."""

    def __init__(self, folder: Path, aof: bool = True) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (`make install` installs it)")
        self.exe = exe
        self.folder = folder
        self.aof = aof
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        args = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                str(self.folder), "--save", "", "--protected-mode", "yes"]  # fmt: skip
        if self.aof:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.client().ping():
                    return
            except (redis.ConnectionError, redis.BusyLoadingError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # as a crash would: AOF with fsync always keeps every write
            self.proc.wait()
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def memory_bytes(self) -> int:
        return int(self.client().info("memory")["used_memory"])


@contextlib.contextmanager
def redis_server(folder: Path, aof: bool = True) -> Iterator[RedisServer]:
    server = RedisServer(folder, aof)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def start_role(role: str, config: dict[str, Any], folder: Path, name: str) -> Server:
    """Start ``vigil <role>`` (worker or gateway) named ``name`` on a free port; returns at
    once (use :func:`wait_ready`). Its output goes to ``folder/<name>.log``."""
    port = free_port()
    cfg = {**config, "server": {**config.get("server", {}), "port": port},
           "cluster": {**config.get("cluster", {}), "node_id": name}}  # fmt: skip
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = (folder / f"{name}.log").open("w")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", role, "--config", str(path)],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    return Server(proc, port)


def wait_ready(server: Server, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.proc.poll() is not None:
            raise AssertionError(f"process exited with {server.proc.returncode}")
        try:
            if server.request("GET", "/readyz")[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready in {timeout:g} s")
        time.sleep(0.2)


def stop_role(server: Server, timeout: float = 20.0) -> int:
    """SIGTERM (a SIGSTOPped process is continued first), wait; SIGKILL past ``timeout``."""
    if server.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.proc.pid, signal.SIGCONT)
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    return int(server.proc.returncode)
