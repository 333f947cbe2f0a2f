"""Event messages through the hub: their own message type, filtered by stream, class and kind,
tracks optional, current counts on request."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import numpy as np

from analytics.events import Event, encode_event
from pipeline.encode import encode_message
from pipeline.live_step import Published
from pipeline.types import Tracks
from server.hub import Client, Hub

NAMES = ["person", "bicycle", "car"]


def _msg(stream: str, seq: int, events: list[Event]) -> Published:
    t = Tracks(
        np.array([[1, 2, 3, 4]], np.float32), np.array([7]), np.array([0], np.int32),
        np.array([0.9], np.float32), np.array([0], np.int32), stream, seq, seq / 10,
    )  # fmt: skip
    msg = Published(stream, seq, 1000.0 + seq, encode_message(t, stream, seq, 1000.0 + seq), t)
    return replace(msg, events=tuple(events), event_data=tuple(encode_event(e) for e in events))


def _events(stream: str) -> list[Event]:
    return [
        Event("line_cross", stream, 1, 0.1, 1000.1, rule="door", track=7, class_id=0,
              class_name="person", direction="in"),
        Event("zone_enter", stream, 1, 0.1, 1000.1, rule="lot", track=8, class_id=2,
              class_name="car"),
        Event("camera_health", stream, 1, 0.1, 1000.1, check="black", state="on", value=3.0),
    ]  # fmt: skip


def _drain(c: Client) -> list[dict[str, Any]]:
    out = [json.loads(text) for text, _ in c.queue]
    c.queue.clear()
    return out


def _subscribe(hub: Hub, c: Client, **req: Any) -> dict[str, Any]:
    hub.handle(c, json.dumps({"op": "subscribe", **req}))
    return _drain(c)[0]


def test_events_are_their_own_messages_with_stream_class_and_kind_filters() -> None:
    counts = {"cam1": {"lines": {"door": {"in": {"person": 1}, "out": {}}}}}
    hub = Hub(8, NAMES, counts=lambda streams: {s: counts[s] for s in counts if not streams
                                               or s in streams})  # fmt: skip
    everything = hub.connect(lambda _t: None)
    people = hub.connect(lambda _t: None)
    crossings = hub.connect(lambda _t: None)
    quiet = hub.connect(lambda _t: None)
    reply = _subscribe(hub, people, streams=["cam1"], classes=["person"])
    assert reply["kinds"] is None and reply["tracks"] is True
    reply = _subscribe(hub, crossings, kinds=["line_cross"], tracks=False)
    assert reply == {"op": "subscribed", "streams": None, "classes": None,
                     "kinds": ["line_cross"], "tracks": False}  # fmt: skip
    _subscribe(hub, quiet, kinds=[])
    hub.publish(_msg("cam1", 0, _events("cam1")))
    hub.publish(_msg("cam2", 0, _events("cam2")))

    got = _drain(everything)
    assert [m.get("type", "tracks") for m in got] == ["tracks", "event", "event", "event"] * 2
    assert got[1] == json.loads(encode_event(_events("cam1")[0]))  # the same bytes everywhere
    # people: cam1 only; person events and events without a class (camera health)
    assert [(m.get("kind"), m["stream"]) for m in _drain(people)] == [
        (None, "cam1"), ("line_cross", "cam1"), ("camera_health", "cam1"),
    ]  # fmt: skip
    assert [(m["kind"], m["stream"]) for m in _drain(crossings)] == [
        ("line_cross", "cam1"), ("line_cross", "cam2"),
    ]  # fmt: skip
    assert [m.get("type") for m in _drain(quiet)] == [None, None]  # tracks only

    hub.handle(everything, json.dumps({"op": "counts", "streams": ["cam1"]}))
    assert _drain(everything) == [{"op": "counts", "counts": counts}]
    for bad in ({"op": "subscribe", "kinds": ["teleport"]}, {"op": "subscribe", "tracks": 1},
                {"op": "counts", "streams": "cam1"}):  # fmt: skip
        hub.handle(everything, json.dumps(bad))
        assert _drain(everything)[0]["op"] == "error"
