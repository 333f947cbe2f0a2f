"""The track table: every track of one stream as arrays (struct of arrays), in reusable slots.

A slot holds one track; ``alive`` marks the used ones. Slots of deleted tracks are reused, so
the arrays only grow to the largest number of tracks alive at once (doubling when full): state
stays bounded however long a stream runs. Track ids come from a counter that only goes up and
survives :meth:`TrackTable.clear`, so an id is never reused in a stream for the life of the
process. The creation order the reference implementation iterates in is the id order.
"""

from __future__ import annotations

import numpy as np

from pipeline.types import Detections, Tracks
from trackers import kalman

TENTATIVE, CONFIRMED, LOST = 0, 1, 2  # LOST: confirmed, kept alive without a detection


class TrackTable:
    """Arrays indexed by slot; see the module docstring.

    mean ``(C, 8) float64`` / cov ``(C, 8, 8) float64``: the Kalman state (xyah + velocities,
    source pixels); det_index ``(C,) int32``: the detection row matched in the current frame, or -1.
    """

    def __init__(self, capacity: int = 32) -> None:
        self.next_id = 1
        self._allocate(max(int(capacity), 1))

    def _allocate(self, capacity: int) -> None:
        self.alive = np.zeros(capacity, bool)
        self.track_id = np.zeros(capacity, np.int64)
        self.class_id = np.zeros(capacity, np.int32)
        self.state = np.zeros(capacity, np.int8)
        self.hits = np.zeros(capacity, np.int32)
        self.age = np.zeros(capacity, np.int32)
        self.time_since_update = np.zeros(capacity, np.int32)
        self.det_index = np.full(capacity, -1, np.int32)
        self.confidence = np.zeros(capacity, np.float32)
        self.mean = np.zeros((capacity, 8))
        self.cov = np.zeros((capacity, 8, 8))

    _ARRAYS = (
        "alive",
        "track_id",
        "class_id",
        "state",
        "hits",
        "age",
        "time_since_update",
        "det_index",
        "confidence",
        "mean",
        "cov",
    )

    @property
    def capacity(self) -> int:
        return int(self.alive.shape[0])

    def __len__(self) -> int:
        return int(self.alive.sum())

    def clear(self) -> None:
        """Forget every track; ids keep counting up."""
        self.alive[:] = False

    def active(self) -> np.ndarray:
        """Slots of the live tracks in creation order: ``(K,) int64``."""
        slots = np.flatnonzero(self.alive)
        return slots[np.argsort(self.track_id[slots], kind="stable")]

    def _grow(self, needed: int) -> None:
        capacity = self.capacity
        while capacity < needed:
            capacity *= 2
        for name in self._ARRAYS:
            old = getattr(self, name)
            new = np.zeros((capacity, *old.shape[1:]), old.dtype)
            new[: old.shape[0]] = old
            setattr(self, name, new)
        self.det_index[self.alive.shape[0] :] = -1

    def add(
        self,
        xyxy: np.ndarray,
        class_id: np.ndarray,
        confidence: np.ndarray,
        det_index: np.ndarray,
        state: int = TENTATIVE,
    ) -> np.ndarray:
        """Start one track per row (boxes ``(K, 4) float32`` xyxy source pixels), numbered in
        row order. Returns their slots ``(K,) int64``."""
        k = xyxy.shape[0]
        free = np.flatnonzero(~self.alive)
        if free.size < k:
            self._grow(int(self.alive.sum()) + k)
            free = np.flatnonzero(~self.alive)
        slots = free[:k]
        mean, cov = kalman.initiate(kalman.xyxy_to_xyah(xyxy))
        self.alive[slots] = True
        self.track_id[slots] = np.arange(self.next_id, self.next_id + k)
        self.next_id += k
        self.class_id[slots] = class_id
        self.state[slots] = state
        self.hits[slots] = 1
        self.age[slots] = 1
        self.time_since_update[slots] = 0
        self.det_index[slots] = det_index
        self.confidence[slots] = confidence
        self.mean[slots] = mean
        self.cov[slots] = cov
        return slots

    def predict(
        self,
        slots: np.ndarray,
        freeze_height: np.ndarray | None = None,
        count_miss: bool = True,
    ) -> None:
        """One Kalman step for ``slots``: age goes up by one, this frame's detection is
        forgotten, and (``count_miss``) so do frames-since-update; a frame the detector skipped
        passes ``count_miss=False``. ``freeze_height`` (bool per slot) zeroes the height
        velocity first (ByteTrack does this for lost tracks)."""
        if slots.size == 0:
            return
        mean = self.mean[slots]
        if freeze_height is not None:
            mean[freeze_height, 7] = 0.0
        self.mean[slots], self.cov[slots] = kalman.predict(mean, self.cov[slots])
        self.age[slots] += 1
        if count_miss:
            self.time_since_update[slots] += 1
        self.det_index[slots] = -1
        self.confidence[slots] = 0.0

    def correct(
        self,
        slots: np.ndarray,
        xyxy: np.ndarray,
        confidence: np.ndarray,
        det_index: np.ndarray,
        xyah: np.ndarray | None = None,
    ) -> None:
        """Kalman update of ``slots`` with their matched detections (one row each)."""
        if slots.size == 0:
            return
        z = kalman.xyxy_to_xyah(xyxy) if xyah is None else xyah
        self.mean[slots], self.cov[slots] = kalman.update(self.mean[slots], self.cov[slots], z)
        self.hits[slots] += 1
        self.time_since_update[slots] = 0
        self.det_index[slots] = det_index
        self.confidence[slots] = confidence

    def without(self, slots: np.ndarray, drop: np.ndarray) -> np.ndarray:
        """``slots`` minus ``drop``, in the order of ``slots`` (one mask, no sort)."""
        mask = np.zeros(self.capacity, bool)
        mask[drop] = True
        return slots[~mask[slots]]

    def remove(self, slots: np.ndarray) -> None:
        self.alive[slots] = False
        self.det_index[slots] = -1

    def predicted_xyxy(self, slots: np.ndarray) -> np.ndarray:
        """The Kalman boxes of ``slots``: ``(K, 4) float64`` xyxy source pixels."""
        return kalman.xyah_to_xyxy(self.mean[slots])


def matched_tracks(
    tb: TrackTable, slots: np.ndarray, detections: Detections, frame_index: int, pts: float
) -> Tracks:
    """``slots`` (all matched in this frame) reported with their detections' boxes, classes
    and scores."""
    det = tb.det_index[slots]
    return Tracks(
        xyxy=detections.xyxy[det].astype(np.float32, copy=False),
        track_id=tb.track_id[slots],
        class_id=detections.class_id[det].astype(np.int32, copy=False),
        confidence=detections.confidence[det].astype(np.float32, copy=False),
        det_index=det.astype(np.int32),
        frame_index=frame_index,
        pts=pts,
        confirmed=tb.state[slots] != TENTATIVE,
    )


def predicted_tracks(tb: TrackTable, slots: np.ndarray, frame_index: int, pts: float) -> Tracks:
    """``slots`` at their Kalman boxes, matched to no detection of this frame (``det_index``
    -1, confidence 0)."""
    k = slots.size
    return Tracks(
        xyxy=tb.predicted_xyxy(slots).astype(np.float32),
        track_id=tb.track_id[slots],
        class_id=tb.class_id[slots],
        confidence=np.zeros(k, np.float32),
        det_index=np.full(k, -1, np.int32),
        frame_index=frame_index,
        pts=pts,
        confirmed=tb.state[slots] != TENTATIVE,
        predicted=True,
    )
