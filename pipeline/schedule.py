"""Which frames of a stream go through the detector: skip-frame inference and motion gating.

One :class:`DetectSchedule` per stream, fed its inferred frames in order, live and in replay
alike (so replay measures exactly what a live stream does)::

    periodic    motion gating on, and no detection for motion.full_detect_s  -> detect
    idle        motion gating on, nothing moves and the last detection found
                nothing (no live track)                                      -> skip (no tracks)
    motion      motion gating on, something moves and the last detection found
                nothing                                                      -> detect now
    cadence     detect_every = k: every k-th frame since the last detection  -> detect,
                the k - 1 between                                            -> skip (predicted)

On a skipped frame the tracker predicts (``predict_only``: Kalman boxes, no embeddings, no track
marked missed) and the message says ``"predicted": true``; the next detected frame corrects.
"The last detection found nothing" stands for "no live track": it is known to whoever ran the
detector without asking the tracker (replay decides in its inference thread, ahead of tracking),
so a replay is deterministic.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.config import MotionConfig
from pipeline.motion import MotionDetector

REASONS = ("cadence", "motion", "periodic", "first")  # why a frame was detected
SKIPS = ("predicted", "idle")  # why it was not


class DetectSchedule:
    """Counters: ``detected[reason]`` and ``skipped[why]`` frames so far."""

    def __init__(self, detect_every: int = 1, motion: MotionConfig | None = None) -> None:
        if detect_every < 1:
            raise ValueError("detect_every must be >= 1")
        self.every = detect_every
        self.motion = MotionDetector(motion) if motion is not None and motion.enabled else None
        self.full_detect_s = motion.full_detect_s if motion is not None else math.inf
        self.detected = dict.fromkeys(REASONS, 0)
        self.skipped = dict.fromkeys(SKIPS, 0)
        self.last_empty = False  # the last detection found nothing
        self._since = 0  # frames skipped since the last detection
        self._last_detect_pts: float | None = None

    @property
    def always(self) -> bool:
        """Every frame is detected (``detect_every`` 1, no gating): nothing to decide."""
        return self.every == 1 and self.motion is None

    def moving(self, thumb: np.ndarray | None, pts: float) -> bool:
        """Update the motion background with this frame's thumbnail; True without gating."""
        if self.motion is None or thumb is None:
            return True
        return self.motion.update(thumb, pts)

    @property
    def gated(self) -> bool:
        """Motion gating is on: :meth:`decide` depends on :attr:`last_empty`, so a caller that
        batches frames must finish the detection in flight before deciding the next frame."""
        return self.motion is not None

    def needs_last(self, moving: bool) -> bool:
        """Whether :meth:`decide` for a frame with this ``moving`` reads :attr:`last_empty`
        (a caller batching frames must then finish the detection in flight first): only with
        motion gating, and only for a still frame or with ``detect_every`` above 1."""
        return self.motion is not None and (not moving or self.every > 1)

    def decide(self, pts: float, moving: bool) -> bool:
        """Detect this frame? Call once per frame, in order, after :meth:`moving`; after a
        detection report its result with :meth:`found`."""
        last = self._last_detect_pts
        reason = ""
        if last is None or pts < last:
            reason = "first"  # the first frame, or the stream restarted
        elif self.motion is not None and pts - last >= self.full_detect_s:
            reason = "periodic"
        elif self.motion is not None and self.last_empty:
            if not moving:
                self.skipped["idle"] += 1
                return False
            reason = "motion"
        elif self._since + 1 >= self.every:
            reason = "cadence"
        if not reason:
            self._since += 1
            self.skipped["predicted"] += 1
            return False
        self.detected[reason] += 1
        self._since = 0
        self._last_detect_pts = pts
        return True

    def found(self, detections: int) -> None:
        """The detection decided last found ``detections`` boxes."""
        self.last_empty = detections == 0

    def counts(self) -> dict[str, int]:
        """``{"detected": n, "predicted": n, "idle": n}`` so far."""
        return {"detected": sum(self.detected.values()), **self.skipped}
