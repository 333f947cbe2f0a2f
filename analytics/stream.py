"""One stream's analytics: tracks (and the frame) in, events out.

    analytics = StreamAnalytics("cam1", class_names, AnalyticsParams(), lines, zones, health)
    events = analytics.update(tracks, (width, height), ts=frame.arrival, image=frame.image)

Per frame, everything is an array operation over all reported tracks and all rules: the track
table (``analytics.table``) maps track ids to rows, lines and zones update their ``(K, R)``
state columns, and a track not reported for ``track_timeout_frames`` analysed frames ends
(pending crossings settle, stays in zones exit with their dwell stopped at the last
observation inside) and its row is dropped, so state is bounded by the tracks alive.

Rules may be replaced while the stream runs (:meth:`set_rules`, from any thread): the change is
applied at the start of the next frame; an unchanged rule keeps its state and counts.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from analytics.counts import Counts
from analytics.events import Event
from analytics.health import CameraHealth
from analytics.lines import LineSet
from analytics.rulebase import Moment, Observation
from analytics.rules import AnalyticsParams, HealthParams, LineRule, ZoneRule, duplicate_rule_id
from analytics.table import Table
from analytics.zones import ZoneSet
from pipeline.types import Tracks, VigilError

Rules = tuple[tuple[LineRule, ...], tuple[ZoneRule, ...]]


def resolve_classes(
    rules: Sequence[LineRule | ZoneRule], class_names: Sequence[str]
) -> list[frozenset[int] | None]:
    """Each rule's class names as model class ids (None: every class); VigilError names an
    unknown class."""
    index = {n: i for i, n in enumerate(class_names)}
    out: list[frozenset[int] | None] = []
    for r in rules:
        if not r.classes:
            out.append(None)
            continue
        unknown = [c for c in r.classes if c not in index]
        if unknown:
            raise VigilError(
                f"rule {r.id}: unknown class {unknown[0]!r} (the model knows "
                f"{', '.join(class_names[:8])}{'...' if len(class_names) > 8 else ''})"
            )
        out.append(frozenset(index[c] for c in r.classes))
    return out


def check_rules(
    lines: Sequence[LineRule], zones: Sequence[ZoneRule], class_names: Sequence[str]
) -> tuple[list[frozenset[int] | None], list[frozenset[int] | None]]:
    """Rules a stream can run with this model: ids unique across lines and zones, every class
    known (VigilError says what is wrong). Returns each rule's class ids (None: every class)."""
    problem = duplicate_rule_id(lines, zones)
    if problem:
        raise VigilError(problem)
    return resolve_classes(lines, class_names), resolve_classes(zones, class_names)


