"""TensorRT preparation of the ONNX (runs without TensorRT) and the engine cache key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from pipeline.config import DEFAULT_MODEL, DEFAULT_REID
from pipeline.types import VigilError
from toolchain.quantize import quantize_int8
from toolchain.tensorrt_build import EngineKey, build_engine, engine_path
from toolchain.trt_prep import inspect_yolov5, prepare, profile_shapes

ZOO = DEFAULT_MODEL.parent


def test_the_shipped_fp32_model_is_fit_and_prepares_to_the_same_outputs(tmp_path: Path) -> None:
    import onnxruntime as ort

    src = ZOO / "yolov5n-320.onnx"
    facts = prepare(src, tmp_path / "p.onnx")
    assert (facts.imgsz, facts.anchors, facts.outputs, facts.quantized) == (320, 6300, 85, False)
    model = onnx.load(str(tmp_path / "p.onnx"))
    assert not [n for n in model.graph.node if n.op_type in ("Constant", "BatchNormalization")]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 320, 320]
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, 320, 320)).astype(np.float32)
    a, b = (
        ort.InferenceSession(str(p)).run(None, {"images": x})[0] for p in (src, tmp_path / "p.onnx")
    )
    assert np.allclose(a, b, atol=1e-4)


def test_ort_uint8_qdq_is_refused_and_symmetric_int8_accepted(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    with pytest.raises(VigilError, match="only signed INT8 with zero point 0"):
        prepare(ZOO / "yolov5n-320-int8.onnx", tmp_path / "x.onnx")
    rng = np.random.default_rng(0)
    batches = [rng.uniform(0, 1, (2, 3, 128, 128)).astype(np.float32) for _ in range(2)]
    sym = tmp_path / "sym.onnx"
    facts = quantize_int8(tiny_onnx, sym, iter(batches), "minmax", "body", symmetric=True)
    assert facts["symmetric"] is True
    assert prepare(sym, tmp_path / "sym-trt.onnx").quantized


def test_non_yolov5_graphs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(VigilError, match="not a Vigil YOLOv5 export"):
        prepare(DEFAULT_REID, tmp_path / "r.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all")
    with pytest.raises(VigilError, match="not an ONNX model"):
        prepare(junk, tmp_path / "j.onnx")


def test_unfolded_batchnorm_and_unknown_ops_are_refused(tiny_onnx: Path) -> None:
    model = onnx.load(str(tiny_onnx))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    conv.op_type = "BatchNormalization"
    with pytest.raises(VigilError, match="BatchNorm is not folded"):
        inspect_yolov5(model)
    conv.op_type = "NonMaxSuppression"
    with pytest.raises(VigilError, match="NonMaxSuppression"):
        inspect_yolov5(model)


def test_profile_shapes() -> None:
    assert profile_shapes(320, 8) == ((1, 3, 320, 320), (8, 3, 320, 320), (8, 3, 320, 320))
    assert profile_shapes(640, 12)[1] == (8, 3, 640, 640)
    for bad in (0, 257):
        with pytest.raises(VigilError, match="--max-batch"):
            profile_shapes(320, bad)


def test_engine_cache_key_changes_with_every_input(tmp_path: Path) -> None:
    base = EngineKey("NVIDIA H100", "9.0", "10.8.0", "ab" * 32, "fp16", 8, 320)
    variants = [
        EngineKey("NVIDIA A10", "9.0", "10.8.0", "ab" * 32, "fp16", 8, 320),
        EngineKey("NVIDIA H100", "8.6", "10.8.0", "ab" * 32, "fp16", 8, 320),
        EngineKey("NVIDIA H100", "9.0", "10.9.0", "ab" * 32, "fp16", 8, 320),
        EngineKey("NVIDIA H100", "9.0", "10.8.0", "cd" * 32, "fp16", 8, 320),
        EngineKey("NVIDIA H100", "9.0", "10.8.0", "ab" * 32, "int8", 8, 320),
        EngineKey("NVIDIA H100", "9.0", "10.8.0", "ab" * 32, "fp16", 16, 320),
        EngineKey("NVIDIA H100", "9.0", "10.8.0", "ab" * 32, "fp16", 8, 640),
    ]
    paths = {engine_path(tmp_path, "m", k) for k in [base, *variants]}
    assert len(paths) == 8
    assert engine_path(tmp_path, "m", base) == engine_path(tmp_path, "m", base)


def test_build_engine_checks_before_needing_tensorrt(tiny_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(VigilError, match="--precision must be one of"):
        build_engine(tiny_onnx, "t", "int4", 8, tmp_path)
    with pytest.raises(VigilError, match="not a Vigil YOLOv5 export"):
        build_engine(DEFAULT_REID, "r", "fp16", 8, tmp_path)
    with pytest.raises(VigilError, match="needs calibration images"):
        build_engine(tiny_onnx, "t", "int8", 8, tmp_path)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(VigilError, match="TensorRT is not installed"):
            build_engine(tiny_onnx, "t", "fp16", 8, tmp_path)


def test_cuda_runtime_results_are_checked() -> None:
    import enum

    from toolchain.tensorrt_build import _ok

    class Err(enum.Enum):  # cuda-python's cudaError_t is an enum; 0 is cudaSuccess
        success = 0
        oom = 2

    assert _ok((Err.success, 1234)) == 1234 and _ok((Err.success,)) is None
    with pytest.raises(VigilError, match="CUDA runtime error"):
        _ok((Err.oom, 0))
