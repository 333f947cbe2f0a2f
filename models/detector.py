"""Runtime detectors behind one ``Detector`` protocol: ONNX Runtime and OpenVINO (CPU).

A detector takes the preprocessed batch ``(B, 3, S, S) float32`` (RGB, [0, 1], letterboxed)
and returns raw predictions ``(B, A, 5 + nc) float32`` (see :mod:`models.export`). Decode and
NMS are :func:`models.postprocess.postprocess`. Heavy imports are lazy, so a missing optional
backend never breaks the others.

``auto`` picks the fastest backend installed, as measured on the 2-core dev machine (README,
"Detector backends"): ONNX Runtime, then OpenVINO. (OpenVINO is faster only in its default
bfloat16 mode, which changes scores by up to 0.05; Vigil runs it in FP32.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline.types import VigilError

BACKENDS = ("onnxruntime", "openvino")
AUTO_ORDER = ("onnxruntime", "openvino")


class Detector(Protocol):
    backend: str
    input_size: int
    num_outputs: int

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """``(B, 3, S, S) float32`` -> ``(B, A, 5 + nc) float32``."""
        ...


def _check_model_file(path: Path) -> None:
    if not path.is_file():
        raise VigilError(f"model file not found: {path}")
    with path.open("rb") as f:
        head = f.read(64)
    # An ONNX file is a protobuf ModelProto: it starts with field 1 (ir_version, varint: 0x08).
    if not head.startswith(b"\x08"):
        raise VigilError(f"{path} is not an ONNX model")


def _check_io(path: Path, in_shape: list[Any], out_shape: list[Any]) -> tuple[int, int]:
    """Validate that the graph looks like a YOLOv5 export; returns (input size, 5 + nc)."""
    ok = (
        len(in_shape) == 4
        and in_shape[1] == 3
        and isinstance(in_shape[2], int)
        and in_shape[2] == in_shape[3]
        and len(out_shape) == 3
        and isinstance(out_shape[2], int)
        and out_shape[2] > 5
    )
    if not ok:
        raise VigilError(
            f"{path} is not a YOLOv5 detection export "
            f"(input {in_shape}, output {out_shape}; expected (B,3,S,S) -> (B,A,5+nc))"
        )
    return int(in_shape[2]), int(out_shape[2])


class OrtDetector:
    """ONNX Runtime, CPU execution provider."""

    backend = "onnxruntime"

    def __init__(self, path: Path, threads: int = 2) -> None:
        import onnxruntime as ort

        _check_model_file(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # Idle intra-op threads sleep instead of spinning: decode and tracking share the cores.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(path), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # ORT raises its own exception types for bad graphs
            msg = str(e).splitlines()[0]
            raise VigilError(f"{path}: ONNX Runtime cannot load it ({msg})") from None
        inp, out = self._session.get_inputs()[0], self._session.get_outputs()[0]
        self.input_size, self.num_outputs = _check_io(path, list(inp.shape), list(out.shape))
        self._in, self._out = inp.name, out.name

    def infer(self, batch: np.ndarray) -> np.ndarray:
        out = self._session.run([self._out], {self._in: batch})[0]
        return np.asarray(out, dtype=np.float32)


class OpenVinoDetector:
    """OpenVINO on the CPU, reading the same ONNX file (FP32 or INT8 QDQ)."""

    backend = "openvino"

    def __init__(self, path: Path, threads: int = 2, precision: str = "f32") -> None:
        import openvino as ov

        _check_model_file(path)
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as e:
            msg = str(e).splitlines()[0]
            raise VigilError(f"{path}: OpenVINO cannot load it ({msg})") from None
        in_shape = [d.get_length() if d.is_static else None for d in model.inputs[0].partial_shape]
        out_shape = [
            d.get_length() if d.is_static else None for d in model.outputs[0].partial_shape
        ]
        self.input_size, self.num_outputs = _check_io(path, in_shape, out_shape)
        self._compiled = core.compile_model(
            model,
            "CPU",
            {
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_NUM_THREADS": threads,
                # OpenVINO defaults to bfloat16 on CPUs with AVX512-BF16: that changes scores
                # by up to 0.05. Keep FP32 so every backend gives the same answers.
                "INFERENCE_PRECISION_HINT": precision,
            },
        )
        self._request = self._compiled.create_infer_request()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self._request.infer({0: batch}, share_inputs=True)
        return np.array(self._request.get_output_tensor(0).data, dtype=np.float32, copy=True)


def available_backends() -> list[str]:
    found = []
    for name, module in (("openvino", "openvino"), ("onnxruntime", "onnxruntime")):
        try:
            __import__(module)
            found.append(name)
        except ImportError:
            continue
    return found


def create_detector(path: Path, backend: str = "auto", threads: int = 2) -> Detector:
    """Open ``path`` with ``backend`` (``auto``, ``onnxruntime`` or ``openvino``)."""
    if backend not in (*BACKENDS, "auto"):
        raise VigilError(f"unknown backend {backend!r} (choose auto, {', '.join(BACKENDS)})")
    if backend == "auto":
        have = available_backends()
        choice = next((b for b in AUTO_ORDER if b in have), None)
        if choice is None:
            raise VigilError("no detector backend installed (need openvino or onnxruntime)")
        backend = choice
    if backend == "openvino":
        return OpenVinoDetector(path, threads)
    return OrtDetector(path, threads)
