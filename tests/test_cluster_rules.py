"""Rules, counts resets and camera health through gateways, against a real ``redis-server``.

In process: the counts a gateway folds follow the owner's resets exactly (the fold alone, then
a real Gateway reading a worker writer's frames through Redis). Then for real: a ``vigil
worker`` and two ``vigil gateway`` processes, the sample clip as one camera: a zone added
through a gateway is applied live by the worker (same lease token, no new claim, seq going on),
a counts reset reaches the worker, any other spec change still restarts the camera, a gateway
serves the camera's health (and says plainly when nobody runs a camera), two gateways editing
one camera's rules at once lose nothing, bad edits change nothing, and with Redis away edits
and resets get 503s."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from analytics.events import LINE_CROSS, Event, encode_event
from benchmarks.cluster_run import (
    Cluster,
    RedisServer,
    WsCollector,
    redis_server,
    seq_gaps,
    start_role,
    stop_role,
    wait_ready,
)
from benchmarks.serving import Server
from cluster.connection import Keys, connect
from cluster.counts import RelayedCounts
from cluster.gateway import Gateway
from cluster.leases import Leases
from cluster.metrics import WorkerMetrics
from cluster.writer import ResultWriter
from pipeline.batcher import Backoff
from pipeline.config import AuthConfig, EventStoreConfig, RedisConfig, VigilConfig
from pipeline.encode import encode_message
from pipeline.live_step import Published
from pipeline.types import Tracks
from tests.factories import SAMPLE_CLIP, wait_until

WHOLE = [[0, 0], [1, 0], [1, 1], [0, 1]]
DOOR = {"id": "door", "points": [[0.5, 0], [0.5, 1]]}


def _config(url: str, prefix: str) -> VigilConfig:
    return VigilConfig(
        redis=RedisConfig(url=url, key_prefix=prefix, timeout_s=1.0, backoff_max_s=0.5),
        events=EventStoreConfig(enabled=False),
        auth=AuthConfig(mutations_per_minute=10_000),
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis"), aof=False) as srv:
        yield srv


def _crossing(cam: str, seq: int, direction: str) -> Event:
    return Event(LINE_CROSS, cam, seq, seq / 10, time.time(), rule="door", track=seq,
                 class_id=0, class_name="person", direction=direction, box=(1.0, 2.0, 3.0, 4.0),
                 seq=seq)  # fmt: skip


def test_relayed_counts_follow_the_owners_resets() -> None:
    spec = {"lines": [DOOR]}
    c = RelayedCounts()

    def total() -> int:
        return sum(sum(d.values()) for d in c.snapshot("cam", spec)["lines"]["door"].values())

    c.add("cam", spec, 1, 0, [_crossing("cam", 1, "in"), _crossing("cam", 2, "out")])
    assert total() == 2
    zeroed = c.reset("cam", spec, 1)  # asked through this gateway: reset number 1
    assert zeroed["lines"]["door"] == {"in": {}, "out": {}}
    c.add("cam", spec, 1, 0, [_crossing("cam", 3, "in")])  # the owner counted it before reset 1
    assert total() == 0
    c.add("cam", spec, 1, 1, [_crossing("cam", 4, "in")])  # after it: counted
    assert total() == 1
    c.add("cam", spec, 1, 2, [_crossing("cam", 5, "out")])  # reset 2 asked elsewhere: restart
    assert c.snapshot("cam", spec)["lines"]["door"] == {"in": {}, "out": {"person": 1}}
    c.add("cam", spec, 2, 0, [_crossing("cam", 6, "in")])  # a new owner behind (Redis lost data)
    assert total() == 2
    moved = {"lines": [{**DOOR, "points": [[0.4, 0], [0.4, 1]]}]}  # the same id, a new line
    assert c.snapshot("cam", moved)["lines"]["door"] == {"in": {}, "out": {}}
    c.keep([])
    assert c.snapshot("cam", spec)["lines"]["door"] == {"in": {}, "out": {}}


def test_a_gateway_folds_what_the_owner_counts_after_a_reset(server: RedisServer) -> None:
    """A real Gateway and a worker's writer over Redis: reset through the gateway while frames
    counted before the reset are still on their way; the gateway's counts end up exactly the
    events the owner counted after it."""
    from server.app import Runtime

    cfg = _config(server.url, "resets")
    gw = Gateway(cfg, Runtime(cfg))
    keys = Keys("resets")
    leases = Leases(connect(cfg.redis), keys, ttl_s=60)
    writer = ResultWriter(leases, keys, maxlen=1000, capacity=1000, batch=16,
                          backoff=Backoff(0.05, 0.2), metrics=WorkerMetrics(CollectorRegistry()),
                          on_rejected=lambda _: None, on_redis=lambda _: None)  # fmt: skip
    try:
        from pipeline.config import parse_stream

        gw.add(parse_stream({"id": "door", "url": "door.mp4", "lines": [DOOR]}), "door.mp4")
        lease = leases.claim("door", "w1")
        assert lease is not None
        writer.own(lease)
        writer.start()
        wait_until(lambda: "door" in gw._ids, 20, "the gateway follows the camera")

        def send(seq: int, epoch: int, direction: str) -> None:
            e = _crossing("door", seq, direction)
            tracks = Tracks.empty("door", seq, seq / 10)
            data = encode_message(tracks, "door", seq, e.ts)
            writer.publish(Published("door", seq, e.ts, data, tracks, (e,), (encode_event(e),),
                                     epoch))  # fmt: skip

        for seq in range(1, 6):
            send(seq, 0, "in")
        wait_until(lambda: gw.counts(None)["door"]["lines"]["door"]["in"] == {"person": 5}, 20,
                   "five crossings relayed")  # fmt: skip
        zeroed = gw.reset_counts("door")
        assert zeroed["lines"]["door"] == {"in": {}, "out": {}}
        assert int(server.client().get(keys.reset("door"))) == 1  # the owner's command
        for seq in range(6, 9):  # counted by the owner before it saw the reset
            send(seq, 0, "in")
        for seq in range(9, 11):  # after
            send(seq, 1, "out")
        # frames are folded in order: once the last two are, every earlier one was too
        wait_until(lambda: gw.counts(None)["door"]["lines"]["door"]["out"] == {"person": 2}, 20,
                   "every frame relayed")  # fmt: skip
        assert gw.counts(None)["door"]["lines"]["door"] == {"in": {}, "out": {"person": 2}}
        with pytest.raises(KeyError):
            gw.reset_counts("nope")
    finally:
        writer.stop(1.0)
        gw.stop(1.0)


# -- for real: a worker and a gateway ------------------------------------------------------------
TTL = 3.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("cluster-rules")
    media = folder / "media"
    media.mkdir()
    shutil.copy(SAMPLE_CLIP, media / "people.mp4")
    config: dict[str, Any] = {
        "server": {"media_root": str(media), "drain_timeout_s": 2.0},
        "live": {"stall_timeout_s": 5.0, "backoff_initial_s": 0.2, "backoff_max_s": 1.0},
        "model": {"threads": 1},
        "tracker": {"embedder": "histogram"},
        "events": {"enabled": False},
        "redis": {"timeout_s": 1.0, "backoff_initial_s": 0.1, "backoff_max_s": 1.0},
        "cluster": {"lease_ttl_s": TTL, "claim_interval_s": 0.5, "worker_max_streams": 1},
        "auth": {"mutations_per_minute": 10_000},
    }
    c = Cluster(folder, config)
    second: Server | None = None
    try:
        c.start(["w1"])
        second = start_role("gateway", c.config, folder, "gateway2")
        wait_ready(second)
        c.second = second  # type: ignore[attr-defined]
        yield c
    finally:
        if second is not None:
            stop_role(second)
        c.stop()


def _relayed_zone(gw: Any) -> dict[str, Any]:
    return dict(gw.request("GET", "/api/streams/people/counts")[1].get("zones", {}).get("all", {}))


def test_a_rule_added_through_the_gateway_runs_live_on_the_worker(cluster: Cluster) -> None:
    gw = cluster.gateway
    assert gw is not None
    status, body = gw.request("POST", "/api/streams", {"id": "people", "url": "people.mp4",
                                                       "fps": 8})  # fmt: skip
    assert status == 201, body
    ws = WsCollector(gw.ws)
    try:
        wait_until(lambda: ws.count("people") >= 10, 90, "the camera delivers through the gateway")
        token = cluster.owners()["people"]
        claims = cluster.redis.client().xlen(Keys("vigil").claims("people"))
        assert gw.request("GET", "/api/streams/people/rules")[1] == {"lines": [], "zones": []}
        edited = time.time()
        status, body = gw.request("POST", "/api/streams/people/zones",
                                  {"id": "all", "polygon": WHOLE})  # fmt: skip
        assert status == 201, body
        assert [z["id"] for z in gw.request("GET", "/api/streams/people/rules")[1]["zones"]] == [
            "all"
        ]
        # the worker runs the zone (and says it applied it live): its occupancy events reach
        # the gateway with the frames
        wait_until(
            lambda: (
                _relayed_zone(gw).get("max_occupancy")
                and "applied new rules to people live" in cluster.log("w1")
            ),
            60,
            "events of the new zone arrive through the gateway",
        )
        # ... and the camera was not restarted: the same tenure, no new claim, seq goes on
        assert cluster.owners()["people"] == token
        assert cluster.redis.client().xlen(Keys("vigil").claims("people")) == claims
        assert cluster.log("w1").count("claimed people") == 1
        rows = ws.snapshot()["people"]
        around = [r for r in rows if r[1] > edited - 2]
        assert len(around) > 5 and seq_gaps(around) <= ws.lost and ws.regressions == 0
    finally:
        ws.close()


def test_a_counts_reset_through_the_gateway_reaches_the_worker(cluster: Cluster) -> None:
    gw = cluster.gateway
    assert gw is not None
    asked = time.time()
    status, zeroed = gw.request("POST", "/api/streams/people/counts/reset")
    assert status == 200 and zeroed["since_ts"] >= asked - 1
    assert zeroed["zones"]["all"]["entered"] == {} and zeroed["zones"]["all"]["spawned"] == {}
    r: Any = cluster.redis.client()
    out = Keys("vigil").out("people")

    def counted_after_the_reset() -> bool:
        logged = "reset the counts of people (reset 1)" in cluster.log("w1")
        entries = r.xrevrange(out, count=50)
        return logged and any(f[b"events"] and f[b"epoch"] == b"1" for _, f in entries)

    # the worker reset its counts: the frames it publishes say their events count after reset 1
    wait_until(counted_after_the_reset, 60, "the worker counts after the reset")
    assert gw.request("GET", "/api/streams/people/counts")[1]["since_ts"] >= asked - 1
    assert gw.request("POST", "/api/streams/nope/counts/reset")[0] == 404


def test_any_other_change_still_restarts_the_camera(cluster: Cluster) -> None:
    """Not a rules-only change (here the fps, written straight into the desired state): the
    worker hands the camera back and claims it afresh; the new tenure's counts start from the
    camera's reset counter, so relayed counts do not jump back before the reset."""
    r: Any = cluster.redis.client()
    keys = Keys("vigil")
    _, old_token = cluster.owners()["people"]
    spec = json.loads(r.hget(keys.streams, "people"))
    assert spec["zones"] and spec["fps"] == 8
    r.hset(keys.streams, "people", json.dumps({**spec, "fps": 6}, sort_keys=True))
    r.incr(keys.streams_rev)

    def restarted() -> bool:
        owner = cluster.owners().get("people")
        if owner is None or owner[1] <= old_token:
            return False
        entries = r.xrevrange(keys.out("people"), count=50)
        return cluster.log("w1").count("claimed people") == 2 and any(
            int(f[b"token"]) == owner[1] and f[b"events"] and f[b"epoch"] == b"1"
            for _, f in entries
        )

    wait_until(restarted, 60, "the camera runs again under a new token, counting after reset 1")


