"""Leases, fencing and the worker's writer against a real ``redis-server`` (in process)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from prometheus_client import CollectorRegistry

from analytics.events import Event, decode_event, encode_event
from benchmarks.cluster_run import RedisServer, redis_server
from cluster.connection import Keys, connect
from cluster.entries import Entry, decode_entry, published_of, track_fields, tracks_of
from cluster.events import EventConsumer, StoreFn
from cluster.gateway import Gateway, store_events
from cluster.leases import Lease, Leases
from cluster.metrics import WorkerMetrics
from cluster.worker import next_seq
from cluster.writer import ResultWriter
from pipeline.batcher import Backoff
from pipeline.config import EventStoreConfig, RedisConfig, VigilConfig, parse_stream
from pipeline.encode import encode_message
from pipeline.live_step import Published
from pipeline.types import Tracks, VigilError
from server.hub import _encode_filtered
from server.outputs import EventOutputs
from tests.factories import wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis"), aof=False) as srv:
        yield srv


@pytest.fixture()
def leases(server: RedisServer, request: pytest.FixtureRequest) -> Leases:
    """Leases with a 1 s TTL (short, yet longer than a full garbage collection on a loaded
    machine) under a prefix of their own (tests never share keys)."""
    client = connect(RedisConfig(url=server.url))
    return Leases(client, Keys(f"t{abs(hash(request.node.name)) % 10**8}"), ttl_s=1.0)


def _tracks(n: int, frame: int = 0) -> Tracks:
    rng = np.random.default_rng(frame)
    xy = rng.uniform(0, 600, (n, 2)).astype(np.float32)
    return Tracks(
        np.hstack([xy, xy + rng.uniform(5, 80, (n, 2)).astype(np.float32)]),
        np.arange(1, n + 1, dtype=np.int64),
        (np.arange(n) % 3).astype(np.int32),
        rng.uniform(0.2, 1, n).astype(np.float32),
        np.arange(n, dtype=np.int32),
        "cam",
        frame,
        frame / 10,
    )


def _message(cam: str, seq: int, n: int = 3) -> Published:
    tracks = _tracks(n, seq)
    arrival = 1.7e9 + seq / 10
    return Published(cam, seq, arrival, encode_message(tracks, cam, seq, arrival), tracks)


def test_one_holder_tokens_increase_and_only_the_holder_renews(leases: Leases) -> None:
    a = leases.claim("cam", "w1")
    assert a is not None and a.token == 1
    assert leases.claim("cam", "w2") is None  # held: nobody else gets it
    stranger = Lease("cam", "w2", a.token)
    assert leases.renew([a, stranger]) == [1, -1]
    assert leases.release([stranger]) == [False]  # a stranger cannot delete it
    assert leases.holders(["cam", "other"]) == [("w1", 1), None]
    assert leases.release([a]) == [True]
    b = leases.claim("cam", "w2")
    assert b is not None and b.token == 2  # every claim gets a larger token
    wait_until(lambda: leases.holders(["cam"]) == [None], 5, "the lease expired (1 s TTL)")
    assert leases.renew([b]) == [0]  # expired: nobody holds it
    c = leases.claim("cam", "w1")
    assert c is not None and c.token == 3
    claims = leases.client.xrange(leases.keys.claims("cam"))
    assert [(f[b"worker"], int(f[b"token"])) for _, f in claims] == [
        (b"w1", 1), (b"w2", 2), (b"w1", 3)
    ]  # fmt: skip


def test_a_lost_lease_cannot_write_and_the_floor_survives_lost_data(leases: Leases) -> None:
    k = leases.keys
    old = leases.claim("cam", "w1")
    assert old is not None
    fields = [b"kind", b"track", b"seq", b"0"]
    assert leases.append_many([(old, k.out("cam"), 100, [fields, fields])]) == [2]
    wait_until(lambda: leases.holders(["cam"]) == [None], 5, "the lease expired")
    new = leases.claim("cam", "w2")
    assert new is not None and new.token == old.token + 1
    assert leases.append_many([(old, k.out("cam"), 100, [fields])]) == [0]  # fenced
    assert leases.append_many([(new, k.out("cam"), 100, [fields])]) == [1]
    assert leases.client.xlen(k.out("cam")) == 3
    # Redis lost its data (restarted without persistence): a floor keeps tokens increasing.
    leases.client.delete(k.lease("cam"), k.fence("cam"))
    again = leases.claim("cam", "w1", floor=new.token)
    assert again is not None and again.token == new.token + 1


def test_maxlen_bounds_each_camera_stream(leases: Leases) -> None:
    lease = leases.claim("cam", "w1")
    assert lease is not None
    leases.ttl_ms = 60_000
    assert leases.renew([lease]) == [1]
    entries = [[b"kind", b"track", b"seq", str(i).encode()] for i in range(5000)]
    for i in range(0, 5000, 250):
        leases.append_many([(lease, leases.keys.out("cam"), 200, entries[i : i + 250])])
    # XADD MAXLEN ~ trims whole radix-tree nodes (100 entries each by default).
    assert 200 <= leases.client.xlen(leases.keys.out("cam")) <= 300


def test_entries_round_trip_to_the_hubs_message_and_filtered_encoding() -> None:
    msg = replace(_message("door", 41, n=7), counts_epoch=3)
    flat = track_fields(msg, "w1", 7)
    assert len(flat) == 18
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    back = published_of(decode_entry("door", fields))
    assert (back.stream, back.seq, back.arrival, back.data) == ("door", 41, msg.arrival, msg.data)
    assert back.counts_epoch == 3  # the counts reset the frame's events were counted after
    assert back.tracks.frame_index == msg.tracks.frame_index
    np.testing.assert_allclose(back.tracks.xyxy, msg.tracks.xyxy, atol=0.051)
    for classes in (frozenset({0}), frozenset({1, 2}), frozenset()):
        # a class-filtered client gets the same bytes from a gateway as from `vigil serve`
        assert _encode_filtered(back, classes) == _encode_filtered(msg, classes)
    with pytest.raises(VigilError, match="malformed"):
        decode_entry("door", {b"kind": b"track"})
    with pytest.raises(VigilError, match="malformed v1"):
        tracks_of(b'{"tracks": 3}')


def test_next_seq_skips_the_frames_nobody_analyzed() -> None:
    assert next_seq(None, 10.0, 100.0) == 0
    last = {b"seq": b"41", b"ts": b"100.0"}
    assert next_seq(last, 10.0, 100.05) == 42  # no frame missed
    assert next_seq(last, 10.0, 103.0) == 42 + 29  # 3 s at 10 fps: 29 frames never analyzed
    assert next_seq(last, 0.0, 103.0) == 42  # every-frame streams: no estimate


def test_writer_buffers_a_bounded_amount_while_redis_is_away(tmp_path: Path) -> None:
    """Redis not there yet: the writer keeps the newest ``capacity`` entries (dropping and
    counting the oldest), then writes them in order once Redis answers, with no restart."""
    srv = RedisServer(tmp_path / "late", aof=False)  # its port is reserved, nothing listens
    # Refused connections fail at once; a generous reply timeout keeps a slow reply from being
    # retried (the writer is at least once) and duplicating entries
    client = connect(RedisConfig(url=srv.url, timeout_s=2.0))
    keys = Keys("w")
    leases = Leases(client, keys, ttl_s=30)
    metrics = WorkerMetrics(CollectorRegistry())
    ups: list[bool] = []
    writer = ResultWriter(leases, keys, maxlen=10_000, capacity=100, batch=32,
                          backoff=Backoff(0.05, 0.2), metrics=metrics,
                          on_rejected=lambda _: None, on_redis=ups.append)  # fmt: skip
    lease = Lease("cam", "w1", 1)
    writer.own(lease)
    writer.start()
    try:
        for seq in range(3000):
            writer.publish(_message("cam", seq, n=1))  # never blocks
        wait_until(lambda: False in ups, 10, "the writer saw Redis down")
        dropped = metrics.dropped.labels("buffer_full")
        assert writer.pending() <= 100 + 32  # the buffer, and at most one batch in flight
        # Between two retries (no batch in flight) exactly the newest 100 are held and the
        # oldest 2900 dropped and counted; a retry may have a batch out at any given instant.
        wait_until(lambda: writer.pending() == 100 and dropped._value.get() == 2900, 10,
                   "the writer settled at 100 held, 2900 dropped")  # fmt: skip
        srv.start()
        client.set(keys.lease("cam"), lease.value)  # the lease the worker holds
        # pending() reaches 0 a moment before the writer counts what it wrote and says Redis is up
        wait_until(lambda: writer.pending() == 0 and metrics.written._value.get() >= 100
                   and ups[-1] is True, 20, "the buffer drained after Redis came")  # fmt: skip
        seqs = [int(f[b"seq"]) for _, f in client.xrange(keys.out("cam"))]
        assert seqs == list(range(2900, 3000))  # the newest 100, in order, once each
        assert metrics.written._value.get() == 100
    finally:
        writer.stop(1.0)
        srv.stop()


def test_a_malformed_redis_url_is_one_clear_error() -> None:
    with pytest.raises(VigilError, match=r"redis\.url"):
        connect(RedisConfig(url="http://example"))
    with pytest.raises(VigilError, match="password_file"):
        connect(RedisConfig(password_file="/nonexistent/secret"))
    client = connect(RedisConfig(url="redis://127.0.0.1:1/0", timeout_s=0.1))
    with pytest.raises(redis.ConnectionError):
        client.ping()


def test_events_are_stored_once_across_gateways(server: RedisServer) -> None:
    """Two gateways consume the cameras' event streams through one group: every event is
    stored by exactly one of them; one that crashes before acknowledging leaves its events
    pending and the other claims and stores them."""
    client = connect(RedisConfig(url=server.url))
    keys = Keys("ev")
    leases = Leases(client, keys, ttl_s=60)
    metrics = WorkerMetrics(CollectorRegistry())
    writer = ResultWriter(leases, keys, maxlen=10_000, capacity=10_000, batch=64,
                          backoff=Backoff(0.05, 0.2), metrics=metrics,
                          on_rejected=lambda _: None, on_redis=lambda _: None)  # fmt: skip
    cams = ["a", "b", "c"]
    for cam in cams:
        lease = leases.claim(cam, "w1")
        assert lease is not None
        writer.own(lease)
    writer.start()
    for i in range(300):
        writer.publish_event(cams[i % 3], f'{{"n":{i}}}'.encode(), i, 1.8e9 + i)
    wait_until(lambda: writer.pending() == 0, 20, "events written")
    writer.stop(1.0)

    stored: dict[str, list[int]] = {"g1": [], "g2": []}

    def store_into(name: str) -> StoreFn:
        def store(batch: Sequence[tuple[bytes, Entry]]) -> None:
            stored[name].extend(int(json.loads(e.data)["n"]) for _, e in batch)

        return store

    def crash(batch: Sequence[tuple[bytes, Entry]]) -> None:
        raise RuntimeError("the gateway died while storing")

    g1 = EventConsumer(client, keys, "store", "g1", store_into("g1"), count=20)
    g2 = EventConsumer(client, keys, "store", "g2", store_into("g2"), count=20)
    dead = EventConsumer(client, keys, "store", "g3", crash, count=20, claim_idle_s=0.2)
    with pytest.raises(RuntimeError):
        dead.poll(cams, block_ms=10)  # read 20 (or so) events, never acknowledged
    while g1.poll(cams, block_ms=10) + g2.poll(cams, block_ms=10):
        pass
    assert len(stored["g1"]) + len(stored["g2"]) < 300  # the dead one's are still pending
    rescuer = EventConsumer(client, keys, "store", "g1", store_into("g1"), claim_idle_s=0.2)
    time.sleep(0.3)  # let the dead consumer's entries pass the idle time
    rescuer.reclaim(cams)
    everything = stored["g1"] + stored["g2"]
    assert sorted(everything) == list(range(300))  # each event stored once
    assert stored["g1"] and stored["g2"]  # both gateways took a share
    assert all(int(client.xpending(keys.events(c), "store")["pending"]) == 0 for c in cams)


def _events(cam: str, seq: int, n: int) -> tuple[tuple[Event, ...], tuple[bytes, ...]]:
    found = tuple(
        Event("line_cross", cam, seq, seq / 10, 1.7e9 + seq / 10, rule="door", track=i + 1,
              class_id=0, class_name="person", direction="in" if i % 2 else "out",
              box=(1.0, 2.0, 30.5, 40.0), seq=seq * 10 + i)
        for i in range(n)
    )  # fmt: skip
    return found, tuple(encode_event(e) for e in found)


def _door_writer(client: redis.Redis, keys: Keys) -> ResultWriter:
    """A started writer holding camera ``door``'s lease (worker ``w1``, a 60 s TTL)."""
    leases = Leases(client, keys, ttl_s=60)
    writer = ResultWriter(leases, keys, maxlen=10_000, capacity=10_000, batch=64,
                          backoff=Backoff(0.05, 0.2), metrics=WorkerMetrics(CollectorRegistry()),
                          on_rejected=lambda _: None, on_redis=lambda _: None)  # fmt: skip
    lease = leases.claim("door", "w1")
    assert lease is not None
    writer.own(lease)
    writer.start()
    return writer


