"""Zones against hand-made trajectories: inertia, spawned vs entered, dwell in stream time
that stops at exit or when the track ends, loitering, overlapping zones, occupancy per class,
rule changes at run time."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from analytics.events import ZONE_OCCUPANCY, Event
from analytics.rules import AnalyticsParams, LineRule, ZoneRule
from analytics.stream import StreamAnalytics
from pipeline.types import Tracks, VigilError
from tests.factories import foot_box, track_frame

SIZE = (1000, 1000)
TIMEOUT = 5
LEFT = ZoneRule(id="left", polygon=((0.2, 0.2), (0.6, 0.2), (0.6, 0.8), (0.2, 0.8)))
RIGHT = ZoneRule(id="right", polygon=((0.4, 0.2), (0.8, 0.2), (0.8, 0.8), (0.4, 0.8)))


def _analytics(*zones: ZoneRule) -> StreamAnalytics:
    return StreamAnalytics(
        "cam", ("person", "car"), AnalyticsParams(track_timeout_frames=TIMEOUT), (), zones
    )


def _feed(a: StreamAnalytics, frames: Iterable[Tracks], drain: bool = True) -> list[Event]:
    events: list[Event] = []
    last = 0
    for tr in frames:
        events += a.update(tr, SIZE, ts=1000.0 + tr.pts)
        last = tr.frame_index
    if drain:
        for f in range(last + 1, last + TIMEOUT + 3):
            events += a.update(Tracks.empty("cam", f, f / 10), SIZE, ts=1000.0 + f / 10)
    return events


def _walk(track: int, xs: Iterable[float], start: int = 0, cls: int = 0) -> list[Tracks]:
    return [track_frame(start + i, {track: foot_box(x, 500)}, cls=cls) for i, x in enumerate(xs)]


def _kinds(events: list[Event], rule: str | None = None) -> list[str]:
    return [e.kind for e in events if e.kind != ZONE_OCCUPANCY and rule in (None, e.rule)]


def test_enter_and_exit_with_inertia_and_dwell_in_stream_time() -> None:
    xs = [100, 150, *[300] * 20, 700, 750, 800, 850]  # inside from frame 2 to 21
    events = _feed(_analytics(LEFT), _walk(1, xs))
    assert _kinds(events) == ["zone_enter", "zone_exit"]
    enter, leave = [e for e in events if e.kind != ZONE_OCCUPANCY]
    assert enter.frame == 2 and enter.pts == 0.2  # stamped with the first observation inside
    assert leave.frame == 22 and leave.reason == "left"
    assert leave.dwell_s == pytest.approx(2.0)  # first outside - first inside, stream time
    # a visit shorter than the inertia (3 observations) is no visit
    assert _kinds(_feed(_analytics(LEFT), _walk(1, [100, 300, 300, 700, 800]))) == []


def test_a_track_first_seen_inside_is_spawned_not_entered() -> None:
    events = _feed(_analytics(LEFT), _walk(1, [300, 310, 320, 330, 700, 710, 720, 730]))
    assert _kinds(events) == ["zone_spawn", "zone_exit"]
    spawn = next(e for e in events if e.kind == "zone_spawn")
    assert spawn.frame == 0
    counts = _analytics(LEFT)
    _feed(counts, _walk(1, [300, 310, 320, 330]))
    zone = counts.counts.snapshot()["zones"]["left"]
    assert zone["spawned"] == {"person": 1} and zone["entered"] == {}


def test_dwell_stops_when_the_object_leaves_or_its_track_ends() -> None:
    a = _analytics(LEFT)
    events = _feed(a, _walk(1, [100, *[300] * 11]), drain=False)  # inside frames 1..11
    assert _kinds(events) == ["zone_enter"]
    events = _feed(a, [], drain=True)  # the track is never seen again
    (leave,) = [e for e in events if e.kind == "zone_exit"]
    assert leave.reason == "lost" and leave.frame == 11
    assert leave.dwell_s == pytest.approx(1.0)  # last seen inside - entry, not the timeout
    assert a.counts.snapshot()["zones"]["left"]["mean_dwell_s"] == {"person": 1.0}
    # the source ends while it is inside: exit with reason "end"
    b = _analytics(LEFT)
    _feed(b, _walk(1, [100, *[300] * 6]), drain=False)
    (last,) = [e for e in b.finish() if e.kind == "zone_exit"]
    assert last.reason == "end" and last.dwell_s == pytest.approx(0.5)


def test_loitering_is_reported_once_per_stay() -> None:
    loiter = ZoneRule(id="left", polygon=LEFT.polygon, loiter_s=1.5)
    xs = [100, *[300] * 30, 700, 700, 700, 100, *[300] * 10]
    events = _feed(_analytics(loiter), _walk(1, xs))
    assert _kinds(events) == ["zone_enter", "zone_loiter", "zone_exit", "zone_enter", "zone_exit"]
    (stay,) = [e for e in events if e.kind == "zone_loiter"]
    assert stay.frame == 16 and stay.dwell_s == pytest.approx(1.5)


def test_overlapping_zones_and_occupancy_per_class() -> None:
    a = _analytics(LEFT, RIGHT)
    # a person walks left to right through both; a car parks in the overlap
    person = [foot_box(x, 500) for x in range(100, 900, 25)]
    frames = [
        track_frame(i, {1: person[i], 2: foot_box(500, 400)}, cls={1: 0, 2: 1})
        for i in range(len(person))
    ]
    events = _feed(a, frames, drain=False)
    assert _kinds(events, "left") == ["zone_spawn", "zone_enter", "zone_exit"]  # car, person
    assert _kinds(events, "right") == ["zone_spawn", "zone_enter", "zone_exit"]
    occ = [(e.rule, e.class_name, e.count) for e in events if e.kind == ZONE_OCCUPANCY]
    assert ("left", "person", 1) in occ and ("right", "person", 1) in occ
    snap = a.counts.snapshot()["zones"]
    assert snap["left"]["occupancy"] == {"car": 1} == snap["right"]["occupancy"]
    assert snap["left"]["max_occupancy"] == {"person": 1, "car": 1}
    assert a.zones.occupancy.tolist() == [[0, 1], [0, 1]]


def test_rules_change_at_run_time_and_unknown_classes_are_refused() -> None:
    a = StreamAnalytics("cam", ("person", "car"), AnalyticsParams(), (), (LEFT,))
    _feed(a, _walk(1, [100, 300, 300, 300, 300]), drain=False)
    assert a.counts.snapshot()["zones"]["left"]["entered"] == {"person": 1}
    line = LineRule(id="door", points=((0.5, 0.0), (0.5, 1.0)))
    a.set_rules([line], [LEFT, RIGHT])  # left unchanged: its state and counts stay
    events = _feed(a, _walk(1, [300, 300, 450, 450, 450], start=5), drain=False)
    snap = a.counts.snapshot()
    assert snap["zones"]["left"]["entered"] == {"person": 1} and "door" in snap["lines"]
    assert _kinds(events, "right") == ["zone_enter"]
    moved = ZoneRule(id="left", polygon=((0.0, 0.0), (0.1, 0.0), (0.1, 0.1)))
    a.set_rules([line], [moved])  # changed geometry: a fresh rule
    _feed(a, [track_frame(10, {1: foot_box(450, 500)})], drain=False)
    assert a.counts.snapshot()["zones"]["left"]["entered"] == {}
    with pytest.raises(VigilError, match="unknown class 'unicorn'"):
        a.set_rules([], [ZoneRule(id="z", polygon=LEFT.polygon, classes=("unicorn",))])
    with pytest.raises(VigilError, match="'left' is used twice"):
        a.set_rules([LineRule(id="left", points=line.points)], [LEFT])
