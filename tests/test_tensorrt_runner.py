"""The TensorRT runner's logic that needs no TensorRT: which cached engine fits, the binding
checks, the batch plan over the optimization profile, dtypes, and the sidecar key file. (The
runner itself has never run: TensorRT installs on no machine this project has.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from models.tensorrt_runner import (
    EngineKey,
    TensorInfo,
    check_bindings,
    engine_path,
    find_engine_for,
    model_onnx_sha256s,
    plan_batches,
    read_sidecar,
    select_engine,
    sidecar_bytes,
    sidecar_path,
    torch_dtype_name,
)
from pipeline.config import DEFAULT_MODEL
from pipeline.types import VigilError

H100 = ("NVIDIA H100", "9.0", "10.8.0")


def key(
    sha: str = "ab", precision: str = "fp16", batch: int = 8, gpu: str = "NVIDIA H100"
) -> EngineKey:
    return EngineKey(gpu, "9.0", "10.8.0", sha * 32, precision, batch, 320)


def test_select_engine_fits_gpu_tensorrt_model_and_size(tmp_path: Path) -> None:
    cands = [
        (tmp_path / "a.engine", key("ab", batch=8)),
        (tmp_path / "b.engine", key("ab", batch=32)),
        (tmp_path / "c.engine", key("cd", "int8", batch=64)),
        (tmp_path / "d.engine", key("ab", batch=128, gpu="NVIDIA A10")),
    ]
    # the preferred ONNX first, then the largest batch
    assert select_engine(cands, *H100, ["ab" * 32, "cd" * 32], 320) == tmp_path / "b.engine"
    assert select_engine(cands, *H100, ["cd" * 32, "ab" * 32], 320) == tmp_path / "c.engine"
    assert select_engine(cands, *H100, ["ef" * 32], 320) is None  # another model
    assert select_engine(cands, *H100, ["ab" * 32], 640) is None  # another input size
    assert select_engine(cands, "NVIDIA H100", "9.0", "10.9.0", ["ab" * 32], 320) is None
    assert select_engine(cands, "NVIDIA A10", "9.0", "10.8.0", ["ab" * 32], 320) == (
        tmp_path / "d.engine"
    )


def test_sidecar_round_trip_and_a_mismatched_name_is_ignored(tmp_path: Path) -> None:
    k = key()
    engine = engine_path(tmp_path, "yolov5n", k)
    engine.write_bytes(b"engine")
    assert read_sidecar(engine) is None  # no sidecar: not a usable cached engine
    sidecar_path(engine).write_bytes(sidecar_bytes(k))
    assert read_sidecar(engine) == k
    other = tmp_path / "yolov5n-fp16-b8-0000000000000000.engine"
    other.write_bytes(b"engine")
    sidecar_path(other).write_bytes(sidecar_bytes(k))  # a key that is not this file's
    assert read_sidecar(other) is None
    sidecar_path(engine).write_text("{not json")
    assert read_sidecar(engine) is None


def test_bindings_of_a_yolov5_engine() -> None:
    io = check_bindings(
        [
            TensorInfo("images", "INPUT", (-1, 3, 320, 320), "FLOAT"),
            TensorInfo("predictions", "OUTPUT", (-1, 6300, 85), "FLOAT"),
        ]
    )
    assert (io.input_name, io.output_name, io.imgsz, io.anchors, io.outputs) == (
        "images",
        "predictions",
        320,
        6300,
        85,
    )
    assert io.input_dtype == io.output_dtype == "float32"
    half = check_bindings(
        [
            TensorInfo("x", "INPUT", (-1, 3, 640, 640), "HALF"),
            TensorInfo("y", "OUTPUT", (-1, 25200, 7), "HALF"),
        ]
    )
    assert half.input_dtype == "float16" and half.imgsz == 640


@pytest.mark.parametrize(
    "tensors",
    [
        [TensorInfo("images", "INPUT", (-1, 3, 320, 320), "FLOAT")],
        [
            TensorInfo("images", "INPUT", (-1, 3, 320, 256), "FLOAT"),
            TensorInfo("p", "OUTPUT", (-1, 6300, 85), "FLOAT"),
        ],
        [
            TensorInfo("images", "INPUT", (-1, 1, 320, 320), "FLOAT"),
            TensorInfo("p", "OUTPUT", (-1, 6300, 85), "FLOAT"),
        ],
        [
            TensorInfo("images", "INPUT", (-1, 3, 320, 320), "FLOAT"),
            TensorInfo("p", "OUTPUT", (-1, 6300, 4), "FLOAT"),
        ],
    ],
    ids=["no-output", "not-square", "one-channel", "no-classes"],
)
def test_bindings_that_are_not_yolov5_are_refused(tensors: list[TensorInfo]) -> None:
    with pytest.raises(VigilError, match="not a YOLOv5 engine"):
        check_bindings(tensors)


def test_dtypes() -> None:
    assert torch_dtype_name("FLOAT") == "float32" and torch_dtype_name("HALF") == "float16"
    with pytest.raises(VigilError, match="INT8"):
        torch_dtype_name("INT8")


def test_batch_plan_inside_the_profile() -> None:
    assert plan_batches(0, 1, 8) == []
    assert plan_batches(5, 1, 8) == [(0, 5, 5)]
    assert plan_batches(20, 1, 8) == [(0, 8, 8), (8, 16, 8), (16, 20, 4)]
    assert plan_batches(3, 4, 8) == [(0, 3, 4)]  # padded up to the profile's minimum
    for n in range(1, 30):
        runs = plan_batches(n, 2, 8)
        assert [i for a, b, _ in runs for i in range(a, b)] == list(range(n))
        assert all(2 <= r <= 8 and b - a <= r for a, b, r in runs)
    with pytest.raises(VigilError, match="profile"):
        plan_batches(4, 8, 4)


def test_the_engines_a_model_may_have(tmp_path: Path) -> None:
    from models.manifest import ModelManifest, sha256_file

    fp32 = DEFAULT_MODEL.parent / "yolov5n-320.onnx"
    int8 = DEFAULT_MODEL.parent / "yolov5n-320-int8.onnx"
    shas = model_onnx_sha256s(DEFAULT_MODEL, int8)
    assert shas[0] == sha256_file(int8)  # the ONNX that runs first
    assert sha256_file(fp32) in shas  # then the FP32 export an engine is built from
    assert ModelManifest.load(DEFAULT_MODEL).input_size == 320
    assert model_onnx_sha256s(None, fp32) == [sha256_file(fp32)]
    assert find_engine_for(tmp_path / "none", DEFAULT_MODEL, fp32) is None  # no cache folder
