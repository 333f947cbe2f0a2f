"""Types at the stage boundaries. A leaf module: it imports only numpy.

One box format everywhere: ``xyxy`` float32 in *source-pixel* coordinates (x right, y down,
origin at the top-left corner of the decoded frame), unless a docstring says otherwise.
All containers are struct-of-arrays so every stage works on whole arrays, never on box objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class VigilError(Exception):
    """A user-facing error: its message is one line that names the problem.

    The CLI prints ``vigil: <message>`` and exits non-zero, never a traceback.
    """


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame.

    image: ``(H, W, 3) uint8`` BGR, C-contiguous.
    index: 0-based position in the source's frame order.
    pts: presentation time in seconds from the start of the source (``index / fps`` when the
        container gives none).
    arrival: wall-clock ``time.time()`` when the decoder handed the frame over; messages carry
        it as ``ts`` and latency is measured from it to the moment a message leaves.
    """

    stream_id: str
    index: int
    pts: float
    image: np.ndarray
    arrival: float = 0.0

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass(frozen=True, slots=True)
class Detections:
    """Detections of one frame.

    xyxy: ``(N, 4) float32`` source pixels; confidence: ``(N,) float32`` in [0, 1];
    class_id: ``(N,) int32`` model class index.
    """

    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray

    def __post_init__(self) -> None:
        n = self.xyxy.shape[0]
        if (
            self.xyxy.shape != (n, 4)
            or self.confidence.shape != (n,)
            or self.class_id.shape != (n,)
        ):
            raise ValueError(
                f"Detections shapes disagree: xyxy {self.xyxy.shape}, "
                f"confidence {self.confidence.shape}, class_id {self.class_id.shape}"
            )

    @staticmethod
    def empty() -> Detections:
        return Detections(
            np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int32)
        )

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])


@dataclass(frozen=True, slots=True)
class Tracks:
    """Tracks reported for one frame of one stream.

    xyxy: ``(M, 4) float32`` source pixels (the matched detection's box when ``det_index >= 0``,
    otherwise the tracker's prediction); track_id: ``(M,) int64``; class_id: ``(M,) int32``;
    confidence: ``(M,) float32`` (0 when the track had no detection this frame);
    det_index: ``(M,) int32`` row of the frame's ``Detections`` the track matched, or -1;
    confirmed: ``(M,) bool``, False for a track the tracker reports before confirming it
    (analytics count only confirmed tracks); every track is confirmed when not given.
    predicted: True when the detector did not run on this frame (``detect_every`` or motion
    gating): every box is the tracker's motion-model prediction (``det_index`` -1, confidence
    0), and the v1 message says ``"predicted": true``.
    """

    xyxy: np.ndarray
    track_id: np.ndarray
    class_id: np.ndarray
    confidence: np.ndarray
    det_index: np.ndarray
    stream_id: str = ""
    frame_index: int = 0
    pts: float = 0.0
    confirmed: np.ndarray = field(default_factory=lambda: np.ones(0, bool))
    predicted: bool = False

    def __post_init__(self) -> None:
        n = self.xyxy.shape[0]
        if self.confirmed.shape == (0,) and n:  # not given: every track confirmed
            object.__setattr__(self, "confirmed", np.ones(n, bool))
        elif self.confirmed.shape != (n,):
            raise ValueError(f"Tracks.confirmed has shape {self.confirmed.shape}, expected ({n},)")

    @staticmethod
    def empty(stream_id: str = "", frame_index: int = 0, pts: float = 0.0) -> Tracks:
        return Tracks(
            np.zeros((0, 4), np.float32),
            np.zeros((0,), np.int64),
            np.zeros((0,), np.int32),
            np.zeros((0,), np.float32),
            np.zeros((0,), np.int32),
            stream_id,
            frame_index,
            pts,
        )

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])
