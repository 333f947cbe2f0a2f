from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

import server.hub as hub_module
from pipeline.encode import encode_message
from pipeline.live_step import Published
from pipeline.types import Tracks
from server.hub import Hub

NAMES = ["person", "bicycle", "car"]


def _msg(stream: str, seq: int, classes: list[int] | None = None) -> Published:
    cls = np.array(classes if classes is not None else [0, 2], np.int32)
    n = len(cls)
    t = Tracks(
        np.tile(np.array([[1, 2, 3, 4]], np.float32), (n, 1)),
        np.arange(1, n + 1, dtype=np.int64),
        cls,
        np.full(n, 0.9, np.float32),
        np.arange(n, dtype=np.int32),
        stream,
        seq,
        seq / 10,
    )
    return Published(stream, seq, 1000.0 + seq, encode_message(t, stream, seq, 1000.0 + seq), t)


class Sink:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    async def send(self, text: str) -> None:
        self.sent.append(json.loads(text))


def test_drop_oldest_per_client_and_lost_notice() -> None:
    async def run() -> tuple[Sink, Sink]:
        hub = Hub(queue_size=4, class_names=NAMES)
        fast, slow = Sink(), Sink()
        cf, cs = hub.connect(fast.send), hub.connect(slow.send)
        task = asyncio.create_task(hub.sender(cf))
        for i in range(1000):
            hub.publish(_msg("cam1", i))
            await asyncio.sleep(0)  # the fast client drains; the slow one never runs
        assert len(cs.queue) == 4 and cs.lost == 996  # bounded however long it stalls
        slow_task = asyncio.create_task(hub.sender(cs))
        await asyncio.sleep(0.01)
        hub.disconnect(cf)
        hub.disconnect(cs)
        await asyncio.gather(task, slow_task)
        return fast, slow

    fast, slow = asyncio.run(run())
    assert [m["seq"] for m in fast.sent] == list(range(1000))
    assert slow.sent[0] == {"op": "lost", "count": 996}
    assert [m["seq"] for m in slow.sent[1:]] == [996, 997, 998, 999]


def test_subscribe_filters_and_encodes_once_per_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = hub_module._encode_filtered

    def counting(msg: Published, classes: frozenset[int]) -> str:
        calls.append(classes)
        return real(msg, classes)

    monkeypatch.setattr(hub_module, "_encode_filtered", counting)
    hub = Hub(queue_size=8, class_names=NAMES)
    a, b, c, d = (hub.connect(Sink().send) for _ in range(4))
    hub.handle(a, json.dumps({"op": "subscribe", "classes": ["person"]}))
    hub.handle(b, json.dumps({"op": "subscribe", "classes": [0]}))
    hub.handle(c, json.dumps({"op": "subscribe", "streams": ["cam2"]}))
    for cl in (a, b, c, d):
        cl.queue.clear()
    hub.publish(_msg("cam1", 0))
    assert len(calls) == 1  # a and b share one encoding; d gets the full message as is
    assert json.loads(a.queue[0][0])["tracks"] == [[1, 0, 0.9, 1.0, 2.0, 3.0, 4.0]]
    assert len(json.loads(d.queue[0][0])["tracks"]) == 2
    assert not c.queue  # subscribed to another stream


def test_snapshot_on_reconnect() -> None:
    hub = Hub(queue_size=8, class_names=NAMES)
    for i in range(5):
        hub.publish(_msg("cam1", i))
    hub.publish(_msg("cam2", 7))
    client = hub.connect(Sink().send)
    hub.handle(client, json.dumps({"op": "subscribe", "last_seq": {"cam1": 2, "cam2": 7}}))
    texts = [json.loads(t) for t, _ in client.queue]
    assert texts[0]["op"] == "subscribed"
    assert [(m["stream"], m["seq"]) for m in texts[1:]] == [("cam1", 4)]  # cam2 is up to date


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", '"op"'),
        ('{"op": "dance"}', "unknown op"),
        ('{"op": "subscribe", "streams": "cam1"}', '"streams" must be a list'),
        ('{"op": "subscribe", "classes": ["unicorn"]}', "unknown class"),
        ('{"op": "subscribe", "classes": [99]}', "unknown class"),
        ('{"op": "subscribe", "last_seq": {"cam1": "x"}}', '"last_seq"'),
    ],
)
def test_malformed_messages_get_an_error_and_change_nothing(text: str, error: str) -> None:
    hub = Hub(queue_size=8, class_names=NAMES)
    client = hub.connect(Sink().send)
    hub.handle(client, json.dumps({"op": "subscribe", "streams": ["cam1"], "classes": [2]}))
    before = (client.streams, client.classes)
    hub.handle(client, text)
    reply = json.loads(client.queue[-1][0])
    assert reply["op"] == "error" and error in reply["error"]
    assert (client.streams, client.classes) == before


def test_ping() -> None:
    hub = Hub(queue_size=2, class_names=NAMES)
    client = hub.connect(Sink().send)
    hub.handle(client, '{"op": "ping"}')
    assert json.loads(client.queue[0][0]) == {"op": "pong"}
