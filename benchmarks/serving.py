"""Test helpers: run a real `vigil serve` on a free loopback port and talk to it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc = proc
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{port}/ws"

    def request(
        self, method: str, path: str, body: Any = None, key: str | None = None
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if key:
            req.add_header("X-API-Key", key)
        try:
            with urllib.request.urlopen(req, timeout=20) as r:
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        text = raw.decode()
        try:
            return status, json.loads(text) if text else None
        except json.JSONDecodeError:
            return status, text

    def stream(self, sid: str) -> dict[str, Any]:
        status, body = self.request("GET", f"/api/streams/{sid}")
        assert status == 200, body
        return dict(body)

    def wait_state(self, sid: str, state: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = self.stream(sid)
            if last["state"] == state and (state != "live" or last["frames_inferred"] > 0):
                return last
            time.sleep(0.2)
        raise AssertionError(f"{sid} never became {state}: {last}")


@contextlib.contextmanager
def serve(
    config: dict[str, Any], tmp: Path, repo: Path = REPO, port: int | None = None
) -> Iterator[Server]:
    """`vigil serve` with ``config`` on a free port (or ``port``: a restart on the same one), run
    from the checkout ``repo`` (another checkout lets a benchmark compare two versions side by
    side). Admission control is off unless ``config`` has a ``capacity`` section: its decisions
    follow measured CPU time, and a test about something else must not depend on how busy the
    machine is."""
    port = free_port() if port is None else port
    config = {**config, "server": {**config.get("server", {}), "port": port}}
    if "capacity" not in config and repo == REPO:
        config["capacity"] = {"enabled": False}
    # the event database goes beside the config, not into the working directory
    events = {"path": str(tmp / f"events-{port}.db"), **config.get("events", {})}
    config["events"] = events
    path = tmp / f"serve-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(repo)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--config", str(path)],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    server = Server(proc, port)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited: {proc.stdout.read() if proc.stdout else ''}")
            try:
                if server.request("GET", "/readyz")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError("server not ready in 60 s")
            time.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def ffmpeg_children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid), "ffmpeg"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def alive(pids: list[int]) -> list[int]:
    left = []
    for p in pids:
        try:
            os.kill(p, 0)
        except ProcessLookupError:
            continue
        left.append(p)
    return left


def children_matching(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line and "ffmpeg" in line]