def test_the_gateway_serves_camera_health(cluster: Cluster) -> None:
    gw = cluster.gateway
    assert gw is not None

    def reported() -> dict[str, Any] | None:
        h: dict[str, Any] = gw.request("GET", "/api/streams/people/health")[1]
        ok = h.get("owner") == "w1" and h.get("state") == "live" and h.get("brightness", 0) > 50
        return h if ok else None

    h = wait_until(reported, 30, "the owner's health report through the gateway")
    assert h["enabled"] is True and h["checks"]["black"] is False
    # the worker takes one camera: a second one has no owner, and the gateway says so
    assert gw.request("POST", "/api/streams", {"id": "idle", "url": "people.mp4"})[0] == 201
    status, h = gw.request("GET", "/api/streams/idle/health")
    assert status == 200 and h["owner"] is None and h["state"] == "unassigned", h
    assert gw.request("GET", "/api/streams/nope/health")[0] == 404


def _stored_rules(cluster: Cluster, cam: str) -> Any:
    raw = cluster.redis.client().hget(Keys("vigil").streams, cam)
    spec = json.loads(raw) if raw else {}
    return spec.get("lines"), spec.get("zones")


def test_two_gateways_editing_at_once_lose_nothing(cluster: Cluster) -> None:
    a, b = cluster.gateway, cluster.second  # type: ignore[attr-defined]
    assert a is not None
    wait_until(lambda: b.request("GET", "/api/streams/idle/rules")[0] == 200, 10,
               "the second gateway sees the camera")  # fmt: skip
    base = "/api/streams/idle"

    def add(gw: Server, who: str, results: list[int]) -> None:
        for i in range(8):
            body = {"id": f"{who}{i}", "polygon": WHOLE}
            results.append(gw.request("POST", f"{base}/zones", body)[0])
        results.append(gw.request("POST", f"{base}/lines", DOOR)[0])

    got: dict[str, list[int]] = {"a": [], "b": []}
    threads = [threading.Thread(target=add, args=(gw, w, got[w])) for gw, w in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # every zone of both landed; of the two racing creations of "door" exactly one won
    assert got["a"][:8] == got["b"][:8] == [201] * 8, got
    assert sorted([got["a"][8], got["b"][8]]) == [201, 409], got
    lines, zones = _stored_rules(cluster, "idle")
    assert sorted(z["id"] for z in zones) == sorted(f"{w}{i}" for w in "ab" for i in range(8))
    assert [line["id"] for line in lines] == ["door"]

    def read_back(gw: Server) -> bool:
        rules = gw.request("GET", f"{base}/rules")[1]
        return len(rules["zones"]) == 16 and [r["id"] for r in rules["lines"]] == ["door"]

    wait_until(lambda: read_back(a) and read_back(b), 10, "each gateway reads every rule back")
    assert a.request("GET", f"{base}/lines/door")[1]["points"] == DOOR["points"]

    # bad edits are one-line errors and change nothing
    before = _stored_rules(cluster, "idle")
    status, bad = a.request("POST", f"{base}/zones", {"id": "u", "polygon": WHOLE,
                                                      "classes": ["unicorn"]})  # fmt: skip
    assert status == 422 and "unicorn" in bad["detail"] and "\n" not in bad["detail"], bad
    assert a.request("POST", f"{base}/lines", {"id": "l", "points": [[0, 0]]})[0] == 422
    assert a.request("PUT", f"{base}/zones/a0", {"id": "b0", "polygon": WHOLE})[0] == 422
    assert a.request("PUT", f"{base}/zones/nope", {"id": "nope", "polygon": WHOLE})[0] == 404
    assert a.request("DELETE", f"{base}/lines/nope")[0] == 404
    assert a.request("POST", "/api/streams/nope/zones", {"id": "z", "polygon": WHOLE})[0] == 404
    assert a.request("GET", "/api/streams/nope/rules")[0] == 404
    assert _stored_rules(cluster, "idle") == before
    # a replace and a delete through the other gateway, then everything at once
    moved = {"id": "a0", "polygon": [[0, 0], [0.5, 0], [0.5, 0.5]]}
    assert b.request("PUT", f"{base}/zones/a0", moved)[0] == 200
    assert b.request("DELETE", f"{base}/zones/b7")[0] == 204
    _, zones = _stored_rules(cluster, "idle")
    assert len(zones) == 15 and zones[0]["polygon"] == moved["polygon"]
    status, body = a.request("PUT", f"{base}/rules", {"lines": [DOOR]})
    assert status == 200 and body["zones"] == [] and [r["id"] for r in body["lines"]] == ["door"]
    assert [len(x) for x in _stored_rules(cluster, "idle")] == [1, 0]


def test_redis_away_edits_and_resets_get_503_and_change_nothing(cluster: Cluster) -> None:
    gw = cluster.gateway
    assert gw is not None
    before = _stored_rules(cluster, "idle")
    cluster.redis.stop()
    try:
        for method, path, body in (
            ("POST", "/api/streams/idle/zones", {"id": "z", "polygon": WHOLE}),
            ("PUT", "/api/streams/idle/rules", {"zones": [{"id": "z", "polygon": WHOLE}]}),
            ("POST", "/api/streams/idle/counts/reset", None),
        ):
            status, answer = gw.request(method, path, body)
            assert status == 503 and "redis unreachable" in answer["detail"], (path, answer)
    finally:
        cluster.redis.start()  # its append-only file kept what was written
    assert _stored_rules(cluster, "idle") == before
    assert cluster.redis.client().get(Keys("vigil").reset("idle")) is None
