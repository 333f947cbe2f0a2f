from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from pipeline.encode import encode_message, mot_rows
from pipeline.types import Tracks


def _tracks() -> Tracks:
    return Tracks(
        xyxy=np.array([[10.04, 20.0, 50.0, 80.26], [100.0, 0.0, 140.5, 90.0]], np.float32),
        track_id=np.array([7, 12], np.int64),
        class_id=np.array([0, 2], np.int32),
        confidence=np.array([0.91234, 0.5], np.float32),
        det_index=np.array([0, 1], np.int32),
        stream_id="cam1",
        frame_index=41,
        pts=1.64,
    )


def test_wire_message_v1_schema() -> None:
    msg = json.loads(encode_message(_tracks(), "cam1", 1234, 1763798400.1234))
    assert list(msg) == ["v", "stream", "seq", "frame", "pts", "ts", "predicted", "tracks"]
    assert msg["predicted"] is False
    assert msg["v"] == 1 and msg["stream"] == "cam1" and msg["seq"] == 1234
    assert msg["frame"] == 41 and msg["pts"] == 1.64 and msg["ts"] == 1763798400.123
    assert msg["tracks"] == [
        [7, 0, 0.912, 10.0, 20.0, 50.0, 80.3],
        [12, 2, 0.5, 100.0, 0.0, 140.5, 90.0],
    ]
    assert all(isinstance(v, int) for row in msg["tracks"] for v in row[:2])


def test_wire_message_empty_and_escaping() -> None:
    msg = json.loads(encode_message(Tracks.empty(frame_index=3), 'cam "x"', 0, 0.0))
    assert msg["tracks"] == [] and msg["stream"] == 'cam "x"' and msg["frame"] == 3


def test_wire_message_says_when_the_tracks_are_predictions() -> None:
    predicted = replace(_tracks(), predicted=True, confidence=np.zeros(2, np.float32))
    msg = json.loads(encode_message(predicted, "cam1", 5, 0.0))
    assert msg["predicted"] is True and len(msg["tracks"]) == 2


def test_mot_rows() -> None:
    rows = mot_rows(_tracks()).splitlines()
    assert rows[0] == "42,7,10.04,20.00,39.96,60.26,0.9123,-1,-1,-1"
    assert rows[1].startswith("42,12,100.00,0.00,40.50,90.00,0.5000")
    assert mot_rows(Tracks.empty()) == ""
