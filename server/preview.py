"""Preview JPEGs of the cameras someone watches, for the dashboard (a binary WebSocket message).

    inference thread: after each step, ``offer(frame)`` per stream: a set lookup and a clock
        check; a watched stream's frame that is due (``dashboard.preview_fps``) is put in that
        stream's one-frame slot (a newer frame replaces one not yet encoded)
    encoder thread ("vigil-preview"): takes slots oldest first, resizes to
        ``dashboard.preview_width`` (``downscale``, never upscaled) and JPEG-encodes with OpenCV
        (both release the GIL), once per camera per preview frame, then ``deliver(stream, data)``
    event loop: the hub puts ``data`` into each watching client's latest-only preview slot

Nothing is encoded for a camera nobody watches (``set_watched`` holds the union of what the
clients asked for), and a slow encoder or browser only ever skips previews: one frame per stream
waits here, one message per stream per client waits in the hub.

The binary message (``pack``/``unpack``)::

    4 bytes   big-endian uint32 N: the header's length
    N bytes   UTF-8 JSON {"v":1,"type":"preview","stream":"cam1","frame":1234,"pts":41.13,
              "ts":1763798400.123,"width":640,"height":360,"src_width":1280,"src_height":720}
    the rest  the JPEG

``frame`` is the source frame index of the v1 track message of the same frame (boxes for the
preview are that message's, in source pixels: scale by ``width / src_width``), ``ts`` the frame's
arrival from the decoder (unix seconds), as in the track message.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

import cv2
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pipeline.config import DashboardConfig
from pipeline.types import Frame
from server.hub import Hub

HEADER = struct.Struct(">I")
ENCODE_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128)


def downscale(image: np.ndarray, width: int) -> np.ndarray:
    """``image`` ``(H, W, 3) uint8`` resized to ``width`` keeping the aspect, never upscaled.

    Area averaging where it matters, and fast: halved with OpenCV's 2x area path while at least
    twice as wide as ``width`` (an odd last row or column is dropped before each halving, so
    boxes scaled by ``width / W`` are off by under ``2**halvings / W``: a pixel of a 4K frame),
    then bilinear for the factor under 2 that remains (no aliasing to speak of there). An area
    resize at a fractional factor costs 4 to 5 times as much (768 -> 640 px: 2.0 ms against
    0.4 ms on one core)."""
    h, w = image.shape[:2]
    if w <= width:
        return image
    out_h = max(1, round(h * width / w))
    while image.shape[1] >= 2 * width and image.shape[0] >= 4:
        h2, w2 = image.shape[0] // 2, image.shape[1] // 2
        image = cv2.resize(image[: 2 * h2, : 2 * w2], (w2, h2), interpolation=cv2.INTER_AREA)
    if image.shape[1] != width or image.shape[0] != out_h:
        image = cv2.resize(image, (width, out_h), interpolation=cv2.INTER_LINEAR)
    return image


def encode_jpeg(image: np.ndarray, width: int, quality: int) -> tuple[bytes, int, int]:
    """``image`` ``(H, W, 3) uint8`` BGR -> (JPEG bytes, width, height), resized to ``width``
    keeping the aspect (never upscaled; :func:`downscale`)."""
    image = downscale(image, width)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes(), int(image.shape[1]), int(image.shape[0])


def pack(header: dict[str, Any], jpeg: bytes) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return HEADER.pack(len(head)) + head + jpeg


def unpack(data: bytes) -> tuple[dict[str, Any], bytes]:
    """The header and the JPEG of one preview message (ValueError if it is not one)."""
    if len(data) < HEADER.size:
        raise ValueError("preview message shorter than its header length")
    (n,) = HEADER.unpack_from(data)
    if HEADER.size + n > len(data):
        raise ValueError("preview header runs past the message")
    header = json.loads(data[HEADER.size : HEADER.size + n])
    if not isinstance(header, dict) or header.get("type") != "preview":
        raise ValueError("not a preview header")
    return header, data[HEADER.size + n :]


class PreviewMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.encoded = Counter(
            "vigil_preview_frames_total", "Preview JPEGs encoded (once per camera per frame)",
            registry=registry,
        )  # fmt: skip
        self.skipped = Counter(
            "vigil_preview_skipped_total",
            "Due preview frames replaced by a newer one before the encoder took them",
            registry=registry,
        )
        self.cpu = Histogram(
            "vigil_preview_encode_cpu_seconds",
            "CPU time of one preview frame on the encoder thread (resize + JPEG + header)",
            buckets=ENCODE_BUCKETS,
            registry=registry,
        )
        self.watched = Gauge(
            "vigil_preview_watched_streams", "Streams at least one client watches",
            registry=registry,
        )  # fmt: skip


class PreviewEncoder:
    """The due-frame gate, the per-stream slots and the encoder thread (module docstring).

    ``deliver(stream, data)`` is called on the encoder thread and must not block (the server
    schedules the fan-out on the event loop)."""

    def __init__(
        self,
        cfg: DashboardConfig,
        deliver: Callable[[str, bytes], None],
        metrics: PreviewMetrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.interval = 1.0 / cfg.preview_fps if cfg.preview_fps > 0 else float("inf")
        self._deliver = deliver
        self._metrics = metrics
        self._watched: frozenset[str] = frozenset()
        self._due: dict[str, float] = {}  # inference thread only
        self._slots: OrderedDict[str, Frame] = OrderedDict()
        self._cond = threading.Condition()
        self._stopping = False
        self.encoded = 0
        self.cpu_s = 0.0  # encoder-thread CPU seconds, all frames
        self.last_error = ""
        self._thread = threading.Thread(target=self._run, name="vigil-preview", daemon=True)

    @property
    def enabled(self) -> bool:
        return self.cfg.preview_fps > 0

    def start(self) -> None:
        if self.enabled:
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._slots.clear()
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(2.0)

    def set_watched(self, streams: frozenset[str]) -> None:
        """The streams some client watches (called on the loop whenever that changes)."""
        self._watched = streams
        if self._metrics is not None:
            self._metrics.watched.set(len(streams))
        with self._cond:
            for sid in [s for s in self._slots if s not in streams]:
                del self._slots[sid]

    def offer(self, frame: Frame) -> bool:
        """Called on the inference thread for every inferred frame; True if it was taken.
        Never blocks beyond a short lock, never raises for a frame."""
        sid = frame.stream_id
        if not self.enabled or sid not in self._watched:
            if sid in self._due:
                del self._due[sid]
            return False
        now = frame.arrival or time.time()
        # 10% early is due: a 10 fps camera previewed at 5 fps gives every second frame
        due = self._due.get(sid)
        if due is not None and now < due - 0.1 * self.interval:
            return False
        # keep the cadence, unless more than an interval behind it (a pause, a slow stream)
        base = now if due is None or now - due > self.interval else due
        self._due[sid] = base + self.interval
        if len(self._due) > 4 * max(1, len(self._watched)) + 64:  # streams removed meanwhile
            self._due = {s: t for s, t in self._due.items() if s in self._watched}
        with self._cond:
            if sid in self._slots and self._metrics is not None:
                self._metrics.skipped.inc()
            self._slots[sid] = frame  # a newer frame replaces one still waiting
            self._cond.notify()
        return True

    def _run(self) -> None:
        cv2.setNumThreads(1)  # this thread's own work; the inference has the other cores
        while True:
            with self._cond:
                while not self._slots and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                sid, frame = self._slots.popitem(last=False)
            try:
                data = self.encode(frame)
            except Exception as e:  # a bad frame costs its preview, not the thread
                self.last_error = f"{type(e).__name__}: {e}"[:200]
                continue
            self._deliver(sid, data)

    def encode(self, frame: Frame) -> bytes:
        """One preview message for ``frame`` (its CPU time counted in ``cpu_s``)."""
        t0 = time.thread_time()
        jpeg, w, h = encode_jpeg(frame.image, self.cfg.preview_width, self.cfg.preview_quality)
        header = {"v": 1, "type": "preview", "stream": frame.stream_id, "frame": frame.index,
                  "pts": round(frame.pts, 3), "ts": round(frame.arrival, 3), "width": w,
                  "height": h, "src_width": frame.width, "src_height": frame.height}  # fmt: skip
        data = pack(header, jpeg)
        spent = time.thread_time() - t0
        self.encoded += 1
        self.cpu_s += spent
        if self._metrics is not None:
            self._metrics.encoded.inc()
            self._metrics.cpu.observe(spent)
        return data


MJPEG_BOUNDARY = "vigil-preview"


async def mjpeg_parts(hub: Hub, stream: str) -> AsyncIterator[bytes]:
    """``multipart/x-mixed-replace`` parts of one camera's previews for as long as the HTTP
    client reads: it joins the hub as a client that watches ``stream`` and takes no messages
    (so it counts against ``server.ws_max_clients`` and keeps the camera watched), and like
    every viewer it gets the newest preview only, skipping what it was too slow for."""
    client = hub.connect(_ignore, None, _ignore)
    client.tracks, client.kinds = False, frozenset()  # previews only
    hub.handle(client, json.dumps({"op": "preview", "streams": [stream]}))
    try:
        while client in hub.clients:
            await client.wake.wait()
            client.wake.clear()
            client.queue.clear()  # the op's reply: nothing text-shaped goes to this client
            data = client.preview_slot.pop(stream, None)
            if data is None:
                continue
            _, jpeg = unpack(data)
            yield (
                (
                    f"--{MJPEG_BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(jpeg)}\r\n\r\n"
                ).encode()
                + jpeg
                + b"\r\n"
            )
    finally:
        hub.disconnect(client)


async def _ignore(_: object) -> None:
    return None