def test_events_reach_the_gateways_clients_with_their_frame_and_its_store_once(
    server: RedisServer, tmp_path: Path
) -> None:
    """A worker's frame with analytics events: its track entry carries the events (fan-out to
    every gateway's WebSocket clients, in order with the frame), each event also goes to the
    camera's events stream, and two gateways' consumer-group stores (a real SQLite event store
    each) hold every event exactly once between them, written before acknowledgement."""
    client = connect(RedisConfig(url=server.url))
    keys = Keys("evw")
    writer = _door_writer(client, keys)
    sent = []
    for seq in range(1, 41):
        msg = _message("door", seq)
        events, data = _events("door", seq, seq % 3)  # frames with 0, 1 and 2 events
        sent.append(Published(msg.stream, seq, msg.arrival, msg.data, msg.tracks, events, data))
        writer.publish(sent[-1])
    wait_until(lambda: writer.pending() == 0, 20, "entries written")
    writer.stop(1.0)

    # fan-out: every track entry brings back its frame's events, byte for byte
    r: Any = client
    back = [published_of(decode_entry("door", f)) for _, f in r.xrange(keys.out("door"))]
    assert [m.seq for m in back] == list(range(1, 41))
    for got, want in zip(back, sent, strict=True):
        assert got.event_data == want.event_data
        assert [e.as_dict() for e in got.events] == [e.as_dict() for e in want.events]
    with pytest.raises(VigilError, match="malformed event"):
        published_of(decode_entry("door", {**r.xrange(keys.out("door"))[0][1], b"events": b"{"}))

    # store once: two gateways, each with its own real event store
    def outputs(name: str) -> EventOutputs:
        cfg = VigilConfig(events=EventStoreConfig(path=str(tmp_path / f"{name}.db")))
        out = EventOutputs(cfg, lambda: {}, lambda key, line: None)
        out.start()
        return out

    g1, g2 = outputs("g1"), outputs("g2")
    c1 = EventConsumer(client, keys, "store", "g1", store_events(g1, lambda k, m: None), count=7)
    c2 = EventConsumer(client, keys, "store", "g2", store_events(g2, lambda k, m: None), count=7)
    while c1.poll(["door"], block_ms=10) + c2.poll(["door"], block_ms=10):
        pass
    rows = []
    for out, name in ((g1, "g1"), (g2, "g2")):
        with contextlib.closing(sqlite3.connect(tmp_path / f"{name}.db")) as db:
            rows += [json.loads(d)["seq"] for (d,) in db.execute("SELECT data FROM events")]
        out.close(1.0)
    every = sorted(e.seq for m in sent for e in m.events)
    assert len(every) == 40 and sorted(rows) == every  # each event stored exactly once
    assert int(r.xpending(keys.events("door"), "store")["pending"]) == 0


