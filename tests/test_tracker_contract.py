"""The contract every registered tracker keeps: the same synthetic cases for each.

Empty frames; people walking with stable ids; a short occlusion; two crossing targets; and
10,000 frames of people arriving and leaving with state and memory flat. Appearance trackers
get an embedding per person (its look plus noise); motion-only trackers ignore them.
"""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest

from pipeline.types import Detections, Tracks
from trackers.registry import TRACKERS, create_tracker

ALL = sorted(TRACKERS)
VECTORIZED = [n for n in ALL if n != "deepsort-reference"]


def _dets(boxes: np.ndarray, conf: float = 0.9, cls: np.ndarray | None = None) -> Detections:
    xyxy = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(xyxy)
    class_id = np.zeros(n, np.int32) if cls is None else cls.astype(np.int32)
    return Detections(xyxy, np.full(n, conf, np.float32), class_id)


LOOKS = np.random.default_rng(7).normal(size=(2_000, 32)).astype(np.float32)


def _looks(rng: np.random.Generator, who: np.ndarray) -> np.ndarray:
    """Embeddings of persons ``who``: a fixed look per person id plus a little noise."""
    v = LOOKS[who % len(LOOKS)] + 0.05 * rng.normal(size=(len(who), LOOKS.shape[1]))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _ids_by_person(
    name: str, frames: list[tuple[np.ndarray, np.ndarray]], seed: int = 0
) -> tuple[dict[int, set[int]], list[Tracks]]:
    """Run tracker ``name`` over ``(boxes, person ids)`` per frame; returns the track ids
    each person was reported under, and every frame's tracks."""
    rng = np.random.default_rng(seed)
    tr = create_tracker(name)
    seen: dict[int, set[int]] = {}
    out = []
    for t, (boxes, who) in enumerate(frames):
        tracks = tr.update(_dets(boxes), _looks(rng, who), t, t / 25)
        out.append(tracks)
        for tid, det in zip(tracks.track_id.tolist(), tracks.det_index.tolist(), strict=True):
            seen.setdefault(int(who[det]), set()).add(tid)
    return seen, out


@pytest.mark.parametrize("name", ALL)
def test_empty_frames(name: str) -> None:
    tr = create_tracker(name)
    for i in range(50):
        out = tr.update(Detections.empty(), np.zeros((0, 32), np.float32), i, i / 25)
        assert len(out) == 0 and out.xyxy.shape == (0, 4) and out.frame_index == i
        assert out.track_id.dtype == np.int64 and out.det_index.dtype == np.int32
    tr.reset()
    assert len(tr.update(Detections.empty(), np.zeros((0, 32), np.float32), 50)) == 0


@pytest.mark.parametrize("name", ALL)
def test_walkers_keep_their_ids(name: str) -> None:
    """Three people walk in straight lines for 100 frames: one id each, reported every frame
    once confirmed, with the detection's own box."""
    frames = []
    for t in range(100):
        x = np.array([20 + 3 * t, 600 - 2 * t, 300.0])
        y = np.array([100.0, 300, 50 + 2 * t])
        frames.append((np.stack((x, y, x + 40, y + 100), axis=1), np.arange(3)))
    seen, out = _ids_by_person(name, frames)
    assert all(len(ids) == 1 for ids in seen.values()), seen
    assert len(set.union(*seen.values())) == 3
    assert all(len(o) == 3 for o in out[5:])
    last = out[-1]
    np.testing.assert_array_equal(last.xyxy, frames[-1][0].astype(np.float32)[last.det_index])


@pytest.mark.parametrize("name", ALL)
def test_short_occlusion_keeps_the_id(name: str) -> None:
    """A walker is not detected for 4 frames (behind a pillar) and comes back on its path."""
    frames = []
    for t in range(60):
        x = np.array([20 + 5.0 * t, 400.0])
        boxes = np.stack((x, [120.0, 300], x + 40, [220.0, 400]), axis=1)
        who = np.arange(2)
        if 30 <= t < 34:
            boxes, who = boxes[1:], who[1:]
        frames.append((boxes, who))
    seen, out = _ids_by_person(name, frames)
    assert len(seen[0]) == 1 and len(seen[1]) == 1, seen
    assert all(0 not in {int(frames[t][1][d]) for d in out[t].det_index} for t in range(30, 34))


@pytest.mark.parametrize("name", ALL)
def test_crossing_targets_keep_their_ids(name: str) -> None:
    """Two people walk towards each other, overlap (IoU up to about 0.5) and part."""
    frames = []
    for t in range(120):
        xa, xb = 20 + 4.0 * t, 500 - 4.0 * t
        boxes = np.array([[xa, 100, xa + 40, 200], [xb, 135, xb + 40, 235]])
        frames.append((boxes, np.arange(2)))
    seen, _ = _ids_by_person(name, frames)
    assert len(seen[0]) == 1 and len(seen[1]) == 1 and seen[0] != seen[1], seen


