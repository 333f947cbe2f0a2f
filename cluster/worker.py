"""``vigil worker``: run the live pipeline for the cameras this process owns by lease.

Two threads talk to Redis besides the writer, so that slow work never delays a renewal:

- the **lease keeper**, every third of the TTL (and at once when the writer's fenced append was
  refused): renews every held lease in one round trip and writes the heartbeat (this worker's
  status, which expires with the lease TTL). A lease found *taken by another worker* ends that
  camera's tenure at once (nothing more of it is written; what is buffered is dropped) and the
  camera is queued for stopping; a lease found *expired* (Redis was away longer than the TTL)
  is claimed again, and if the new token is the old one + 1 nobody owned the camera in
  between: it keeps running and its buffered results are kept;
- the **control thread**, every ``cluster.claim_interval_s``: stops the cameras queued by the
  keeper, reads the desired state, applies a change of a camera's lines and zones only live
  (``LivePipeline.set_rules``: the camera keeps running, an unchanged rule keeps its counts),
  hands back cameras no longer desired (or otherwise changed), resets the counts of cameras
  whose reset counter in Redis grew (``P:{id}:reset``, from a gateway's REST), claims
  unowned cameras up to ``min(capacity, fair share)`` (the desired cameras over the live
  workers, rounded up) and, with ``cluster.rebalance``, hands one camera back per round while
  another live worker owns at least two fewer.

The heartbeat carries each owned camera's status and camera-health report (gateways serve it).
A camera's first message after a claim continues the camera's ``seq`` after the last entry in
its Redis Stream, skipping the frames nobody analyzed meanwhile (a gap a client can count).
Results go through :class:`cluster.writer.ResultWriter` (bounded, fenced). When Redis is away
the cameras keep running and their messages are buffered (bounded); both threads retry with
backoff. SIGTERM: stop intake, flush, release every lease (others take over at once).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cluster.connection import REDIS_DOWN, Keys, connect, node_id
from cluster.leases import Lease, Leases
from cluster.metrics import WorkerMetrics
from cluster.writer import ResultWriter
from pipeline.batcher import Backoff
from pipeline.config import StreamConfig, VigilConfig, parse_stream
from pipeline.engine import Engine
from pipeline.live import LivePipeline, build_engine_low_priority
from pipeline.live_step import ThrottledLog
from pipeline.types import VigilError
from server.backend import stream_status
from server.metrics import Metrics
from server.urls import check_stream_url

REFUSED_RETRY_S = 30.0  # a camera this worker cannot open is left to others for this long
HANDOVER_FLUSH_S = 2.0  # a camera handed back first writes what is buffered, this long at most


def admission_capacity(cfg: VigilConfig, pipeline: LivePipeline | None = None) -> int:
    """The most cameras one worker admits: the configured maximum and, once its pipeline runs
    with ``capacity.enabled``, no more than the cameras it has plus the measured estimate of
    how many more streams like them fit (``pipeline.qos``; at least 1, so a worker always
    takes a camera)."""
    limit = min(cfg.cluster.worker_max_streams, cfg.live.max_streams)
    if pipeline is None or not cfg.capacity.enabled:
        return limit
    report = pipeline.capacity_report(fps=_typical_fps(pipeline))
    return max(1, min(limit, int(report["streams"]) + int(report["more_streams"])))


def _typical_fps(pipeline: LivePipeline) -> float:
    """The mean fps of the cameras the worker runs (10 when none): the rate a new one is
    priced at."""
    rates = [s.spec.fps for s in pipeline.streams() if s.spec.fps > 0]
    return sum(rates) / len(rates) if rates else 10.0


def next_seq(last: dict[bytes, bytes] | None, fps: float, now: float) -> int:
    """The first seq of a new tenure: after the camera's last entry, plus the frames at ``fps``
    that nobody analyzed since that entry's frame arrived (0 for a camera never seen)."""
    if not last:
        return 0
    seq, ts = int(last[b"seq"]), float(last[b"ts"])
    missed = max(0, math.floor((now - ts) * fps) - 1) if fps > 0 else 0
    return seq + 1 + missed


@dataclass
class Owned:
    lease: Lease
    spec_json: bytes
    first_seq: int
    renewed: float = field(default_factory=time.monotonic)


