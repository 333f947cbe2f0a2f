"""DeepSORT through ``deep-sort-realtime``: the reference the vectorized ``deepsort`` is held to.

Registered as ``deepsort-reference``; it reads the same ``tracker.deepsort`` knobs except the
weak-detection stage, which the library does not have (detections below ``high_confidence`` are
dropped), and it is not per class. The library
gets ``embedder=None``: Vigil computes embeddings for all detections of a batch of
frames in one call (``models.reid``) and hands each frame its rows. Appearance memory per track
is capped by ``nn_budget``; deleted tracks leave the library's state, so memory is bounded.

Reported tracks: confirmed tracks matched to a detection in this frame (``time_since_update ==
0``), with the detection's box. Coasting tracks (kept alive by the Kalman filter alone) stay
internal: reporting them adds false positives (BENCHMARKS.md).
"""

from __future__ import annotations

import numpy as np
from deep_sort_realtime.deep_sort import nn_matching
from deep_sort_realtime.deep_sort.detection import Detection
from deep_sort_realtime.deep_sort.tracker import Tracker as _LibTracker

from pipeline.types import Detections, Tracks
from trackers.deepsort import DeepSortParams
from trackers.matching import valid_detections


class _LibTrackerWithInitGate(_LibTracker):
    """The library's tracker, except that only confident detections may start a track."""

    init_confidence = 0.0

    def _initiate_track(self, detection: Detection) -> None:
        if detection.confidence >= self.init_confidence:
            super()._initiate_track(detection)


class ReferenceDeepSort:
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
        p = self.params
        # the library has no weak-detection stage: detections below high_confidence are dropped
        keep = valid_detections(detections, max(p.min_confidence, p.high_confidence))
        if embeddings is None or embeddings.shape[0] != len(detections):
            # DeepSORT's cascade needs a real appearance per detection: a constant one would make
            # every assignment inside the motion gate a tie.
            raise ValueError("DeepSORT needs one embedding row per detection")
        ltwh = np.concatenate((xyxy[keep, :2], xyxy[keep, 2:] - xyxy[keep, :2]), axis=1).tolist()
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
