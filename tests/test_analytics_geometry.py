"""Vectorized geometry against independent references (plain formulas, matplotlib's Path)."""

from __future__ import annotations

import numpy as np
from matplotlib.path import Path as MplPath

from analytics.geometry import (
    ANCHORS,
    anchor_points,
    anchor_weights,
    paths_hit_segments,
    points_in_polygons,
    polygon_edges,
    side,
)


def test_side_is_the_issue_formula_for_random_lines_and_points() -> None:
    rng = np.random.default_rng(0)
    p1, p2 = rng.uniform(0, 1000, (7, 2)), rng.uniform(0, 1000, (7, 2))
    a = rng.uniform(0, 1000, (50, 7, 2))
    got = side(p1, p2, a)
    for m in range(50):
        for r in range(7):
            (x1, y1), (x2, y2), (ax, ay) = p1[r], p2[r], a[m, r]
            want = np.sign((x2 - x1) * (ay - y1) - (y2 - y1) * (ax - x1))
            assert got[m, r] == want


def test_anchors() -> None:
    box = np.array([[10, 20, 30, 60]], np.float32)
    got = anchor_points(box, anchor_weights(np.arange(len(ANCHORS))))[0]
    assert got.tolist() == [[20, 60], [20, 40], [10, 20], [30, 20], [10, 60], [30, 60]]


def test_path_segment_intersections() -> None:
    p1, p2 = np.array([[0.0, 0.0]]), np.array([[0.0, 10.0]])  # x = 0, y in [0, 10]

    def hit(a: tuple[float, float], b: tuple[float, float]) -> bool:
        q0, q1 = np.array([[a]], np.float64), np.array([[b]], np.float64)
        return bool(paths_hit_segments(p1, p2, q0, q1)[0, 0])

    assert hit((-5, 5), (5, 5))  # straight through
    assert hit((-5, 0), (5, 0))  # through an end point
    assert hit((-5, 5), (0, 5))  # ends on it
    assert not hit((-5, 15), (5, 15))  # past the segment's end
    assert not hit((-5, 5), (-1, 5))  # stops short
    assert not hit((0, 2), (0, 8))  # along the line: no side changes
    assert hit((-100, -100), (100, 100))  # long jump across


def test_points_in_polygons_match_matplotlib() -> None:
    rng = np.random.default_rng(1)
    polys = []
    for n in (3, 5, 9, 12):  # star-shaped, so concave
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(100, 400, n)
        polys.append(np.stack((500 + rad * np.cos(ang), 500 + rad * np.sin(ang)), 1))
    pts = rng.uniform(0, 1000, (400, len(polys), 2))
    got = points_in_polygons(pts, polygon_edges(polys))
    for r, poly in enumerate(polys):
        want = MplPath(poly).contains_points(pts[:, r])
        assert (got[:, r] == want).mean() > 0.999  # boundary points may differ
        assert got[:, r].any() and not got[:, r].all()
