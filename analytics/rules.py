"""The schema of a stream's analytics: lines, zones, camera-health and engine settings.

These dataclasses are the one definition: ``pipeline.config.StreamConfig`` holds ``lines``,
``zones`` and ``health`` built from them (config file, REST body and the replay ``--analytics``
file alike), and the config loader enforces the bounds in their field metadata (``range``,
``choices``, ``pattern``, ``points``: how many ``[x, y]`` pairs in 0..1). Coordinates are
normalized to the frame: 0..1, x right, y down. ``classes`` empty means every class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from analytics.geometry import ANCHORS, polygon_area

RULE_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # also safe in MQTT topics and URLs
MAX_POLYGON_POINTS = 64


def _distinct(points: tuple[tuple[float, float], ...]) -> int:
    return len(np.unique(np.round(np.asarray(points, np.float64), 9), axis=0)) if points else 0


@dataclass(frozen=True)
class LineRule:
    """A directed counting line from ``points[0]`` (p1) to ``points[1]`` (p2).

    A crossing is the path between a track's anchors in consecutive observations meeting the
    segment; ``in`` goes from side -1 to +1, ``out`` from +1 to -1 (``analytics.geometry``).
    It counts once the track has been seen ``min_frames`` times on the new side and its anchor
    is ``min_distance`` box heights past the line (or when the track ends on the new side), at
    most once per track and direction per ``cooldown_s`` of stream time.
    """

    id: str = field(default="", metadata={"pattern": RULE_ID, "required": True})
    points: tuple[tuple[float, float], ...] = field(
        default=(), metadata={"points": (2, 2), "required": True}
    )
    classes: tuple[str, ...] = ()
    anchor: str = field(default="bottom_center", metadata={"choices": ANCHORS})
    min_frames: int = field(default=2, metadata={"range": (1, 1000)})
    min_distance: float = field(default=0.1, metadata={"range": (0.0, 10.0)})
    cooldown_s: float = field(default=2.0, metadata={"range": (0.0, 86400.0)})

    def problem(self) -> str | None:
        if _distinct(self.points) < 2:
            return "points: a line needs 2 distinct points"
        return None


@dataclass(frozen=True)
class ZoneRule:
    """A polygon zone. A track is *entered* after ``inertia`` consecutive observations inside
    (and *exits* after as many outside); one first seen inside is *spawned*, not entered.
    Dwell runs in stream time from the first observation inside to the first outside (or the
    last one inside when the track ends); ``loiter_s`` > 0 reports a track that stays longer."""

    id: str = field(default="", metadata={"pattern": RULE_ID, "required": True})
    polygon: tuple[tuple[float, float], ...] = field(
        default=(), metadata={"points": (3, MAX_POLYGON_POINTS), "required": True}
    )
    classes: tuple[str, ...] = ()
    anchor: str = field(default="bottom_center", metadata={"choices": ANCHORS})
    inertia: int = field(default=3, metadata={"range": (1, 1000)})
    loiter_s: float = field(default=0.0, metadata={"range": (0.0, 86400.0)})

    def problem(self) -> str | None:
        if _distinct(self.polygon) < 3:
            return "polygon: a zone needs at least 3 distinct points"
        if polygon_area(np.asarray(self.polygon, np.float64)) < 1e-9:
            return "polygon: the points are on one line (the zone has no area)"
        return None


def duplicate_rule_id(lines: Sequence[LineRule], zones: Sequence[ZoneRule]) -> str | None:
    """A message naming the first rule id used twice (lines and zones share ids), or None."""
    ids = [r.id for r in lines] + [r.id for r in zones]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    return None if dup is None else f"rule id {dup!r} is used twice (lines and zones share ids)"


@dataclass(frozen=True)
class HealthParams:
    """Camera-health checks on a small grey thumbnail of every analysed frame (stream time).

    black: mean grey below ``black_level``; uniform: grey standard deviation below
    ``uniform_std`` (a covered lens, a test card of one colour); each reported once it lasted
    ``min_duration_s``. frozen: identical thumbnails for ``frozen_s``. scene_change: more than
    ``scene_change`` of the thumbnail differs from the slowly updated background (camera moved
    or covered). drift (live only): stream time and wall time apart by more than ``max_drift_s``.
    """

    enabled: bool = True
    black_level: float = field(default=16.0, metadata={"range": (0.0, 255.0)})
    uniform_std: float = field(default=3.0, metadata={"range": (0.0, 128.0)})
    min_duration_s: float = field(default=2.0, metadata={"range": (0.0, 3600.0)})
    frozen_s: float = field(default=10.0, metadata={"range": (0.1, 86400.0)})
    scene_change: float = field(default=0.6, metadata={"range": (0.05, 1.0)})
    background_s: float = field(default=10.0, metadata={"range": (0.1, 3600.0)})
    max_drift_s: float = field(default=10.0, metadata={"range": (0.0, 86400.0)})


@dataclass(frozen=True)
class AnalyticsParams:
    """Settings of the analytics engine, the same for every stream (``analytics:`` in the config).

    track_timeout_frames: analysed frames without a report after which a track has ended (its
    dwell clocks stop, pending crossings settle, its state is dropped); keep it at least the
    tracker's ``max_age``. max_tracks: bound of the per-stream track table (the least recently
    seen are ended first).
    """

    track_timeout_frames: int = field(default=30, metadata={"range": (1, 100000)})
    max_tracks: int = field(default=4096, metadata={"range": (16, 1000000)})
