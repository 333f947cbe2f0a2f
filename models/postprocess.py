"""YOLOv5 output decode and non-maximum suppression, vectorized with numpy.

Input per image: ``pred (A, 5 + nc) float32`` from the detector (``cx, cy, w, h`` in letterbox
pixels, objectness, class probabilities). Output: boxes ``xyxy`` in the same letterbox pixels.

NMS is exact greedy NMS (the same keep set as the classic loop) computed as a fixed point of
array operations: with boxes sorted by score and ``S[i, j] = IoU(i, j) > t`` for ``i < j``,
box ``j`` is kept iff no *kept* ``i`` suppresses it. Iterating ``keep <- ~any(S & keep[:, None])``
from all-True fixes at least one more leading element per step and stops at the greedy answer,
usually in a handful of steps; each step is one matrix operation, never a loop over boxes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.types import Detections

MAX_CANDIDATES = 8192  # per image, highest scores first, before NMS


@dataclass(frozen=True)
class PostprocessParams:
    """Decode/NMS settings shared by every backend (numpy here, torch ops on the GPU).

    classes: ``(K,) int64`` allowed class ids, or None for all; multi_label: every class above
    the threshold per box (mAP) instead of only the best one.
    """

    conf_threshold: float = 0.25
    iou_threshold: float = 0.45
    classes: np.ndarray | None = None
    max_det: int = 300
    multi_label: bool = False


def xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    """``(N, 4)`` centre/size -> corners, float32."""
    half = xywh[:, 2:4] * 0.5
    return np.concatenate((xywh[:, :2] - half, xywh[:, :2] + half), axis=1).astype(np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``(N, 4)`` and ``(M, 4)`` xyxy boxes -> ``(N, M) float32``."""
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS for one class. Returns kept indices into ``boxes``, highest score first."""
    if boxes.shape[0] == 0:
        return np.zeros((0,), np.int64)
    order = np.argsort(-scores, kind="stable")
    b = boxes[order]
    suppress = np.triu(box_iou(b, b) > iou_threshold, k=1)
    if not suppress.any():
        return order
    keep: np.ndarray = np.ones(b.shape[0], bool)
    while True:
        new_keep: np.ndarray = ~(suppress & keep[:, None]).any(axis=0)
        if np.array_equal(new_keep, keep):
            return order[keep]
        keep = new_keep


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, class_id: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """NMS within each class independently; kept indices sorted by descending score."""
    classes = np.unique(class_id)
    if classes.size <= 1:
        return nms(boxes, scores, iou_threshold)
    kept = []
    for c in classes:  # a loop over the classes present, not over boxes
        idx = np.flatnonzero(class_id == c)
        kept.append(idx[nms(boxes[idx], scores[idx], iou_threshold)])
    keep = np.concatenate(kept)
    return keep[np.argsort(-scores[keep], kind="stable")]


def postprocess(
    pred: np.ndarray,
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    classes: np.ndarray | None = None,
    max_det: int = 300,
    multi_label: bool = False,
) -> Detections:
    """Decode one image's raw predictions into detections (letterbox pixels).

    Score = objectness x class probability. ``multi_label`` keeps every class above the
    threshold for a box (used for mAP); otherwise only its best class. ``classes``: optional
    ``(K,) int`` allow-list of class ids.
    """
    cand = pred[pred[:, 4] > conf_threshold]
    if cand.shape[0] == 0:
        return Detections.empty()
    cls_scores = cand[:, 5:] * cand[:, 4:5]
    if multi_label:
        rows, cls = np.nonzero(cls_scores > conf_threshold)
        conf = cls_scores[rows, cls]
    else:
        cls = cls_scores.argmax(axis=1)
        rows = np.arange(cand.shape[0])
        conf = cls_scores[rows, cls]
        ok = conf > conf_threshold
        rows, cls, conf = rows[ok], cls[ok], conf[ok]
    if classes is not None:
        ok = np.isin(cls, classes)
        rows, cls, conf = rows[ok], cls[ok], conf[ok]
    if rows.size == 0:
        return Detections.empty()
    if rows.size > MAX_CANDIDATES:
        top = np.argpartition(-conf, MAX_CANDIDATES)[:MAX_CANDIDATES]
        rows, cls, conf = rows[top], cls[top], conf[top]
    boxes = xywh_to_xyxy(cand[rows, :4])
    keep = batched_nms(boxes, conf, cls, iou_threshold)[:max_det]
    return Detections(
        boxes[keep], conf[keep].astype(np.float32), cls[keep].astype(np.int32, copy=False)
    )


def postprocess_batch(raw: np.ndarray, params: PostprocessParams) -> list[Detections]:
    """:func:`postprocess` for every image of ``raw`` ``(B, A, 5 + nc) float32``."""
    p = params
    return [
        postprocess(pred, p.conf_threshold, p.iou_threshold, p.classes, p.max_det, p.multi_label)
        for pred in raw
    ]
