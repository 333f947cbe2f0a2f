"""Analytics inside the live inference step: events ride with the track message, encoded once;
a failing analytics loses that frame's events, not its tracks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from analytics.rules import AnalyticsParams, LineRule
from analytics.stream import StreamAnalytics
from pipeline.live_step import Published, StepGuard, StreamRuntime, ThrottledLog, run_step
from pipeline.types import Detections, Frame, Tracks
from tests.factories import FakeStream, dets


class WalkingEngine:
    """One person walking left to right, 40 px per frame, across a 400x300 frame."""

    def process(
        self, frames: Sequence[Frame], timings: dict[str, float] | None = None
    ) -> tuple[list[Detections], list[np.ndarray | None]]:
        boxes = [dets([[f.index * 40, 100, f.index * 40 + 30, 200]]) for f in frames]
        return boxes, [None] * len(frames)


class EchoTracker:
    def update(self, detections: Detections, embeddings: np.ndarray | None,
               frame_index: int = 0, pts: float = 0.0) -> Tracks:  # fmt: skip
        n = len(detections)
        return Tracks(
            detections.xyxy, np.ones(n, np.int64), detections.class_id, detections.confidence,
            np.arange(n, dtype=np.int32), "", frame_index, pts,
        )  # fmt: skip


class Broken(StreamAnalytics):
    def update(self, *args: object, **kwargs: object) -> list:  # type: ignore[override]
        raise RuntimeError("analytics bug")


def _runtime(cls: type[StreamAnalytics], sid: str) -> StreamRuntime:
    line = LineRule(id="mid", points=((0.5, 1.0), (0.5, 0.0)))
    analytics = cls(sid, ["person"], AnalyticsParams(), [line])
    return StreamRuntime(FakeStream(sid), EchoTracker(), analytics)


def test_events_ride_with_the_frame_and_a_failing_analytics_keeps_the_tracks() -> None:
    good, bad = _runtime(StreamAnalytics, "good"), _runtime(Broken, "bad")
    lines: list[str] = []
    guard = StepGuard(log=ThrottledLog(60.0, lines.append))
    published: list[Published] = []
    for i in range(10):
        image = np.zeros((300, 400, 3), np.uint8)
        batch = [(good, Frame("good", i, i / 10, image, 1000.0 + i)),
                 (bad, Frame("bad", i, i / 10, image, 1000.0 + i))]  # fmt: skip
        timings = run_step(batch, WalkingEngine(), published.append, guard)
        assert "analytics" in timings
    crossed = [m for m in published if m.events]
    assert len(crossed) == 1 and crossed[0].stream == "good"
    (event,) = crossed[0].events
    assert event.kind == "line_cross" and event.direction == "in"
    assert crossed[0].event_data[0].startswith(b'{"v":1,"type":"event","kind":"line_cross"')
    assert [m.seq for m in published if m.stream == "bad"] == list(range(10))  # tracks kept
    assert bad.errors == 10 and bad.stream.last_error.startswith("analytics failed")
    assert good.errors == 0 and len(lines) == 1  # logged once (throttled)
