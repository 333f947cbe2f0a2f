"""``vigil gateway``: the server's REST API, WebSocket hub and metrics, fed from Redis.

The gateway is ``server.app.create_app`` with :class:`Gateway` as its stream backend:

- **desired state**: the config's ``streams:`` are added at start-up (ids already in Redis are
  left alone); ``POST /api/streams`` adds the camera to the desired-state hash
  (``HSETNX``: exactly one of two racing requests wins, the other gets 409), ``DELETE`` removes
  it (``HDEL``: 404 if it was not there); both bump the revision workers watch.
  ``GET /api/streams`` answers from a cache refreshed about once a second: the desired cameras,
  the worker holding each lease (``owner``, ``token``) and that worker's live figures.
- **fan-out**: one reader thread follows every desired camera's Redis Stream (``XREAD``, plain
  reads: every gateway sees every message), checks each camera's ``seq`` and fencing token
  (a stale or replayed entry is skipped, a gap is counted), rebuilds the message the hub
  expects and hands it to the app's bounded handoff, exactly as the local pipeline does. A new
  camera starts from its latest entry, which becomes the ``last_seq`` snapshot.
- **readiness**: ``/readyz`` answers 503 while Redis does not; the reader reconnects with
  jittered backoff and resumes after the last entry it delivered.
- **events** (given an ``event_store``): a second thread takes each camera's events through the
  consumer group (:mod:`cluster.events`), so that across all gateways each is stored once.
- **rules, counts, health**: a rule edit (``server.routes_rules``) rewrites the camera's spec
  in the desired state in one ``WATCH``/``MULTI`` transaction (two gateways editing at once
  both land; the same checks as ``vigil serve``, the model's class names from its manifest);
  the owner applies a change of lines and zones only live at its next control round. A counts
  reset bumps the camera's reset counter, which the owner watches; the counts the gateway
  folds from relayed events follow the owner's resets (:mod:`cluster.counts`). Camera health
  is what the owner published with its last heartbeat.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import Any

from analytics.events import Event, decode_event
from analytics.stream import check_rules
from cluster.connection import REDIS_DOWN, Keys, connect, node_id, redacted
from cluster.counts import RelayedCounts
from cluster.entries import TRACK, Entry, decode_entry, published_of
from cluster.events import EventConsumer, StoreFn
from cluster.leases import Leases
from cluster.metrics import GatewayMetrics
from models.classes import COCO_NAMES
from pipeline.batcher import Backoff
from pipeline.config import StreamConfig, VigilConfig, parse_stream
from pipeline.credentials import public_url
from pipeline.live import StreamConflict
from pipeline.live_step import ThrottledLog
from pipeline.types import VigilError
from pipeline.wiring import resolve_model
from server.app import Runtime
from server.backend import BackendUnavailable, RuleEdit, Rules
from server.outputs import EventOutputs

REFRESH_S = 1.0


def model_classes(cfg: VigilConfig) -> tuple[dict[str, str], list[str]]:
    """The model identity and class names the workers run (from the manifest alone: a
    gateway never loads the network)."""
    resolved = resolve_model(cfg.model)
    m = resolved.manifest
    if m is None:
        return {"name": resolved.onnx.stem, "version": "unversioned"}, list(COCO_NAMES)
    return {"name": m.name, "version": m.version, "precision": cfg.model.precision}, list(
        m.class_names
    )


def _unassigned(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": spec["id"], "url": public_url(str(spec["url"])), "state": "unassigned",
        "last_error": None, "last_error_at": None, "width": 0, "height": 0,
        "target_fps": spec.get("fps"), "decode_fps": 0.0, "infer_fps": 0.0, "frames_decoded": 0,
        "frames_inferred": 0, "drops": 0, "skipped": 0, "reconnects": 0, "decode_errors": 0,
        "errors": 0, "queue_depth": 0, "owner": None, "token": None,
    }  # fmt: skip


class Gateway:
    """The :class:`server.app.StreamBackend` of a gateway."""

    def __init__(self, cfg: VigilConfig, rt: Runtime, event_store: StoreFn | None = None) -> None:
        self.cfg = cfg
        self.rt = rt
        self.node = node_id(cfg.cluster.node_id, "gateway")
        # Any: redis-py types replies as unions of bytes/str/...; ours are bytes (no decoding).
        self.client: Any = connect(cfg.redis)
        self.keys = Keys(cfg.redis.key_prefix)
        self.leases = Leases(self.client, self.keys, cfg.cluster.lease_ttl_s)
        self.metrics = GatewayMetrics(rt.metrics.registry)
        rt.model, self.class_names = model_classes(cfg)
        rt.make_hub(self.class_names)
        self.redis_up = False
        self.redis_error = "not connected yet"
        self._desired: dict[str, dict[str, Any]] = {}
        self._rev: bytes | None = None
        # this gateway's own last change of the desired state: (its revision, until when a
        # refresh that read an older revision must not undo it in the copy)
        self._local: tuple[int, float] = (0, 0.0)
        self._desired_lock = threading.Lock()
        self._owners: dict[str, tuple[str, int]] = {}
        self._workers: dict[str, dict[str, Any]] = {}
        self._last: dict[str, tuple[int, int]] = {}  # camera -> (seq, token) delivered
        self._ids: dict[str, bytes] = {}  # camera -> last stream entry id read
        self._counts = RelayedCounts()  # folded from the events this gateway fanned out
        self._stop = threading.Event()
        self._log = ThrottledLog()
        self._backoff = Backoff(cfg.redis.backoff_initial_s, cfg.redis.backoff_max_s)
        self._next_refresh = 0.0
        self._seeded = False
        self._thread = threading.Thread(target=self._run, name="vigil-gateway", daemon=True)
        self._thread.start()
        self._events: threading.Thread | None = None
        if event_store is not None:
            consumer = EventConsumer(self.client, self.keys, cfg.cluster.event_group, self.node,
                                     event_store, cfg.cluster.gateway_read_count)  # fmt: skip
            self._events = threading.Thread(
                target=self._consume, args=(consumer,), name="vigil-gateway-events", daemon=True
            )
            self._events.start()
        print(f"gateway {self.node}: redis {redacted(cfg.redis.url)}, prefix "
              f"{cfg.redis.key_prefix!r}", flush=True)  # fmt: skip

    # -- StreamBackend --------------------------------------------------------------------
    def readiness(self) -> tuple[bool, str]:
        if not self._thread.is_alive():
            return False, "the gateway's reader stopped"
        if not self.redis_up:
            return False, f"redis unreachable: {self.redis_error}"
        return True, ""

    def has(self, stream_id: str) -> bool:
        return stream_id in self._desired

    def list(self) -> list[dict[str, Any]]:
        return [self._status(cam) for cam in sorted(self._desired)]

    def status(self, stream_id: str) -> dict[str, Any] | None:
        return self._status(stream_id) if stream_id in self._desired else None

    def add(self, spec: StreamConfig, url: str) -> dict[str, Any]:
        """Write the camera into the desired state (the URL as given: each worker applies its
        own URL policy and media root)."""
        body = asdict(spec)
        data = json.dumps(body, sort_keys=True)
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.hsetnx(self.keys.streams, spec.id, data)
            pipe.incr(self.keys.streams_rev)
            added, rev = pipe.execute()
        except REDIS_DOWN as e:
            raise BackendUnavailable(f"redis unreachable, nothing changed ({e})") from None
        if not added:
            raise StreamConflict(f"stream {spec.id!r} already exists")
        self._patch(int(rev), spec.id, body)
        return self._status(spec.id)

    def remove(self, stream_id: str) -> bool:
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.hdel(self.keys.streams, stream_id)
            pipe.incr(self.keys.streams_rev)
            removed, rev = pipe.execute()
        except REDIS_DOWN as e:
            raise BackendUnavailable(f"redis unreachable, nothing changed ({e})") from None
        self._patch(int(rev), stream_id, None)
        return bool(removed)

    def stop(self, drain_timeout_s: float) -> None:
        self._stop.set()
        self._thread.join(max(1.0, drain_timeout_s))
        if self._events is not None:
            self._events.join(max(1.0, drain_timeout_s))
        self.client.close()

    def _patch(self, rev: int, cam: str, body: dict[str, Any] | None) -> None:
        """This gateway's own change (written at revision ``rev``; ``body`` None: removed) in
        its copy at once: read-your-writes, which a refresh that read an older revision does
        not undo (for a few refreshes: a Redis that lost its data starts revisions again)."""
        with self._desired_lock:
            desired = {k: v for k, v in self._desired.items() if k != cam}
            if body is not None:
                desired[cam] = body
            self._desired = desired
            self._local = (max(rev, self._local[0]), time.monotonic() + 5 * REFRESH_S)

    # -- views ------------------------------------------------------------------------------------
    def _status(self, cam: str) -> dict[str, Any]:
        spec = self._desired.get(cam, {"id": cam, "url": ""})
        out = _unassigned(spec)
        holder = self._owners.get(cam)
        if holder is None:
            return out
        worker, token = holder
        out.update(owner=worker, token=token, state="starting")
        live = self._workers.get(worker, {}).get("streams", {}).get(cam)
        if live is not None and live.get("token") == token:
            out.update({k: v for k, v in live.items() if k in out and k != "url"})
        return out

    def workers(self) -> dict[str, dict[str, Any]]:
        return dict(self._workers)

    # -- the reader thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if time.monotonic() >= self._next_refresh:
                    self._refresh()
                self._read()
                self._backoff.reset()
                if not self.redis_up:
                    print(f"gateway {self.node}: redis reachable", flush=True)
                self.redis_up = True
                self.metrics.redis_up.set(1)
            except REDIS_DOWN as e:
                self.redis_up, self.redis_error = False, str(e) or type(e).__name__
                self.metrics.redis_up.set(0)
                self.metrics.redis_errors.labels("gateway").inc()
                self._log("redis", f"vigil: gateway {self.node}: redis: {e}; retrying")
                self._stop.wait(self._backoff.next_delay())
            except Exception as e:  # never let the reader die of one bad entry
                self._log("reader", f"vigil: gateway {self.node}: {type(e).__name__}: {e}")
                self._stop.wait(0.5)

    def _seed(self) -> None:
        """The config's ``streams:`` join the desired state once (ids already there are left
        as they are: the desired state in Redis wins)."""
        if not self.cfg.streams:
            self._seeded = True
            return
        pipe = self.client.pipeline(transaction=True)
        for spec in self.cfg.streams:
            pipe.hsetnx(self.keys.streams, spec.id, json.dumps(asdict(spec), sort_keys=True))
        pipe.incr(self.keys.streams_rev)
        pipe.execute()
        self._seeded = True

    def _consume(self, consumer: EventConsumer) -> None:
        backoff = Backoff(self.cfg.redis.backoff_initial_s, self.cfg.redis.backoff_max_s)
        next_reclaim = 0.0
        while not self._stop.is_set():
            cams = sorted(self._desired)
            try:
                if time.monotonic() >= next_reclaim:
                    self.metrics.events_stored.inc(consumer.reclaim(cams))
                    next_reclaim = time.monotonic() + 10.0
                self.metrics.events_stored.inc(consumer.poll(cams, block_ms=500))
                backoff.reset()
                if not cams:
                    self._stop.wait(0.2)
            except REDIS_DOWN:
                self._stop.wait(backoff.next_delay())
            except Exception as e:  # a failing store: retried later, never a dead thread
                self._log("events", f"vigil: gateway {self.node}: events: {type(e).__name__}: {e}")
                self._stop.wait(backoff.next_delay())

    def _refresh(self) -> None:
        """Desired state (when its revision moved), lease holders and worker statuses."""
        if not self._seeded:
            self._seed()
        rev = self.client.get(self.keys.streams_rev)
        if rev is None or rev != self._rev:
            pipe = self.client.pipeline(transaction=True)  # the hash and its revision, together
            pipe.get(self.keys.streams_rev)
            pipe.hgetall(self.keys.streams)
            rev, raw = pipe.execute()
            desired = {k.decode(): json.loads(v) for k, v in raw.items()}
            with self._desired_lock:
                local_rev, until = self._local
                if int(rev or 0) >= local_rev or time.monotonic() > until:
                    self._desired, self._rev = desired, rev
            self._counts.keep(self._desired)
        cams = sorted(self._desired)
        holders = self.leases.holders(cams)
        self._owners = {c: h for c, h in zip(cams, holders, strict=True) if h is not None}
        nodes = [n.decode() for n in self.client.zrange(self.keys.workers, 0, -1)]
        values = self.client.mget([self.keys.worker(n) for n in nodes]) if nodes else []
        self._workers = {n: json.loads(v) for n, v in zip(nodes, values, strict=True) if v}
        self.metrics.streams.set(len(cams))
        self.metrics.owned.set(len(self._owners))
        self.metrics.workers.set(len(self._workers))
        self._next_refresh = time.monotonic() + REFRESH_S

    def _read(self) -> None:
        cams = sorted(self._desired)
        for gone in set(self._ids) - set(cams):
            self._ids.pop(gone, None)
            self._last.pop(gone, None)
        for cam in cams:
            if cam not in self._ids:  # start from its latest entry: the snapshot
                latest = self.client.xrevrange(self.keys.out(cam), count=1)
                self._ids[cam] = latest[0][0] if latest else b"0-0"
                for _, fields in latest:
                    self._deliver(cam, fields)
        if not cams:
            self._stop.wait(0.2)
            return
        block_ms = int(min(500.0, self.cfg.redis.timeout_s * 500))
        reply = self.client.xread(
            {self.keys.out(c): self._ids[c] for c in cams},
            count=self.cfg.cluster.gateway_read_count,
            block=max(1, block_ms),
        )
        for key, entries in reply or []:
            cam = self.keys.camera_of(key)
            for entry_id, fields in entries:
                self._ids[cam] = entry_id
                self._deliver(cam, fields)

    def _deliver(self, cam: str, fields: dict[bytes, bytes]) -> None:
        try:
            entry = decode_entry(cam, fields)
            if entry.kind != TRACK:
                return
            last = self._last.get(cam)
            if last is not None and (entry.token < last[1] or entry.seq <= last[0]):
                self.metrics.stale.inc()
                return
            msg = published_of(entry)
        except VigilError as e:
            self._log(f"entry:{cam}", f"vigil: gateway {self.node}: {e}")
            return
        if last is not None and entry.seq > last[0] + 1:
            self.metrics.gaps.labels(cam).inc(entry.seq - last[0] - 1)
        self._last[cam] = (entry.seq, entry.token)
        self.metrics.entries.labels("track").inc()
        if msg.events:
            spec = self._desired.get(cam, {})
            self._counts.add(cam, spec, entry.token, msg.counts_epoch, msg.events)
        self.rt.handoff(msg)

    def counts(self, streams: frozenset[str] | None) -> dict[str, Any]:
        """Counts folded from the events this gateway relayed, since it first saw each camera
        or the camera's last reset (``since_ts``), following the owner's resets."""
        cams = [c for c in sorted(self._desired) if streams is None or c in streams]
        return {cam: self._counts.snapshot(cam, self._desired.get(cam, {})) for cam in cams}

    # -- rules, counts resets, camera health --------------------------------------------------
    def rules(self, stream_id: str) -> Rules | None:
        """From the desired state as last read (this gateway's own edits at once, others'
        within about a second)."""
        spec = self._desired.get(stream_id)
        if spec is None:
            return None
        parsed = parse_stream(spec)
        return parsed.lines, parsed.zones

    def edit_rules(self, stream_id: str, edit: RuleEdit) -> Rules:
        """Read the camera's spec, apply ``edit``, check, write it back with the revision
        bumped: one optimistic transaction (``WATCH`` the desired state; retried when another
        change lands in between), so concurrent edits never lose one another."""
        key = self.keys.streams

        written: list[tuple[dict[str, Any], Rules]] = []

        def transaction(pipe: Any) -> None:
            written.clear()  # a retry starts again
            raw = pipe.hget(key, stream_id)
            if raw is None:
                raise KeyError(stream_id)
            spec = parse_stream(json.loads(raw))
            lines, zones = edit((spec.lines, spec.zones))
            # the whole spec through the loader's checks (bounds, unique ids), then the model's
            body = json.loads(json.dumps(asdict(replace(spec, lines=lines, zones=zones))))
            new = parse_stream(body)
            check_rules(new.lines, new.zones, self.class_names)
            pipe.multi()
            pipe.hset(key, stream_id, json.dumps(body, sort_keys=True))
            pipe.incr(self.keys.streams_rev)
            written.append((body, (new.lines, new.zones)))

        try:
            _, rev = self.client.transaction(transaction, key)
        except REDIS_DOWN as e:
            raise BackendUnavailable(
                f"redis unreachable ({e}); an edit lands whole or not at all: read the rules back"
            ) from None
        body, rules = written[-1]
        self._patch(int(rev), stream_id, body)
        return rules

    def reset_counts(self, stream_id: str) -> dict[str, Any]:
        """Bump the camera's reset counter (its owner resets at its next control round, a
        future owner starts from it) and restart this gateway's counts with it."""

        def transaction(pipe: Any) -> None:
            if not pipe.hexists(self.keys.streams, stream_id):
                raise KeyError(stream_id)
            pipe.multi()
            pipe.incr(self.keys.reset(stream_id))

        try:
            (epoch,) = self.client.transaction(transaction, self.keys.streams)
        except REDIS_DOWN as e:
            raise BackendUnavailable(f"redis unreachable, nothing changed ({e})") from None
        return self._counts.reset(stream_id, self._desired.get(stream_id, {}), int(epoch))

    def health(self, stream_id: str) -> dict[str, Any] | None:
        """The owner's camera-health report from its last heartbeat, with ``owner`` (null, and
        ``state`` ``unassigned``, when no live worker runs the camera now)."""
        if stream_id not in self._desired:
            return None
        holder = self._owners.get(stream_id)
        if holder is not None:
            live = self._workers.get(holder[0], {}).get("streams", {}).get(stream_id)
            if live is not None and live.get("token") == holder[1] and "health" in live:
                return {**live["health"], "owner": holder[0], "state": live.get("state")}
        enabled = bool(self._desired[stream_id].get("health", {}).get("enabled", True))
        if holder is None:
            return {"enabled": enabled, "owner": None, "state": "unassigned",
                    "reason": "no worker runs this camera now"}  # fmt: skip
        return {"enabled": enabled, "owner": holder[0], "state": "starting",
                "reason": "its owner has not reported its health yet"}  # fmt: skip


