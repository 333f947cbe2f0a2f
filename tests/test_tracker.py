from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from pipeline.types import Detections, VigilError
from trackers.deepsort import DeepSortParams, DeepSortTracker
from trackers.registry import create_tracker, names


def _dets(boxes: list[list[float]], conf: float = 0.9) -> Detections:
    xyxy = np.array(boxes, np.float32).reshape(-1, 4)
    n = len(xyxy)
    return Detections(xyxy, np.full(n, conf, np.float32), np.zeros(n, np.int32))


def _unit(rng: np.random.Generator, n: int, d: int = 64) -> np.ndarray:
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_empty_input_every_frame() -> None:
    tr = DeepSortTracker()
    for i in range(50):
        out = tr.update(Detections.empty(), np.zeros((0, 8), np.float32), i, i / 25)
        assert len(out) == 0 and out.xyxy.shape == (0, 4) and out.frame_index == i


def test_registry() -> None:
    assert "deepsort" in names()
    made = create_tracker("deepsort", DeepSortParams(max_age=5))
    assert isinstance(made, DeepSortTracker) and made.params.max_age == 5
    with pytest.raises(VigilError, match="unknown tracker"):
        create_tracker("nope")
    with pytest.raises(VigilError, match="parameters must be DeepSortParams"):
        create_tracker("deepsort", {"max_age": 5})


def test_ids_stable_through_a_crossing() -> None:
    """Two people walk towards each other, overlap, and part; a third walks alone."""
    rng = np.random.default_rng(1)
    looks = _unit(rng, 3)
    tr = DeepSortTracker(DeepSortParams(n_init=2, report_tentative=False))
    seen: dict[int, set[int]] = {0: set(), 1: set(), 2: set()}
    for t in range(120):
        xa, xb = 20 + 4 * t, 500 - 4 * t
        boxes = [[xa, 100, xa + 40, 200], [xb, 105, xb + 40, 205], [100, 300 + t, 140, 400 + t]]
        emb = _unit(rng, 3) * 0.05 + looks
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        out = tr.update(_dets(boxes), emb.astype(np.float32), t)
        for tid, det in zip(out.track_id.tolist(), out.det_index.tolist(), strict=True):
            seen[det].add(tid)
        if t > 5:
            assert len(out) == 3
    assert all(len(ids) == 1 for ids in seen.values()), seen
    assert len(set.union(*seen.values())) == 3


def test_track_output_fields() -> None:
    rng = np.random.default_rng(2)
    tr = DeepSortTracker(DeepSortParams(n_init=1))
    d = _dets([[10, 10, 50, 90], [200, 10, 240, 90]])
    for t in range(3):
        out = tr.update(d, _unit(rng, 2), t, t * 0.04)
    np.testing.assert_array_equal(out.xyxy, d.xyxy[out.det_index])
    assert out.track_id.dtype == np.int64 and out.class_id.dtype == np.int32
    assert out.pts == pytest.approx(0.08)


def test_init_gate_keeps_weak_detections_from_starting_tracks() -> None:
    rng = np.random.default_rng(3)
    tr = DeepSortTracker(DeepSortParams(n_init=1, init_confidence=0.5, report_tentative=True))
    for t in range(10):
        out = tr.update(_dets([[10, 10, 50, 90]], conf=0.3), _unit(rng, 1), t)
        assert len(out) == 0
    assert tr.live_tracks == 0


def test_needs_one_embedding_per_detection() -> None:
    with pytest.raises(ValueError, match="one embedding row per detection"):
        DeepSortTracker().update(_dets([[0, 0, 10, 10]]), None)


def test_memory_bounded_over_thousands_of_frames() -> None:
    """People keep arriving and leaving for 4000 frames: state and memory stay flat."""
    rng = np.random.default_rng(4)
    budget, max_age = 20, 15
    tr = DeepSortTracker(DeepSortParams(nn_budget=budget, max_age=max_age, n_init=2))
    snapshots = []
    tracemalloc.start()
    try:
        for t in range(4000):
            # person k lives frames [10k, 10k + 50): about five on screen at once
            alive = np.arange(max(0, (t - 50) // 10 + 1), t // 10 + 1)
            age = t - alive * 10
            x = (alive % 7) * 90.0 + age * 2.0
            y = (alive % 5) * 80.0
            boxes = np.stack((x, y, x + 40, y + 90), axis=1)
            tr.update(_dets(boxes.tolist()), _unit(rng, len(alive)), t)
            assert tr.live_tracks <= 5 + 1 + 5 * (max_age + 1) // 10 + 5
            metric = tr._tracker.metric
            assert all(len(v) <= budget for v in metric.samples.values())
            if t in (1000, 3999):
                snapshots.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert snapshots[1] - snapshots[0] < 2_000_000, snapshots
