"""The Redis Stream entry schema: what a worker appends and a gateway reads back.

Every entry is a flat field map with a ``kind``, so tracks and events share one format::

    kind=track  v=1  seq=<int>  ts=<frame arrival, unix s>  worker=<node>  token=<fence>
                data=<the v1 wire message, byte for byte what `vigil serve` sends>
                events=<the frame's v1 event messages, one per line; empty if none>
                epoch=<the counts reset those events were counted after>
    kind=event  v=1  seq=<int>  ts=...  worker=...  token=...  data=<the event message>

Track entries go to the camera's ``out`` stream (read by every gateway: fan-out to WebSocket
clients, the frame's events with it, in order); each event also goes to its sibling ``events``
stream, which gateways read through one consumer group so that each event is stored (and sent
to MQTT and webhooks) once. ``token`` lets any reader check that a camera's writers never
interleave: along a stream, tokens never decrease.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from analytics.events import Event, decode_event
from pipeline.live_step import Published
from pipeline.types import Tracks, VigilError

ENTRY_VERSION = b"1"
TRACK = b"track"
EVENT = b"event"


@dataclass(frozen=True)
class Entry:
    """One decoded entry (``data`` is the message as sent to clients)."""

    kind: bytes
    camera: str
    seq: int
    ts: float
    worker: str
    token: int
    data: bytes
    events: bytes = b""  # track entries: the frame's event messages, newline-separated
    epoch: int = 0  # track entries: the counts reset the events were counted after


def track_fields(msg: Published, worker: str, token: int) -> list[bytes]:
    """The flat field/value list of a track entry."""
    return [
        b"kind", TRACK,
        b"v", ENTRY_VERSION,
        b"seq", str(msg.seq).encode(),
        b"ts", repr(msg.arrival).encode(),
        b"worker", worker.encode(),
        b"token", str(token).encode(),
        b"data", msg.data,
        b"events", b"\n".join(msg.event_data),  # always present: a batch's entries share a width
        b"epoch", str(msg.counts_epoch).encode(),
    ]  # fmt: skip


def event_fields(data: bytes, seq: int, ts: float, worker: str, token: int) -> list[bytes]:
    """The flat field/value list of an event entry (``data``: the encoded event message)."""
    return [
        b"kind", EVENT,
        b"v", ENTRY_VERSION,
        b"seq", str(seq).encode(),
        b"ts", repr(ts).encode(),
        b"worker", worker.encode(),
        b"token", str(token).encode(),
        b"data", data,
    ]  # fmt: skip


def decode_entry(camera: str, fields: Mapping[bytes, bytes]) -> Entry:
    """Fields as redis-py returns them -> :class:`Entry`; VigilError if malformed."""
    try:
        return Entry(
            kind=fields[b"kind"],
            camera=camera,
            seq=int(fields[b"seq"]),
            ts=float(fields[b"ts"]),
            worker=fields[b"worker"].decode(),
            token=int(fields[b"token"]),
            data=fields[b"data"],
            events=fields.get(b"events", b""),
            epoch=int(fields.get(b"epoch", b"0")),
        )
    except (KeyError, ValueError, UnicodeDecodeError) as e:
        raise VigilError(f"malformed entry for camera {camera!r}: {e!r}") from None


def tracks_of(data: bytes) -> Tracks:
    """The tracks of a v1 wire message (the inverse of ``pipeline.encode.encode_message``, to
    the message's precision: boxes 0.1 px, confidence 0.001). Rows ``[id, cls, conf, x1, y1,
    x2, y2]`` become ``xyxy (M, 4) float32`` source pixels, ``track_id (M,) int64``,
    ``class_id (M,) int32``, ``confidence (M,) float32``; ``det_index`` is -1 (not on the
    wire); ``predicted`` as sent."""
    try:
        msg = json.loads(data)
        rows = np.asarray(msg["tracks"], np.float64).reshape(-1, 7)
        stream, frame, pts = str(msg["stream"]), int(msg["frame"]), float(msg["pts"])
        predicted = bool(msg.get("predicted", False))
    except (ValueError, KeyError, TypeError) as e:
        raise VigilError(f"malformed v1 message: {e!r}") from None
    m = len(rows)
    return Tracks(
        rows[:, 3:7].astype(np.float32),
        rows[:, 0].astype(np.int64),
        rows[:, 1].astype(np.int32),
        rows[:, 2].astype(np.float32),
        np.full(m, -1, np.int32),
        stream,
        frame,
        pts,
        predicted=predicted,
    )


def events_of(data: bytes) -> tuple[tuple[Event, ...], tuple[bytes, ...]]:
    """Newline-separated v1 event messages -> the events and their messages; VigilError if
    one is malformed."""
    lines = tuple(line for line in data.split(b"\n") if line)
    try:
        return tuple(decode_event(line) for line in lines), lines
    except ValueError as e:
        raise VigilError(str(e)) from None


def published_of(entry: Entry) -> Published:
    """A track entry as the hub's message type (what the local pipeline would publish, its
    events included)."""
    events, event_data = events_of(entry.events)
    tracks = tracks_of(entry.data)
    return Published(
        entry.camera, entry.seq, entry.ts, entry.data, tracks, events, event_data, entry.epoch
    )
