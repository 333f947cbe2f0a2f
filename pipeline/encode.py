"""Encoders: the v1 wire message (DESIGN.md) and MOTChallenge rows, one format call per frame.

Wire message (JSON, one per frame)::

    {"v":1,"stream":"cam1","seq":1234,"frame":1234,"pts":41.13,"ts":1763798400.123,
     "predicted":false,"tracks":[[id,cls,conf,x1,y1,x2,y2],...]}

``frame`` is the 0-based source frame index, ``seq`` the per-stream message counter, ``pts``
seconds from the stream start, ``ts`` the frame's arrival (unix seconds); boxes are source
pixels with one decimal, confidence three. ``predicted`` is true when the detector skipped the
frame (``detect_every``, motion gating): the boxes are the tracker's predictions.
"""

from __future__ import annotations

import json

import numpy as np

from pipeline.types import Tracks

WIRE_VERSION = 1
_TRACK_FMT = "[%d,%d,%.3f,%.1f,%.1f,%.1f,%.1f]"
_MOT_FMT = "%d,%d,%.2f,%.2f,%.2f,%.2f,%.4f,-1,-1,-1\n"


def _columns(tracks: Tracks) -> np.ndarray:
    return np.column_stack(
        (
            tracks.track_id.astype(np.float64),
            tracks.class_id.astype(np.float64),
            tracks.confidence.astype(np.float64),
            tracks.xyxy.astype(np.float64),
        )
    )


def encode_message(tracks: Tracks, stream: str, seq: int, ts: float) -> bytes:
    """The v1 message for one frame, UTF-8 JSON without a trailing newline."""
    n = len(tracks)
    body = ("[" + ",".join([_TRACK_FMT] * n) + "]") % tuple(_columns(tracks).ravel().tolist())
    head = json.dumps(
        {
            "v": WIRE_VERSION,
            "stream": stream,
            "seq": seq,
            "frame": tracks.frame_index,
            "pts": round(tracks.pts, 3),
            "ts": round(ts, 3),
            "predicted": tracks.predicted,
        },
        separators=(",", ":"),
    )
    return (head[:-1] + ',"tracks":' + body + "}").encode()


def mot_rows(tracks: Tracks) -> str:
    """MOTChallenge rows ``frame,id,x,y,w,h,conf,-1,-1,-1`` (1-based frame, source pixels)."""
    n = len(tracks)
    if n == 0:
        return ""
    xyxy = tracks.xyxy.astype(np.float64)
    cols = np.column_stack(
        (
            np.full(n, tracks.frame_index + 1, np.float64),
            tracks.track_id.astype(np.float64),
            xyxy[:, :2],
            xyxy[:, 2:] - xyxy[:, :2],
            tracks.confidence.astype(np.float64),
        )
    )
    return (_MOT_FMT * n) % tuple(cols.ravel().tolist())