class StreamAnalytics:
    """Lines, zones, counts and camera health of one stream."""

    def __init__(
        self,
        stream: str,
        class_names: Sequence[str],
        params: AnalyticsParams | None = None,
        lines: Sequence[LineRule] = (),
        zones: Sequence[ZoneRule] = (),
        health: HealthParams | None = None,
        live: bool = False,
    ) -> None:
        self.stream = stream
        self.class_names = list(class_names)
        self.params = params or AnalyticsParams()
        self.table = Table()
        for name, dtype, fill, trail in (
            ("first_tick", np.int64, 0, ()), ("last_tick", np.int64, 0, ()),
            ("nobs", np.int32, 0, ()), ("conf", np.bool_, False, ()),
            ("cls", np.int32, -1, ()), ("box", np.float32, 0.0, (4,)),
            ("first_box", np.float32, 0.0, (4,)),
        ):  # fmt: skip
            self.table.define(name, dtype, fill, trail)
        self.lines = LineSet(self.table, self.class_names)
        self.zones = ZoneSet(self.table, self.class_names)
        self.health = CameraHealth(health, live) if health is not None and health.enabled else None
        self.counts = Counts()
        self._lock = threading.Lock()
        self._rules: Rules = ((), ())
        self._pending: tuple[Rules, list[frozenset[int] | None], list[frozenset[int] | None]]
        self._pending_set = False
        self._tick = 0
        self._seq = 0
        self._last: Moment = Moment(stream, 0, 0.0, 0.0, 0, 0)
        self.set_rules(lines, zones)
        self._apply_pending()

    # -- rules -------------------------------------------------------------------------------
    @property
    def rules(self) -> Rules:
        """The current lines and zones (a change not yet applied included)."""
        with self._lock:
            return self._rules

    def set_rules(self, lines: Sequence[LineRule], zones: Sequence[ZoneRule]) -> None:
        """Replace every line and zone (validated now, applied at the next frame)."""
        line_ids, zone_ids = check_rules(lines, zones, self.class_names)
        with self._lock:
            self._rules = (tuple(lines), tuple(zones))
            self._pending = (self._rules, line_ids, zone_ids)
            self._pending_set = True

    def _apply_pending(self) -> None:
        if not self._pending_set:  # a plain read: set_rules flips it under the lock
            return
        with self._lock:
            if not self._pending_set:
                return
            (lines, zones), line_ids, zone_ids = self._pending
            self._pending_set = False
        old: dict[str, LineRule | ZoneRule] = {r.id: r for r in self.lines.rules}
        old.update({r.id: r for r in self.zones.rules})
        new: list[LineRule | ZoneRule] = [*lines, *zones]
        fresh = [r.id for r in new if r.id in old and old[r.id] != r]
        self.lines.set_rules(lines, line_ids)
        self.zones.set_rules(zones, zone_ids)
        self.counts.set_rules([r.id for r in lines], [r.id for r in zones], fresh)

    def reset_counts(self, since_ts: float, epoch: int | None = None) -> None:
        """Zero the counters (``epoch``: the reset's number, default the current one + 1)."""
        self.counts.reset(since_ts, epoch)

    @property
    def tracked(self) -> int:
        """Tracks with state right now (bounded by ``max_tracks``)."""
        return len(self.table)

    # -- per frame ---------------------------------------------------------------------------
    def update(
        self,
        tracks: Tracks,
        size: tuple[int, int],
        ts: float = 0.0,
        image: np.ndarray | None = None,
        thumb: np.ndarray | None = None,
    ) -> list[Event]:
        """Analyse one frame: ``tracks`` as reported (source pixels; only confirmed tracks
        count), ``size`` the frame's (width, height) in pixels, ``ts`` its wall-clock arrival,
        ``image`` the decoded frame for the camera-health checks (``thumb``: its
        ``health.thumbnail`` when the caller already made it). Returns the new events."""
        self._apply_pending()
        self._tick += 1
        at = self._last = Moment(self.stream, tracks.frame_index, tracks.pts, ts, *size)
        events: list[Event] = []
        if self.health is not None and image is not None:
            events += self.health.update(at, image, thumb)
        if len(tracks):
            events += self._observe(at, tracks)
        t = self.table
        ended = self._tick - t["last_tick"] > self.params.track_timeout_frames
        excess = len(t) - self.params.max_tracks
        if excess > 0:  # the least recently seen go first
            ended[np.argsort(t["last_tick"], kind="stable")[:excess]] = True
        if ended.any():
            events += self._end(at, ended, "lost")
        events += self.zones.occupancy_events(at, t["cls"])
        return self._publish(events)

    def finish(self) -> list[Event]:
        """The source ended: every track ends (reason ``end``); returns the last events."""
        at = self._last
        events = self._end(at, np.ones(len(self.table), bool), "end") if len(self.table) else []
        events += self.zones.occupancy_events(at, self.table["cls"])
        return self._publish(events)

    def _observe(self, at: Moment, tracks: Tracks) -> list[Event]:
        ids, first = np.unique(tracks.track_id, return_index=True)
        t = self.table
        rows = t.rows(ids.astype(np.int64, copy=False))
        obs = np.zeros(len(t), bool)
        obs[rows] = True
        prev = t["box"].copy()
        box = t["box"]
        box[rows] = tracks.xyxy[first]
        cls = tracks.class_id[first]
        self.zones.dirty |= bool((t["cls"][rows] != cls).any())  # a class changed: recount
        t["cls"][rows] = cls
        t["conf"][rows] |= tracks.confirmed[first]
        seen = t["nobs"] > 0
        new = obs & ~seen
        np.copyto(t["first_tick"], self._tick, where=new)
        np.copyto(t["first_box"], box, where=new[:, None])
        t["last_tick"][rows] = self._tick
        t["nobs"][rows] += 1
        o = self._observation(obs, box, prev, seen)
        events = self.lines.update(at, o)
        events += self.zones.update(at, o)
        return events

    def _end(self, at: Moment, ended: np.ndarray, reason: str) -> list[Event]:
        t = self.table
        o = self._observation(ended, t["box"], t["box"], t["nobs"] > 0)
        events = self.lines.settle(at, ended, o)
        events += self.zones.settle(at, ended, o, reason)
        self.lines.forget(o)
        t.keep(~ended)
        return events

    def _observation(
        self, obs: np.ndarray, box: np.ndarray, prev: np.ndarray, seen: np.ndarray
    ) -> Observation:
        t = self.table
        return Observation(
            obs, box, prev, seen, t["cls"], t["conf"], t["first_tick"], t["last_tick"],
            t["first_box"], t["nobs"],
        )  # fmt: skip

    def _publish(self, events: list[Event]) -> list[Event]:
        if not events:
            return events
        for e in events:  # events, not tracks
            e.seq = self._seq
            self._seq += 1
        self.counts.add(events)
        return events
