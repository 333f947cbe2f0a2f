"""DeepSORT through ``deep-sort-realtime``, with appearance embeddings computed outside.

The library gets ``embedder=None``: Vigil computes embeddings for all detections of a batch of
frames in one call (``models.reid``) and hands each frame its rows. Appearance memory per track
is capped by ``nn_budget``; deleted tracks leave the library's state, so memory is bounded.

Reported tracks: confirmed tracks matched to a detection in this frame (``time_since_update ==
0``), with the detection's box. Coasting tracks (kept alive by the Kalman filter alone) stay
internal: reporting them adds false positives (BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from deep_sort_realtime.deep_sort import nn_matching
from deep_sort_realtime.deep_sort.detection import Detection
from deep_sort_realtime.deep_sort.tracker import Tracker as _LibTracker

from pipeline.types import Detections, Tracks


class _LibTrackerWithInitGate(_LibTracker):
    """The library's tracker, except that only confident detections may start a track."""

    init_confidence = 0.0

    def _initiate_track(self, detection: Detection) -> None:
        if detection.confidence >= self.init_confidence:
            super()._initiate_track(detection)


@dataclass(frozen=True)
class DeepSortParams:
    """DeepSORT's knobs (``tracker.deepsort`` in the config; bounds in ``metadata``).

    max_age: frames a track survives unmatched; n_init: consecutive hits to confirm;
    max_iou_distance: IoU gate (1 - IoU) of the IoU stage; max_cosine_distance: appearance
    gate; nn_budget: appearance samples kept per track; min_confidence: detections below it
    are ignored by the tracker; init_confidence: detections below it may continue a track but
    never start one; report_tentative: also report matched, not yet confirmed tracks.
    """

    max_age: int = field(default=30, metadata={"range": (1, 10000)})
    n_init: int = field(default=2, metadata={"range": (1, 100)})
    max_iou_distance: float = field(default=0.7, metadata={"range": (0.0, 1.0)})
    max_cosine_distance: float = field(default=0.3, metadata={"range": (0.0, 2.0)})
    nn_budget: int = field(default=50, metadata={"range": (1, 10000)})
    min_confidence: float = field(default=0.0, metadata={"range": (0.0, 1.0)})
    init_confidence: float = field(default=0.5, metadata={"range": (0.0, 1.0)})
    report_tentative: bool = True


class DeepSortTracker:
    """Adapter from Vigil's arrays to deep-sort-realtime's per-detection objects."""

    uses_appearance = True

    def __init__(self, params: DeepSortParams | None = None) -> None:
        self.params = params or DeepSortParams()
        self.reset()

    def reset(self) -> None:
        p = self.params
        metric = nn_matching.NearestNeighborDistanceMetric(
            "cosine", p.max_cosine_distance, p.nn_budget
        )
        self._tracker = _LibTrackerWithInitGate(
            metric, max_iou_distance=p.max_iou_distance, max_age=p.max_age, n_init=p.n_init
        )
        self._tracker.init_confidence = p.init_confidence

    @property
    def live_tracks(self) -> int:
        return len(self._tracker.tracks)

    def update(
        self,
        detections: Detections,
        embeddings: np.ndarray | None,
        frame_index: int = 0,
        pts: float = 0.0,
    ) -> Tracks:
        xyxy = detections.xyxy
        wh = xyxy[:, 2:] - xyxy[:, :2]
        keep = np.flatnonzero(
            (wh[:, 0] > 0) & (wh[:, 1] > 0) & (detections.confidence >= self.params.min_confidence)
        )
        if embeddings is None or embeddings.shape[0] != len(detections):
            # DeepSORT's cascade needs a real appearance per detection: a constant one would make
            # every assignment inside the motion gate a tie.
            raise ValueError("DeepSortTracker.update needs one embedding row per detection")
        ltwh = np.concatenate((xyxy[keep, :2], wh[keep]), axis=1).tolist()
        conf = detections.confidence[keep].tolist()
        cls = detections.class_id[keep].tolist()
        feats = embeddings[keep]
        dets = [
            Detection(b, c, f, class_name=k, others=int(i))
            for b, c, f, k, i in zip(ltwh, conf, feats, cls, keep.tolist(), strict=True)
        ]
        self._tracker.predict()
        self._tracker.update(dets)
        reported = [
            t
            for t in self._tracker.tracks
            if t.time_since_update == 0 and (t.is_confirmed() or self.params.report_tentative)
        ]
        if not reported:
            return Tracks.empty(frame_index=frame_index, pts=pts)
        det_index = np.fromiter((t.others for t in reported), np.int32, len(reported))
        track_id = np.fromiter((int(t.track_id) for t in reported), np.int64, len(reported))
        return Tracks(
            xyxy=xyxy[det_index].astype(np.float32, copy=False),
            track_id=track_id,
            class_id=detections.class_id[det_index],
            confidence=detections.confidence[det_index],
            det_index=det_index,
            frame_index=frame_index,
            pts=pts,
            confirmed=np.fromiter((t.is_confirmed() for t in reported), bool, len(reported)),
        )
