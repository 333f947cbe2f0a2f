from __future__ import annotations

import numpy as np
import pytest

from models.postprocess import batched_nms, box_iou, nms, postprocess


def greedy_reference(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """The classic loop: take the best remaining box, drop everything overlapping it."""
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        i = order.pop(0)
        keep.append(int(i))
        order = [j for j in order if box_iou(boxes[i : i + 1], boxes[j : j + 1])[0, 0] <= thr]
    return keep


def random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, 200, (n, 2))
    wh = rng.uniform(5, 80, (n, 2))
    return np.concatenate((xy, xy + wh), axis=1).astype(np.float32)


@pytest.mark.parametrize("seed", range(20))
def test_nms_equals_greedy_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    boxes = random_boxes(rng, n)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    thr = float(rng.uniform(0.2, 0.8))
    assert nms(boxes, scores, thr).tolist() == greedy_reference(boxes, scores, thr)


def test_nms_dense_cluster_chain() -> None:
    # A chain of boxes each overlapping the next: the answer alternates keep/drop.
    x = np.arange(30, dtype=np.float32) * 6
    boxes = np.stack((x, np.zeros(30), x + 10, np.full(30, 10)), axis=1).astype(np.float32)
    scores = np.linspace(1, 0.1, 30).astype(np.float32)
    assert nms(boxes, scores, 0.3).tolist() == greedy_reference(boxes, scores, 0.3)


def test_batched_nms_keeps_classes_apart() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    cls = np.array([0, 1, 0])
    assert batched_nms(boxes, scores, cls, 0.5).tolist() == [0, 1]
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).shape == (0,)


def reference_postprocess(pred: np.ndarray, conf: float, iou: float) -> np.ndarray:
    rows = []
    for p in pred:  # the slow, obvious version
        if p[4] <= conf:
            continue
        scores = p[5:] * p[4]
        c = int(np.argmax(scores))
        if scores[c] > conf:
            cx, cy, w, h = p[:4]
            rows.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, scores[c], c])
    if not rows:
        return np.zeros((0, 6))
    r = np.array(rows, np.float32)
    kept = []
    for c in np.unique(r[:, 5]):
        idx = np.flatnonzero(r[:, 5] == c)
        kept += [idx[k] for k in greedy_reference(r[idx, :4], r[idx, 4], iou)]
    out = r[kept]
    return out[np.argsort(-out[:, 4], kind="stable")]


@pytest.mark.parametrize("seed", range(5))
def test_postprocess_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, nc = 2000, 4
    pred = np.zeros((a, 5 + nc), np.float32)
    pred[:, :2] = rng.uniform(0, 320, (a, 2))
    pred[:, 2:4] = rng.uniform(4, 100, (a, 2))
    pred[:, 4] = rng.uniform(0, 1, a) ** 3
    pred[:, 5:] = rng.uniform(0, 1, (a, nc))
    det = postprocess(pred, conf_threshold=0.25, iou_threshold=0.45, max_det=10_000)
    ref = reference_postprocess(pred, 0.25, 0.45)
    assert len(det) == len(ref) > 0
    np.testing.assert_allclose(det.xyxy, ref[:, :4], atol=1e-4)
    np.testing.assert_allclose(det.confidence, ref[:, 4], atol=1e-6)
    np.testing.assert_array_equal(det.class_id, ref[:, 5].astype(int))


def test_postprocess_empty_and_filters() -> None:
    pred = np.zeros((100, 85), np.float32)
    assert len(postprocess(pred)) == 0
    pred[0, :6] = [50, 50, 20, 20, 0.9, 0.9]
    pred[1, :5] = [150, 150, 20, 20, 0.9]
    pred[1, 7] = 0.9  # class 2
    assert postprocess(pred).class_id.tolist() == [0, 2]
    assert postprocess(pred, classes=np.array([2])).class_id.tolist() == [2]
    assert len(postprocess(pred, max_det=1)) == 1
