"""Motion detection on the camera-health thumbnail: is anything moving in this frame?

The small grey image is :func:`analytics.health.thumbnail` (a strided subsample, about 64x36
pixels whatever the resolution), computed once per frame and shared with the camera-health
checks. Per frame, all on that ``(h, w) float32`` array, vectorized:

1. ``changed = |thumb - background| > threshold`` (grey levels: the sensitivity);
2. ``mask = dilate(changed)`` with a 3x3 square, so the fragments of one object join;
3. connected components of ``mask`` (8-connected); a component's area is the number of
   *changed* pixels in it (the dilation joins, it does not add area), as a fraction of the
   thumbnail; the frame is moving when the largest reaches ``min_area``;
4. ``background += alpha * (thumb - background)``, ``alpha = 1 - exp(-dt / background_s)`` in
   stream time, so something that stops moving melts into the background after a few
   ``background_s``.

A thumbnail pixel covers about 10x13 source pixels of a 640x480 frame, so single-pixel noise and
compression shimmer stay under ``min_area`` while a person a few dozen pixels tall does not.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from pipeline.config import MotionConfig

_EIGHT = np.ones((3, 3), bool)


def dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation of a ``(h, w) bool`` mask (shifted ORs; same shape)."""
    out = mask.copy()
    out[1:, :] |= mask[:-1, :]
    out[:-1, :] |= mask[1:, :]
    rows = out.copy()
    out[:, 1:] |= rows[:, :-1]
    out[:, :-1] |= rows[:, 1:]
    return out


class MotionDetector:
    """One stream's running background; ``update`` says whether a frame moves.

    ``mask``: the last frame's dilated motion mask, ``(h, w) bool`` in thumbnail pixels (the
    dashboard may draw it scaled to the frame); ``area``: the largest moving component's share
    of the frame, 0..1.
    """

    def __init__(self, params: MotionConfig) -> None:
        self.params = params
        self.mask: np.ndarray | None = None
        self.area = 0.0
        self._background: np.ndarray | None = None
        self._last_pts = -math.inf

    def reset(self) -> None:
        self._background, self.mask, self.area = None, None, 0.0
        self._last_pts = -math.inf

    def update(self, thumb: np.ndarray, pts: float) -> bool:
        """``thumb``: ``(h, w) float32`` grey thumbnail of the frame at stream time ``pts``
        (seconds). True when something moves. The first frame, a new resolution or a stream
        that restarted (``pts`` going back) starts a new background and counts as moving."""
        bg = self._background
        if bg is None or bg.shape != thumb.shape or pts < self._last_pts:
            self._background = thumb.astype(np.float32, copy=True)
            self._last_pts = pts
            self.mask = np.ones(thumb.shape, bool)
            self.area = 1.0
            return True
        p = self.params
        changed = np.abs(thumb - bg) > p.threshold
        self.area = 0.0
        if changed.any():
            self.mask = dilate(changed)
            labels, n = ndimage.label(self.mask, structure=_EIGHT)
            sizes = np.bincount(labels[changed], minlength=n + 1)
            self.area = float(sizes.max()) / changed.size
        else:
            self.mask = changed
        dt = max(0.0, pts - self._last_pts)
        bg += (1.0 - math.exp(-dt / p.background_s)) * (thumb - bg)
        self._last_pts = pts
        return self.area >= p.min_area and self.area > 0.0
