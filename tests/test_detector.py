"""Detector backends on the bundled model: agreement, precision cost, and bad model files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from models.detector import create_detector
from models.postprocess import box_iou, postprocess
from pipeline.config import DEFAULT_MODEL
from pipeline.preprocess import CpuPreprocessor
from pipeline.types import VigilError
from tests.factories import SAMPLE_CLIP

ZOO = DEFAULT_MODEL.parent
FP32, INT8 = ZOO / "yolov5n-320.onnx", ZOO / "yolov5n-320-int8.onnx"


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    cap = cv2.VideoCapture(str(SAMPLE_CLIP))
    frames = []
    for i in range(400):
        ok, f = cap.read()
        assert ok
        if i % 50 == 0:
            frames.append(f)
    return CpuPreprocessor(320, 8)(frames)[0]


def test_backends_agree_on_fp32(batch: np.ndarray) -> None:
    ort = create_detector(FP32, "onnxruntime").infer(batch)
    ov = create_detector(FP32, "openvino").infer(batch)
    assert ort.shape == ov.shape == (len(batch), 6300, 85)
    np.testing.assert_allclose(ov[..., 4:], ort[..., 4:], atol=2e-3)
    np.testing.assert_allclose(ov[..., :4], ort[..., :4], atol=0.05)


def test_int8_finds_the_same_people_as_fp32(batch: np.ndarray) -> None:
    fp = create_detector(FP32, "onnxruntime").infer(batch)
    q = create_detector(INT8, "onnxruntime").infer(batch)
    person = np.array([0])
    matched = total = 0
    for a, b in zip(fp, q, strict=True):
        da, db = postprocess(a, 0.4, 0.45, person), postprocess(b, 0.4, 0.45, person)
        total += len(da)
        if len(da) and len(db):
            matched += int((box_iou(da.xyxy, db.xyxy).max(axis=1) > 0.7).sum())
    assert total >= 4
    assert matched >= 0.8 * total


def test_auto_picks_the_measured_fastest() -> None:
    assert create_detector(INT8, "auto").backend == "onnxruntime"
    assert create_detector(FP32, "auto").backend == "onnxruntime"


def test_bad_model_files(tmp_path: Path) -> None:
    with pytest.raises(VigilError, match="model file not found"):
        create_detector(tmp_path / "x.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"PK\x03\x04 a zip, not a model")
    with pytest.raises(VigilError, match="not an ONNX model"):
        create_detector(junk, "onnxruntime")
    with pytest.raises(VigilError, match="unknown backend"):
        create_detector(FP32, "tensorflow")


def test_onnx_that_is_not_yolov5(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
    )
    path = tmp_path / "relu.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    for backend in ("onnxruntime", "openvino"):
        with pytest.raises(VigilError, match="not a YOLOv5 detection export"):
            create_detector(path, backend)
