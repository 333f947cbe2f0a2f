"""Counting lines against hand-made trajectories: the direction convention, flicker, ID
switches, fast objects, lines at the frame edge, stop-and-go, tentative tracks, cooldown."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from analytics.events import LINE_CROSS, Event
from analytics.rules import AnalyticsParams, LineRule
from analytics.stream import StreamAnalytics
from pipeline.types import Tracks
from tests.factories import foot_box, track_frame

SIZE = (1000, 1000)
TIMEOUT = 5
# Bottom to top through the middle: walking left to right is "in" (side -1 -> +1).
MIDDLE = LineRule(id="mid", points=((0.5, 1.0), (0.5, 0.0)))


def _analytics(*lines: LineRule, classes: tuple[str, ...] = ("person", "car")) -> StreamAnalytics:
    return StreamAnalytics("cam", classes, AnalyticsParams(track_timeout_frames=TIMEOUT), lines)


def _run(a: StreamAnalytics, frames: Iterable[Tracks]) -> list[Event]:
    """Feed the frames, then empty frames until every track has ended; the crossings."""
    events: list[Event] = []
    last = 0
    for tr in frames:
        events += a.update(tr, SIZE, ts=1000.0 + tr.pts)
        last = tr.frame_index
    for f in range(last + 1, last + TIMEOUT + 3):
        events += a.update(Tracks.empty("cam", f, f / 10), SIZE, ts=1000.0 + f / 10)
    assert a.tracked == 0
    return [e for e in events if e.kind == LINE_CROSS]


def _walk(track: int, xs: Iterable[float], start: int = 0, y: float = 500.0) -> list[Tracks]:
    return [track_frame(start + i, {track: foot_box(x, y)}) for i, x in enumerate(xs)]


def _dirs(events: list[Event]) -> list[str | None]:
    return [e.direction for e in events]


def test_the_direction_convention_is_the_documented_formula() -> None:
    """in = side -1 -> +1 with side(a) = sign((p2.x-p1.x)(a.y-p1.y) - (p2.y-p1.y)(a.x-p1.x)),
    checked by hand for a horizontal line drawn left to right: below it (y down) is +1."""
    horizontal = LineRule(id="h", points=((0.0, 0.5), (1.0, 0.5)))
    p1, p2, a = (0, 500), (1000, 500), (300, 700)
    side = np.sign((p2[0] - p1[0]) * (a[1] - p1[1]) - (p2[1] - p1[1]) * (a[0] - p1[0]))
    assert side == 1  # below the line
    down = [track_frame(i, {1: foot_box(300, y)}) for i, y in enumerate(range(300, 720, 20))]
    up = [track_frame(i, {2: foot_box(300, y)}) for i, y in enumerate(range(700, 280, -20))]
    assert _dirs(_run(_analytics(horizontal), down)) == ["in"]  # -1 (above) -> +1 (below)
    assert _dirs(_run(_analytics(horizontal), up)) == ["out"]


def test_a_clean_crossing_each_way() -> None:
    a = _analytics(MIDDLE)
    events = _run(a, _walk(1, range(300, 720, 20)) + _walk(2, range(700, 280, -20), start=30))
    assert _dirs(events) == ["in", "out"]
    first = events[0]
    assert (first.rule, first.track, first.class_name, first.stream) == ("mid", 1, "person", "cam")
    # x = 500 at frame 10 is on the line (no side); frame 11 is the first observation past it
    assert first.frame == 11 and first.pts == 1.1 and first.ts == 1001.1
    assert first.box == foot_box(520, 500)
    assert a.counts.snapshot()["lines"]["mid"] == {"in": {"person": 1}, "out": {"person": 1}}


def test_flicker_across_the_line_does_not_count() -> None:
    # every other frame on the other side, then back where it started
    jitter = [497.0 if i % 2 else 503.0 for i in range(40)]
    assert _run(_analytics(MIDDLE), _walk(1, [300, 400, 490, *jitter, 450, 300])) == []
    # two frames on each side, 6 px from the line (the box is 100 px high: min_distance 10 px)
    pairs = [494.0, 494.0, 506.0, 506.0] * 10
    assert _run(_analytics(MIDDLE), _walk(1, [300, 400, *pairs, 400, 300])) == []
    # flicker, then it really crosses: exactly one
    assert _dirs(_run(_analytics(MIDDLE), _walk(1, [300, 490, *jitter, 600, 700]))) == ["in"]


def test_an_id_switch_mid_crossing_counts_once() -> None:
    # track 1 crosses and is lost one frame later; track 2 takes over where 1 was last seen,
    # its box jittering back over the line, and crosses again: one person, one count
    one = _walk(1, [300, 350, 400, 450, 495, 512])
    two = _walk(2, [508, 497, 494, 530, 600, 680], start=6)
    events = _run(_analytics(MIDDLE), one + two)
    assert _dirs(events) == ["in"]
    # two people one after the other at the same spot: the second began elsewhere, both count
    first = _walk(1, [300, 400, 480, 520, 560])
    second = _walk(2, [300, 380, 440, 490, 520, 600], start=6)
    assert _dirs(_run(_analytics(MIDDLE), first + second)) == ["in", "in"]
    # an ID that flips back and forth between two ids while crossing: one count
    steps = enumerate(range(300, 710, 10))
    flips = [track_frame(i, {1 + i % 2: foot_box(x, 500)}) for i, x in steps]
    assert _dirs(_run(_analytics(MIDDLE), flips)) == ["in"]


def test_a_fast_object_that_jumps_over_the_line_counts() -> None:
    events = _run(_analytics(MIDDLE), _walk(1, [100, 300, 800, 900, 950]))
    assert _dirs(events) == ["in"] and events[0].frame == 2


def test_a_line_five_pixels_from_the_frame_edge_counts() -> None:
    edge = LineRule(id="edge", points=((0.005, 0.0), (0.005, 1.0)))  # x = 5 px, top to bottom
    # walking left out of the frame: the box is clipped at x = 0, the track ends just past it
    xs = [300, 200, 120, 60, 20]
    frames = [track_frame(i, {1: (max(0.0, x - 20), 400, x + 20, 500)}) for i, x in enumerate(xs)]
    frames.append(track_frame(5, {1: (0, 400, 6, 500)}))  # anchor at x = 3: past the line
    events = _run(_analytics(edge), frames)
    # drawn top to bottom, x > 5 is side -1 and x < 5 is +1: moving left out of frame is "in"
    assert _dirs(events) == ["in"] and events[0].frame == 5
    bottom = LineRule(id="bottom", points=((0.0, 0.995), (1.0, 0.995)))  # y = 995 px
    down = [track_frame(i, {1: (480, y - 100, 520, min(y, 1000))}) for i, y in
            enumerate([700, 800, 900, 960, 999])]  # fmt: skip
    assert _dirs(_run(_analytics(bottom), down)) == ["in"]


def test_stop_and_go_across_the_line_counts_once() -> None:
    rng = np.random.default_rng(0)
    waiting = (500 + rng.uniform(-4, 4, 80)).tolist()  # stopped on the line, the box jittering
    xs = [300, 350, 400, 450, 490, *waiting, 505, 520, 560, 620, 700]
    assert _dirs(_run(_analytics(MIDDLE), _walk(1, xs))) == ["in"]
    # creeping across in fits and starts, pausing on both sides of the line
    creep = [470, 480, 480, 490, 495, 495, 498, 502, 502, 498, 504, 508, 508, 512, 530, 600]
    assert _dirs(_run(_analytics(MIDDLE), _walk(1, [300, 400, *creep]))) == ["in"]


def test_only_confirmed_tracks_count() -> None:
    xs = range(300, 720, 40)
    never = [track_frame(i, {1: foot_box(x, 500)}, tentative=frozenset({1})) for i, x in
             enumerate(xs)]  # fmt: skip
    assert _run(_analytics(MIDDLE), never) == []
    # tentative while it crosses, confirmed afterwards: it counts once, stamped at the crossing
    late = [
        track_frame(i, {1: foot_box(x, 500)}, tentative=frozenset({1} if x < 600 else ()))
        for i, x in enumerate(xs)
    ]
    events = _run(_analytics(MIDDLE), late)
    assert _dirs(events) == ["in"] and events[0].frame == 6  # x = 500 (frame 5) is on the line


def test_cooldown_and_classes() -> None:
    slow = LineRule(id="mid", points=MIDDLE.points, cooldown_s=5.0, classes=("person",))
    there_and_back = [300, 400, 520, 560, 600, 560, 480, 420, 380, 420, 520, 560, 600]
    events = _run(_analytics(slow), _walk(1, there_and_back))
    assert _dirs(events) == ["in", "out"]  # the second "in" came 0.8 s after the first
    spaced = [300, 400, 520, 560, 600, *[600] * 60, 560, 480, 420, *[400] * 60, 480, 560, 600]
    assert _dirs(_run(_analytics(slow), _walk(1, spaced))) == ["in", "out", "in"]
    cars = [track_frame(i, {1: foot_box(x, 500)}, cls=1) for i, x in enumerate(range(300, 720, 20))]
    assert _run(_analytics(slow), cars) == []
    assert _dirs(_run(_analytics(MIDDLE), cars)) == ["in"]  # no class filter: every class


def test_many_tracks_and_lines_at_once_match_one_at_a_time() -> None:
    """The vectorized update gives every (track, line) pair what it gets alone."""
    rng = np.random.default_rng(1)
    lines = [
        LineRule(id=f"l{i}", points=tuple(map(tuple, rng.uniform(0.1, 0.9, (2, 2)))))
        for i in range(6)
    ]
    paths = {t: np.cumsum(rng.normal(0, 25, (60, 2)), axis=0) + rng.uniform(200, 800, 2)
             for t in range(1, 21)}  # fmt: skip
    frames = [track_frame(f, {t: foot_box(*p[f]) for t, p in paths.items()}) for f in range(60)]
    together = _run(_analytics(*lines), frames)
    alone = []
    for t, p in paths.items():
        for line in lines:
            one = [track_frame(f, {t: foot_box(*p[f])}) for f in range(60)]
            alone += _run(_analytics(line), one)
    key = lambda e: (e.rule, e.track, e.direction, e.frame)  # noqa: E731
    assert sorted(map(key, together)) == sorted(map(key, alone))
    assert len(together) > 10
