"""The tracker contract: one tracker object per stream, fed one frame at a time, in order."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from pipeline.types import Detections, Tracks


class Tracker(Protocol):
    """Per-stream multi-object tracker.

    ``update`` takes the frame's detections (source pixels) and, when the tracker uses
    appearance, one embedding row per detection (``(N, D) float32``, L2-normalised; ``None``
    otherwise) and returns the tracks to report for this frame. ``reset`` forgets every track
    (a new scene, a reconnected camera). State stays bounded however long the stream runs.
    """

    uses_appearance: bool

    def update(
        self,
        detections: Detections,
        embeddings: np.ndarray | None,
        frame_index: int = 0,
        pts: float = 0.0,
    ) -> Tracks: ...

    def reset(self) -> None: ...


class Predicting(Protocol):
    """A tracker that can report a frame the detector skipped (``detect_every``, motion gating):
    ``predict_only`` advances every track one frame on its motion model alone (no track marked
    missed) and returns the tracks at their predicted boxes, ``Tracks.predicted`` True."""

    def predict_only(self, frame_index: int = 0, pts: float = 0.0) -> Tracks: ...


def can_predict(tracker: object) -> bool:
    """True when ``tracker`` implements :class:`Predicting` (the reference DeepSORT does not)."""
    return callable(getattr(tracker, "predict_only", None))
