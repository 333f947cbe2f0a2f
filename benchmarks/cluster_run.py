"""Run a real scale-out deployment on loopback: a ``redis-server``, ``vigil worker`` and
``vigil gateway`` processes. The cluster tests and the scale-out figures use it."""

from __future__ import annotations

import contextlib
import itertools
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
    # a worker's measured capacity follows how busy the machine is: off unless configured, so
    # the cameras a test expects a worker to take do not depend on it (benchmarks.serving too)
    cfg.setdefault("capacity", {"enabled": False})
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


class WsCollector:
    """A gateway's WebSocket client in a background thread, reconnecting (with ``last_seq``)
    when the connection drops. Records, per camera, every message as (seq, received, arrival)
    with ``received`` the local wall clock."""

    def __init__(self, url: str) -> None:
        import asyncio
        import threading

        self.url = url
        self.messages: dict[str, list[tuple[int, float, float]]] = {}
        self.lost = 0
        self.regressions = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._stop: Any = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._task = asyncio.run_coroutine_threadsafe(self._run(), self._loop)

    async def _run(self) -> None:
        import asyncio
        import json

        import websockets

        self._stop = asyncio.Event()
        while not self._stop.is_set():
            try:
                async with websockets.connect(self.url, open_timeout=5) as ws:
                    last = {cam: m[-1][0] for cam, m in self.snapshot().items() if m}
                    await ws.send(json.dumps({"op": "subscribe", "last_seq": last}))
                    while not self._stop.is_set():
                        try:
                            raw = await asyncio.wait_for(ws.recv(), 0.5)
                        except TimeoutError:
                            continue
                        now = time.time()
                        msg = json.loads(raw)
                        if msg.get("op") == "lost":
                            self.lost += int(msg["count"])
                        if "seq" not in msg or msg.get("type") == "event":
                            continue  # events carry their own seq: only frames are recorded
                        with self._lock:
                            rows = self.messages.setdefault(msg["stream"], [])
                            if rows and msg["seq"] <= rows[-1][0]:
                                self.regressions += 1  # never expected: counted, not kept
                                continue
                            rows.append((int(msg["seq"]), now, float(msg["ts"])))
            except (OSError, TimeoutError, websockets.WebSocketException):
                await asyncio.sleep(0.2)

    def snapshot(self) -> dict[str, list[tuple[int, float, float]]]:
        with self._lock:
            return {cam: list(rows) for cam, rows in self.messages.items()}

    def count(self, cam: str, since: float = 0.0) -> int:
        """Messages of ``cam`` received after the wall-clock time ``since``."""
        with self._lock:
            return sum(1 for _, t, _ in self.messages.get(cam, []) if t > since)

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        with contextlib.suppress(Exception):
            self._task.result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def seq_gaps(rows: list[tuple[int, float, float]]) -> int:
    """Messages missing between consecutive received seqs."""
    return sum(b[0] - a[0] - 1 for a, b in itertools.pairwise(rows))


class Cluster:
    """Redis, one gateway and named workers, all real processes, sharing one config."""

    def __init__(self, folder: Path, config: dict[str, Any], aof: bool = True) -> None:
        self.folder = folder
        self.redis = RedisServer(folder / "redis", aof)
        self.config = {**config, "redis": {**config.get("redis", {}), "url": self.redis.url}}
        self.workers: dict[str, Server] = {}
        self.gateway: Server | None = None

    def start(self, workers: list[str]) -> None:
        self.redis.start()
        self.gateway = start_role("gateway", self.config, self.folder, "gateway")
        for name in workers:
            self.workers[name] = start_role("worker", self.config, self.folder, name)
        wait_ready(self.gateway)
        for w in self.workers.values():
            wait_ready(w)

    def add_worker(self, name: str) -> Server:
        self.workers[name] = start_role("worker", self.config, self.folder, name)
        wait_ready(self.workers[name])
        return self.workers[name]

    def stop(self) -> None:
        for w in self.workers.values():
            stop_role(w)
        if self.gateway is not None:
            stop_role(self.gateway)
        self.redis.stop()

    def owners(self) -> dict[str, tuple[str, int]]:
        """Camera -> (worker, token) of every lease held now, read from Redis."""
        from cluster.connection import Keys
        from cluster.leases import parse_value

        keys = Keys(self.config.get("redis", {}).get("key_prefix", "vigil"))
        client: Any = self.redis.client()
        cams = sorted(k.decode() for k in client.hkeys(keys.streams))
        values = client.mget([keys.lease(c) for c in cams]) if cams else []
        return {c: h for c, v in zip(cams, values, strict=True) if (h := parse_value(v))}

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text()
