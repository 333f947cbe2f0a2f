"""A worker's way to Redis: a bounded buffer filled by the inference thread and drained by one
writer thread with fenced appends.

``publish`` never blocks and never talks to Redis: it tags the message with the camera's
current lease (its tenure) and appends it to a bounded buffer; beyond ``capacity`` the oldest
entries are dropped and counted. The writer thread sends up to ``batch`` entries per round trip
(one fenced script call per camera). While Redis is away it keeps the buffer, bounded, and
retries with jittered backoff; entries the fence refuses (the lease is no longer this
worker's) are dropped and reported to ``on_rejected`` so the worker stops that camera at once;
entries refused because the lease *expired* (nobody holds it: Redis was away past the TTL) are
kept, bounded, until the worker has claimed the camera again (see :meth:`rebind`).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from cluster.connection import REDIS_DOWN, Keys
from cluster.entries import event_fields, track_fields
from cluster.leases import Lease, Leases
from cluster.metrics import WorkerMetrics
from pipeline.batcher import Backoff
from pipeline.live_step import Published


@dataclass(frozen=True)
class Pending:
    lease: Lease
    key: str
    fields: list[bytes]


class ResultWriter:
    def __init__(
        self,
        leases: Leases,
        keys: Keys,
        maxlen: int,
        capacity: int,
        batch: int,
        backoff: Backoff,
        metrics: WorkerMetrics,
        on_rejected: Callable[[Lease], None],
        on_redis: Callable[[bool], None],
    ) -> None:
        self.leases = leases
        self.keys = keys
        self.maxlen = maxlen
        self.capacity = capacity
        self.batch = batch
        self.metrics = metrics
        self._backoff = backoff
        self._on_rejected = on_rejected
        self._on_redis = on_redis
        self._tenure: dict[str, Lease] = {}
        self._rebound: dict[Lease, Lease] = {}
        self._buffer: deque[Pending] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._inflight = 0
        self._thread = threading.Thread(target=self._run, name="vigil-redis-writer", daemon=True)

    # -- tenures (called by the worker's control thread) -----------------------------------
    def own(self, lease: Lease) -> None:
        with self._cond:
            self._tenure[lease.camera] = lease

    def rebind(self, old: Lease, new: Lease) -> None:
        """The camera was claimed again with the next token (nobody owned it in between): its
        buffered entries belong to the new tenure."""
        with self._cond:
            self._tenure[new.camera] = new
            self._rebound[old] = new  # for entries in flight now
            self._buffer = deque(
                Pending(new, p.key, p.fields) if p.lease == old else p for p in self._buffer
            )

    def disown(self, camera: str) -> int:
        """Stop accepting the camera's messages and drop what is buffered for it."""
        with self._cond:
            self._tenure.pop(camera, None)
            self._rebound = {o: n for o, n in self._rebound.items() if o.camera != camera}
            before = len(self._buffer)
            self._buffer = deque(p for p in self._buffer if p.lease.camera != camera)
            dropped = before - len(self._buffer)
        if dropped:
            self.metrics.dropped.labels("disowned").inc(dropped)
        self.metrics.buffered.set(len(self._buffer))
        return dropped

    def pending_for(self, camera: str) -> int:
        with self._cond:
            queued = sum(1 for p in self._buffer if p.lease.camera == camera)
            return queued + self._inflight

    # -- the inference thread ------------------------------------------------------------------
    def publish(self, msg: Published) -> None:
        """Never blocks: tag with the camera's tenure and buffer (the oldest dropped if full)."""
        lease = self._tenure.get(msg.stream)
        if lease is None:
            self.metrics.dropped.labels("unowned").inc()
            return
        fields = track_fields(msg, lease.worker, lease.token)
        self._append(Pending(lease, self.keys.out(msg.stream), fields))
        for e, data in zip(msg.events, msg.event_data, strict=True):
            self.publish_event(msg.stream, data, e.seq, msg.arrival)

    def publish_event(self, camera: str, data: bytes, seq: int, ts: float) -> None:
        """An event of ``camera`` (its encoded message) to the camera's ``events`` stream, with
        the same tenure tag, bound and fencing as track messages. Never blocks."""
        lease = self._tenure.get(camera)
        if lease is None:
            self.metrics.dropped.labels("unowned").inc()
            return
        fields = event_fields(data, seq, ts, lease.worker, lease.token)
        self._append(Pending(lease, self.keys.events(camera), fields))

    def _append(self, item: Pending) -> None:
        with self._cond:
            if len(self._buffer) >= self.capacity:
                self._buffer.popleft()
                self.metrics.dropped.labels("buffer_full").inc()
            self._buffer.append(item)
            self._cond.notify()

    # -- the writer thread -----------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, flush_timeout_s: float) -> None:
        """Write what is buffered (until the deadline), then end the thread."""
        deadline = time.monotonic() + flush_timeout_s
        while time.monotonic() < deadline and self.pending() and self._thread.is_alive():
            time.sleep(0.02)
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(max(0.1, deadline - time.monotonic()))

    def pending(self) -> int:
        with self._cond:
            return len(self._buffer) + self._inflight

    def _take(self) -> list[Pending]:
        with self._cond:
            while not self._buffer and not self._stop.is_set():
                self._cond.wait(0.5)
            n = min(self.batch, len(self._buffer))
            items = [self._buffer.popleft() for _ in range(n)]
            self._inflight = n
            return items

    def _give_back(self, items: list[Pending]) -> None:
        """Failed round trip: put the entries back in front, keeping the newest within bounds."""
        with self._cond:
            items = [Pending(self._rebound.get(p.lease, p.lease), p.key, p.fields) for p in items]
            merged = items + list(self._buffer)
            overflow = max(0, len(merged) - self.capacity)
            if overflow:
                self.metrics.dropped.labels("buffer_full").inc(overflow)
            self._buffer = deque(merged[overflow:])
            self._inflight = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            items = self._take()
            self.metrics.buffered.set(len(self._buffer))
            if not items:
                continue
            groups: dict[tuple[Lease, str], list[list[bytes]]] = {}
            for p in items:
                groups.setdefault((p.lease, p.key), []).append(p.fields)
            batches = [(lease, key, self.maxlen, e) for (lease, key), e in groups.items()]
            batches_index = {(lease, key): i for i, (lease, key, _, _) in enumerate(batches)}
            try:
                appended = self.leases.append_many(batches)
            except REDIS_DOWN as e:
                self._give_back(items)
                self.metrics.redis_errors.labels("writer").inc()
                self._on_redis(False)
                delay = self._backoff.next_delay()
                if self._backoff.attempt == 1:
                    print(f"vigil: redis unreachable from the writer ({e}); buffering, retrying",
                          file=sys.stderr, flush=True)  # fmt: skip
                self._stop.wait(delay)
                continue
            except Exception as e:  # a script error must not end the thread: drop and report
                self._give_back([])
                self.metrics.dropped.labels("error").inc(len(items))
                print(f"vigil: redis write failed: {type(e).__name__}: {e}", file=sys.stderr,
                      flush=True)  # fmt: skip
                continue
            with self._cond:
                self._inflight = 0
            self._backoff.reset()
            self._on_redis(True)
            expired = [p for p in items if appended[batches_index[(p.lease, p.key)]] < 0]
            if expired:
                self._give_back(expired)
            for (lease, _, _, entries), n in zip(batches, appended, strict=True):
                if n > 0:
                    self.metrics.written.inc(n)
                elif n == 0:
                    self.metrics.rejected.inc(len(entries))
                if n <= 0:
                    self._on_rejected(lease)
            if expired:  # wait for the worker to claim the camera again
                self._stop.wait(self._backoff.next_delay())
