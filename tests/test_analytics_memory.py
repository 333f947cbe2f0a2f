"""Analytics state stays bounded: 100,000 frames of churning track ids, memory flat."""

from __future__ import annotations

import gc
import resource

import numpy as np

from analytics.rules import AnalyticsParams, LineRule, ZoneRule
from analytics.stream import StreamAnalytics
from pipeline.types import Tracks

FRAMES = 100_000
LIVE = 8  # tracks on screen at any time


def test_memory_is_flat_over_100k_frames_with_churning_ids() -> None:
    lines = [
        LineRule(id="v", points=((0.5, 1.0), (0.5, 0.0))),
        LineRule(id="h", points=((0.0, 0.5), (1.0, 0.5)), min_frames=1, min_distance=0.0),
    ]
    zones = [
        ZoneRule(id="a", polygon=((0.1, 0.1), (0.6, 0.1), (0.6, 0.6), (0.1, 0.6)), loiter_s=2),
        ZoneRule(id="b", polygon=((0.4, 0.4), (0.9, 0.4), (0.9, 0.9), (0.4, 0.9))),
    ]
    a = StreamAnalytics("cam", ("person", "car"), AnalyticsParams(track_timeout_frames=10),
                        lines, zones)  # fmt: skip
    rng = np.random.default_rng(0)
    ids = np.arange(LIVE, dtype=np.int64)
    pos = rng.uniform(100, 900, (LIVE, 2))
    vel = rng.normal(0, 15, (LIVE, 2))
    next_id = LIVE
    events = 0
    for f in range(FRAMES):
        if f == 20_000:
            gc.collect()
            objects, peak = len(gc.get_objects()), _peak_rss_kb()
            table = a.table.nbytes()
        pos = np.clip(pos + vel, 0, 1000)
        churn = rng.random(LIVE) < 0.02  # a new id about every 50 frames per slot
        n = int(churn.sum())
        ids[churn] = np.arange(next_id, next_id + n)
        next_id += n
        pos[churn] = rng.uniform(100, 900, (n, 2))
        vel[churn] = rng.normal(0, 15, (n, 2))
        shown = rng.random(LIVE) > 0.05  # missed detections
        xyxy = np.concatenate((pos[shown] - (20, 100), pos[shown]), 1).astype(np.float32)
        k = int(shown.sum())
        tracks = Tracks(
            xyxy, ids[shown], (ids[shown] % 2).astype(np.int32), np.ones(k, np.float32),
            np.zeros(k, np.int32), "cam", f, f / 25.0,
        )  # fmt: skip
        events += len(a.update(tracks, (1000, 1000), 0.0))
        assert a.tracked <= 3 * LIVE  # live tracks plus the recently ended
    gc.collect()
    assert next_id > 10_000 and events > 10_000  # the ids churned and the rules fired
    # after warm-up: no new Python objects kept, the process's peak memory did not move, and
    # the track table holds what the live tracks need (a few KB)
    assert len(gc.get_objects()) - objects < 200
    assert _peak_rss_kb() - peak < 2048
    assert a.table.nbytes() <= 2 * table + 4096
    snap = a.counts.snapshot()
    assert sum(snap["lines"]["v"]["in"].values()) > 100


def _peak_rss_kb() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
