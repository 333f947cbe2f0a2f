"""Counting accuracy: line crossings derived from ground-truth trajectories against Vigil's.

Ground truth uses the same convention as the analytics (``analytics.geometry``): each gt
track's anchor (the rule's, bottom centre by default) in consecutive observations; a crossing
is a path between two of them that meets the segment and goes from side -1 to +1 (``in``) or
+1 to -1 (``out``) (an annotated anchor exactly on a line, side 0, is measure zero and not
counted). No hysteresis: annotated trajectories do not flicker. Rows of ``gt.txt``
with ``conf == 0`` are ignored, as the MOT evaluation does. Vigil's side comes from a replay
with the same lines (``counts.json``), all classes summed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from analytics.geometry import ANCHORS, anchor_points, anchor_weights, cross, paths_hit_segments
from analytics.rules import LineRule

Counts = dict[str, dict[str, int]]  # line -> {"in": n, "out": n}


def gt_line_counts(gt: np.ndarray, size: tuple[int, int], lines: Sequence[LineRule]) -> Counts:
    """Crossings per line and direction in MOT rows ``(K, 6)`` (frame, id, x, y, w, h in source
    pixels) of a frame of ``size`` (width, height). Vectorized over all observation pairs."""
    out: Counts = {r.id: {"in": 0, "out": 0} for r in lines}
    if not lines or len(gt) < 2:
        return out
    rows = gt[np.lexsort((gt[:, 0], gt[:, 1]))]
    xyxy = np.column_stack((rows[:, 2:4], rows[:, 2:4] + rows[:, 4:6]))
    norm = np.array([r.points for r in lines], np.float64)
    px = norm * np.array(size, np.float64)
    p1, p2 = px[:, 0], px[:, 1]
    kinds = np.array([ANCHORS.index(r.anchor) for r in lines])
    anchors = anchor_points(xyxy, anchor_weights(kinds))
    side = np.sign(cross(p1, p2, anchors))  # (K, L); 0 exactly on the line
    pair = rows[1:, 1] == rows[:-1, 1]  # consecutive observations of one track
    before, after = anchors[:-1], anchors[1:]
    s0, s1 = side[:-1], side[1:]
    hit = paths_hit_segments(p1, p2, before, after) & pair[:, None]
    for i, r in enumerate(lines):  # lines, not tracks
        out[r.id]["in"] = int(np.count_nonzero(hit[:, i] & (s0[:, i] < 0) & (s1[:, i] > 0)))
        out[r.id]["out"] = int(np.count_nonzero(hit[:, i] & (s0[:, i] > 0) & (s1[:, i] < 0)))
    return out


def replay_line_counts(counts_json: Path) -> Counts:
    """A replay's ``counts.json`` lines, every class summed."""
    lines = json.loads(counts_json.read_text())["lines"]
    return {rule: {d: sum(c[d].values()) for d in ("in", "out")} for rule, c in lines.items()}


def compare(gt: Counts, vigil: Counts, naive: Counts) -> list[dict[str, Any]]:
    """One row per line and direction: ground truth, Vigil, its error (Vigil - gt), and what
    a counter without hysteresis counts on the same tracks (``naive``: ``gt_line_counts`` of the
    replay's ``tracks.txt``) with its error."""
    rows = []
    for line in gt:
        for d in ("in", "out"):
            got, raw = vigil.get(line, {}).get(d, 0), naive.get(line, {}).get(d, 0)
            rows.append({"line": line, "dir": d, "gt": gt[line][d], "vigil": got,
                         "error": got - gt[line][d], "naive": raw,
                         "naive_error": raw - gt[line][d]})  # fmt: skip
    return rows


def format_counting(per_seq: dict[str, list[dict[str, Any]]]) -> str:
    """The comparison as a Markdown table, with each sequence's absolute errors summed."""
    out = [
        "| sequence | line | dir | ground truth | Vigil | error | no hysteresis | its error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for seq, rows in per_seq.items():
        for r in rows:
            out.append(
                f"| {seq} | {r['line']} | {r['dir']} | {r['gt']} | {r['vigil']} | "
                f"{r['error']:+d} | {r['naive']} | {r['naive_error']:+d} |"
            )
        total = sum(r["gt"] for r in rows)
        wrong = sum(abs(r["error"]) for r in rows)
        naive = sum(abs(r["naive_error"]) for r in rows)
        out.append(f"| {seq} | all | both | {total} | | {wrong} off | | {naive} off |")
    return "\n".join(out)
