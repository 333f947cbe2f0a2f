"""Decode + greedy NMS with torch ops gives exactly the numpy path's detections (CPU, float32):
same boxes, scores, classes and order, bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import models.postprocess_torch as pt
from models.postprocess import PostprocessParams, postprocess_batch
from models.postprocess_torch import to_detections
from pipeline.types import Detections


def synthetic(rng: np.random.Generator, b: int, a: int, nc: int) -> np.ndarray:
    """Raw predictions ``(b, a, 5 + nc)`` with heavy overlap and exact score ties."""
    pred = np.zeros((b, a, 5 + nc), np.float32)
    pred[..., :2] = rng.uniform(0, 320, (b, a, 2))
    pred[..., 2:4] = rng.uniform(4, 120, (b, a, 2))
    pred[..., 4] = rng.uniform(0, 1, (b, a)) ** 2
    pred[..., 5:] = rng.uniform(0, 1, (b, a, nc))
    pred[:, ::7, 4] = 0.75  # every 7th anchor: the same objectness and tied class scores
    pred[:, ::7, 5:] = 0.5
    return pred


def assert_same(ref: list[Detections], got: list[Detections]) -> None:
    assert len(ref) == len(got)
    for r, g in zip(ref, got, strict=True):
        assert np.array_equal(r.xyxy, g.xyxy)
        assert np.array_equal(r.confidence, g.confidence)
        assert np.array_equal(r.class_id, g.class_id)
        assert g.xyxy.dtype == np.float32 and g.class_id.dtype == np.int32


def torch_path(pred: np.ndarray, params: PostprocessParams) -> list[Detections]:
    return to_detections(*pt.postprocess_batch(torch.from_numpy(pred), params))


PARAMS = [
    PostprocessParams(0.25, 0.45),
    PostprocessParams(0.1, 0.6, multi_label=True),
    PostprocessParams(0.3, 0.3, classes=np.array([1, 3]), max_det=7),
    PostprocessParams(0.5, 0.5, max_det=1),
]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("params", PARAMS, ids=["best", "multi", "classes", "max1"])
def test_equal_to_numpy_on_synthetic_predictions(seed: int, params: PostprocessParams) -> None:
    pred = synthetic(np.random.default_rng(seed), 3, 300, 4)
    ref = postprocess_batch(pred, params)
    assert sum(len(d) for d in ref) > 0
    assert_same(ref, torch_path(pred, params))


def test_equal_to_numpy_on_real_predictions(real_raw: np.ndarray) -> None:
    for params in (PostprocessParams(0.25, 0.45), PostprocessParams(0.001, 0.6, multi_label=True)):
        ref = postprocess_batch(real_raw, params)
        assert sum(len(d) for d in ref) > 0
        assert_same(ref, torch_path(real_raw, params))


def test_large_blocks_run_per_segment_in_row_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bounded-memory path (one image x class at a time, the IoU in row chunks) gives the
    same answer as the one-block path."""
    pred = synthetic(np.random.default_rng(7), 2, 400, 2)
    params = PostprocessParams(0.05, 0.5)
    ref = postprocess_batch(pred, params)
    monkeypatch.setattr(pt, "BLOCK_ELEMENTS", 64)
    monkeypatch.setattr(pt, "ROW_CHUNK", 5)
    assert_same(ref, torch_path(pred, params))


def test_candidate_cap_keeps_the_top_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    import models.postprocess as npp

    rng = np.random.default_rng(3)
    pred = synthetic(rng, 2, 500, 3)
    pred[..., 4] = rng.uniform(0.3, 1, (2, 500))  # distinct scores: the capped sets agree
    params = PostprocessParams(0.25, 0.45, max_det=1000)
    monkeypatch.setattr(npp, "MAX_CANDIDATES", 50)
    monkeypatch.setattr(pt, "MAX_CANDIDATES", 50)
    ref, got = postprocess_batch(pred, params), torch_path(pred, params)
    assert all(0 < len(g) <= 50 for g in got)
    assert_same(ref, got)  # with distinct scores the capped sets, and so the answers, agree


def test_empty_and_nothing_above_threshold() -> None:
    pred = np.zeros((2, 50, 8), np.float32)
    out = torch_path(pred, PostprocessParams())
    assert [len(d) for d in out] == [0, 0]
    assert out[0].xyxy.shape == (0, 4)
    pred[1, 3] = [100, 100, 20, 20, 0.9, 0.9, 0.1, 0.1]
    out = torch_path(pred, PostprocessParams())
    assert [len(d) for d in out] == [0, 1]
    np.testing.assert_array_equal(out[1].xyxy, [[90, 90, 110, 110]])


@pytest.fixture(scope="module")
def real_raw() -> np.ndarray:
    """ONNX Runtime FP32 predictions for 8 frames of the bundled clip."""
    import cv2

    from models.detector import OrtDetector
    from pipeline.config import DEFAULT_MODEL
    from pipeline.preprocess import CpuPreprocessor
    from tests.factories import SAMPLE_CLIP

    cap = cv2.VideoCapture(str(SAMPLE_CLIP))
    frames = []
    for i in range(600):
        ok, f = cap.read()
        assert ok
        if i >= 250 and i % 50 == 0:
            frames.append(f)
    batch = CpuPreprocessor(320, 8)(frames)[0]
    return OrtDetector(Path(DEFAULT_MODEL.parent / "yolov5n-320.onnx")).infer(batch)
