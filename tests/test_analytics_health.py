"""Camera health checks on synthetic frames, in stream time."""

from __future__ import annotations

import numpy as np

from analytics.events import Event
from analytics.rules import AnalyticsParams, HealthParams
from analytics.stream import StreamAnalytics
from pipeline.types import Tracks


def _run(a: StreamAnalytics, images: list[np.ndarray], fps: float = 10.0, ts_rate: float = 1.0,
         start: int = 0) -> list[Event]:  # fmt: skip
    events: list[Event] = []
    for i, img in enumerate(images, start):
        tracks = Tracks.empty("cam", i, i / fps)
        events += a.update(tracks, (img.shape[1], img.shape[0]), 1000 + ts_rate * i / fps, img)
    return events


def _states(events: list[Event]) -> list[tuple[str | None, str | None]]:
    return [(e.check, e.state) for e in events]


def _analytics(live: bool = False, **health: float) -> StreamAnalytics:
    return StreamAnalytics(
        "cam", ("person",), AnalyticsParams(), health=HealthParams(**health), live=live
    )


def _noise(n: int, seed: int = 0) -> list[np.ndarray]:
    """A textured scene with a little sensor noise in every frame."""
    rng = np.random.default_rng(seed)
    scene = np.random.default_rng(99).integers(30, 220, (240, 320, 3))
    return [(scene + rng.integers(-4, 5, scene.shape)).astype(np.uint8) for _ in range(n)]


def test_black_then_back() -> None:
    black = [np.full((240, 320, 3), 3, np.uint8)] * 30
    events = _run(_analytics(min_duration_s=2.0), _noise(5) + black + _noise(5, 1))
    # going black is also a sudden change of scene (covered), and so is coming back
    assert _states(events) == [
        ("scene_change", "on"), ("black", "on"), ("black", "off"), ("scene_change", "on"),
    ]  # fmt: skip
    assert [e.frame for e in events] == [5, 25, 35, 35]  # black on after 2 s (20 frames)


def test_uniform_frozen_and_scene_change() -> None:
    grey = [np.full((240, 320, 3), 128, np.uint8)] * 30
    events = _run(_analytics(min_duration_s=1.0, frozen_s=60.0), grey)
    assert _states(events) == [("uniform", "on")]
    still = _noise(1) * 40  # the decoder keeps delivering the same picture
    events = _run(_analytics(frozen_s=2.0), still + _noise(3, 2))
    assert ("frozen", "on") in _states(events) and ("frozen", "off") in _states(events)
    on = next(e for e in events if e.state == "on" and e.check == "frozen")
    assert on.pts == 2.0
    scene_a = [np.full((240, 320, 3), 40, np.uint8)] * 10
    scene_b = [np.full((240, 320, 3), 200, np.uint8)] * 10
    for imgs in (scene_a, scene_b):  # texture, so that neither is uniform
        for img in imgs:
            img[::8] = 90
    events = _run(_analytics(frozen_s=60.0), scene_a + scene_b)
    assert _states(events) == [("scene_change", "on")] and events[0].frame == 10


def test_drift_only_live() -> None:
    frames = _noise(60)
    slow = _run(_analytics(live=True, max_drift_s=2.0), frames, ts_rate=2.0)  # wall runs 2x
    assert ("drift", "on") in _states(slow)
    assert _run(_analytics(live=False, max_drift_s=2.0), frames, ts_rate=2.0) == []
    assert _run(_analytics(live=True, max_drift_s=2.0), frames) == []
