"""Stage timing statistics with bounded memory (a ring of recent samples plus running sums)."""

from __future__ import annotations

import threading

import numpy as np


class StageTimer:
    """Per-stage milliseconds: exact mean over all samples, p95 over the last ``window``."""

    def __init__(self, window: int = 8192) -> None:
        self._ring = np.zeros(window, np.float64)
        self._count = 0
        self._total = 0.0
        self._lock = threading.Lock()

    def add(self, ms: float, repeat: int = 1) -> None:
        """Record ``repeat`` samples of ``ms`` each (a batch cost spread over its frames)."""
        with self._lock:
            for _ in range(min(repeat, self._ring.size)):
                self._ring[self._count % self._ring.size] = ms
                self._count += 1
            self._count += max(0, repeat - self._ring.size)
            self._total += ms * repeat

    @property
    def count(self) -> int:
        return self._count

    def summary(self) -> dict[str, float]:
        with self._lock:
            n = min(self._count, self._ring.size)
            if n == 0:
                return {"mean_ms": 0.0, "p95_ms": 0.0}
            return {
                "mean_ms": round(self._total / self._count, 3),
                "p95_ms": round(float(np.percentile(self._ring[:n], 95)), 3),
            }


class StageStats:
    """A named set of StageTimers (decode, preprocess, infer, embed, track, encode...)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.timers = {name: StageTimer() for name in names}

    def add(self, name: str, ms: float, repeat: int = 1) -> None:
        self.timers[name].add(ms, repeat)

    def summary(self) -> dict[str, dict[str, float]]:
        return {name: t.summary() for name, t in self.timers.items()}
