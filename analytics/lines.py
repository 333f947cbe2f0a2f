"""Directed counting lines, every (track, line) pair of a frame at once.

Per (track, line) state, in the stream's track table: ``l_i (K, L, 4) int64`` the committed
side (0 until first seen off the line), a pending crossing's new side (0: none), the
observations on it since, and the frame it happened; ``l_f (K, L, 4) float64`` its stream time
and wall-clock time, and when each direction last counted (cooldown); ``l_box (K, L, 4)`` the
box at the crossing.

Per observation of a track (only in the rules whose classes include it):

1. first time off the line: the committed side is set, nothing counts;
2. the path from the previous observation's anchor to this one meets the segment and ends on
   the other side: a crossing is pending (a fast object cannot jump the line: the path is
   tested, not the positions; a line 5 px from the edge works the same);
3. the anchor is back on the committed side: the pending crossing is dropped (flicker);
4. it passed the segment's end instead (no hit): the committed side just follows;
5. a pending crossing counts once it has ``min_frames`` observations on the new side, the anchor
   is ``min_distance`` box heights past the line and the track is confirmed; a track that ends
   with a pending crossing counts it if it was ever confirmed. ``in``: -1 -> +1; ``out``:
   +1 -> -1; at most one per track and direction per ``cooldown_s`` (stream time);
6. an ID switch is not a second object: a crossing is not counted when, within ``cooldown_s``,
   another track crossed the same line the same way, the two can never have been reported in
   the same frame (their observations fit in their joint lifetime without overlapping), and
   one continues the other (the later one began where the earlier one was last seen, box IoU
   >= 0.3; or, when their ids alternate, they were last seen at the same place). Each line
   remembers its last :data:`RECENT` counted crossings for this.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from analytics.events import LINE_CROSS, Event
from analytics.geometry import anchor_points, cross, paths_hit_segments
from analytics.rulebase import Moment, Observation, RuleSet, scale
from analytics.rules import LineRule
from analytics.table import Table

SIDE, PEND, N, FRAME = range(4)  # l_i
PTS, TS, LAST_IN, LAST_OUT = range(4)  # l_f
RECENT = 32  # counted crossings remembered per line (ID-switch check)
SAME_PLACE_IOU = 0.3


def _iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of ``(S, 4)`` boxes with ``(4,)`` or ``(S, 4)`` boxes: ``(S,)``."""
    lt = np.maximum(boxes[..., :2], box[..., :2])
    rb = np.minimum(boxes[..., 2:], box[..., 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area_a = np.prod(boxes[..., 2:] - boxes[..., :2], axis=-1)
    area = area_a + np.prod(box[..., 2:] - box[..., :2], axis=-1)
    return np.asarray(inter / np.maximum(area - inter, 1e-9))


class Recent:
    """The last :data:`RECENT` counted crossings of each line: track id (-1: empty slot),
    direction and stream time, and the track's first and last analysis ticks and boxes and its
    number of observations (read from the track table while the track lives, frozen here when
    it ends)."""

    _FIELDS = ("id", "dir", "pts", "first", "first_box", "last", "last_box", "nobs", "next")

    def __init__(self, lines: int) -> None:
        self.id = np.full((lines, RECENT), -1, np.int64)
        self.dir = np.zeros((lines, RECENT), np.int64)
        self.pts = np.zeros((lines, RECENT), np.float64)
        self.first = np.zeros((lines, RECENT), np.int64)
        self.first_box = np.zeros((lines, RECENT, 4), np.float64)
        self.last = np.zeros((lines, RECENT), np.int64)
        self.last_box = np.zeros((lines, RECENT, 4), np.float64)
        self.nobs = np.zeros((lines, RECENT), np.int64)
        self.next = np.zeros(lines, np.int64)

    def reindex(self, keep: np.ndarray) -> Recent:
        new = Recent(len(keep))
        src = keep >= 0
        for name in self._FIELDS:
            getattr(new, name)[src] = getattr(self, name)[keep[src]]
        return new

    def switches(
        self, ks: np.ndarray, rs: np.ndarray, ds: np.ndarray, pts: np.ndarray,
        windows: np.ndarray, o: Observation, table: Table,
    ) -> np.ndarray:  # fmt: skip
        """``(E,) bool``: whether the crossing of line ``rs[e]`` by table row ``ks[e]`` repeats a
        recent one by a track it took over from (or that took over from it): see the module
        docstring. Checked against every remembered crossing of those lines at once."""
        ids = self.id[rs]  # (E, S)
        me = table.ids[ks]
        candidate = (ids >= 0) & (ids != me[:, None]) & (self.dir[rs] == ds[:, None])
        candidate &= np.abs(self.pts[rs] - pts[:, None]) <= windows[:, None]
        if not candidate.any():
            return np.zeros(len(ks), bool)
        e, slot = np.nonzero(candidate)
        r, other = rs[e], ids[e, slot]
        pos = np.minimum(np.searchsorted(table.ids, other), len(table) - 1)
        alive = table.ids[pos] == other
        first = self.first[r, slot]
        last = np.where(alive, o.last[pos], self.last[r, slot])
        nobs = np.where(alive, o.nobs[pos], self.nobs[r, slot])
        k = ks[e]
        me_first, me_last = o.first[k], o.last[k]
        joint = np.maximum(last, me_last) - np.minimum(first, me_first) + 1
        apart = nobs + o.nobs[k] <= joint  # never reported in the same frame
        last_box = np.where(alive[:, None], o.box[pos], self.last_box[r, slot])
        before = last < me_first  # the other ended before this one began
        after = me_last < first  # ...or began after this one ended
        continues = (
            np.where(
                before,
                _iou(last_box, o.first_box[k]),
                np.where(after, _iou(self.first_box[r, slot], o.box[k]), _iou(last_box, o.box[k])),
            )
            >= SAME_PLACE_IOU
        )
        out = np.zeros(len(ks), bool)
        out[e[apart & continues]] = True
        return out

    def add(
        self, ks: np.ndarray, rs: np.ndarray, ds: np.ndarray, pts: np.ndarray, o: Observation,
        table: Table,
    ) -> None:  # fmt: skip
        """Remember counted crossings (several may share a line: they take consecutive slots)."""
        order = np.argsort(rs, kind="stable")
        ks, rs, ds, pts = ks[order], rs[order], ds[order], pts[order]
        starts = np.searchsorted(rs, rs)  # the first event of each one's line
        slot = (self.next[rs] + np.arange(len(rs)) - starts) % RECENT
        self.id[rs, slot], self.dir[rs, slot], self.pts[rs, slot] = table.ids[ks], ds, pts
        self.first[rs, slot], self.first_box[rs, slot] = o.first[ks], o.first_box[ks]
        self.last[rs, slot], self.last_box[rs, slot] = o.last[ks], o.box[ks]
        self.nobs[rs, slot] = o.nobs[ks]
        np.add.at(self.next, rs, 1)

    def ended(self, ids: np.ndarray, o: Observation) -> None:
        """Tracks ``ids`` (rows where ``o.obs``) ended: freeze their last tick, box and count."""
        hit = np.isin(self.id, ids)
        if hit.any():
            rows = np.flatnonzero(o.obs)
            pos = rows[np.searchsorted(ids, self.id[hit])]  # ids are sorted (table order)
            self.last[hit], self.last_box[hit] = o.last[pos], o.box[pos]
            self.nobs[hit] = o.nobs[pos]


class LineSet(RuleSet):
    prefix = "l_"

    def __init__(self, table: Table, class_names: Sequence[str]) -> None:
        super().__init__(class_names)
        self.table = table
        self._norm = np.zeros((0, 2, 2), np.float64)
        self._px: tuple[tuple[int, int], np.ndarray, np.ndarray, np.ndarray] | None = None
        self._min_frames = np.zeros(0, np.int64)
        self._min_dist = np.zeros(0, np.float64)
        self._cooldown = np.zeros(0, np.float64)
        self.recent = Recent(0)
        table.define("l_i", np.int64, 0, (0, 4))
        table.define("l_f", np.float64, -np.inf, (0, 4))
        table.define("l_box", np.float32, 0.0, (0, 4))

    def set_rules(
        self, rules: Sequence[LineRule], class_ids: Sequence[frozenset[int] | None]
    ) -> None:
        """Replace the lines; an identical rule keeps its per-track state, others start fresh."""
        keep = self.keep_index(rules)
        self.table.reshape_rules(self.prefix, keep, len(rules))
        self.recent = self.recent.reindex(keep)
        self._set_common(rules, class_ids)
        self._norm = np.array([r.points for r in rules], np.float64).reshape(-1, 2, 2)
        self._px = None
        self._min_frames = np.array([r.min_frames for r in rules], np.int64)
        self._min_dist = np.array([r.min_distance for r in rules], np.float64)
        self._cooldown = np.array([r.cooldown_s for r in rules], np.float64)

    def _pixels(self, at: Moment) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """p1, p2 ``(L, 2)`` and lengths ``(L,)`` in pixels for this frame size (cached)."""
        size = (at.width, at.height)
        if self._px is None or self._px[0] != size:
            px = scale(self._norm, *size)
            self._px = (size, px[:, 0], px[:, 1], np.hypot(*(px[:, 1] - px[:, 0]).T))
        return self._px[1], self._px[2], self._px[3]

    def update(self, at: Moment, o: Observation) -> list[Event]:
        """One frame over every row of the table (``o``: this frame's observations). The common
        frame (nobody near a line, nothing pending) costs a handful of array operations."""
        if not len(self) or not o.obs.any():
            return []
        t = self.table
        p1, p2, length = self._pixels(at)
        now = anchor_points(o.box, self.weights)
        v = cross(p1, p2, now)
        s = np.sign(v).astype(np.int64)
        app = self.applies(o.cls, o.obs)
        li = t["l_i"]
        side, pend, n = li[..., SIDE], li[..., PEND], li[..., N]  # views: updated in place
        np.copyto(side, s, where=app & (side == 0))
        pending = app & (pend != 0)
        if pending.any():
            n += pending & (s == pend)
            back = pending & (s == side) & (s != 0)  # back where it was: flicker
            np.copyto(n, 0, where=back)
            np.copyto(pend, 0, where=back)
        fresh = app & (side != 0) & (s == -side) & (pend == 0)
        if fresh.any():
            hit = paths_hit_segments(p1, p2, anchor_points(o.prev, self.weights), now)
            start = fresh & hit & o.seen[:, None]
            np.copyto(side, s, where=fresh & ~start)  # around the segment's end
            np.copyto(pend, s, where=start)
            np.copyto(n, 1, where=start)
            np.copyto(li[..., FRAME], at.frame, where=start)
            lf = t["l_f"]
            np.copyto(lf[..., PTS], at.pts, where=start)
            np.copyto(lf[..., TS], at.ts, where=start)
            np.copyto(t["l_box"], o.box[:, None, :], where=start[..., None])
        pending = app & (pend != 0) & (n >= self._min_frames) & o.confirmed[:, None]
        if not pending.any():
            return []
        height = (o.box[:, 3] - o.box[:, 1]).astype(np.float64)
        far = np.abs(v) >= self._min_dist * length * height[:, None]
        return self._commit(at, pending & far, o)

    def settle(self, at: Moment, ended: np.ndarray, o: Observation) -> list[Event]:
        """Tracks ``ended (K,)`` end: their pending crossings count if ever confirmed."""
        if not len(self) or not ended.any():
            return []
        pend = self.table["l_i"][..., PEND]
        ready = ended[:, None] & (pend != 0) & o.confirmed[:, None]
        return self._commit(at, ready, o)

    def forget(self, o: Observation) -> None:
        """The tracks of rows ``o.obs`` ended (their rows are about to go)."""
        if len(self) and o.obs.any():
            self.recent.ended(self.table.ids[o.obs], o)

    def _commit(self, at: Moment, ready: np.ndarray, o: Observation) -> list[Event]:
        """Settle the ready crossings (the committed side follows); count those the cooldown
        and the ID-switch check let through. Returns their events."""
        if not ready.any():
            return []
        t = self.table
        li, lf = t["l_i"], t["l_f"]
        pend = li[..., PEND]
        going_in = pend == 1
        when = lf[..., PTS]
        last = np.where(going_in, lf[..., LAST_IN], lf[..., LAST_OUT])
        with np.errstate(invalid="ignore"):  # -inf - -inf where nothing is pending
            fire = ready & (when - last >= self._cooldown)
        np.copyto(lf[..., LAST_IN], when, where=fire & going_in)
        np.copyto(lf[..., LAST_OUT], when, where=fire & ~going_in)
        ks, rs = np.nonzero(fire)
        events: list[Event] = []
        if len(ks):
            ds, times = pend[ks, rs], when[ks, rs]
            keep = ~self.recent.switches(ks, rs, ds, times, self._cooldown[rs], o, t)
            ks, rs, ds, times = ks[keep], rs[keep], ds[keep], times[keep]
            self.recent.add(ks, rs, ds, times, o, t)
            columns = (
                rs.tolist(), ds.tolist(), times.tolist(), li[ks, rs, FRAME].tolist(),
                lf[ks, rs, TS].tolist(), t.ids[ks].tolist(), o.cls[ks].tolist(),
                t["l_box"][ks, rs].tolist(),
            )  # fmt: skip
            for r, d, pts, frame, ts, track, c, b in zip(*columns, strict=True):  # events
                event = Event(
                    LINE_CROSS, at.stream, frame, pts, ts, rule=self.rules[r].id, track=track,
                    class_id=c, class_name=self.name(c), direction="in" if d == 1 else "out",
                    box=(b[0], b[1], b[2], b[3]),
                )  # fmt: skip
                events.append(event)
        # the committed side follows every settled crossing, counted or not
        np.copyto(li[..., SIDE], pend, where=ready)
        np.copyto(li[..., PEND], 0, where=ready)
        np.copyto(li[..., N], 0, where=ready)
        return events
