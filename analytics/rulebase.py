"""What lines and zones share: rule geometry in pixels, class filters and event stamping."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from analytics.events import Event
from analytics.geometry import ANCHORS, anchor_weights


@dataclass(frozen=True)
class Observation:
    """One frame's reports laid out on the track table's ``K`` rows (every array ``(K, ...)``):
    ``obs`` reported this frame; ``box`` this frame's ``xyxy`` (the last one where not
    reported); ``prev`` the previous observation's box; ``seen`` observed before this frame;
    ``cls`` class id; ``confirmed`` ever confirmed by the tracker (this frame included);
    ``first``/``last`` the analysis ticks of the track's first and latest observation;
    ``first_box`` its box at the first; ``nobs`` its observations so far (this one included)."""

    obs: np.ndarray
    box: np.ndarray
    prev: np.ndarray
    seen: np.ndarray
    cls: np.ndarray
    confirmed: np.ndarray
    first: np.ndarray
    last: np.ndarray
    first_box: np.ndarray
    nobs: np.ndarray


@dataclass(frozen=True)
class Moment:
    """The frame being analysed: stream, frame index, stream time (s), wall-clock arrival (s),
    and its size in pixels (width, height)."""

    stream: str
    frame: int
    pts: float
    ts: float
    width: int
    height: int


class RuleSet:
    """Rules of one kind with their per-track columns in a :class:`analytics.table.Table`.

    ``class_ids[i]`` is the set of model class ids rule ``i`` applies to (None: every class);
    ``class_names`` names the model's classes for events.
    """

    prefix = ""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.class_names = list(class_names)
        self.rules: list[Any] = []
        self.weights = anchor_weights(np.zeros(0, np.int64))
        self._class_ok = np.zeros((len(self.class_names) + 1, 0), bool)  # (class, rule)
        self._every_class = True

    def __len__(self) -> int:
        return len(self.rules)

    def _set_common(self, rules: Sequence[Any], class_ids: Sequence[frozenset[int] | None]) -> None:
        self.rules = list(rules)
        self.weights = anchor_weights(np.array([ANCHORS.index(r.anchor) for r in rules], np.int64))
        n = len(self.class_names)
        ok = np.zeros((n + 1, len(rules)), bool)  # the last row: a class id out of range
        for i, ids in enumerate(class_ids):
            if ids is None:
                ok[:, i] = True
            else:
                ok[[c for c in ids if 0 <= c < n], i] = True
        self._class_ok = ok
        self._every_class = bool(ok.all())

    def keep_index(self, rules: Sequence[Any]) -> np.ndarray:
        """For each new rule, the index of an identical current rule (its state is kept) or -1."""
        old = {r: i for i, r in enumerate(self.rules)}
        return np.array([old.get(r, -1) for r in rules], np.int64)

    def applies(self, cls: np.ndarray, obs: np.ndarray) -> np.ndarray:
        """``(K, R) bool``: track ``k`` was observed (``obs``) and rule ``r`` applies to its
        class ``cls[k]``."""
        if self._every_class:
            return np.repeat(obs[:, None], len(self.rules), axis=1)
        n = len(self.class_names)
        idx = np.where((cls >= 0) & (cls < n), cls, n)
        return self._class_ok[idx] & obs[:, None]

    def name(self, cls: int) -> str:
        return self.class_names[cls] if 0 <= cls < len(self.class_names) else f"class{cls}"

    def event(self, kind: str, at: Moment, **fields: Any) -> Event:
        return Event(kind, at.stream, at.frame, at.pts, at.ts, **fields)


def box_tuple(row: np.ndarray) -> tuple[float, float, float, float]:
    b = row.tolist()
    return (b[0], b[1], b[2], b[3])


def scale(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalized ``(..., 2)`` coordinates to source pixels."""
    return points * np.array([width, height], np.float64)
