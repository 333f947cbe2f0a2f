"""Vectorized plane geometry in source pixels (x right, y down).

Shapes: ``M`` tracks, ``R`` rules (lines or zones), ``V`` polygon vertices. Points are
``(..., 2) float64`` pixel coordinates; boxes are ``(M, 4)`` ``xyxy`` source pixels.

Side convention (exact; tests and other tools rely on it): for a directed line from ``p1`` to
``p2`` and a point ``a``, ``side(a) = sign((p2.x - p1.x)(a.y - p1.y) - (p2.y - p1.y)(a.x - p1.x))``.
"""

from __future__ import annotations

import numpy as np

ANCHORS = ("bottom_center", "center", "top_left", "top_right", "bottom_left", "bottom_right")


# Each anchor as weights on (x1, y1, x2, y2): (6 anchors, 4 box coordinates, x/y).
_ANCHOR_WEIGHTS = np.array(
    [
        [[0.5, 0], [0, 0], [0.5, 0], [0, 1]],  # bottom_center
        [[0.5, 0], [0, 0.5], [0.5, 0], [0, 0.5]],  # center
        [[1, 0], [0, 1], [0, 0], [0, 0]],  # top_left
        [[0, 0], [0, 1], [1, 0], [0, 0]],  # top_right
        [[1, 0], [0, 0], [0, 0], [0, 1]],  # bottom_left
        [[0, 0], [0, 0], [1, 0], [0, 1]],  # bottom_right
    ],
    np.float64,
)


def anchor_weights(kinds: np.ndarray) -> np.ndarray:
    """``(4, 2R)`` weights that turn ``(M, 4)`` boxes into each rule's anchor: see
    :func:`anchor_points`. ``kinds``: ``(R,) int`` indices into :data:`ANCHORS`."""
    return _ANCHOR_WEIGHTS[kinds].transpose(1, 0, 2).reshape(4, -1)


def anchor_points(xyxy: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Anchor points of boxes for each rule: xyxy ``(M, 4)`` source pixels, weights from
    :func:`anchor_weights`. Returns ``(M, R, 2) float64`` (one matrix product)."""
    b = np.asarray(xyxy, np.float64).reshape(-1, 4)
    return (b @ weights).reshape(b.shape[0], -1, 2)


def cross(p1: np.ndarray, p2: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``(p2 - p1) x (a - p1)`` per rule: p1, p2 ``(R, 2)``, a ``(M, R, 2)`` -> ``(M, R)``.

    Its sign is the side in the module's convention; its magnitude over ``|p2 - p1|`` is the
    distance of ``a`` from the (infinite) line.
    """
    d = p2 - p1
    return d[:, 0] * (a[..., 1] - p1[:, 1]) - d[:, 1] * (a[..., 0] - p1[:, 0])


def side(p1: np.ndarray, p2: np.ndarray, a: np.ndarray) -> np.ndarray:
    """The side (-1, 0 on the line, +1) of points ``a (M, R, 2)`` for lines ``(R, 2)``:
    ``(M, R) int8``."""
    return np.sign(cross(p1, p2, a)).astype(np.int8)


def paths_hit_segments(
    p1: np.ndarray, p2: np.ndarray, q0: np.ndarray, q1: np.ndarray
) -> np.ndarray:
    """Whether each path ``q0 -> q1`` (``(M, R, 2)`` each) meets segment ``p1 -> p2`` of its rule
    (``(R, 2)`` each), touching included: ``(M, R) bool``.

    Orientation test: the path's ends are on opposite sides of (or on) the segment's line, and the
    segment's ends on opposite sides of (or on) the path's line. A path lying along the line
    (both ends on it) does not count: it changes no side.
    """
    o1 = np.sign(cross(p1, p2, q0))
    o2 = np.sign(cross(p1, p2, q1))
    d = q1 - q0  # (M, R, 2)
    o3 = np.sign(d[..., 0] * (p1[:, 1] - q0[..., 1]) - d[..., 1] * (p1[:, 0] - q0[..., 0]))
    o4 = np.sign(d[..., 0] * (p2[:, 1] - q0[..., 1]) - d[..., 1] * (p2[:, 0] - q0[..., 0]))
    return (o1 * o2 <= 0) & (o3 * o4 <= 0) & ~((o1 == 0) & (o2 == 0))


def polygon_edges(polygons: list[np.ndarray]) -> np.ndarray:
    """The edges of polygons with different vertex counts, for :func:`points_in_polygons`:
    ``(4, R, V)`` rows ``ax, ay, bx, by`` (edge ``a -> b``, wrapping). Shorter polygons are
    padded with zero-length edges at their first vertex, which never cross a ray."""
    if not polygons:
        return np.zeros((4, 0, 3), np.float64)
    v = max(len(p) for p in polygons)
    a = np.empty((len(polygons), v, 2), np.float64)
    for i, p in enumerate(polygons):  # rules, not tracks: built once per rule change
        a[i, : len(p)] = p
        a[i, len(p) :] = p[0]
    b = np.roll(a, -1, axis=1)
    return np.stack((a[..., 0], a[..., 1], b[..., 0], b[..., 1]))


def points_in_polygons(points: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Even-odd ray casting for every (point, polygon) pair at once.

    points: ``(M, R, 2)`` (one point per track and polygon: each rule has its own anchor);
    edges: ``(4, R, V)`` from :func:`polygon_edges`. Returns ``(M, R) bool``.
    """
    if points.shape[0] == 0 or edges.shape[1] == 0:
        return np.zeros(points.shape[:2], bool)
    ax, ay, bx, by = edges[:, None]  # each (1, R, V)
    px = points[..., 0][..., None]  # (M, R, 1)
    py = points[..., 1][..., None]
    straddles = (ay > py) != (by > py)
    with np.errstate(divide="ignore", invalid="ignore"):  # flat edges never straddle
        x_at = ax + (py - ay) * (bx - ax) / (by - ay)
    return (np.count_nonzero(straddles & (px < x_at), axis=2) % 2).astype(bool)


def polygon_area(polygon: np.ndarray) -> float:
    """Absolute shoelace area of one ``(V, 2)`` polygon."""
    x, y = polygon[:, 0], polygon[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) * 0.5)
