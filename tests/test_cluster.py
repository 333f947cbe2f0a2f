"""Scale-out for real: redis-server, two ``vigil worker`` processes and a ``vigil gateway``,
six looped cameras, a WebSocket client; then a paused worker, a Redis restart, a worker killed
with SIGKILL and one stopped gracefully. Short leases (3 s) keep it to about two minutes."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.cluster_run import Cluster, WsCollector, seq_gaps, stop_role
from benchmarks.serving import Server
from cluster.connection import Keys
from tests.factories import wait_until

TTL = 3.0
CAMS = [f"cam{i}" for i in range(6)]
KEYS = Keys("vigil")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, synthetic_clip: Path) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("cluster")
    media = folder / "media"
    media.mkdir()
    for cam in CAMS:
        shutil.copy(synthetic_clip, media / f"{cam}.mp4")
    config: dict[str, Any] = {
        "server": {"media_root": str(media), "drain_timeout_s": 2.0},
        "live": {"stall_timeout_s": 3.0, "backoff_initial_s": 0.2, "backoff_max_s": 1.0},
        "model": {"threads": 1},
        "tracker": {"embedder": "histogram"},
        # a stopped Redis refuses at once; a generous reply timeout keeps a slow fsync from
        # making the writer (at least once) retry a batch that did land
        "redis": {"timeout_s": 5.0, "backoff_initial_s": 0.1, "backoff_max_s": 1.0},
        "cluster": {"lease_ttl_s": TTL, "claim_interval_s": 0.5, "worker_max_streams": 6},
    }
    c = Cluster(folder, config)
    try:
        c.start(["w1", "w2"])
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def client(cluster: Cluster) -> Iterator[WsCollector]:
    assert cluster.gateway is not None
    ws = WsCollector(cluster.gateway.ws)
    yield ws
    ws.close()


def _gateway(cluster: Cluster) -> Server:
    assert cluster.gateway is not None
    return cluster.gateway


def _owned_by(cluster: Cluster, worker: str) -> list[str]:
    return sorted(c for c, (w, _) in cluster.owners().items() if w == worker)


def _balanced(cluster: Cluster, workers: list[str]) -> bool:
    owners = cluster.owners()
    counts = [sum(1 for w, _ in owners.values() if w == name) for name in workers]
    return len(owners) == len(CAMS) and max(counts) - min(counts) <= 1


def _delivering(ws: WsCollector, cams: list[str], since: float) -> bool:
    return all(ws.count(cam, since) >= 3 for cam in cams)


def _check_fencing(cluster: Cluster) -> None:
    """Along every camera's claims log tokens strictly increase; along its result stream they
    never decrease, and one token always means one worker: owners never interleaved."""
    r: Any = cluster.redis.client()
    for cam in CAMS:
        claims = [int(f[b"token"]) for _, f in r.xrange(KEYS.claims(cam))]
        assert claims == sorted(set(claims)), (cam, claims)
        entries = [(int(f[b"token"]), f[b"worker"], int(f[b"seq"])) for _, f in r.xrange(
            KEYS.out(cam))]  # fmt: skip
        tokens = [t for t, _, _ in entries]
        assert tokens == sorted(tokens), f"{cam}: a lower token wrote after a higher one"
        writers: dict[int, set[bytes]] = {}
        for t, w, _ in entries:
            writers.setdefault(t, set()).add(w)
        assert all(len(w) == 1 for w in writers.values()), (cam, writers)
        seqs = [s for _, _, s in entries]
        assert seqs == sorted(set(seqs)), f"{cam}: seq went back or repeated in Redis"


def test_every_camera_has_one_owner_and_delivers(cluster: Cluster, client: WsCollector) -> None:
    gw = _gateway(cluster)
    for cam in CAMS:
        status, body = gw.request("POST", "/api/streams", {"id": cam, "url": f"{cam}.mp4",
                                                           "fps": 5})  # fmt: skip
        assert status == 201, body
    assert gw.request("POST", "/api/streams", {"id": "cam0", "url": "cam0.mp4"})[0] == 409
    assert gw.request("POST", "/api/streams", {"id": "x", "url": "../x.mp4"})[0] == 422
    wait_until(lambda: _balanced(cluster, ["w1", "w2"]), 60, "six cameras spread over w1, w2")
    wait_until(lambda: _delivering(client, CAMS, 0), 60, "every camera delivers to the client")
    listed = {s["id"]: s for s in gw.request("GET", "/api/streams")[1]}
    wait_until(
        lambda: (
            (owners := cluster.owners())
            and all(
                s["id"] in owners and s["owner"] == owners[s["id"]][0] and s["state"] == "live"
                for s in gw.request("GET", "/api/streams")[1]
            )
        ),
        10,
        "the gateway shows each camera live with its lease holder",
    )
    assert sorted(listed) == CAMS
    local = {name: {s["id"] for s in w.request("GET", "/api/streams")[1]}
             for name, w in cluster.workers.items()}  # fmt: skip
    assert local["w1"].isdisjoint(local["w2"]) and local["w1"] | local["w2"] == set(CAMS)
    assert client.regressions == 0


def test_a_paused_worker_does_not_write_after_losing_its_leases(
    cluster: Cluster, client: WsCollector
) -> None:
    victim = cluster.workers["w1"]
    cams = _owned_by(cluster, "w1")
    assert cams
    os.kill(victim.proc.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: set(_owned_by(cluster, "w2")) >= set(cams), TTL + 15,
                   "w2 took over the paused worker's cameras")  # fmt: skip
        taken = time.time()
        wait_until(lambda: _delivering(client, cams, taken), 30, "they deliver again (from w2)")
    finally:
        os.kill(victim.proc.pid, signal.SIGCONT)
    wait_until(lambda: cluster.log("w1").count("lost the lease of") >= len(cams), 20,
               "w1 learnt it lost every lease and stopped those cameras")  # fmt: skip
    _check_fencing(cluster)  # nothing of w1's old tenure landed after w2's
    wait_until(lambda: _balanced(cluster, ["w1", "w2"]), 60, "w1 got its share back")
    assert client.regressions == 0


def test_redis_restart_recovers_without_restarting_vigil(
    cluster: Cluster, client: WsCollector
) -> None:
    gw = _gateway(cluster)
    pids = [s.proc.pid for s in (gw, *cluster.workers.values())]
    cluster.redis.stop()
    down = time.time()
    wait_until(lambda: gw.request("GET", "/readyz")[0] == 503, 20, "the gateway says not ready")
    assert "redis" in gw.request("GET", "/readyz")[1]["reason"]
    late = {"id": "late", "url": "cam0.mp4"}
    assert gw.request("POST", "/api/streams", late)[0] == 503  # nothing changed, and says so
    for w in cluster.workers.values():  # workers keep running their cameras meanwhile
        assert w.request("GET", "/readyz")[0] == 200
        before = sum(s["frames_inferred"] for s in w.request("GET", "/api/streams")[1])
        wait_until(
            lambda w=w, before=before: sum(  # type: ignore[misc]
                s["frames_inferred"] for s in w.request("GET", "/api/streams")[1]) > before,
            20, "a worker keeps inferring while Redis is away")  # fmt: skip
    while time.time() < down + TTL + 1:  # stay away past the lease TTL
        time.sleep(0.2)
    cluster.redis.start()
    up = time.time()
    wait_until(lambda: gw.request("GET", "/readyz")[0] == 200, 30, "the gateway ready again")
    wait_until(lambda: _delivering(client, CAMS, up), 60, "every camera delivers again")
    assert [s.proc.pid for s in (gw, *cluster.workers.values())] == pids
    assert all(s.proc.poll() is None for s in (gw, *cluster.workers.values()))
    wait_until(lambda: sorted(cluster.owners()) == CAMS, 30, "every camera owned again")
    assert gw.request("GET", "/api/streams/late")[0] == 404
    r: Any = cluster.redis.client()
    buffered = [
        float(f[b"ts"]) for cam in CAMS for _, f in r.xrange(KEYS.out(cam))
        if down + 1 < float(f[b"ts"]) < up - 1
    ]  # fmt: skip
    assert buffered, "messages of frames analyzed while Redis was away reached Redis later"
    _check_fencing(cluster)
    assert client.regressions == 0


def test_kill_9_moves_its_cameras_within_the_ttl(cluster: Cluster, client: WsCollector) -> None:
    wait_until(lambda: _balanced(cluster, ["w1", "w2"]), 60, "balanced before the kill")
    cams = _owned_by(cluster, "w1")
    before = {cam: client.snapshot()[cam][-1][0] for cam in cams}
    killed = time.time()
    cluster.workers["w1"].proc.kill()
    cluster.workers["w1"].proc.wait()
    wait_until(lambda: _delivering(client, cams, killed + TTL), TTL + 15,
               "the killed worker's cameras deliver again from w2")  # fmt: skip
    assert set(_owned_by(cluster, "w2")) == set(CAMS)
    rows = client.snapshot()
    for cam in cams:
        after = [seq for seq, t, _ in rows[cam] if t > killed]
        assert after and after[0] > before[cam]  # seq continues ...
        assert seq_gaps([r for r in rows[cam] if r[0] >= before[cam]]) > 0  # ... with a gap
    assert client.regressions == 0
    _check_fencing(cluster)


def test_a_graceful_stop_hands_the_cameras_over_at_once(
    cluster: Cluster, client: WsCollector
) -> None:
    cluster.workers.pop("w1")
    cluster.add_worker("w3")
    wait_until(lambda: _balanced(cluster, ["w2", "w3"]), 60, "w3 got its share")
    leaving = _owned_by(cluster, "w2")
    assert stop_role(cluster.workers.pop("w2")) == 0
    # its leases were released as it stopped, not left to expire
    assert not _owned_by(cluster, "w2")
    since = time.time()
    wait_until(lambda: set(_owned_by(cluster, "w3")) == set(CAMS), 20, "w3 took everything")
    wait_until(lambda: _delivering(client, leaving, since), 30, "handed-over cameras deliver")
    _check_fencing(cluster)
    assert client.regressions == 0
