"""The live server for real: `vigil serve` in a subprocess, HTTP and WebSocket clients."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import websockets

from benchmarks.serving import Server, alive, children_matching, ffmpeg_children, serve
from tests.factories import SAMPLE_CLIP, wait_until

KEY = "test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory, synthetic_clip: Path) -> Path:
    root = tmp_path_factory.mktemp("media")
    shutil.copy(SAMPLE_CLIP, root / "people.mp4")
    shutil.copy(synthetic_clip, root / "testsrc.mp4")
    return root


def _config(media: Path, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "server": {"media_root": str(media), "drain_timeout_s": 3.0},
        "live": {"stall_timeout_s": 3.0, "backoff_initial_s": 0.2, "backoff_max_s": 1.0},
        "tracker": {"embedder": "histogram"},
        "streams": [{"id": "people", "url": "people.mp4", "fps": 10}],
    }
    for section, values in extra.items():
        cfg[section] = values if section == "streams" else {**cfg.get(section, {}), **values}
    return cfg


async def _recv_json(ws: Any, timeout: float = 10.0) -> dict[str, Any]:
    return dict(json.loads(await asyncio.wait_for(ws.recv(), timeout)))


async def _snapshot_of(srv: Server, stream: str) -> dict[str, Any] | None:
    """What a client reconnecting to ``stream`` (``last_seq: {}``) receives first, or None if
    nothing comes within 3 s (a deleted stream must leave no snapshot and send nothing)."""
    async with websockets.connect(srv.ws) as ws:
        await ws.send(json.dumps({"op": "subscribe", "streams": [stream], "last_seq": {}}))
        # until it subscribes a client gets every stream: skip what came before the reply
        while (reply := await _recv_json(ws)).get("op") != "subscribed":
            assert "op" not in reply, reply  # a live message, not an error
        try:
            return await _recv_json(ws, timeout=3.0)
        except TimeoutError:
            return None


def test_rest_streams_at_run_time(media: Path, tmp_path: Path) -> None:
    with serve(_config(media), tmp_path) as srv:
        first = srv.wait_state("people", "live")
        assert first["width"] == 768 and first["url"] == "people.mp4"
        status, body = srv.request("POST", "/api/streams", {"id": "test", "url": "testsrc.mp4"})
        assert status == 201, body
        live = srv.wait_state("test", "live")
        assert live["frames_decoded"] > 0
        assert srv.request("POST", "/api/streams", {"id": "test", "url": "testsrc.mp4"})[0] == 409
        ids = [s["id"] for s in srv.request("GET", "/api/streams")[1]]
        assert ids == ["people", "test"]
        assert srv.request("DELETE", "/api/streams/test")[0] == 204
        assert srv.request("GET", "/api/streams/test")[0] == 404
        assert srv.request("DELETE", "/api/streams/test")[0] == 404
        wait_until(
            lambda: not children_matching(str(media / "testsrc.mp4")), 20, "its FFmpeg ended"
        )
        assert srv.stream("people")["state"] == "live"  # the other stream never noticed
        assert asyncio.run(_snapshot_of(srv, "test")) is None  # no stale snapshot left behind
        people = asyncio.run(_snapshot_of(srv, "people"))
        assert people is not None and people["stream"] == "people"


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("concat:people.mp4|testsrc.mp4", "scheme 'concat' is not allowed"),
        ("http://127.0.0.1:9/x.mp4", "http(s) stream urls are disabled"),
        ("../outside.mp4", "outside the media root"),
        ("/etc/hostname", "outside the media root"),
    ],
)
def test_refused_urls_are_422(media: Path, tmp_path: Path, url: str, detail: str) -> None:
    server = _SHARED.get("srv")
    assert server is not None
    status, body = server.request("POST", "/api/streams", {"id": "x", "url": url})
    assert status == 422 and detail in body["detail"], body


_SHARED: dict[str, Server] = {}


@pytest.fixture(scope="module", autouse=True)
def shared_server(
    media: Path, tmp_path_factory: pytest.TempPathFactory
) -> Any:  # one server for the quick request-level tests
    with serve(_config(media), tmp_path_factory.mktemp("srv")) as srv:
        _SHARED["srv"] = srv
        yield srv
        _SHARED.clear()


def test_bad_bodies_are_422(shared_server: Server) -> None:
    bodies = [
        {"id": "x"},
        {"id": "bad id!", "url": "people.mp4"},
        {"id": "x", "url": "people.mp4", "fps": -3},
        {"id": "x", "url": "people.mp4", "extra": 1},
    ]
    for body in bodies:
        status, reply = shared_server.request("POST", "/api/streams", body)
        assert status == 422, (body, reply)
    assert shared_server.request("GET", "/healthz") == (200, {"status": "ok"})


def test_websocket_subscribe_snapshot_malformed_and_metrics(shared_server: Server) -> None:
    srv = shared_server
    srv.wait_state("people", "live")

    async def run() -> None:
        async with websockets.connect(srv.ws) as good, websockets.connect(srv.ws) as bad:
            await good.send(
                json.dumps({"op": "subscribe", "streams": ["people"], "classes": ["person"]})
            )
            while (r := await _recv_json(good)).get("op") != "subscribed":
                assert "op" not in r, r  # live messages may come before the reply
            for garbage in ("{", '{"op": "subscribe", "classes": ["unicorn"]}', "[]"):
                await bad.send(garbage)
                reply = await _recv_json(bad)
                while "op" not in reply:  # live messages may come first
                    reply = await _recv_json(bad)
                assert reply["op"] == "error"
            seqs = []
            for _ in range(20):
                msg = await _recv_json(good)
                assert msg["v"] == 1 and msg["stream"] == "people"
                assert all(t[1] == 0 for t in msg["tracks"])
                seqs.append(msg["seq"])
            assert seqs == list(range(seqs[0], seqs[0] + 20))  # nothing lost, in order
        async with websockets.connect(srv.ws) as again:
            await again.send(json.dumps({"op": "subscribe", "last_seq": {"people": seqs[-1]}}))
            while (r := await _recv_json(again)).get("op") != "subscribed":
                assert "op" not in r, r  # live messages may come before the reply
            snap = await _recv_json(again)
            assert snap["stream"] == "people" and snap["seq"] > seqs[-1]

    asyncio.run(run())
    text = srv.request("GET", "/metrics")[1]
    assert 'vigil_stream_frames_inferred_total{stream="people"}' in text
    count = [ln for ln in text.splitlines() if ln.startswith("vigil_frame_to_send_seconds_count")]
    assert count and float(count[0].split()[-1]) >= 20
    assert "vigil_stage_seconds_bucket" in text and "rtsp://" not in text
    info = [ln for ln in text.splitlines() if ln.startswith("vigil_model_info{")]
    assert info and 'name="yolov5n"' in info[0] and 'precision="int8"' in info[0]
    ready = srv.request("GET", "/readyz")[1]
    assert ready["model"]["name"] == "yolov5n" and len(ready["model"]["sha256"]) == 64
    # the chosen backend, where it runs, the preprocessing and the decode path
    assert ready["model"]["backend"] == "onnxruntime" and ready["model"]["device"] == "cpu"
    assert ready["model"]["preprocess"] == "numpy" and ready["model"]["decode"] == "cpu"


def _lost_total(srv: Server) -> float:
    text = srv.request("GET", "/metrics")[1]
    line = [ln for ln in text.splitlines() if ln.startswith("vigil_ws_messages_lost_total ")]
    return float(line[0].split()[-1]) if line else 0.0


def _never_reading_client(srv: Server) -> socket.socket:
    """A WebSocket client that completes the handshake (and so gets every message) and then
    never reads: its receive window closes and the server's buffers fill up."""
    raw = socket.create_connection(("127.0.0.1", srv.port))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    raw.sendall(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += raw.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return raw


def test_stalled_client_does_not_slow_the_others(media: Path, tmp_path: Path) -> None:
    """A client that stops reading while the server sends far more than the socket buffers
    hold: its own queue overflows (counted), the other client still gets every message."""
    streams = [{"id": f"s{i}", "url": "people.mp4", "fps": 0} for i in range(4)]
    busy = {  # every class, every weak detection: messages of a few hundred bytes
        "model": {"classes": ["all"], "conf_threshold": 0.02},
        "tracker": {"embedder": "histogram", "deepsort": {"init_confidence": 0.02}},
        "server": {"send_buffer_kb": 16, "ws_queue": 32},
    }
    with serve(_config(media, streams=streams, **busy), tmp_path) as srv:
        for i in range(4):
            srv.wait_state(f"s{i}", "live")

        async def run() -> dict[str, list[int]]:
            stalled = _never_reading_client(srv)
            seqs: dict[str, list[int]] = {}
            async with websockets.connect(srv.ws) as reader:
                await reader.send(json.dumps({"op": "subscribe"}))
                deadline = time.monotonic() + 90
                received = 0
                while time.monotonic() < deadline:
                    msg = await _recv_json(reader)
                    if "seq" not in msg:
                        continue
                    seqs.setdefault(msg["stream"], []).append(msg["seq"])
                    received += 1
                    # the stalled client has lost messages: the buffers are full, and then some
                    if received % 50 == 0 and _lost_total(srv) > 100:
                        break
            stalled.close()
            return seqs

        seqs = asyncio.run(run())
        assert _lost_total(srv) > 100, "the stalled client never overflowed its queue"
        assert sum(len(v) for v in seqs.values()) >= 300
        for stream, got in seqs.items():  # the reading client lost nothing, in order
            assert got == list(range(got[0], got[0] + len(got))), stream


def test_auth_rate_limit_and_graceful_shutdown(media: Path, tmp_path: Path) -> None:
    cfg = _config(media, auth={"keys": [KEY], "mutations_per_minute": 3})
    with serve(cfg, tmp_path) as srv:
        srv.wait_state("people", "live")
        body = {"id": "t1", "url": "testsrc.mp4"}
        assert srv.request("POST", "/api/streams", body)[0] == 401
        assert srv.request("POST", "/api/streams", body, key="wrong-key-0000000000")[0] == 403
        assert srv.request("DELETE", "/api/streams/people")[0] == 401
        assert srv.request("GET", "/api/streams")[0] == 200  # reads stay open by default
        assert srv.request("POST", "/api/streams", body, key=KEY)[0] == 201
        assert srv.request("DELETE", "/api/streams/t1", key=KEY)[0] == 204
        assert srv.request("POST", "/api/streams", body, key=KEY)[0] == 201
        assert srv.request("DELETE", "/api/streams/t1", key=KEY)[0] == 429  # 4th change in a minute
        srv.wait_state("t1", "live")  # so both streams have their FFmpeg child running

        async def ws_checks() -> int:
            for url in (srv.ws, srv.ws + "?token=wrong-key-0000000000"):
                with pytest.raises(websockets.InvalidStatus) as err:
                    async with websockets.connect(url):
                        pass
                assert err.value.response.status_code == 403
            async with websockets.connect(srv.ws + f"?token={KEY}") as ws:
                await ws.send(json.dumps({"op": "subscribe"}))
                while (r := await _recv_json(ws)).get("op") != "subscribed":
                    assert "op" not in r, r  # live messages may come before the reply
                await _recv_json(ws)
                children.extend(ffmpeg_children(srv.proc.pid))
                srv.proc.send_signal(signal.SIGTERM)
                try:
                    while True:
                        await asyncio.wait_for(ws.recv(), 15)
                except websockets.ConnectionClosed as closed:
                    assert closed.rcvd is not None
                    return int(closed.rcvd.code)
            return -1

        children: list[int] = []
        assert asyncio.run(ws_checks()) == 1001
        assert srv.proc.wait(timeout=20) == 0
        out = srv.proc.stdout.read() if srv.proc.stdout else ""
        assert "Traceback" not in out and KEY not in out
        assert len(children) == 2 and not alive(children)  # both FFmpeg children ended too
