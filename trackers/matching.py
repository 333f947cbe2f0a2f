"""Association primitives shared by the trackers: IoU cost and gated linear assignment.

Cost matrices are ``(tracks, detections)`` float64; anything above the gate is infeasible.
The Hungarian step is ``scipy.optimize.linear_sum_assignment``; everything around it is array
operations.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from pipeline.types import Detections

INFEASIBLE = 1e5  # the reference's INFTY_COST: a pair that may never be matched


def valid_detections(detections: Detections, min_confidence: float) -> np.ndarray:
    """Rows a tracker may use: positive width and height, confidence at least the floor."""
    wh = detections.xyxy[:, 2:] - detections.xyxy[:, :2]
    ok = (wh[:, 0] > 0) & (wh[:, 1] > 0) & (detections.confidence >= min_confidence)
    return np.flatnonzero(ok)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``(N, 4)`` and ``(M, 4)`` xyxy boxes -> ``(N, M) float64``."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.maximum(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def assign(
    cost: np.ndarray, max_cost: float, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum-cost matching of ``rows`` (track slots) to ``cols`` (detection indices) under
    ``cost`` (``(len(rows), len(cols))``), pairs above ``max_cost`` refused.

    Returns ``(matched_rows, matched_cols, unmatched_cols)`` as values of ``rows``/``cols``.
    ``unmatched_cols`` keeps the reference's order (columns the assignment left out, in order,
    then columns assigned above the gate, in row order): new tracks are born, and numbered, in
    that order.
    """
    if rows.size == 0 or cols.size == 0:
        return rows[:0], cols[:0], cols
    clipped = np.where(cost > max_cost, max_cost + 1e-5, cost)
    r, c = linear_sum_assignment(clipped)
    ok = clipped[r, c] <= max_cost
    assigned = np.zeros(cols.size, bool)
    assigned[c] = True
    unmatched = np.concatenate((cols[~assigned], cols[c[~ok]]))
    return rows[r[ok]], cols[c[ok]], unmatched
