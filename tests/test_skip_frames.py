"""Skip-frame inference and motion gating: the schedule, the motion detector, the live step and
replay (which frames reach the detector, and what the messages say about the others)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from analytics.health import thumbnail
from pipeline.config import SAMPLE_CLIP, MotionConfig, load_config
from pipeline.live_step import Published, StepGuard, StreamRuntime, ThrottledLog, run_step
from pipeline.motion import MotionDetector, dilate
from pipeline.replay import Replay
from pipeline.schedule import DetectSchedule
from pipeline.sources import FFmpegSource
from pipeline.types import Detections, Frame, VigilError
from pipeline.wiring import build_engine
from tests.factories import FakeStream, dets
from trackers.registry import create_tracker

H, W = 480, 640


def _scene(x: int | None = None) -> np.ndarray:
    """A grey 640x480 frame with texture; with ``x``, a bright 60x120 person-sized box there."""
    img = np.full((H, W, 3), 90, np.uint8)
    img[::40] = 60  # stripes: a static background with structure
    if x is not None:
        img[200:320, x : x + 60] = 230
    return img


def test_the_schedule_detects_every_kth_frame_and_predicts_between() -> None:
    s = DetectSchedule(detect_every=3)
    plan = [s.decide(i / 10, s.moving(None, i / 10)) for i in range(9)]
    assert plan == [True, False, False] * 3
    assert s.counts() == {"detected": 3, "predicted": 6, "idle": 0}
    assert s.decide(0.0, True)  # the stream restarted (pts went back): detect at once


def test_motion_gating_skips_still_empty_frames_and_detects_periodically() -> None:
    motion = MotionConfig(enabled=True, full_detect_s=2.0)
    s = DetectSchedule(1, motion)
    still = thumbnail(_scene())
    decided = []
    for i in range(30):  # 3 s of an empty, still scene at 10 fps
        pts = i / 10
        decided.append(s.decide(pts, s.moving(still, pts)))
        if decided[-1]:
            s.found(0)  # the detector found nothing
    assert decided[0] and decided[20]  # the first frame, then a periodic full detection at 2 s
    assert sum(decided) == 2 and s.counts()["idle"] == 28
    pts = 3.0
    assert s.decide(pts, s.moving(thumbnail(_scene(300)), pts))  # someone walks in: detect now
    s.found(1)
    pts = 3.1  # with a live track, even a still frame is detected (detect_every 1)
    assert s.decide(pts, s.moving(thumbnail(_scene(300)), pts))


def test_motion_detector_sees_a_person_not_noise() -> None:
    m = MotionDetector(MotionConfig(enabled=True, threshold=20.0, min_area=0.002))
    base = _scene()
    assert m.update(thumbnail(base), 0.0)  # the first frame counts as motion
    assert not m.update(thumbnail(base), 0.1)
    speck = base.copy()
    speck[6 + 13 * 18, 5 + 10 * 32] = 255  # one pixel the thumbnail samples: below min_area
    assert not m.update(thumbnail(speck), 0.2) and 0 < m.area < 0.002
    assert m.update(thumbnail(_scene(100)), 0.3)
    assert m.mask is not None and m.mask.shape == thumbnail(base).shape and m.mask.any()
    assert 0.002 <= m.area < 0.1
    m.update(thumbnail(_scene(100)), 60.0)  # it stays: the background takes it in
    assert not m.update(thumbnail(_scene(100)), 60.1)


def test_dilation_joins_neighbours() -> None:
    mask = np.zeros((5, 5), bool)
    mask[2, 2] = True
    out = dilate(mask)
    assert out.sum() == 9 and out[1:4, 1:4].all()


class CountingEngine:
    """One detection per frame that walks right; records which frames it saw."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.info = SimpleNamespace(class_names=("person",))
        self.embedder = None

    def process(
        self, frames: Sequence[Frame], timings: dict[str, float] | None = None
    ) -> tuple[list[Detections], list[np.ndarray | None]]:
        self.seen += [f.index for f in frames]
        out = [dets([[100 + 5 * f.index, 100, 160 + 5 * f.index, 220]]) for f in frames]
        return out, [None] * len(frames)


