"""The WebSocket hub: fan-out of v1 track and event messages to subscribed clients. Runs on the
event loop.

- ``publish`` never blocks and never awaits: each client has a small ``deque`` that drops the
  oldest message when full (and counts what it dropped); the client's own sender task drains
  it, so a stalled client only ever loses its own messages.
- Each message is encoded once for every client without a class filter. A class filter is
  reduced to the classes present in the message first, so 1,000 clients with 1,000 different
  filters still cost one or two encodings per message (usually: the whole message, or an empty
  track list), not one per filter.
- The latest message of every stream is kept (one per stream) as the snapshot of live tracks
  that a reconnecting client receives first.

Client protocol (JSON text frames)::

    -> {"op": "subscribe", "streams": ["cam1"], "classes": ["person"], "last_seq": {"cam1": 41},
        "kinds": ["line_cross", "zone_enter"], "tracks": true}
    <- {"op": "subscribed", "streams": [...] | null, "classes": [...] | null,
        "kinds": [...] | null, "tracks": true}
    <- v1 track messages ...                    (a snapshot first when last_seq was given)
    <- v1 event messages {"v":1,"type":"event",...}  (analytics.events; same stream and class
                                                filters, plus "kinds"; [] for none)
    <- {"op": "lost", "count": 12}              (messages dropped for this client)
    -> {"op": "counts", "streams": ["cam1"]}    <- {"op": "counts", "counts": {"cam1": {...}}}
    -> {"op": "ping"}   <- {"op": "pong"}
    -> {"op": "clock"}  <- {"op": "clock", "ts": 1763798400.123}   (the server's unix time)
    -> {"op": "preview", "streams": ["cam1"]}   <- {"op": "preview", "streams": ["cam1"]}
    <- binary preview messages (server/preview.py: header + JPEG) of those streams, latest
       only: a client that reads slowly skips previews ([] or null: none; an error reply
       when the server has no previews, e.g. a gateway or dashboard.preview_fps 0)
    <- {"op": "error", "error": "..."}          (malformed input; nothing else changes)

``last_seq`` is the last ``seq`` a client saw per stream; it gets the snapshot of every stream
whose latest ``seq`` differs (lower: it missed messages; higher: the server restarted and its
counters began again). Lists are capped (``max_list`` stream ids, ``last_seq`` entries and
classes, or twice the known classes): a subscription never costs more than the streams that
can exist.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analytics.events import EVENT_KINDS, Event
from pipeline.encode import encode_message
from pipeline.live_step import Published

CountsProvider = Callable[[frozenset[str] | None], dict[str, Any]]  # streams -> their counts


@dataclass(eq=False)
class Client:
    """One connected WebSocket. ``streams``/``classes`` None means everything."""

    send: Callable[[str], Any]  # the socket's send_text coroutine function
    queue_size: int
    close: Callable[[int], Any] | None = None  # the socket's close(code) coroutine function
    streams: frozenset[str] | None = None
    classes: frozenset[int] | None = None
    kinds: frozenset[str] | None = None  # event kinds (None: all)
    tracks: bool = True  # track messages (False: events only)
    queue: deque[tuple[str, float]] = field(init=False)
    lost: int = 0
    lost_reported: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    send_bytes: Callable[[bytes], Any] | None = None  # the socket's send_bytes
    previews: frozenset[str] = frozenset()  # streams whose previews this client watches
    preview_slot: dict[str, bytes] = field(default_factory=dict)  # latest per stream, unsent

    def __post_init__(self) -> None:
        self.queue = deque(maxlen=self.queue_size)

    def enqueue(self, text: str, arrival: float) -> bool:
        """Queue a message; True if the oldest one had to be dropped for it."""
        dropped = len(self.queue) == self.queue.maxlen
        if dropped:
            self.lost += 1
        self.queue.append((text, arrival))
        self.wake.set()
        return dropped

    def wants(self, stream: str) -> bool:
        return self.streams is None or stream in self.streams

    def wants_event(self, e: Event) -> bool:
        if self.kinds is not None and e.kind not in self.kinds:
            return False
        return self.classes is None or e.class_id is None or e.class_id in self.classes


class Hub:
    def __init__(
        self,
        queue_size: int,
        class_names: Sequence[str],
        on_sent: Callable[[float], None] | None = None,
        on_lost: Callable[[int], None] | None = None,
        max_list: int = 1024,
        counts: CountsProvider | None = None,
        on_watch: Callable[[frozenset[str]], None] | None = None,
    ) -> None:
        self.queue_size = queue_size
        self.max_list = max_list
        self._counts = counts
        self.class_names = list(class_names)
        self.clients: set[Client] = set()
        self.latest: dict[str, Published] = {}
        self._on_sent = on_sent
        self._on_lost = on_lost
        self.published = 0
        self._on_watch = on_watch  # None: this server has no previews
        self.watched: frozenset[str] = frozenset()

    # -- called on the loop by the pipeline's handoff ----------------------------------------
    def publish(self, msg: Published) -> None:
        self.latest[msg.stream] = msg
        self.published += 1
        if not self.clients:
            return
        full = msg.data.decode()
        present: frozenset[int] | None = None
        filtered: dict[frozenset[int], str] = {}
        dropped = 0
        events = [(e, d.decode()) for e, d in zip(msg.events, msg.event_data, strict=True)]
        for c in self.clients:
            if not c.wants(msg.stream):
                continue
            if c.tracks and c.classes is None:
                dropped += c.enqueue(full, msg.arrival)
            elif c.tracks and c.classes is not None:
                if present is None:
                    present = frozenset(np.unique(msg.tracks.class_id).tolist())
                key = present & c.classes  # what this filter keeps of this message
                if key == present:
                    dropped += c.enqueue(full, msg.arrival)
                else:
                    text = filtered.get(key)
                    if text is None:
                        text = filtered[key] = _encode_filtered(msg, key)
                    dropped += c.enqueue(text, msg.arrival)
            for e, event_text in events:  # events, not tracks: a few per frame at most
                if c.wants_event(e):
                    dropped += c.enqueue(event_text, msg.arrival)
        if dropped and self._on_lost is not None:
            self._on_lost(dropped)  # counted when dropped, even while a sender is blocked

    def publish_preview(self, stream: str, data: bytes) -> None:
        """A preview message (encoded once) into every watching client's latest-only slot."""
        for c in self.clients:
            if stream in c.previews:
                c.preview_slot[stream] = data
                c.wake.set()

    def _watch_changed(self) -> None:
        watched = frozenset().union(*(c.previews for c in self.clients))
        if watched != self.watched:
            self.watched = watched
            if self._on_watch is not None:
                self._on_watch(watched)

    def forget_stream(self, stream: str) -> None:
        self.latest.pop(stream, None)

    # -- per connection -----------------------------------------------------------------------
    def connect(
        self,
        send: Callable[[str], Any],
        close: Callable[[int], Any] | None = None,
        send_bytes: Callable[[bytes], Any] | None = None,
    ) -> Client:
        client = Client(send, self.queue_size, close, send_bytes=send_bytes)
        self.clients.add(client)
        return client

    def disconnect(self, client: Client) -> None:
        self.clients.discard(client)
        client.wake.set()
        if client.previews:
            client.previews = frozenset()
            client.preview_slot.clear()
            self._watch_changed()

    def handle(self, client: Client, text: str) -> bool:
        """Apply one client message; its reply (and any snapshot) goes into the client's queue,
        so replies and messages leave in order through the one sender. False if the message
        was refused (the reply is then an ``{"op":"error"}``)."""
        reply, snapshot = self._apply(client, text)
        client.enqueue(reply, 0.0)
        for msg in snapshot:
            client.enqueue(self._text_for(client, msg), msg.arrival)
        return not isinstance(reply, _ErrorReply)

    def _text_for(self, client: Client, msg: Published) -> str:
        if client.classes is None:
            return msg.data.decode()
        return _encode_filtered(msg, client.classes)

    def _apply(self, client: Client, text: str) -> tuple[str, list[Published]]:
        try:
            req = json.loads(text)
        except (ValueError, RecursionError):  # not JSON, a 5000-digit number, nested too deep
            return _error("message is not JSON (or nests or counts too deep)"), []
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            return _error('expected an object with an "op" field'), []
        if req["op"] == "ping":
            return json.dumps({"op": "pong"}), []
        if req["op"] == "clock":
            return json.dumps({"op": "clock", "ts": round(time.time(), 4)}), []
        if req["op"] == "preview":
            return self._preview_reply(client, req), []
        if req["op"] == "counts":
            return self._counts_reply(req), []
        if req["op"] != "subscribe":
            ops = "subscribe, counts, preview, clock or ping"
            return _error(f"unknown op {_short(req['op'])} (use {ops})"), []
        streams = req.get("streams")
        classes = req.get("classes")
        last_seq = req.get("last_seq", {})
        n = self.max_list
        if streams is not None and (
            not isinstance(streams, list) or not all(isinstance(s, str) for s in streams)
        ):
            return _error('"streams" must be a list of stream ids'), []
        if streams is not None and len(streams) > n:
            return _error(f'"streams" lists more than {n} ids'), []
        if classes is not None and not isinstance(classes, list):
            return _error('"classes" must be a list of class names or ids'), []
        if classes is not None and len(classes) > max(n, 2 * len(self.class_names)):
            return _error(f'"classes" lists more than {max(n, 2 * len(self.class_names))}'), []
        if not isinstance(last_seq, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in last_seq.values()
        ):
            return _error('"last_seq" must map stream ids to integers'), []
        if len(last_seq) > n:
            return _error(f'"last_seq" has more than {n} entries'), []
        class_ids: set[int] = set()
        for c in classes or []:
            if isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(self.class_names):
                class_ids.add(c)
            elif isinstance(c, str) and c in self.class_names:
                class_ids.add(self.class_names.index(c))
            else:
                return _error(f"unknown class {_short(c)}"), []
        kinds, tracks = req.get("kinds"), req.get("tracks", True)
        if kinds is not None and (
            not isinstance(kinds, list)
            or len(kinds) > n
            or not all(isinstance(k, str) and k in EVENT_KINDS for k in kinds)
        ):
            return _error(f'"kinds" must be a list of event kinds ({", ".join(EVENT_KINDS)})'), []
        if not isinstance(tracks, bool):
            return _error('"tracks" must be true or false'), []
        client.streams = None if streams is None else frozenset(streams)
        client.classes = None if classes is None else frozenset(class_ids)
        client.kinds = None if kinds is None else frozenset(kinds)
        client.tracks = tracks
        snapshot = []
        if "last_seq" in req:
            snapshot = [
                msg
                for stream, msg in sorted(self.latest.items())
                if client.wants(stream) and msg.seq != last_seq.get(stream)
            ]
        reply = json.dumps(
            {
                "op": "subscribed",
                "streams": None if streams is None else sorted(client.streams or ()),
                "classes": None if classes is None else sorted(client.classes or ()),
                "kinds": None if kinds is None else sorted(client.kinds or ()),
                "tracks": tracks,
            }
        )
        return reply, (snapshot if tracks else [])

    def _preview_reply(self, client: Client, req: dict[str, Any]) -> str:
        if self._on_watch is None or client.send_bytes is None:
            return _error("previews are not available here (a gateway, or dashboard.preview_fps 0)")
        streams = req.get("streams")
        if streams is not None and (
            not isinstance(streams, list) or not all(isinstance(s, str) for s in streams)
        ):
            return _error('"streams" must be a list of stream ids')
        if streams is not None and len(streams) > self.max_list:
            return _error(f'"streams" lists more than {self.max_list} ids')
        client.previews = frozenset(streams or ())
        for sid in [s for s in client.preview_slot if s not in client.previews]:
            del client.preview_slot[sid]
        self._watch_changed()
        return json.dumps({"op": "preview", "streams": sorted(client.previews)})

    def _counts_reply(self, req: dict[str, Any]) -> str:
        streams = req.get("streams")
        if streams is not None and (
            not isinstance(streams, list) or not all(isinstance(s, str) for s in streams)
        ):
            return _error('"streams" must be a list of stream ids')
        if streams is not None and len(streams) > self.max_list:
            return _error(f'"streams" lists more than {self.max_list} ids')
        wanted = None if streams is None else frozenset(streams)
        counts = self._counts(wanted) if self._counts is not None else {}
        return json.dumps({"op": "counts", "counts": counts})

    async def sender(self, client: Client) -> None:
        """Drain one client's queue into its socket until it disconnects."""
        while client in self.clients:
            await client.wake.wait()
            client.wake.clear()
            if client.lost > client.lost_reported:
                n = client.lost - client.lost_reported
                client.lost_reported = client.lost
                await client.send(json.dumps({"op": "lost", "count": n}))
            while client.queue:
                text, arrival = client.queue.popleft()
                await client.send(text)
                if arrival > 0 and self._on_sent is not None:
                    self._on_sent(time.time() - arrival)
            while client.preview_slot and client.send_bytes is not None:
                sid = next(iter(client.preview_slot))
                await client.send_bytes(client.preview_slot.pop(sid))


class _ErrorReply(str):
    """An ``{"op":"error"}`` reply (a str, marked so ``handle`` can tell a refusal)."""


def _error(message: str) -> str:
    return _ErrorReply(json.dumps({"op": "error", "error": message}))


def _short(value: object, limit: int = 40) -> str:
    """``repr`` of a client's value, cut to ``limit`` characters for an error reply."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _encode_filtered(msg: Published, classes: frozenset[int]) -> str:
    t = msg.tracks
    keep = np.isin(t.class_id, np.fromiter(classes, np.int64, len(classes)))
    sub = type(t)(
        t.xyxy[keep],
        t.track_id[keep],
        t.class_id[keep],
        t.confidence[keep],
        t.det_index[keep],
        t.stream_id,
        t.frame_index,
        t.pts,
        predicted=t.predicted,
    )
    return encode_message(sub, msg.stream, msg.seq, msg.arrival).decode()
