"""Replay as a library: a failure midway leaves nothing under the final output names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.replay import Replay
from pipeline.sources import FFmpegSource
from pipeline.types import Detections, Tracks


class _BoomAt:
    uses_appearance = False

    def __init__(self, frame: int) -> None:
        self.frame = frame

    def update(
        self, detections: Detections, embeddings: np.ndarray | None, frame_index: int = 0,
        pts: float = 0.0,
    ) -> Tracks:  # fmt: skip
        if frame_index == self.frame:
            raise RuntimeError("tracker exploded")
        return Tracks.empty(frame_index=frame_index, pts=pts)

    def reset(self) -> None:
        pass


def test_a_replay_failing_midway_leaves_no_partial_outputs(
    synthetic_clip: Path, tmp_path: Path
) -> None:
    cfg = load_config(None, {"tracker.embedder": "histogram", "batch.max_batch": 4})
    out = tmp_path / "run"
    replay = Replay(FFmpegSource(str(synthetic_clip)), cfg, out)
    replay.tracker = _BoomAt(20)
    with pytest.raises(RuntimeError, match="tracker exploded"):
        replay.run()
    assert out.is_dir() and sorted(p.name for p in out.iterdir()) == []
    # and the same replay without the fault writes all three files
    Replay(FFmpegSource(str(synthetic_clip)), cfg, out).run()
    assert sorted(p.name for p in out.iterdir()) == [
        "messages.jsonl",
        "summary.json",
        "tracks.txt",
    ]
