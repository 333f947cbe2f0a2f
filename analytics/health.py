"""Camera health from a small grey thumbnail of each analysed frame, in stream time.

Checks (``analytics.rules.HealthParams``): ``black`` (mean grey low), ``uniform`` (grey standard
deviation low: covered lens, one-colour card), ``frozen`` (thumbnail identical for
``frozen_s`` while frames keep arriving), ``scene_change`` (most of the thumbnail differs from a
slowly updated background: the camera moved or was covered; an instant, reported ``on`` once)
and, live only, ``drift`` (stream time and wall-clock time apart by more than ``max_drift_s``).
Each lasting condition is reported ``on`` when it starts (black and uniform after
``min_duration_s``) and ``off`` when it ends. The thumbnail is a strided subsample (about 64x36
pixels): microseconds per frame, whatever the resolution.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from analytics.events import CAMERA_HEALTH, Event
from analytics.rulebase import Moment
from analytics.rules import HealthParams

THUMB_W, THUMB_H = 64, 36
CHECKS = ("black", "uniform", "frozen", "scene_change", "drift")
_CHANGED_LEVEL = 32.0  # grey levels: a thumbnail pixel differs from the background beyond this


def thumbnail(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3) uint8`` BGR (or ``(H, W)`` grey) -> about ``(36, 64) float32`` grey."""
    h, w = image.shape[:2]
    sy, sx = max(1, h // THUMB_H), max(1, w // THUMB_W)
    small = image[sy // 2 :: sy, sx // 2 :: sx].astype(np.float32)
    if small.ndim == 3:
        small = small @ np.array([0.114, 0.587, 0.299], np.float32)
    return small


class CameraHealth:
    """The health checks of one stream; ``update`` returns the events of this frame."""

    def __init__(self, params: HealthParams, live: bool) -> None:
        self.params = params
        self.live = live
        self.active = dict.fromkeys(CHECKS, False)
        self.brightness = 0.0
        self.drift_s = 0.0
        self._since: dict[str, float | None] = dict.fromkeys(CHECKS, None)
        self._prev: np.ndarray | None = None
        self._background: np.ndarray | None = None
        self._last_pts = -math.inf
        self._clock: tuple[float, float] | None = None  # (pts, ts) the drift is measured from

    def update(self, at: Moment, image: np.ndarray, thumb: np.ndarray | None = None) -> list[Event]:
        """The events of this frame; ``thumb``: ``thumbnail(image)`` when already made (the
        live step makes it once for motion gating and health)."""
        p = self.params
        if not p.enabled:
            return []
        thumb = thumbnail(image) if thumb is None else thumb
        events: list[Event] = []
        mean, std = float(thumb.mean()), float(thumb.std())
        self.brightness = mean
        black = mean < p.black_level
        events += self._lasting(at, "black", black, p.min_duration_s, mean)
        uniform = std < p.uniform_std and not black
        events += self._lasting(at, "uniform", uniform, p.min_duration_s, std)

        prev = self._prev
        identical = prev is not None and prev.shape == thumb.shape and np.array_equal(prev, thumb)
        # the picture has been the same since the previous frame
        events += self._lasting(at, "frozen", identical, p.frozen_s, 0.0, self._last_pts)
        self._prev = thumb
        events += self._scene(at, thumb)
        if self.live:
            events += self._drift(at)
        self._last_pts = at.pts
        return events

    def report(self) -> dict[str, Any]:
        """The checks now, as ``GET /api/streams/{id}/health`` answers (and a worker publishes
        with its heartbeat): which are on, the mean grey level and the clock drift."""
        return {
            "enabled": True,
            "checks": {c: self.active[c] for c in CHECKS},
            "brightness": round(self.brightness, 2),
            "drift_s": round(self.drift_s, 3),
        }

    def _lasting(
        self,
        at: Moment,
        check: str,
        condition: bool,
        hold_s: float,
        value: float,
        began: float | None = None,
    ) -> list[Event]:
        """A condition that must hold ``hold_s`` (since ``began``, default now) to be on."""
        if not condition:
            self._since[check] = None
            if self.active[check]:
                self.active[check] = False
                return [self._event(at, check, "off", value)]
            return []
        since = self._since[check]
        if since is None or at.pts < since:  # a new condition, or the stream restarted
            since = self._since[check] = at.pts if began is None else min(began, at.pts)
        if not self.active[check] and at.pts - since >= hold_s:
            self.active[check] = True
            return [self._event(at, check, "on", value)]
        return []

    def _scene(self, at: Moment, thumb: np.ndarray) -> list[Event]:
        bg = self._background
        if bg is None or bg.shape != thumb.shape or at.pts < self._last_pts:
            self._background = thumb.copy()
            return []
        changed = float(np.mean(np.abs(thumb - bg) > _CHANGED_LEVEL))
        dt = max(0.0, at.pts - self._last_pts)
        alpha = 1.0 - math.exp(-dt / self.params.background_s)
        bg += alpha * (thumb - bg)
        if changed >= self.params.scene_change:
            self._background = thumb.copy()  # the new scene is the reference from now on
            return [self._event(at, "scene_change", "on", changed)]
        return []

    def _drift(self, at: Moment) -> list[Event]:
        limit = self.params.max_drift_s
        if limit <= 0 or at.ts <= 0:
            return []
        if self._clock is None or at.pts < self._last_pts:  # start, loop or reconnect
            self._clock = (at.pts, at.ts)
        pts0, ts0 = self._clock
        self.drift_s = (at.ts - ts0) - (at.pts - pts0)
        return self._lasting(at, "drift", abs(self.drift_s) > limit, 0.0, self.drift_s)

    def _event(self, at: Moment, check: str, state: str, value: float) -> Event:
        return Event(
            CAMERA_HEALTH, at.stream, at.frame, at.pts, at.ts, check=check, state=state,
            value=value,
        )  # fmt: skip