def test_a_gateway_that_dies_after_its_commit_stores_nothing_twice(
    server: RedisServer, tmp_path: Path
) -> None:
    """The gateway commits a batch to its event store, then dies before acknowledging it: the
    entries stay pending, the restarted gateway (same database) claims them, and the store
    holds each event once (the second copy counted as a duplicate)."""
    client = connect(RedisConfig(url=server.url))
    keys = Keys("evdup")
    writer = _door_writer(client, keys)
    every: list[int] = []
    for seq in range(1, 31):
        events, data = _events("door", seq, 2)
        every += [e.seq for e in events]
        for e, d in zip(events, data, strict=True):
            writer.publish_event("door", d, e.seq, e.ts)
    wait_until(lambda: writer.pending() == 0, 20, "events written")
    writer.stop(1.0)

    cfg = VigilConfig(events=EventStoreConfig(path=str(tmp_path / "gw.db")))
    out = EventOutputs(cfg, lambda: {}, lambda key, line: None)
    out.start()
    store = store_events(out, lambda k, m: None)

    def commit_then_die(batch: Sequence[tuple[bytes, Entry]]) -> None:
        store(batch)
        raise RuntimeError("killed between the commit and XACK")

    dying = EventConsumer(client, keys, "store", "gw", commit_then_die, count=25)
    with pytest.raises(RuntimeError):
        dying.poll(["door"], block_ms=10)
    assert out.store is not None and out.store.written == 25
    restarted = EventConsumer(client, keys, "store", "gw", store, count=25, claim_idle_s=0.0)
    restarted.reclaim(["door"])  # its own pending entries, as a restarted pod does
    while restarted.poll(["door"], block_ms=10):
        pass
    try:
        assert (out.store.written, out.store.duplicates) == (60, 25)
        with contextlib.closing(sqlite3.connect(tmp_path / "gw.db")) as db:
            rows = [json.loads(d)["seq"] for (d,) in db.execute("SELECT data FROM events")]
        assert sorted(rows) == sorted(every)  # each event once
        assert int(client.xpending(keys.events("door"), "store")["pending"]) == 0
    finally:
        out.close(1.0)


