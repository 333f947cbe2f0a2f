"""Ground-truth line crossings derived from MOT trajectories, with the analytics' convention."""

from __future__ import annotations

import numpy as np

from analytics.rules import AnalyticsParams, LineRule
from analytics.stream import StreamAnalytics
from evaluation.counting import compare, format_counting, gt_line_counts
from evaluation.mot import load_mot
from pipeline.types import Tracks
from tests.factories import shared

UP = LineRule(id="up", points=((0.5, 1.0), (0.5, 0.0)))  # left to right is "in"


def _rows(track: int, xs: list[float], y: float = 500.0) -> list[list[float]]:
    """MOT rows (frame, id, x, y, w, h) of a 40x100 box whose bottom centre walks along xs."""
    return [[f + 1, track, x - 20, y - 100, 40, 100] for f, x in enumerate(xs)]


def test_gt_crossings_by_hand() -> None:
    gt = np.array(
        _rows(1, [300, 450, 550, 700])  # in
        + _rows(2, [700, 550, 450, 550])  # out, then in again
        + _rows(3, [100, 200, 300])  # never
        + _rows(4, [450, 550], y=1100.0),  # crosses below the segment's end: not counted
        np.float64,
    )
    got = gt_line_counts(gt, (1000, 1000), [UP])
    assert got == {"up": {"in": 2, "out": 1}}
    rows = compare(got, {"up": {"in": 2, "out": 2}}, {"up": {"in": 5, "out": 1}})
    assert [(r["error"], r["naive_error"]) for r in rows] == [(0, 3), (1, 0)]
    assert "| s | all | both | 3 | | 1 off | | 3 off |" in format_counting({"s": rows})


def test_the_analytics_count_clean_trajectories_like_the_ground_truth() -> None:
    """Fed the annotated boxes themselves, the analytics (every observation confirmed, no
    hysteresis distance) count what the derivation counts: one convention."""
    seq = shared("mot", "TUD-Stadtmitte")
    gt = load_mot(seq / "gt" / "gt.txt", keep_zero_conf=False)
    lines = [
        LineRule(id=f"v{x}", points=((x / 100, 1.0), (x / 100, 0.0)), min_frames=1,
                 min_distance=0.0, cooldown_s=0.0)
        for x in (33, 50, 67)
    ]  # fmt: skip
    a = StreamAnalytics("tud", ["person"], AnalyticsParams(track_timeout_frames=1000), lines)
    for f in range(1, int(gt[:, 0].max()) + 1):  # frames of the sequence, not boxes
        r = gt[gt[:, 0] == f]
        xyxy = np.column_stack((r[:, 2:4], r[:, 2:4] + r[:, 4:6])).astype(np.float32)
        n, ids = len(r), r[:, 1].astype(np.int64)
        zeros, ones = np.zeros(n, np.int32), np.ones(n, np.float32)
        tracks = Tracks(xyxy, ids, zeros, ones, zeros, "tud", f - 1, (f - 1) / 25)
        a.update(tracks, (640, 480), 0.0)
    a.finish()
    counted = {
        k: {d: sum(v.values()) for d, v in c.items()}
        for k, c in a.counts.snapshot()["lines"].items()
    }
    truth = gt_line_counts(gt, (640, 480), lines)
    assert counted == truth and sum(c["in"] + c["out"] for c in truth.values()) >= 5
