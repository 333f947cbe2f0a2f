"""Live-mode buffering and cross-stream batching: pure policy, no threads of its own.

- :class:`LatestSlot`: a one-frame buffer per stream (the LATEST policy). A new frame replaces
  an unconsumed one, and the replaced frame is counted as dropped: a stream never builds a
  backlog, so latency stays flat when offered load exceeds capacity.
- :class:`RateGate`: admits frames at most ``fps`` times per second per stream (the per-stream
  inference rate); the rest are skipped at the source, before they cost anything.
- :class:`CrossStreamBatcher`: decides when the frames waiting in the slots form a batch (at
  ``max_batch`` ready streams, or when the oldest ready frame has waited ``max_wait_ms``) and in
  which order streams are served (round-robin from after the last stream served, one frame per
  stream per batch), so a busy stream cannot starve a quiet one.
- :class:`Backoff`: exponential reconnection delays with jitter.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.types import Frame


class LatestSlot:
    """Holds at most one frame. Thread-safe; ``put`` never blocks.

    ``ready_since`` is when the slot last went from empty to holding a frame (wall clock at
    ``put``, not the frame's arrival stamp): a replacement keeps it, so a stream that decodes
    far faster than it is inferred still reaches the batcher's ``max_wait_ms`` deadline
    (measured on the newest frame's arrival, a fast stream's deadline would move forward with
    every replacement and never come); and a frame that waited in its reader before it got the
    slot (``put_when_free``) does not look overdue, which would send it off alone in a batch of
    one. The consumer's condition is notified only on that empty -> full edge.

    A backpressured producer (``put_when_free``) may also park one frame behind the held one;
    ``take`` moves it in at once, so such a stream is ready again the moment a batch takes its
    frame, without waiting for its reader thread to be scheduled (on a saturated machine that
    wait made its batches small). At most two frames per slot, never more.
    """

    def __init__(self, on_put: threading.Condition | None = None) -> None:
        self._frame: Frame | None = None
        self._next: Frame | None = None  # parked by put_when_free behind the held frame
        self._ready_since: float | None = None
        self._lock = threading.Lock()
        self._taken = threading.Condition(self._lock)
        self._notify = on_put
        self.dropped = 0
        self.accepted = 0

    def put(self, frame: Frame, now: float | None = None) -> None:
        """Hold ``frame``, replacing (and counting) any frame not yet taken. ``now``: the wall
        clock (``time.time()`` unless given)."""
        with self._lock:
            edge = self._frame is None
            if edge:
                self._ready_since = time.time() if now is None else now
            else:
                self.dropped += 1
            self._frame = frame
            self.accepted += 1
        if edge and self._notify is not None:
            with self._notify:
                self._notify.notify()

    def put_when_free(self, frame: Frame, timeout: float) -> bool:
        """Hold ``frame`` if the slot is empty, else park it behind the held frame once the
        parking place is free (backpressure for a source that need not keep up with a clock,
        e.g. a file read as fast as it is inferred); False if it was still taken after
        ``timeout`` seconds (the caller decides whether to wait again). One producer per slot."""
        with self._lock:
            if self._frame is not None and self._next is not None:
                self._taken.wait(timeout)
            if self._frame is not None:
                if self._next is not None:
                    return False
                self._next = frame
                self.accepted += 1
                return True
        self.put(frame)
        return True

    def take(self) -> Frame | None:
        with self._lock:
            frame, self._frame, self._next = self._frame, self._next, None
            self._ready_since = time.time() if self._frame is not None else None
            self._taken.notify_all()
            return frame

    def ready_since(self) -> float | None:
        """When the slot went from empty to full (wall clock); None when empty."""
        with self._lock:
            return self._ready_since

    @property
    def depth(self) -> int:
        return (self._frame is not None) + (self._next is not None)


class RateGate:
    """Admit at most ``fps`` frames per second (0 = every frame), by arrival time.

    Uses a credit schedule rather than "time since last": a 30 fps source gated to 10 fps admits
    exactly every third frame instead of drifting.
    """

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps if fps > 0 else 0.0
        self._next = -1.0
        self.skipped = 0

    def set_fps(self, fps: float) -> None:
        """Change the rate from the next admitted frame on (QoS lowers and restores it)."""
        period = 1.0 / fps if fps > 0 else 0.0
        if period != self.period:
            self.period = period
            self._next = -1.0

    @property
    def fps(self) -> float:
        """The rate admitted now (0: every frame)."""
        return 1.0 / self.period if self.period > 0 else 0.0

    def admit(self, t: float) -> bool:
        if self.period == 0.0:
            return True
        if self._next < 0:
            self._next = t + self.period
            return True
        if t >= self._next - 1e-4:
            self._next += self.period  # stay on the ideal grid...
            if self._next < t:  # ...but a stall never banks credit for a burst
                self._next = t + self.period
            return True
        self.skipped += 1
        return False


@dataclass(frozen=True)
class BatchDecision:
    emit: bool
    wait_s: float  # when not emitting: how long until the deadline (inf: nothing ready)


class CrossStreamBatcher:
    """Batch policy over the streams that have a frame ready."""

    def __init__(self, max_batch: int, max_wait_ms: float) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ms >= 0")
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._last_served = ""

    def decide(self, ready: int, oldest_arrival: float | None, now: float) -> BatchDecision:
        """``ready`` streams have a frame; the oldest arrived at ``oldest_arrival``."""
        if ready == 0 or oldest_arrival is None:
            return BatchDecision(False, float("inf"))
        if ready >= self.max_batch:
            return BatchDecision(True, 0.0)
        deadline = oldest_arrival + self.max_wait
        if now >= deadline:
            return BatchDecision(True, 0.0)
        return BatchDecision(False, deadline - now)

    def order(self, ready_ids: Sequence[str]) -> list[str]:
        """Up to ``max_batch`` stream ids, round-robin after the last stream served."""
        ids = sorted(ready_ids)
        if not ids:
            return []
        start = next((i for i, s in enumerate(ids) if s > self._last_served), 0)
        chosen = (ids[start:] + ids[:start])[: self.max_batch]
        self._last_served = chosen[-1]
        return chosen


class Backoff:
    """Reconnection delays: ``initial * 2**attempt`` capped at ``maximum``, drawn uniformly from
    the upper half of that cap so that many cameras failing together do not retry together."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        cap = min(self.maximum, self.initial * (2**self.attempt))
        self.attempt += 1
        return self._rng.uniform(cap / 2, cap)

    def reset(self) -> None:
        self.attempt = 0
