"""Counts per rule, class and direction: a fold over the stream's events.

The shape (``counts.json`` of a replay, REST, retained MQTT topics)::

    {"since_ts": 1763798400.1,
     "lines": {LINE: {"in": {CLASS: N}, "out": {CLASS: N}}},
     "zones": {ZONE: {"entered": {CLASS: N}, "exited": {...}, "spawned": {...},
                      "loitering": {...}, "occupancy": {...}, "max_occupancy": {...},
                      "mean_dwell_s": {...}}}}

Occupancy is the current value (from ``zone_occupancy`` events), so a reset keeps it and
starts ``max_occupancy`` from it. Thread-safe: the pipeline adds, the server reads.

Resets are numbered (``epoch``): ``added_epoch`` is the number of the reset the events of the
latest :meth:`add` were counted after, read under the same lock as the add, so a cluster worker
can stamp each frame's message with it and a gateway folding the relayed events resets at
exactly the frame the worker did (``cluster.gateway``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

from analytics.events import (
    LINE_CROSS,
    ZONE_ENTER,
    ZONE_EXIT,
    ZONE_LOITER,
    ZONE_OCCUPANCY,
    ZONE_SPAWN,
    Event,
)

ZONE_COUNTERS = ("entered", "exited", "spawned", "loitering")
_ZONE_KIND = {ZONE_ENTER: "entered", ZONE_EXIT: "exited", ZONE_SPAWN: "spawned",
              ZONE_LOITER: "loitering"}  # fmt: skip


def _bump(d: dict[str, int], key: str, n: int = 1) -> None:
    d[key] = d.get(key, 0) + n


class Counts:
    """Counters of one stream's lines and zones (ids given by :meth:`set_rules`)."""

    def __init__(self, since_ts: float = 0.0, epoch: int = 0) -> None:
        self.since_ts = since_ts
        self.epoch = epoch
        self.added_epoch = epoch
        self._lock = threading.Lock()
        self._lines: dict[str, dict[str, dict[str, int]]] = {}
        self._zones: dict[str, dict[str, dict[str, int]]] = {}
        self._occupancy: dict[str, dict[str, int]] = {}
        self._dwell: dict[str, dict[str, list[float]]] = {}  # zone -> class -> [sum, n]

    def set_rules(
        self, lines: Sequence[str], zones: Sequence[str], fresh: Iterable[str] = ()
    ) -> None:
        """Keep the counters of rules still present (unless named in ``fresh``: changed rules
        start from zero), add empty ones for new rules, forget removed ones."""
        fresh = set(fresh)
        with self._lock:
            self._lines = {
                r: self._lines[r] if r in self._lines and r not in fresh else {"in": {}, "out": {}}
                for r in lines
            }
            self._zones = {
                r: self._zones[r] if r in self._zones and r not in fresh
                else {k: {} for k in (*ZONE_COUNTERS, "max_occupancy")}
                for r in zones
            }  # fmt: skip
            self._occupancy = {r: {} if r in fresh else self._occupancy.get(r, {}) for r in zones}
            self._dwell = {r: {} if r in fresh else self._dwell.get(r, {}) for r in zones}

    def add(self, events: Iterable[Event]) -> set[str]:
        """Fold events in; returns the ids of the rules whose counts changed."""
        touched: set[str] = set()
        with self._lock:
            self.added_epoch = self.epoch
            for e in events:
                if e.rule is None or e.class_name is None:
                    continue
                cls = e.class_name
                if e.kind == LINE_CROSS:
                    line = self._lines.get(e.rule)
                    if line is None or e.direction not in ("in", "out"):
                        continue
                    _bump(line[e.direction], cls)
                else:
                    zone = self._zones.get(e.rule)
                    if zone is None:
                        continue
                    if e.kind in _ZONE_KIND:
                        _bump(zone[_ZONE_KIND[e.kind]], cls)
                    if e.kind == ZONE_EXIT and e.dwell_s is not None:
                        acc = self._dwell[e.rule].setdefault(cls, [0.0, 0.0])
                        acc[0] += e.dwell_s
                        acc[1] += 1
                    if e.kind == ZONE_OCCUPANCY and e.count is not None:
                        self._occupancy[e.rule][cls] = e.count
                        peak = zone["max_occupancy"]
                        peak[cls] = max(peak.get(cls, 0), e.count)
                touched.add(e.rule)
        return touched

    def reset(self, since_ts: float, epoch: int | None = None) -> None:
        """Zero every counter; occupancy stays (it is state) and seeds ``max_occupancy``.
        ``epoch``: this reset's number (default the current one + 1)."""
        with self._lock:
            self.since_ts = since_ts
            self.epoch = self.epoch + 1 if epoch is None else epoch
            for rule in self._lines:
                self._lines[rule] = {"in": {}, "out": {}}
            for rule in self._zones:
                fresh: dict[str, dict[str, int]] = {k: {} for k in ZONE_COUNTERS}
                fresh["max_occupancy"] = {c: n for c, n in self._occupancy[rule].items() if n}
                self._zones[rule] = fresh
                self._dwell[rule] = {}

    def snapshot(self, rules: Iterable[str] | None = None) -> dict[str, Any]:
        """A JSON-ready copy (only ``rules`` if given)."""
        wanted = None if rules is None else set(rules)
        with self._lock:
            lines = {
                r: {d: dict(v) for d, v in c.items()}
                for r, c in self._lines.items()
                if wanted is None or r in wanted
            }
            zones = {}
            for r, c in self._zones.items():
                if wanted is not None and r not in wanted:
                    continue
                z: dict[str, Any] = {k: dict(v) for k, v in c.items()}
                z["occupancy"] = {k: v for k, v in self._occupancy[r].items() if v}
                z["mean_dwell_s"] = {
                    k: round(s / n, 3) for k, (s, n) in self._dwell[r].items() if n
                }
                zones[r] = z
            return {"since_ts": round(self.since_ts, 3), "lines": lines, "zones": zones}