def _churn(t: int) -> tuple[np.ndarray, np.ndarray]:
    """Person k lives frames [10k, 10k + 50): about five on screen at once."""
    alive = np.arange(max(0, (t - 50) // 10 + 1), t // 10 + 1)
    age = t - alive * 10
    x = (alive % 7) * 90.0 + age * 2.0
    y = (alive % 5) * 80.0
    return np.stack((x, y, x + 40, y + 90), axis=1), alive


@pytest.mark.parametrize("name", ALL)
def test_ten_thousand_frames_of_churn_stay_flat(name: str) -> None:
    """People keep arriving and leaving for 10,000 frames: live tracks stay bounded, and
    neither traced memory nor the number of live Python objects grows between frame 2,000
    and frame 10,000. (Memory is traced for the vectorized trackers only: tracing every
    allocation of the reference's per-track Python makes it some 20 times slower.)"""
    rng = np.random.default_rng(4)
    tr = create_tracker(name)
    traced = name in VECTORIZED
    peak = 0
    memory, objects = [], []
    if traced:
        tracemalloc.start()
    try:
        for t in range(10_000):
            boxes, who = _churn(t)
            tr.update(_dets(boxes), _looks(rng, who), t)
            peak = max(peak, int(getattr(tr, "live_tracks", 0)))
            if t in (2_000, 9_999):
                gc.collect()
                objects.append(len(gc.get_objects()))
                memory.append(tracemalloc.get_traced_memory()[0] if traced else 0)
    finally:
        if traced:
            tracemalloc.stop()
    assert 5 <= peak <= 5 + 1 + 5 * 31 // 10 + 5, peak  # alive + those within max_age of leaving
    assert memory[1] - memory[0] < 1_000_000, memory
    assert objects[1] - objects[0] < 1_000, objects


@pytest.mark.parametrize("name", VECTORIZED)
def test_classes_never_share_an_id(name: str) -> None:
    """A person and a car on the same spot, frame after frame: two tracks, each always
    reported with its own class."""
    tr = create_tracker(name)
    box = np.array([[100, 100, 160, 220], [100, 100, 160, 220]], np.float32)
    cls = np.array([0, 2])
    rng = np.random.default_rng(5)
    by_class: dict[int, set[int]] = {0: set(), 2: set()}
    for t in range(40):
        out = tr.update(_dets(box + t, cls=cls), _looks(rng, np.array([0, 1])), t)
        for tid, c in zip(out.track_id.tolist(), out.class_id.tolist(), strict=True):
            by_class[c].add(tid)
    assert len(by_class[0]) == 1 and len(by_class[2]) == 1
    assert by_class[0].isdisjoint(by_class[2])


@pytest.mark.parametrize("name", VECTORIZED)
def test_ids_are_never_reused_after_reset(name: str) -> None:
    tr = create_tracker(name)
    rng = np.random.default_rng(6)
    ids: list[set[int]] = []
    for _ in range(2):
        run: set[int] = set()
        for t in range(10):
            out = tr.update(_dets([[10 + t, 10, 50 + t, 90]]), _looks(rng, np.array([0])), t)
            run |= set(out.track_id.tolist())
        ids.append(run)
        tr.reset()
    assert ids[0] and ids[1] and ids[0].isdisjoint(ids[1])


@pytest.mark.parametrize("name", VECTORIZED)
def test_predict_only_advances_the_motion_model(name: str) -> None:
    """A frame the detector skips: tracks matched at the last detection frame come back at
    their predicted boxes (moving on at their velocity), unmatched, and nothing is lost."""
    tr = create_tracker(name)
    rng = np.random.default_rng(8)
    for t in range(20):
        x = 10 + 5.0 * t
        last = tr.update(_dets([[x, 50, x + 40, 150]]), _looks(rng, np.array([0])), t)
    predicted = tr.predict_only(20, 0.8)  # type: ignore[attr-defined]
    assert len(predicted) == 1 and predicted.track_id[0] == last.track_id[0]
    assert predicted.det_index[0] == -1 and predicted.confidence[0] == 0
    assert predicted.xyxy[0, 0] == pytest.approx(10 + 5.0 * 20, abs=2.0)
    out = tr.update(_dets([[115, 50, 155, 150]]), _looks(rng, np.array([0])), 21)
    assert out.track_id.tolist() == last.track_id.tolist()