class Worker:
    """The worker role. ``start``/``stop`` block; everything runs in threads."""

    def __init__(self, cfg: VigilConfig, engine: Engine | None = None) -> None:
        c = cfg.cluster
        self.cfg = cfg
        self.node = node_id(c.node_id, "worker")
        # Any: redis-py types replies as unions of bytes/str/...; ours are bytes (no decoding).
        self.client: Any = connect(cfg.redis)
        self.keys = Keys(cfg.redis.key_prefix)
        self.leases = Leases(self.client, self.keys, c.lease_ttl_s)
        self.capacity = admission_capacity(cfg)
        self.pipeline: LivePipeline | None = None
        self.server_metrics = Metrics(lambda: self.pipeline)
        self.metrics = WorkerMetrics(self.server_metrics.registry)
        self.metrics.capacity.set(self.capacity)
        self.writer = ResultWriter(
            self.leases, self.keys, c.stream_maxlen, c.buffer_messages, c.write_batch,
            Backoff(cfg.redis.backoff_initial_s, cfg.redis.backoff_max_s), self.metrics,
            on_rejected=self._on_rejected, on_redis=self._set_redis,
        )  # fmt: skip
        self.owned: dict[str, Owned] = {}
        self.redis_up = False
        self.model: dict[str, str] = {}
        self._engine = engine
        self._refused: dict[str, tuple[float, str]] = {}
        self._known_token: dict[str, int] = {}
        self._to_stop: set[str] = set()
        self._was_down = False
        self._back_at = -1e18  # when Redis came back after an outage
        self._lock = threading.Lock()
        self._desired: dict[str, bytes] = {}
        self._desired_rev: bytes | None = None
        self._next_rebalance = 0.0
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._renew_now = threading.Event()
        self._log = ThrottledLog()
        self._threads = [
            threading.Thread(target=self._keeper, name="vigil-lease-keeper", daemon=True),
            threading.Thread(target=self._control, name="vigil-control", daemon=True),
        ]

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        engine = self._engine or build_engine_low_priority(self.cfg)
        m = engine.info
        self.model = {"name": m.name, "version": m.version, "precision": m.precision,
                      "backend": m.backend, "sha256": m.sha256}  # fmt: skip
        self.server_metrics.model.info(self.model)
        self.pipeline = LivePipeline(
            self.cfg, self.writer.publish, engine, observe_stage=self.server_metrics.observe_stage
        )
        self.pipeline.start()
        self.writer.start()
        for t in self._threads:
            t.start()
        print(f"worker {self.node}: model {m.name} {m.version} ({m.precision}, {m.backend}), "
              f"up to {self.capacity} cameras, lease {self.cfg.cluster.lease_ttl_s:g} s",
              flush=True)  # fmt: skip

    def stop(self, drain_timeout_s: float) -> None:
        """Stop claiming, stop every camera, flush what is buffered, release every lease."""
        self._stopping.set()
        self._wake.set()
        self._renew_now.set()
        for t in self._threads:
            if t.is_alive():
                t.join(drain_timeout_s + 5)
        if self.pipeline is not None:
            self.pipeline.stop(drain_timeout_s)
        self.writer.stop(flush_timeout_s=max(1.0, drain_timeout_s))
        with self._lock:
            held = [o.lease for o in self.owned.values()]
            self.owned.clear()
        try:
            self.leases.release(held)
            self.metrics.released.labels("shutdown").inc(len(held))
            self.client.delete(self.keys.worker(self.node))
            self.client.zrem(self.keys.workers, self.node)
        except REDIS_DOWN:
            pass  # the leases expire by themselves
        self.client.close()

    def readiness(self) -> tuple[bool, str]:
        p = self.pipeline
        if p is None:
            return False, "starting"
        if not p.ready:
            return False, p.failure or "stopping"
        return True, ""

    def status(self) -> dict[str, Any]:
        """This worker as the heartbeat publishes it (gateways show it per camera)."""
        p = self.pipeline
        with self._lock:
            owned = dict(self.owned)
        streams = {}
        for cam, o in owned.items():
            s = p.get(cam) if p is not None else None
            if s is None:
                continue
            st = stream_status(s, p.rates(cam), p.errors(cam)) if p is not None else {}
            a = p.analytics(cam) if p is not None else None
            health = a.health.report() if a is not None and a.health is not None else None
            streams[cam] = {**st, "owner": self.node, "token": o.lease.token,
                            "first_seq": o.first_seq,
                            "health": health or {"enabled": False}}  # fmt: skip
        refused = {cam: why for cam, (_, why) in self._refused.items()}
        return {"node": self.node, "capacity": self.capacity, "owned": len(streams),
                "streams": streams, "refused": refused, "model": self.model,
                "redis": self.redis_up, "buffered": self.writer.pending()}  # fmt: skip

    # -- callbacks from the writer thread -----------------------------------------------------
    def _on_rejected(self, lease: Lease) -> None:
        """The fence refused an append: check the leases now rather than at the next round."""
        self._renew_now.set()

    def _set_redis(self, up: bool) -> None:
        if up != self.redis_up:
            print(f"worker {self.node}: redis {'back' if up else 'unreachable'}", flush=True)
            if up and self._was_down:  # every worker's leases may have expired meanwhile
                self._back_at = time.monotonic()
            self._was_down = not up
        self.redis_up = up
        self.metrics.redis_up.set(1 if up else 0)

    # -- the lease keeper -------------------------------------------------------------------
    def _keeper(self) -> None:
        backoff = Backoff(self.cfg.redis.backoff_initial_s, self.cfg.redis.backoff_max_s)
        period = self.cfg.cluster.lease_ttl_s / 3
        while not self._stopping.is_set():
            wait = period
            try:
                self._renew()
                self._heartbeat()
                backoff.reset()
                self._set_redis(True)
            except REDIS_DOWN as e:
                self._set_redis(False)
                self.metrics.redis_errors.labels("keeper").inc()
                self._log("redis", f"vigil: worker {self.node}: redis: {e}; cameras keep running")
                wait = backoff.next_delay()
            except Exception as e:  # never let the keeper die
                self._log("keeper", f"vigil: worker {self.node}: {type(e).__name__}: {e}")
            self._renew_now.wait(wait)
            self._renew_now.clear()

    def _renew(self) -> None:
        with self._lock:
            owned = list(self.owned.values())
        sent = time.monotonic()
        results = self.leases.renew([o.lease for o in owned])
        for o, r in zip(owned, results, strict=True):
            if r == 1:
                o.renewed = sent
            elif r == 0:
                self._reclaim(o)
            else:
                self._lose(o.lease)

    def _reclaim(self, o: Owned) -> None:
        """Our lease expired with nobody else holding it (Redis was away past the TTL)."""
        old = o.lease
        new = self.leases.claim(old.camera, self.node, floor=old.token)
        if new is None:
            self._lose(old)
            return
        self._known_token[old.camera] = new.token
        if new.token == old.token + 1:  # nobody owned it in between: carry on
            self.writer.rebind(old, new)
            with self._lock:
                o.lease, o.renewed = new, time.monotonic()
            self.metrics.claims.inc()
            return
        self.leases.release([new])  # another worker owned it meanwhile: start afresh later
        self._lose(old)

    def _lose(self, lease: Lease) -> None:
        """The tenure is over (another worker holds or held the camera): nothing more of it is
        written from now on; the control thread stops the camera at its next round."""
        cam = lease.camera
        with self._lock:
            o = self.owned.get(cam)
            if o is None or o.lease != lease:
                return
            self.owned.pop(cam)
            self._to_stop.add(cam)
        self.writer.disown(cam)
        self.metrics.lost.inc()
        self._wake.set()
        print(f"worker {self.node}: lost the lease of {cam}; stopping it", flush=True)

    # -- the control thread ------------------------------------------------------------------
    def _control(self) -> None:
        backoff = Backoff(self.cfg.redis.backoff_initial_s, self.cfg.redis.backoff_max_s)
        while not self._stopping.is_set():
            wait = self.cfg.cluster.claim_interval_s
            try:
                self._tick()
                backoff.reset()
            except REDIS_DOWN:
                self._set_redis(False)
                self.metrics.redis_errors.labels("control").inc()
                wait = backoff.next_delay()
            except Exception as e:  # never let the control thread die
                self._log("control", f"vigil: worker {self.node}: {type(e).__name__}: {e}")
            self._wake.wait(wait)
            self._wake.clear()

    def _tick(self) -> None:
        with self._lock:
            to_stop, self._to_stop = self._to_stop, set()
        for cam in to_stop:
            if self.pipeline is not None and cam not in self.owned:
                with contextlib.suppress(KeyError):
                    self.pipeline.remove_stream(cam)
        desired = self._read_desired()
        self._set_redis(True)  # whichever thread sees Redis back first starts the grace period
        with self._lock:
            owned = list(self.owned.items())
        for cam, o in owned:
            if cam not in desired:
                self._hand_back(cam, "removed")
            elif desired[cam] != o.spec_json and not self._new_rules(cam, o, desired[cam]):
                self._hand_back(cam, "changed")
        if self._stopping.is_set():
            return
        self._resets()
        self.capacity = admission_capacity(self.cfg, self.pipeline)
        self.metrics.capacity.set(self.capacity)
        peers = self._peers()
        self._claim(desired, peers)
        if self.cfg.cluster.rebalance:
            self._rebalance(desired, peers)
        self.metrics.streams.set(len(self.owned))
        self.metrics.load.set(len(self.owned) / self.capacity)

    def _hand_back(self, cam: str, reason: str) -> None:
        """Stop the camera, write what is buffered for it, then release its lease."""
        o = self.owned.get(cam)
        if o is None:
            return
        if self.pipeline is not None:
            with contextlib.suppress(KeyError):
                self.pipeline.remove_stream(cam)
        deadline = time.monotonic() + HANDOVER_FLUSH_S
        while self.writer.pending_for(cam) and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            current = self.owned.pop(cam, None)  # the keeper may have renewed its token
        self.writer.disown(cam)
        if current is not None:
            self.leases.release([current.lease])
            self.metrics.released.labels(reason).inc()

    def _new_rules(self, cam: str, o: Owned, spec_json: bytes) -> bool:
        """Apply a spec that differs from the running one in its lines and zones only, live
        (from the camera's next frame; its tracks, seq and unchanged rules' counts go on).
        False: anything else changed (or the rules do not run here): hand the camera back."""
        try:
            old, new = self._parse(o.spec_json), self._parse(spec_json)
        except VigilError:
            return False
        if self.pipeline is None or replace(old, lines=(), zones=()) != replace(
            new, lines=(), zones=()
        ):
            return False
        try:
            self.pipeline.set_rules(cam, new.lines, new.zones)
        except (KeyError, VigilError) as e:
            self._log(f"rules:{cam}", f"vigil: worker {self.node}: rules of {cam}: {e}")
            return False
        o.spec_json = spec_json
        self.metrics.rule_changes.inc()
        print(f"worker {self.node}: applied new rules to {cam} live ({len(new.lines)} lines, "
              f"{len(new.zones)} zones)", flush=True)  # fmt: skip
        return True

    def _resets(self) -> None:
        """Reset the counts of owned cameras whose reset counter grew (one MGET)."""
        with self._lock:
            cams = sorted(self.owned)
        if not cams or self.pipeline is None:
            return
        values = self.client.mget([self.keys.reset(c) for c in cams])
        for cam, value in zip(cams, values, strict=True):
            a = self.pipeline.analytics(cam)
            if value is None or a is None or int(value) <= a.counts.epoch:
                continue
            a.reset_counts(time.time(), int(value))
            self.metrics.resets.inc()
            print(f"worker {self.node}: reset the counts of {cam} (reset {int(value)})",
                  flush=True)  # fmt: skip

    def _heartbeat(self) -> None:
        ttl_ms = int(self.cfg.cluster.lease_ttl_s * 1000)  # dead after as long as its leases
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.keys.worker(self.node), json.dumps(self.status()), px=ttl_ms)
        pipe.zadd(self.keys.workers, {self.node: int(time.time() * 1000)})
        pipe.execute()

    def _read_desired(self) -> dict[str, bytes]:
        rev = self.client.get(self.keys.streams_rev)
        if rev != self._desired_rev or rev is None:
            raw = self.client.hgetall(self.keys.streams)
            self._desired = {k.decode(): v for k, v in raw.items()}
            self._desired_rev = rev
        return self._desired

    def _peers(self) -> dict[str, int]:
        """Live workers (a fresh heartbeat) -> how many cameras each owns; dead ones are
        removed from the set."""
        nodes = [n.decode() for n in self.client.zrange(self.keys.workers, 0, -1)]
        if not nodes:
            return {self.node: len(self.owned)}
        values = self.client.mget([self.keys.worker(n) for n in nodes])
        live, dead = {}, []
        for n, v in zip(nodes, values, strict=True):
            if v is None:
                dead.append(n)
            else:
                live[n] = int(json.loads(v).get("owned", 0))
        if dead:
            self.client.zrem(self.keys.workers, *dead)
        live[self.node] = len(self.owned)
        return live

    def _claim(self, desired: dict[str, bytes], peers: dict[str, int]) -> None:
        if time.monotonic() - self._back_at < self.cfg.cluster.lease_ttl_s:
            return  # after an outage, each worker first takes its own cameras back
        fair = math.ceil(len(desired) / max(1, len(peers)))
        room = min(self.capacity, fair) - len(self.owned)
        if room <= 0:
            return
        now = time.monotonic()
        self._refused = {c: v for c, v in self._refused.items() if v[0] > now and c in desired}
        candidates = [c for c in desired if c not in self.owned and c not in self._refused]
        holders = self.leases.holders(candidates)
        free = [c for c, h in zip(candidates, holders, strict=True) if h is None]
        random.shuffle(free)
        for cam in free[:room]:
            lease = self.leases.claim(cam, self.node, floor=self._known_token.get(cam, 0))
            if lease is not None:
                self._start_camera(cam, desired[cam], lease)

    def _start_camera(self, cam: str, spec_json: bytes, lease: Lease) -> None:
        self._known_token[cam] = lease.token
        try:
            spec, url = self._spec(spec_json)
        except VigilError as e:
            self._refuse(cam, lease, str(e))
            return
        last = self.client.xrevrange(self.keys.out(cam), count=1)
        first = next_seq(last[0][1] if last else None, spec.fps, time.time())
        epoch = int(self.client.get(self.keys.reset(cam)) or 0)  # counts resets asked so far
        self.writer.own(lease)
        with self._lock:
            self.owned[cam] = Owned(lease, spec_json, first)
        try:
            assert self.pipeline is not None
            self.pipeline.add_stream(spec, url, first_seq=first, counts_epoch=epoch)
        except VigilError as e:
            with self._lock:
                self.owned.pop(cam, None)
            self.writer.disown(cam)
            self._refuse(cam, lease, str(e))
            return
        self.metrics.claims.inc()
        print(f"worker {self.node}: claimed {cam} (token {lease.token}, seq from {first})",
              flush=True)  # fmt: skip

    @staticmethod
    def _parse(spec_json: bytes) -> StreamConfig:
        try:
            entry = json.loads(spec_json)
        except (ValueError, UnicodeDecodeError):
            raise VigilError("the desired state holds malformed JSON") from None
        return parse_stream(entry)

    def _spec(self, spec_json: bytes) -> tuple[StreamConfig, str]:
        spec = self._parse(spec_json)
        root = Path(self.cfg.server.media_root)
        return spec, check_stream_url(spec.url, root, self.cfg.server.allow_http)

    def _refuse(self, cam: str, lease: Lease, why: str) -> None:
        self._refused[cam] = (time.monotonic() + REFUSED_RETRY_S, why)
        self.leases.release([lease])
        self.metrics.released.labels("refused").inc()
        self._log(f"refused:{cam}", f"vigil: worker {self.node}: cannot run {cam}: {why}")

    def _rebalance(self, desired: dict[str, bytes], peers: dict[str, int]) -> None:
        ttl = self.cfg.cluster.lease_ttl_s
        now = time.monotonic()
        if now < self._next_rebalance or len(peers) < 2 or now - self._back_at < 2 * ttl:
            return
        least = min(owned for n, owned in peers.items() if n != self.node)
        with self._lock:
            owned = {cam: o.lease.token for cam, o in self.owned.items()}
        if len(owned) - least >= 2:  # another worker has at least two fewer: give it one
            self._hand_back(max(owned, key=owned.__getitem__), "rebalance")
        self._next_rebalance = now + max(2.0, 2 * self.cfg.cluster.claim_interval_s)
