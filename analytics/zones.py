"""Polygon zones: enter/exit with inertia, spawned tracks, occupancy, dwell and loitering.

Per (track, zone) state, in the stream's track table: ``z_b (K, Z, 3) bool`` inside
(committed), whether the current run began with the track's first observation, whether the
stay was reported as loitering; ``z_i (K, Z, 3) int64`` the run of observations that disagree
with the committed state, the frame of its first observation and of the last one inside;
``z_f (K, Z, 5) float64`` stream and wall time of the run's first observation, the stay's
entry, stream and wall time of the last observation inside; ``z_box (K, Z, 4)`` the box at the
run's first observation.

- entered: ``inertia`` consecutive observations inside (the track confirmed); stamped with the
  first of them. A track whose run inside began at its first observation is ``spawned`` instead
  (it appeared there: a person stepping out of a car, a track re-born after an ID switch).
- exited: ``inertia`` consecutive observations outside; dwell = first outside - entry, in
  stream time. When the track ends while inside, it exits with reason ``lost`` and the dwell
  clock stops at its last observation inside.
- occupancy: tracks currently inside per zone and class, at every frame (a track briefly
  missed by the detector stays inside until it ends); changes are events.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from analytics.events import ZONE_ENTER, ZONE_EXIT, ZONE_LOITER, ZONE_OCCUPANCY, ZONE_SPAWN, Event
from analytics.geometry import anchor_points, points_in_polygons, polygon_edges
from analytics.rulebase import Moment, Observation, RuleSet, box_tuple, scale
from analytics.rules import ZoneRule
from analytics.table import Table

IN, FIRST, LOITERED = range(3)  # z_b
RUN, RUN_FRAME, LAST_FRAME = range(3)  # z_i
RUN_PTS, RUN_TS, ENTRY, LAST_PTS, LAST_TS = range(5)  # z_f


class ZoneSet(RuleSet):
    prefix = "z_"

    def __init__(self, table: Table, class_names: Sequence[str]) -> None:
        super().__init__(class_names)
        self.table = table
        self._norm: list[np.ndarray] = []
        self._px: tuple[tuple[int, int], np.ndarray] | None = None
        self._inertia = np.zeros(0, np.int64)
        self._loiter = np.zeros(0, np.float64)
        self._loiters = False
        self.occupancy = np.zeros((0, len(self.class_names)), np.int64)  # (Z, C) now
        self.dirty = False  # occupancy may have changed: recount at the end of the frame
        table.define("z_b", np.bool_, False, (0, 3))
        table.define("z_i", np.int64, 0, (0, 3))
        table.define("z_f", np.float64, np.nan, (0, 5))
        table.define("z_box", np.float32, 0.0, (0, 4))

    def set_rules(
        self, rules: Sequence[ZoneRule], class_ids: Sequence[frozenset[int] | None]
    ) -> None:
        """Replace the zones; an identical rule keeps its state and occupancy."""
        keep = self.keep_index(rules)
        self.table.reshape_rules(self.prefix, keep, len(rules))
        occ = np.zeros((len(rules), len(self.class_names)), np.int64)
        occ[keep >= 0] = self.occupancy[keep[keep >= 0]]
        self.occupancy = occ
        self._set_common(rules, class_ids)
        self._norm = [np.asarray(r.polygon, np.float64) for r in rules]
        self._px = None
        self._inertia = np.array([r.inertia for r in rules], np.int64)
        self._loiter = np.array([r.loiter_s for r in rules], np.float64)
        self._loiters = bool((self._loiter > 0).any())
        self.dirty = True

    def _polygons(self, at: Moment) -> np.ndarray:
        size = (at.width, at.height)
        if self._px is None or self._px[0] != size:
            self._px = (size, polygon_edges([scale(p, *size) for p in self._norm]))
        return self._px[1]

    def update(self, at: Moment, o: Observation) -> list[Event]:
        """One frame over every row of the table (``o``: this frame's observations). The common
        frame (nobody changing sides) costs a handful of array operations."""
        if not len(self) or not o.obs.any():
            return []
        t = self.table
        inside = points_in_polygons(anchor_points(o.box, self.weights), self._polygons(at))
        app = self.applies(o.cls, o.obs)
        zb, zi, zf = t["z_b"], t["z_i"], t["z_f"]
        zin, run = zb[..., IN], zi[..., RUN]  # views: updated in place
        now_in = app & inside
        if now_in.any():
            np.copyto(zi[..., LAST_FRAME], at.frame, where=now_in)
            np.copyto(zf[..., LAST_PTS], at.pts, where=now_in)
            np.copyto(zf[..., LAST_TS], at.ts, where=now_in)
        differs = app & (inside != zin)
        if run.any():
            np.copyto(run, 0, where=app & ~differs)  # back to the committed state: no run
        events: list[Event] = []
        if differs.any():
            new_run = differs & (run == 0)
            run += differs
            np.copyto(zb[..., FIRST], ~o.seen[:, None], where=new_run)
            np.copyto(zi[..., RUN_FRAME], at.frame, where=new_run)
            np.copyto(zf[..., RUN_PTS], at.pts, where=new_run)
            np.copyto(zf[..., RUN_TS], at.ts, where=new_run)
            np.copyto(t["z_box"], o.box[:, None, :], where=new_run[..., None])
            due = differs & (run >= self._inertia)
            enter = due & inside & o.confirmed[:, None]
            leave = due & ~inside
            events = self._transitions(at, enter, leave, o.cls)
            done = enter | leave
            zin ^= done
            np.copyto(run, 0, where=done)
            self.dirty |= bool(done.any())
        if self._loiters and zin.any():
            events += self._loitering(at, now_in & zin, o)
        return events

    def _transitions(
        self, at: Moment, enter: np.ndarray, leave: np.ndarray, cls: np.ndarray
    ) -> list[Event]:
        if not (enter.any() or leave.any()):
            return []
        t = self.table
        zb, zi, zf, boxes = t["z_b"], t["z_i"], t["z_f"], t["z_box"]
        events = []
        for k, z in zip(*np.nonzero(enter | leave), strict=True):  # events, not tracks
            c = int(cls[k])
            when = float(zf[k, z, RUN_PTS])
            entering = bool(enter[k, z])
            kind = (ZONE_SPAWN if zb[k, z, FIRST] else ZONE_ENTER) if entering else ZONE_EXIT
            events.append(
                Event(
                    kind,
                    at.stream,
                    int(zi[k, z, RUN_FRAME]),
                    when,
                    float(zf[k, z, RUN_TS]),
                    rule=self.rules[z].id,
                    track=int(t.ids[k]),
                    class_id=c,
                    class_name=self.name(c),
                    box=box_tuple(boxes[k, z]),
                    dwell_s=None if entering else when - float(zf[k, z, ENTRY]),
                    reason=None if entering else "left",
                )
            )
        np.copyto(zf[..., ENTRY], zf[..., RUN_PTS], where=enter)
        np.copyto(zb[..., LOITERED], False, where=enter)
        return events

    def _loitering(self, at: Moment, staying: np.ndarray, o: Observation) -> list[Event]:
        t = self.table
        dwell = at.pts - t["z_f"][..., ENTRY]
        loitered = t["z_b"][..., LOITERED]
        due = staying & ~loitered & (self._loiter > 0) & (dwell >= self._loiter)
        if not due.any():
            return []
        loitered |= due
        return [
            self.event(
                ZONE_LOITER,
                at,
                rule=self.rules[z].id,
                track=int(t.ids[k]),
                class_id=int(o.cls[k]),
                class_name=self.name(int(o.cls[k])),
                box=box_tuple(o.box[k]),
                dwell_s=float(dwell[k, z]),
            )
            for k, z in zip(*np.nonzero(due), strict=True)
        ]

    def settle(self, at: Moment, ended: np.ndarray, o: Observation, reason: str) -> list[Event]:
        """Tracks ``ended (K,)`` end (``reason`` ``lost`` or ``end``): those inside exit, their
        dwell clock stopped at their last observation inside."""
        if not len(self) or not ended.any():
            return []
        t = self.table
        zb, zi, zf = t["z_b"], t["z_i"], t["z_f"]
        out = ended[:, None] & zb[..., IN]
        events = [
            Event(
                ZONE_EXIT,
                at.stream,
                int(zi[k, z, LAST_FRAME]),
                float(zf[k, z, LAST_PTS]),
                float(zf[k, z, LAST_TS]),
                rule=self.rules[z].id,
                track=int(t.ids[k]),
                class_id=int(o.cls[k]),
                class_name=self.name(int(o.cls[k])),
                box=box_tuple(o.box[k]),
                dwell_s=float(zf[k, z, LAST_PTS] - zf[k, z, ENTRY]),
                reason=reason,
            )
            for k, z in zip(*np.nonzero(out), strict=True)
        ]
        zb[..., IN][out] = False
        self.dirty |= bool(out.any())
        return events

    def occupancy_events(self, at: Moment, cls: np.ndarray) -> list[Event]:
        """If anything went in or out (or changed class) since the last count: recount occupancy
        per zone and class (``cls (K,)`` each row's class) and report the (zone, class) pairs
        that changed."""
        if not len(self) or not self.dirty:
            return []
        self.dirty = False
        n = len(self.class_names)
        k, z = np.nonzero(self.table["z_b"][..., IN])
        c = cls[k]
        ok = (c >= 0) & (c < n)
        occ = np.bincount(z[ok] * n + c[ok], minlength=len(self) * n).reshape(len(self), n)
        changed = np.nonzero(occ != self.occupancy)
        self.occupancy = occ
        return [
            self.event(
                ZONE_OCCUPANCY,
                at,
                rule=self.rules[zi].id,
                class_id=int(ci),
                class_name=self.class_names[ci],
                count=int(occ[zi, ci]),
            )
            for zi, ci in zip(*changed, strict=True)
        ]
