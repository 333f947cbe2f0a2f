"""The torch backend (CPU, FP32 eager: the same code as torch-cuda minus FP16 and the graphs)
against ONNX Runtime FP32 on real frames, the batch bucketing of the CUDA graphs, and the
backend choice."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from models.detector import Availability, DetectorSpec, create_detector, pick_backend
from models.postprocess import PostprocessParams, postprocess_batch
from models.torch_detector import TorchDetector, bucket_sizes, plan_buckets
from pipeline.config import DEFAULT_MODEL
from pipeline.preprocess import CpuPreprocessor
from pipeline.types import VigilError
from tests.factories import SAMPLE_CLIP, SHARED_DATA

FP32_ONNX = DEFAULT_MODEL.parent / "yolov5n-320.onnx"
# Stated tolerance against ONNX Runtime FP32: the same number of detections in every frame,
# each box within 0.01 px (letterbox pixels) and each score within 1e-4 of its match.
BOX_TOL_PX = 0.01
SCORE_TOL = 1e-4


def real_frames() -> list[np.ndarray]:
    """Frames with people from the bundled clip, plus (when ../shared/data is here) crowded
    TUD-Stadtmitte frames and COCO images of several classes and a portrait size."""
    cap = cv2.VideoCapture(str(SAMPLE_CLIP))
    frames = []
    for i in range(500):
        ok, f = cap.read()
        assert ok
        if i in (250, 300, 450):
            frames.append(f)
    tud = SHARED_DATA / "mot" / "TUD-Stadtmitte" / "img1"
    coco = sorted((SHARED_DATA / "coco" / "coco128" / "images").rglob("*.jpg"))
    paths = [tud / "000001.jpg", tud / "000060.jpg", *coco[:1], *coco[9:10]]
    frames += [cv2.imread(str(p)) for p in paths if p.is_file()]
    return frames


def test_torch_cpu_matches_onnxruntime_fp32() -> None:
    batch = CpuPreprocessor(320, 8)(real_frames())[0]
    params = PostprocessParams(0.25, 0.45)
    ref = postprocess_batch(create_detector(FP32_ONNX, "onnxruntime").infer(batch), params)
    det = create_detector(DetectorSpec(FP32_ONNX, DEFAULT_MODEL, "torch"))
    assert det.backend == "torch" and det.precision == "fp32" and not det.accepts_device
    got = det.detect(batch, params)
    assert sum(len(d) for d in ref) >= (3 if len(ref) == 3 else 15)
    for r, g in zip(ref, got, strict=True):
        assert len(r) == len(g)
        if len(r):
            assert np.abs(r.xyxy - g.xyxy).max() <= BOX_TOL_PX
            assert np.abs(r.confidence - g.confidence).max() <= SCORE_TOL
            assert np.array_equal(r.class_id, g.class_id)
    # raw predictions too (what evaluation reads through ``infer``)
    raw = det.infer(batch[:1])
    assert raw.shape == (1, 6300, 85) and raw.dtype == np.float32


def test_detect_takes_a_tensor_and_reports_the_split() -> None:
    import torch

    frames = real_frames()[:2]
    batch = CpuPreprocessor(320, 2)(frames)[0]
    det = TorchDetector(DEFAULT_MODEL, "cpu", max_batch=2)
    timings: dict[str, float] = {}
    a = det.detect(batch, PostprocessParams(), timings)
    b = det.detect(torch.from_numpy(batch), PostprocessParams())
    assert set(timings) == {"infer", "nms"} and all(v >= 0 for v in timings.values())
    assert [len(d) for d in a] == [len(d) for d in b]
    assert all(np.array_equal(x.xyxy, y.xyxy) for x, y in zip(a, b, strict=True))


def test_bucket_sizes_and_plans() -> None:
    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(8) == (1, 2, 4, 8)
    assert bucket_sizes(12) == (1, 2, 4, 8, 12)
    b = bucket_sizes(8)
    assert plan_buckets(0, b) == []
    assert plan_buckets(5, b) == [(0, 5, 8)]  # padded up to the next captured size
    assert plan_buckets(3, b) == [(0, 3, 4)]
    assert plan_buckets(20, b) == [(0, 8, 8), (8, 16, 8), (16, 20, 4)]
    for n in range(1, 40):  # every image in exactly one run, no run beyond its bucket
        runs = plan_buckets(n, bucket_sizes(12))
        covered = [i for start, stop, _ in runs for i in range(start, stop)]
        assert covered == list(range(n))
        assert all(stop - start <= bucket for start, stop, bucket in runs)
    with pytest.raises(ValueError):
        bucket_sizes(0)


def test_auto_order_tensorrt_then_torch_cuda_then_onnxruntime() -> None:
    both = ("onnxruntime", "openvino")
    assert pick_backend(Availability(True, True, both)) == "tensorrt"
    assert pick_backend(Availability(False, True, both)) == "torch-cuda"
    assert pick_backend(Availability(False, False, both)) == "onnxruntime"
    assert pick_backend(Availability(False, False, ("openvino",))) == "openvino"
    with pytest.raises(VigilError, match="no detector backend"):
        pick_backend(Availability(False, False, ()))
    # on this machine (no GPU): the ONNX runtime, chosen without importing CUDA
    assert create_detector(DetectorSpec(FP32_ONNX, DEFAULT_MODEL, "auto")).backend == "onnxruntime"


def test_gpu_backends_say_what_is_missing(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(VigilError, match="torch-cuda needs an NVIDIA GPU"):
        create_detector(DetectorSpec(FP32_ONNX, DEFAULT_MODEL, "torch-cuda"))
    with pytest.raises(VigilError, match="bare ONNX"):
        create_detector(DetectorSpec(FP32_ONNX, None, "torch"))
    with pytest.raises(VigilError, match="TensorRT"):
        create_detector(DetectorSpec(FP32_ONNX, DEFAULT_MODEL, "tensorrt", engine_cache=tmp_path))
