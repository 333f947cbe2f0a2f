"""DeepSORT specifics: the batched Kalman filter against the reference's, the registry, the
init gate, weak detections, and the inputs it refuses. (Behaviour every tracker shares is in
``test_tracker_contract.py``; agreement with deep-sort-realtime on real sequences in
``test_tracker_parity.py``.)"""

from __future__ import annotations

import numpy as np
import pytest
from deep_sort_realtime.deep_sort.kalman_filter import KalmanFilter

from pipeline.types import Detections, VigilError
from trackers import kalman
from trackers.bytetrack import ByteTracker
from trackers.deepsort import DeepSortParams, Gallery, VectorizedDeepSort
from trackers.deepsort_reference import ReferenceDeepSort
from trackers.registry import create_tracker, names

DEEPSORTS = [VectorizedDeepSort, ReferenceDeepSort]


def _dets(boxes: list[list[float]], conf: float | list[float] = 0.9) -> Detections:
    xyxy = np.array(boxes, np.float32).reshape(-1, 4)
    n = len(xyxy)
    return Detections(xyxy, np.broadcast_to(np.float32(conf), n).copy(), np.zeros(n, np.int32))


def _unit(rng: np.random.Generator, n: int, d: int = 64) -> np.ndarray:
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_batched_kalman_equals_the_reference_filter_track_by_track() -> None:
    """Same numbers as deep-sort-realtime's filter, to 1e-6 relative (the reference computes
    a new track's first process noise from its float32 height; we use float64)."""
    rng = np.random.default_rng(0)
    kf = KalmanFilter()
    z = np.column_stack(
        (rng.uniform(0, 600, 6), rng.uniform(0, 400, 6), rng.uniform(0.3, 0.6, 6),
         rng.uniform(40, 200, 6))
    ).astype(np.float32)  # fmt: skip
    mean, cov = kalman.initiate(z)
    ref = [kf.initiate(row) for row in z]
    for step in range(5):
        mean, cov = kalman.predict(mean, cov)
        ref = [kf.predict(m, c) for m, c in ref]
        meas = (z + step * rng.normal(size=z.shape)).astype(np.float32)
        gate = kalman.gating_distance(mean, cov, meas)
        for i, (m, c) in enumerate(ref):
            np.testing.assert_allclose(mean[i], m, rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(cov[i], c, rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(gate[i], kf.gating_distance(m, c, meas), rtol=1e-7)
        mean, cov = kalman.update(mean, cov, meas)
        ref = [kf.update(m, c, meas[i]) for i, (m, c) in enumerate(ref)]


def test_registry() -> None:
    assert {"deepsort", "deepsort-reference", "bytetrack"} <= set(names())
    made = create_tracker("deepsort", DeepSortParams(max_age=5))
    assert isinstance(made, VectorizedDeepSort) and made.params.max_age == 5
    assert isinstance(create_tracker("bytetrack"), ByteTracker)
    with pytest.raises(VigilError, match="unknown tracker"):
        create_tracker("nope")
    with pytest.raises(VigilError, match="parameters must be DeepSortParams"):
        create_tracker("deepsort", {"max_age": 5})


@pytest.mark.parametrize("cls", DEEPSORTS)
def test_init_gate_keeps_weak_detections_from_starting_tracks(cls: type) -> None:
    rng = np.random.default_rng(3)
    tr = cls(DeepSortParams(n_init=1, init_confidence=0.5, high_confidence=0.0))
    for t in range(10):
        out = tr.update(_dets([[10, 10, 50, 90]], conf=0.3), _unit(rng, 1), t)
        assert len(out) == 0
    assert tr.live_tracks == 0


@pytest.mark.parametrize("cls", DEEPSORTS)
def test_needs_one_embedding_per_detection(cls: type) -> None:
    with pytest.raises(ValueError, match="one embedding row per detection"):
        cls().update(_dets([[0, 0, 10, 10]]), None)


def test_weak_detections_continue_a_confirmed_track_but_start_none() -> None:
    """A walker's score drops below high_confidence for 5 frames (half hidden): the weak
    detections keep its id, report it, and stay out of its appearance gallery; a weak detection
    elsewhere starts nothing."""
    rng = np.random.default_rng(9)
    tr = VectorizedDeepSort(DeepSortParams(high_confidence=0.25, min_confidence=0.1))
    ids = set()
    for t in range(30):
        x = 10 + 4.0 * t
        conf = 0.15 if 10 <= t < 15 else 0.9
        boxes = [[x, 50, x + 40, 150], [400, 300, 440, 400]]
        out = tr.update(_dets(boxes, [conf, 0.15]), _unit(rng, 2), t)
        assert 1 not in out.det_index.tolist()
        if t >= 2:
            assert out.det_index.tolist() == [0]
            ids |= set(out.track_id.tolist())
        if t == 14:
            slot = tr.table.active()[0]
            assert tr.gallery.count[slot] == 10  # the strong frames 0-9 only
    assert len(ids) == 1


def test_without_the_weak_stage_weak_detections_are_ordinary() -> None:
    rng = np.random.default_rng(10)
    tr = VectorizedDeepSort(DeepSortParams(high_confidence=0.0, init_confidence=0.1))
    for t in range(3):
        out = tr.update(_dets([[10, 10, 50, 90]], conf=0.15), _unit(rng, 1), t)
    assert len(out) == 1 and tr.gallery.count[tr.table.active()[0]] == 3


def test_gallery_keeps_the_last_budget_samples() -> None:
    rng = np.random.default_rng(11)
    tr = VectorizedDeepSort(DeepSortParams(nn_budget=4))
    feats = _unit(rng, 10)
    for t in range(10):
        tr.update(_dets([[10 + t, 10, 50 + t, 90]]), feats[t : t + 1], t)
    slot = tr.table.active()[0]
    kept = {tuple(np.round(v, 5)) for v in tr.gallery.feats[slot]}
    assert kept == {tuple(np.round(v, 5)) for v in feats[6:]}
    d = tr.gallery.cosine_distance(np.array([slot]), feats[[9, 0]])
    assert d[0, 0] == pytest.approx(0.0, abs=1e-6) and d[0, 1] > 0.5


def test_sparse_gate_equals_the_full_mahalanobis_test() -> None:
    rng = np.random.default_rng(12)
    z = np.column_stack(
        (rng.uniform(0, 1900, 60), rng.uniform(0, 1000, 60), rng.uniform(0.3, 0.6, 60),
         rng.uniform(40, 200, 60))
    )  # fmt: skip
    mean, cov = kalman.predict(*kalman.initiate(z))
    meas = z + rng.normal(0, 15, z.shape)
    full = kalman.gating_distance(mean, cov, meas) <= kalman.CHI2_95_4D
    np.testing.assert_array_equal(kalman.gate(mean, cov, meas), full)
    assert 0 < full.sum() < full.size


@pytest.mark.parametrize("skew", [1, 12])
def test_gallery_pair_distances_equal_the_whole_block(skew: int) -> None:
    """The gated path (a window over the gallery for each track's first pairs, a gather for the
    rest) gives the same distances as the whole block, for galleries partly filled, tracks
    spread over the slots, and one track whose gate holds many detections (``skew``)."""
    rng = np.random.default_rng(skew)
    gallery = Gallery(budget=6)
    gallery.fit(40, 16)
    for _ in range(9):  # some slots wrap their ring, some stay partly filled
        slots = np.flatnonzero(rng.random(40) < 0.7)
        gallery.push(slots, rng.normal(size=(slots.size, 16)).astype(np.float32))
    slots = np.sort(rng.choice(np.flatnonzero(gallery.count > 0), 25, replace=False))
    feats = rng.normal(size=(30, 16)).astype(np.float32)
    pairs = rng.random((25, 30)) < 0.06
    pairs[3, :skew] = True
    whole = gallery.cosine_distance(slots, feats)
    gated = gallery.cosine_distance(slots, feats, pairs)
    assert 2 * pairs.sum() < pairs.size  # the gated path ran
    np.testing.assert_allclose(gated[pairs], whole[pairs], atol=1e-5)
    assert (gated[~pairs] == 1.0).all()
    far_apart = np.array([slots[0], slots[-1]])  # a sparse window: every pair gathered
    few = np.zeros((2, 30), bool)
    few[[0, 1], [4, 7]] = True
    np.testing.assert_allclose(
        gallery.cosine_distance(far_apart, feats, few)[few],
        gallery.cosine_distance(far_apart, feats)[few],
        atol=1e-5,
    )
