"""DALI preprocessing (its CPU operators, ``device_id=None``: the same graph as on a GPU)
against the numpy/OpenCV letterbox on real frames, and the detections it leads to.

Stated tolerances, measured on the frames below: per pixel at most 1 grey level (1/255) apart
(DALI resamples in float, OpenCV in fixed point), on at most 10% of the pixels; through the
FP32 detector on the bundled clip, the same number of detections in every frame, each box
within 0.5 px (letterbox pixels) and each score within 0.01 of the numpy path's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.detector import create_detector
from models.postprocess import PostprocessParams
from pipeline.config import DEFAULT_MODEL
from pipeline.preprocess import CpuPreprocessor
from pipeline.preprocess_dali import DaliPreprocessor
from pipeline.types import VigilError
from tests.factories import SAMPLE_CLIP, SHARED_DATA

PIXEL_TOL = 1 / 255 + 1e-6
DIFFERING_MAX = 0.10
BOX_TOL_PX = 0.5
SCORE_TOL = 0.01


def clip_frames(step: int, start: int = 0) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(SAMPLE_CLIP))
    frames, i = [], 0
    while True:
        ok, f = cap.read()
        if not ok:
            return frames
        if i >= start and (i - start) % step == 0:
            frames.append(f)
        i += 1


def frames_of_many_sizes() -> list[np.ndarray]:
    """Real pixels at several sizes: the clip's 768x432, 1080p and 200x150 (scaled), a portrait
    crop, an exactly 320x320 crop (no resize), a 1280x40 strip, and TUD's 640x480 JPEG when
    ../shared/data is here."""
    f = clip_frames(1, 300)[0]
    out = [
        f,
        cv2.resize(f, (1920, 1080), interpolation=cv2.INTER_CUBIC),
        cv2.resize(f, (200, 150), interpolation=cv2.INTER_AREA),
        np.ascontiguousarray(f[:, 200:533]),
        np.ascontiguousarray(f[50:370, 100:420]),
        cv2.resize(f, (1280, 40), interpolation=cv2.INTER_AREA),
    ]
    tud = SHARED_DATA / "mot" / "TUD-Stadtmitte" / "img1" / "000001.jpg"
    if tud.is_file():
        out.append(cv2.imread(str(tud)))
    return out


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_dali_letterbox_matches_numpy_on_real_frames(fp16: bool) -> None:
    frames = frames_of_many_sizes()
    ref, ref_geoms = CpuPreprocessor(320, len(frames))(frames)
    # a pipeline batch smaller than the call: the frames run in two slices
    got, geoms = DaliPreprocessor(320, 4, device_id=None, fp16=fp16)(frames)
    assert geoms == ref_geoms
    assert isinstance(got, np.ndarray) and got.shape == ref.shape
    assert got.dtype == (np.float16 if fp16 else np.float32)
    fp16_rounding = 2.0**-11 if fp16 else 0.0  # half a unit in the last place at 1.0
    diff = np.abs(got.astype(np.float32) - ref)
    for i, frame in enumerate(frames):
        assert diff[i].max() <= PIXEL_TOL + fp16_rounding, frame.shape
        assert (diff[i] > 0.5 / 255).mean() <= DIFFERING_MAX, frame.shape
    # the grey border (114) is exact: only resampled pixels may differ
    g = geoms[5]  # the 1280x40 strip: a 10-pixel band in a grey square
    border = ref[5][:, : g.pad_y].astype(got.dtype)
    assert g.new_h == 10 and np.array_equal(got[5][:, : g.pad_y], border)


def test_detections_on_a_real_clip_agree_with_the_numpy_path() -> None:
    frames = clip_frames(20)
    detector = create_detector(DEFAULT_MODEL.parent / "yolov5n-320.onnx", "onnxruntime")
    params = PostprocessParams(0.25, 0.45, np.array([0]))
    cpu, dali = CpuPreprocessor(320, 8), DaliPreprocessor(320, 8)
    boxes = 0
    for i in range(0, len(frames), 8):
        ref = detector.detect(cpu(frames[i : i + 8])[0], params)
        got = detector.detect(dali(frames[i : i + 8])[0], params)
        for r, g in zip(ref, got, strict=True):
            assert len(r) == len(g)
            boxes += len(r)
            if len(r):
                assert np.abs(r.xyxy - g.xyxy).max() <= BOX_TOL_PX
                assert np.abs(r.confidence - g.confidence).max() <= SCORE_TOL
    assert len(frames) == 70 and boxes >= 40


def test_without_dali_the_choice_fails_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.config import load_config
    from pipeline.wiring import build_engine

    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # as if it were not installed
    cfg = load_config(None, {"model.preprocess": "dali", "tracker.embedder": "histogram"})
    with pytest.raises(VigilError) as err:
        build_engine(cfg)
    msg = str(err.value)
    assert "\n" not in msg and "DALI" in msg and "pip install" in msg


def test_the_engine_runs_on_dali(tmp_path: Path) -> None:
    """``model.preprocess: dali`` through the wiring: the replay summary says so."""
    from pipeline.config import load_config
    from pipeline.replay import Replay
    from pipeline.sources import FFmpegSource

    cfg = load_config(None, {"model.preprocess": "dali", "tracker.embedder": "histogram"})
    summary = Replay(FFmpegSource(str(SAMPLE_CLIP), max_frames=12), cfg, tmp_path).run()
    assert summary["model"]["preprocess"] == "dali" and summary["frames_processed"] == 12
    assert summary["decode"]["path"] == "cpu"