def serve_gateway(cfg: VigilConfig) -> int:
    """``vigil gateway``: serve until SIGTERM/SIGINT."""
    from server.app import create_app
    from server.serve import check_serving, run_app

    keyed = check_serving(cfg)
    connect(cfg.redis)  # a malformed URL fails here, before the server starts
    model_classes(cfg)
    app = create_app(cfg, lambda rt: _start_gateway(cfg, rt))
    return run_app(app, cfg, "Vigil gateway", keyed)


def store_events(outputs: EventOutputs, log: Callable[[str, str], None]) -> StoreFn:
    """The consumer group's store: decode each event entry, write them all to the event store
    in one transaction (raising leaves them pending in Redis, retried), then hand them to the
    sinks. An entry whose message is not a v1 event is logged and skipped."""

    def store(pairs: Sequence[tuple[bytes, Entry]]) -> None:
        events: list[Event] = []
        data: list[bytes] = []
        sources: list[str] = []
        for entry_id, entry in pairs:
            try:
                events.append(decode_event(entry.data))
            except ValueError as e:
                log("event-entry", f"vigil: event entry {entry_id!r} of {entry.camera}: {e}")
                continue
            data.append(entry.data)
            sources.append(entry_id.decode())
        if events:
            outputs.publish_durable(events, data, sources)

    return store


def _start_gateway(cfg: VigilConfig, rt: Runtime) -> Gateway:
    """The gateway backend with its event outputs (store, MQTT, webhooks): each event reaches
    them once across all gateways, through the consumer group."""
    outputs = EventOutputs(cfg, lambda: {}, rt.log)
    outputs.start()
    rt.outputs = outputs
    return Gateway(cfg, rt, event_store=store_events(outputs, rt.log))