def test_live_step_runs_the_detector_on_every_kth_frame_and_marks_the_rest_predicted() -> None:
    st = StreamRuntime(
        FakeStream("cam"), create_tracker("bytetrack"), schedule=DetectSchedule(detect_every=2)
    )
    engine, out = CountingEngine(), list[Published]()
    guard = StepGuard(log=ThrottledLog(60.0, lambda _: None))
    counts: dict[str, int] = {}
    for i in range(20):
        frame = Frame("cam", i, i / 10, np.zeros((H, W, 3), np.uint8), 1000.0 + i)
        run_step([(st, frame)], engine, out.append, guard, counts)
    assert engine.seen == list(range(0, 20, 2))
    assert counts == {"frames": 1, "detected": 0, "detections": 0}  # the last frame: predicted
    msgs = [json.loads(p.data) for p in out]
    assert [m["predicted"] for m in msgs] == [False, True] * 10
    late = [m for m in msgs[6:] if m["predicted"]]
    assert late and all(len(m["tracks"]) == 1 for m in late)  # the track carries on, predicted
    assert all(m["tracks"][0][2] == 0.0 for m in late)  # confidence 0: no detection behind it
    assert isinstance(out[0], Published) and st.schedule.counts()["predicted"] == 10


def _replay(tmp: Path, frames: int, **schedule: object) -> tuple[dict[str, object], list[int]]:
    cfg = load_config(None, {"tracker.embedder": "histogram"})
    engine = build_engine(cfg)
    seen: list[int] = []
    real = engine.process

    def process(
        frames: Sequence[Frame], timings: dict[str, float] | None = None
    ) -> tuple[list[Detections], list[np.ndarray | None]]:
        seen.extend(f.index for f in frames)
        return real(frames, timings)

    engine.process = process  # type: ignore[method-assign]  # count what reaches the engine
    source = FFmpegSource(str(SAMPLE_CLIP), "replay", max_frames=frames)
    summary = Replay(source, cfg, tmp, engine=engine, **schedule).run()  # type: ignore[arg-type]
    return summary, seen


def test_replay_with_detect_every_is_lossless_and_detects_every_kth_frame(tmp_path: Path) -> None:
    summary, seen = _replay(tmp_path, 60, detect_every=3)
    assert seen == list(range(0, 60, 3))  # embeddings too: the engine never saw the others
    assert summary["frames_processed"] == 60
    assert summary["detector_frames"] == {"detected": 20, "predicted": 40, "idle": 0}
    lines = (tmp_path / "messages.jsonl").read_text().splitlines()
    flags = [json.loads(line)["predicted"] for line in lines]
    assert len(flags) == 60 and flags[:6] == [False, True, True, False, True, True]


def test_replay_with_motion_gating_skips_the_detector_yet_reports_every_frame(
    tmp_path: Path,
) -> None:
    motion = MotionConfig(enabled=True, full_detect_s=2.0)
    summary, seen = _replay(tmp_path, 150, motion=motion)
    c = summary["detector_frames"]
    assert isinstance(c, dict) and c["detected"] == len(seen) and c["idle"] > 0
    assert c["detected"] + c["idle"] + c["predicted"] == 150
    assert len((tmp_path / "messages.jsonl").read_text().splitlines()) == 150


def test_a_tracker_that_cannot_predict_is_refused_for_skipping(tmp_path: Path) -> None:
    cfg = load_config(None, {"tracker.name": "deepsort-reference"})
    source = FFmpegSource(str(SAMPLE_CLIP), "replay", max_frames=5)
    with pytest.raises(VigilError, match="cannot predict"):
        Replay(source, cfg, tmp_path, engine=build_engine(cfg), detect_every=2)
    source.close()