def test_an_event_message_round_trips() -> None:
    _, (data,) = _events("cam", 7, 1)
    assert encode_event(decode_event(data)) == data
    for bad in (b"{", b'{"v": 1, "type": "tracks"}', b'{"v": 1, "type": "event"}', b"[]"):
        with pytest.raises(ValueError, match=r"malformed event|not a v1"):
            decode_event(bad)


def test_a_gateway_counts_the_events_it_relays(server: RedisServer, tmp_path: Path) -> None:
    """A real Gateway over the real Redis: a camera added with a line through the gateway, a
    worker's frames with crossings, and the gateway's counts (what `GET /api/counts` and
    `{"op":"counts"}` answer there) fold exactly the relayed events; removing the camera drops
    them."""
    from server.app import Runtime

    cfg = VigilConfig(
        redis=RedisConfig(url=server.url, key_prefix="gwc"),
        events=EventStoreConfig(enabled=False),
    )
    gw = Gateway(cfg, Runtime(cfg))
    try:
        line = {"id": "door", "points": [[0.5, 0], [0.5, 1]]}
        spec = parse_stream({"id": "door", "url": "door.mp4", "lines": [line]})
        gw.add(spec, "door.mp4")
        # a refresh that read the desired state just before the add may hide it for a moment
        wait_until(lambda: gw.counts(None).get("door", {}).get("lines")
                   == {"door": {"in": {}, "out": {}}}, 10, "the camera's empty counts")  # fmt: skip
        client = connect(cfg.redis)
        leases = Leases(client, Keys("gwc"), ttl_s=60)
        writer = ResultWriter(leases, Keys("gwc"), maxlen=1000, capacity=1000, batch=16,
                              backoff=Backoff(0.05, 0.2),
                              metrics=WorkerMetrics(CollectorRegistry()),
                              on_rejected=lambda _: None, on_redis=lambda _: None)  # fmt: skip
        lease = leases.claim("door", "w1")
        assert lease is not None
        writer.own(lease)
        writer.start()
        # a gateway relays a camera from its latest entry on: wait until it follows this one
        wait_until(lambda: "door" in gw._ids, 20, "the gateway follows the camera")
        for seq in range(1, 31):
            msg = _message("door", seq)
            events, data = _events("door", seq, seq % 3)
            writer.publish(Published("door", seq, msg.arrival, msg.data, msg.tracks, events, data))
        wait_until(lambda: writer.pending() == 0, 20, "entries written")
        writer.stop(1.0)
        # 30 frames with 0, 1, 2 events: 30 crossings, "out" for even i and "in" for odd i
        wait_until(
            lambda: sum(gw.counts(None)["door"]["lines"]["door"]["out"].values()) == 20,
            20,
            "the gateway relayed every frame",
        )
        assert gw.counts(frozenset({"door"}))["door"]["lines"]["door"] == {
            "in": {"person": 10},
            "out": {"person": 20},
        }
        assert gw.counts(frozenset({"other"})) == {}
        assert gw.remove("door")
        assert gw.counts(None) == {}
    finally:
        gw.stop(1.0)
