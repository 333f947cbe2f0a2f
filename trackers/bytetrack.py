"""ByteTrack over arrays: a motion-only tracker that also uses low-score detections.

The association of Zhang et al. (ByteTrack, ECCV 2022), frame by frame, on the Kalman filter
DeepSORT uses (:mod:`trackers.kalman`, shared track table :mod:`trackers.state`):

1. one batched predict of every track (the height velocity of lost tracks frozen);
2. confirmed and lost tracks vs detections scoring at least ``high_threshold``: ``1 - IoU``
   of the Kalman boxes, weighted by the detection score (``fuse_score``), gated at
   ``match_threshold``; a matched lost track is found again under its id;
3. confirmed tracks still unmatched vs the low-score detections (``low_threshold`` up to
   ``high_threshold``), plain IoU, gated at ``low_match_threshold``; confirmed tracks still
   unmatched become lost;
4. tentative tracks (born in the previous frame) vs the high-score detections left, gated at
   ``unconfirmed_match_threshold``: matched ones are confirmed, the others die;
5. high-score detections left with at least ``init_threshold`` start tentative tracks (the
   first frame of a stream confirms them at once); lost tracks die after ``max_lost`` frames;
   a lost track that overlaps a tracked one almost exactly (IoU > 0.85) is a duplicate, and the
   younger of the two goes.

OC-SORT's observation-centric recovery (re-matching lost tracks by their last detection rather
than their prediction) was tried as a further stage and did not earn its place: on the dev
sequences it lowered HOTA and IDF1 on both (README, Tracking).

Reported: confirmed tracks matched in this frame, with the detection's box. Tracks only match
detections of their own class; ids are unique per stream for the life of the process.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.types import Detections, Tracks
from trackers.matching import INFEASIBLE, assign, iou_matrix, valid_detections
from trackers.state import (
    CONFIRMED,
    LOST,
    TENTATIVE,
    TrackTable,
    matched_tracks,
    predicted_tracks,
)

DUPLICATE_IOU = 0.85


@dataclass(frozen=True)
class ByteTrackParams:
    """ByteTrack's knobs (``tracker.bytetrack`` in the config; bounds in ``metadata``).

    high_threshold: detections at least this confident take part in the first association;
    low_threshold: the weakest detections used at all (second association); init_threshold:
    a detection needs this to start a track; match_threshold / low_match_threshold /
    unconfirmed_match_threshold: cost gates (1 - IoU, score-weighted with ``fuse_score``) of
    the first, second and tentative-track associations; max_lost: frames a lost track is kept
    for re-identification by motion.

    The thresholds are ByteTrack's rule on this detector's scale: ``high_threshold`` at the
    usual YOLOv5 confidence threshold (0.25), ``init_threshold`` 0.1 above it, ``low_threshold``
    0.1 (the paper's 0.6 / 0.7 suit a detector trained on the MOT17 crowd, whose scores run
    higher than a COCO YOLOv5n's).
    """

    high_threshold: float = field(default=0.25, metadata={"range": (0.0, 1.0), "tune": (0.2, 0.7)})
    low_threshold: float = field(default=0.1, metadata={"range": (0.0, 1.0)})
    init_threshold: float = field(default=0.35, metadata={"range": (0.0, 1.0), "tune": (0.2, 0.8)})
    match_threshold: float = field(default=0.8, metadata={"range": (0.0, 1.0), "tune": (0.5, 0.95)})
    low_match_threshold: float = field(
        default=0.5, metadata={"range": (0.0, 1.0), "tune": (0.3, 0.9)}
    )
    unconfirmed_match_threshold: float = field(
        default=0.7, metadata={"range": (0.0, 1.0), "tune": (0.3, 0.95)}
    )
    fuse_score: bool = field(default=True, metadata={"tune": (False, True)})
    max_lost: int = field(default=30, metadata={"range": (1, 10000), "tune": (5, 120)})


class ByteTracker:
    """ByteTrack over arrays (see the module docstring); one instance per stream."""

    uses_appearance = False

    def __init__(self, params: ByteTrackParams | None = None) -> None:
        self.params = params or ByteTrackParams()
        self.table = TrackTable()
        self.frames = 0

    def reset(self) -> None:
        self.table.clear()
        self.frames = 0

    @property
    def live_tracks(self) -> int:
        return len(self.table)

    def _iou_cost(
        self,
        slots: np.ndarray,
        dets: np.ndarray,
        detections: Detections,
        fuse: bool,
    ) -> np.ndarray:
        tb = self.table
        iou = iou_matrix(tb.predicted_xyxy(slots), detections.xyxy[dets])
        if fuse:
            iou = iou * detections.confidence[dets][None, :].astype(np.float64)
        cost = 1.0 - iou
        cost[tb.class_id[slots][:, None] != detections.class_id[dets][None, :]] = INFEASIBLE
        return cost

    def _match(
        self,
        slots: np.ndarray,
        dets: np.ndarray,
        detections: Detections,
        threshold: float,
        fuse: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Match and correct; returns matched slots, their detections, slots and detections
        left (both in their input order)."""
        if slots.size == 0 or dets.size == 0:
            return slots[:0], dets[:0], slots, dets
        cost = self._iou_cost(slots, dets, detections, fuse)
        m_slots, m_dets, left_dets = assign(cost, threshold, slots, dets)
        left_slots = self.table.without(slots, m_slots)
        left_dets = np.sort(left_dets)
        self.table.correct(m_slots, detections.xyxy[m_dets], detections.confidence[m_dets], m_dets)
        return m_slots, m_dets, left_slots, left_dets

    def update(
        self,
        detections: Detections,
        embeddings: np.ndarray | None = None,
        frame_index: int = 0,
        pts: float = 0.0,
    ) -> Tracks:
        """Track one frame (``embeddings`` is ignored: motion only)."""
        p, tb = self.params, self.table
        self.frames += 1
        order = tb.active()
        state = tb.state[order]
        tb.predict(order, freeze_height=state == LOST)
        pool, tentative = order[state != TENTATIVE], order[state == TENTATIVE]

        dets = valid_detections(detections, p.low_threshold)
        high_mask = detections.confidence[dets] >= p.high_threshold
        high, low = dets[high_mask], dets[~high_mask]

        matched1, _, pool_left, high = self._match(
            pool, high, detections, p.match_threshold, p.fuse_score
        )
        tb.state[matched1] = CONFIRMED  # found again if it was lost
        tracked = pool_left[tb.state[pool_left] == CONFIRMED]
        _, _, tracked_left, _ = self._match(tracked, low, detections, p.low_match_threshold)
        tb.state[tracked_left] = LOST
        matched3, _, unconfirmed_left, high = self._match(
            tentative, high, detections, p.unconfirmed_match_threshold, p.fuse_score
        )
        tb.state[matched3] = CONFIRMED
        tb.remove(unconfirmed_left)

        born = high[detections.confidence[high] >= p.init_threshold]
        if born.size:
            first = CONFIRMED if self.frames == 1 else TENTATIVE
            tb.add(
                detections.xyxy[born],
                detections.class_id[born],
                detections.confidence[born],
                born,
                first,
            )
        order = tb.active()
        expired = (tb.state[order] == LOST) & (tb.time_since_update[order] > p.max_lost)
        tb.remove(order[expired])
        self._remove_duplicates()
        return self._report(frame_index, pts, detections)

    def _remove_duplicates(self) -> None:
        """A lost track and a tracked one on the same spot: keep the one tracked longer."""
        tb = self.table
        order = tb.active()
        lost = order[tb.state[order] == LOST]
        tracked = order[tb.state[order] != LOST]
        if lost.size == 0 or tracked.size == 0:
            return
        iou = iou_matrix(tb.predicted_xyxy(tracked), tb.predicted_xyxy(lost))
        ti, li = np.nonzero(iou > DUPLICATE_IOU)
        if ti.size == 0:
            return
        tracked_older = tb.age[tracked[ti]] > tb.age[lost[li]]
        tb.remove(np.unique(np.concatenate((lost[li[tracked_older]], tracked[ti[~tracked_older]]))))

    def _report(self, frame_index: int, pts: float, detections: Detections) -> Tracks:
        tb = self.table
        order = tb.active()
        slots = order[(tb.det_index[order] >= 0) & (tb.state[order] == CONFIRMED)]
        return matched_tracks(tb, slots, detections, frame_index, pts)

    def predict_only(self, frame_index: int = 0, pts: float = 0.0) -> Tracks:
        """Advance every track one frame without detections (a frame the detector skipped);
        returns the confirmed tracks matched at the last detection frame at their predicted
        boxes. Nothing is marked missed."""
        tb = self.table
        order = tb.active()
        tb.predict(order, freeze_height=tb.state[order] == LOST, count_miss=False)
        shown = order[(tb.time_since_update[order] == 0) & (tb.state[order] == CONFIRMED)]
        return predicted_tracks(tb, shown, frame_index, pts)
