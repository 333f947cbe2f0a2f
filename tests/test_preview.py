"""Preview JPEGs (server/preview.py) and their fan-out (server/hub.py): encoded once per camera
per preview frame, only for watched cameras, on their own thread, latest-only per client."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import cv2
import numpy as np
import pytest

from pipeline.config import DashboardConfig
from pipeline.types import Frame
from server.hub import Hub
from server.preview import PreviewEncoder, downscale, encode_jpeg, pack, unpack
from tests.factories import wait_until

IMAGE = np.zeros((432, 768, 3), np.uint8)
IMAGE[:, :384] = (0, 0, 255)  # left half red (BGR), right half black


def _frame(sid: str, index: int, t: float) -> Frame:
    return Frame(sid, index, index / 10, IMAGE, t)


def test_jpeg_is_resized_keeping_the_aspect_and_never_upscaled() -> None:
    img = _frame("a", 0, 0.0).image
    jpeg, w, h = encode_jpeg(img, 384, 80)
    assert (w, h) == (384, 216)
    back = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert back.shape == (216, 384, 3)
    assert back[108, 40, 2] > 200 and back[108, 40, 0] < 60  # still red on the left
    assert back[108, 340].max() < 40  # and black on the right
    _, w2, h2 = encode_jpeg(img, 1920, 80)
    assert (w2, h2) == (768, 432)


def test_the_message_round_trips_and_bad_ones_are_refused() -> None:
    header = {"v": 1, "type": "preview", "stream": "cam", "frame": 7}
    assert unpack(pack(header, b"\xff\xd8jpeg")) == (header, b"\xff\xd8jpeg")
    for bad in (b"", b"\x00\x00", b"\x00\x00\x00\x50{}", pack({"type": "tracks"}, b"x")):
        with pytest.raises(ValueError):
            unpack(bad)


def test_nothing_is_encoded_for_a_camera_nobody_watches() -> None:
    got: list[tuple[str, bytes]] = []
    enc = PreviewEncoder(DashboardConfig(preview_fps=5), lambda s, d: got.append((s, d)))
    enc.start()
    try:
        taken = [enc.offer(_frame("cam", i, 100 + i / 10)) for i in range(2000)]
        assert not any(taken) and enc.encoded == 0 and got == []
        enc.set_watched(frozenset({"other"}))
        assert not any(enc.offer(_frame("cam", i, 400 + i / 10)) for i in range(100))
        assert enc.encoded == 0
    finally:
        enc.stop()


def test_a_watched_camera_is_encoded_at_the_preview_rate_with_its_frame_index() -> None:
    got: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def deliver(sid: str, data: bytes) -> None:
        with lock:
            got.append((sid, data))

    enc = PreviewEncoder(DashboardConfig(preview_fps=5, preview_width=320), deliver)
    enc.set_watched(frozenset({"cam"}))
    # a 10 fps camera: every second frame is due at 5 fps
    taken = [i for i in range(40) if enc.offer(_frame("cam", i, 1000 + i / 10))]
    assert taken == list(range(0, 40, 2))
    enc.start()  # the slot kept only the newest due frame while the thread was not running
    try:
        wait_until(lambda: enc.encoded == 1 and got, 10, "the waiting frame encoded, delivered")
        header, jpeg = unpack(got[0][1])
        assert got[0][0] == "cam" and header["frame"] == 38 and header["stream"] == "cam"
        assert (header["width"], header["height"]) == (320, 180)
        assert (header["src_width"], header["src_height"]) == (768, 432)
        assert header["ts"] == pytest.approx(1003.8)
        assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (180, 320, 3)
        assert enc.cpu_s > 0
        enc.offer(_frame("cam", 40, 1004.0))
        wait_until(lambda: enc.encoded == 2, 10, "a new due frame encoded")
        enc.set_watched(frozenset())
        assert not enc.offer(_frame("cam", 60, 1010.0))
    finally:
        enc.stop()


def test_one_slot_per_stream_and_bounded_state_over_thousands_of_frames() -> None:
    enc = PreviewEncoder(DashboardConfig(preview_fps=30), lambda s, d: None)  # thread not started
    ids = [f"cam{i}" for i in range(50)]
    enc.set_watched(frozenset(ids))
    for i in range(5000):
        enc.offer(_frame(ids[i % 50], i, 10 + i))
    assert len(enc._slots) == 50
    # streams come and go: the per-stream clocks stay bounded by what is watched
    for i in range(5000):
        sid = f"gone{i}"
        enc.set_watched(frozenset({sid}))
        enc.offer(_frame(sid, i, 10_000 + i))
    assert len(enc._due) <= 4 + 64 + 1 and len(enc._slots) <= 1


class _Socket:
    def __init__(self) -> None:
        self.text: list[str] = []
        self.binary: list[bytes] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def send_text(self, text: str) -> None:
        await self.gate.wait()
        self.text.append(text)

    async def send_bytes(self, data: bytes) -> None:
        await self.gate.wait()
        self.binary.append(data)


def _replies(sock: _Socket) -> list[dict[str, Any]]:
    return [json.loads(t) for t in sock.text]


def test_hub_preview_op_fan_out_latest_only_and_the_watched_union() -> None:
    async def run() -> None:
        watched: list[frozenset[str]] = []
        hub = Hub(8, ["person"], max_list=4, on_watch=watched.append)
        a, b = _Socket(), _Socket()
        ca = hub.connect(a.send_text, None, a.send_bytes)
        cb = hub.connect(b.send_text, None, b.send_bytes)
        senders = [asyncio.create_task(hub.sender(c)) for c in (ca, cb)]
        assert hub.handle(ca, json.dumps({"op": "preview", "streams": ["cam1", "cam2"]}))
        assert hub.handle(cb, json.dumps({"op": "preview", "streams": ["cam2"]}))
        for bad in ({"op": "preview", "streams": "cam1"},
                    {"op": "preview", "streams": ["a", "b", "c", "d", "e"]},
                    {"op": "preview", "streams": [1]}):  # fmt: skip
            assert not hub.handle(cb, json.dumps(bad))
        assert watched == [frozenset({"cam1", "cam2"})]  # b's streams changed nothing
        await asyncio.sleep(0.01)
        assert _replies(a)[0] == {"op": "preview", "streams": ["cam1", "cam2"]}
        assert [r["op"] for r in _replies(b)] == ["preview", "error", "error", "error"]
        # b stops reading: of five previews it gets the newest one only, a gets every one
        b.gate.clear()
        hub.publish_preview("cam2", b"first")
        await asyncio.sleep(0.01)
        for i in range(5):
            hub.publish_preview("cam2", b"p%d" % i)
            await asyncio.sleep(0.01)
        hub.publish_preview("cam3", b"nobody")  # not watched: sent to no one
        b.gate.set()
        await asyncio.sleep(0.01)
        assert a.binary == [b"first", b"p0", b"p1", b"p2", b"p3", b"p4"]
        assert b.binary == [b"first", b"p4"]
        # the union follows subscriptions and disconnections
        hub.handle(ca, json.dumps({"op": "preview", "streams": []}))
        assert watched[-1] == frozenset({"cam2"})
        hub.disconnect(cb)
        assert watched[-1] == frozenset()
        for t in senders:
            t.cancel()

    asyncio.run(run())


def test_a_hub_without_previews_says_so() -> None:
    hub = Hub(8, ["person"])
    sock = _Socket()
    client = hub.connect(sock.send_text, None, sock.send_bytes)
    assert not hub.handle(client, json.dumps({"op": "preview", "streams": ["cam1"]}))
    assert "not available" in client.queue[0][0]
    assert hub.handle(client, json.dumps({"op": "clock"}))
    assert json.loads(client.queue[1][0])["ts"] > 1e9


@pytest.mark.parametrize("size", [(768, 432), (1920, 1080), (1283, 721), (2000, 300), (641, 360)])
def test_downscale_keeps_the_picture_where_it_was(size: tuple[int, int]) -> None:
    w, h = size
    img = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = w // 4, h // 3, w // 2, 2 * h // 3  # a white box
    img[y0:y1, x0:x1] = 255
    out = downscale(img, 640)
    assert out.shape == (round(h * 640 / w), 640, 3)
    s = 640 / w
    ys, xs = np.nonzero(out[..., 0] > 127)
    assert abs(xs.min() - x0 * s) <= 1.5 and abs(xs.max() + 1 - x1 * s) <= 1.5
    assert abs(ys.min() - y0 * s) <= 1.5 and abs(ys.max() + 1 - y1 * s) <= 1.5
    assert downscale(img[:, :600], 640).shape[1] == 600  # never upscaled
