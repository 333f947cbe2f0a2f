"""Runtime detectors behind one ``Detector`` protocol, and the choice between them.

A detector takes the preprocessed batch ``(B, 3, S, S)`` (RGB, [0, 1], letterboxed; float32 on
the host, or a tensor on the detector's device for backends with ``accepts_device``) and
returns, through ``detect``, one :class:`Detections` per image in letterbox pixels; ``infer``
gives the raw predictions ``(B, A, 5 + nc) float32`` on the host (see :mod:`models.export`).
Heavy imports are lazy, so a missing optional backend never breaks the others.

Backends: ``onnxruntime`` and ``openvino`` (CPU, the manifest's ONNX at the chosen precision,
decode + NMS in numpy), ``torch`` (CPU, FP32) and ``torch-cuda`` (FP16, CUDA graphs) from the
manifest's weights (:mod:`models.torch_detector`), ``tensorrt`` (an engine built by ``vigil
models build-engine``, :mod:`models.tensorrt_runner`). ``auto`` picks, by what is importable
and present (:func:`pick_backend`): TensorRT (with an engine for this model and GPU), then
torch-cuda, then ONNX Runtime, then OpenVINO. On the 2-core dev machine ONNX Runtime measured
fastest of the CPU backends (README, "Detector backends"); OpenVINO runs in FP32 (its default
bfloat16 changes scores by up to 0.05).
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from models.postprocess import PostprocessParams, postprocess_batch
from pipeline.types import Detections, VigilError

BACKENDS = ("onnxruntime", "openvino", "torch", "torch-cuda", "tensorrt")
AUTO_ORDER = ("tensorrt", "torch-cuda", "onnxruntime", "openvino")
CPU_BACKENDS = ("onnxruntime", "openvino")  # the ONNX runtimes (benchmarked side by side)


class Detector(Protocol):
    backend: str
    input_size: int
    num_outputs: int
    precision: str  # what runs: "as-file" (the ONNX as given), "fp32", "fp16", "int8"
    input_dtype: str  # "float32" or "float16": what ``detect`` takes best
    accepts_device: bool  # ``detect`` also takes a tensor on the detector's CUDA device
    model_file: Path  # the file that runs: the ONNX, the torch weights or the engine

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """``(B, 3, S, S) float32`` -> ``(B, A, 5 + nc) float32``."""
        ...

    def detect(
        self, batch: Any, params: PostprocessParams, timings: dict[str, float] | None = None
    ) -> list[Detections]:
        """Detections per image, letterbox pixels; ``timings`` gets ``infer``/``nms`` ms."""
        ...


class _NumpyPostprocess:
    """``detect`` for the host backends: ``infer``, then the numpy decode + NMS."""

    precision = "as-file"
    input_dtype = "float32"
    accepts_device = False

    def infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def detect(
        self, batch: Any, params: PostprocessParams, timings: dict[str, float] | None = None
    ) -> list[Detections]:
        t0 = time.perf_counter()
        raw = self.infer(np.ascontiguousarray(batch, dtype=np.float32))
        t1 = time.perf_counter()
        dets = postprocess_batch(raw, params)
        if timings is not None:
            timings.update(infer=(t1 - t0) * 1e3, nms=(time.perf_counter() - t1) * 1e3)
        return dets


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


class OrtDetector(_NumpyPostprocess):
    """ONNX Runtime, CPU execution provider."""

    backend = "onnxruntime"

    def __init__(self, path: Path, threads: int = 2) -> None:
        import onnxruntime as ort

        _check_model_file(path)
        self.model_file = path
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


class OpenVinoDetector(_NumpyPostprocess):
    """OpenVINO on the CPU, reading the same ONNX file (FP32 or INT8 QDQ)."""

    backend = "openvino"

    def __init__(self, path: Path, threads: int = 2, precision: str = "f32") -> None:
        import openvino as ov

        _check_model_file(path)
        self.model_file = path
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
    """The ONNX runtimes (CPU backends) that import here."""
    found = []
    for name in ("openvino", "onnxruntime"):
        try:
            __import__(name)
            found.append(name)
        except ImportError:
            continue
    return found


def nvidia_device_present() -> bool:
    """An NVIDIA driver and device node exist (cheap: no CUDA library is loaded)."""
    return any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia"))


def torch_cuda_available() -> bool:
    """torch imports and sees a CUDA device. torch is imported only when a driver exists."""
    if not nvidia_device_present() or importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


@dataclass(frozen=True)
class Availability:
    """What :func:`pick_backend` decides from (gathered by :func:`probe_availability`)."""

    tensorrt_engine: bool  # tensorrt imports, CUDA works and an engine exists for the model
    torch_cuda: bool  # torch sees a CUDA device, and the model has weights (a manifest)
    onnx_runtimes: tuple[str, ...]  # of "onnxruntime", "openvino"


def pick_backend(have: Availability) -> str:
    """``auto``: the first of :data:`AUTO_ORDER` that is available."""
    present = {
        "tensorrt": have.tensorrt_engine,
        "torch-cuda": have.torch_cuda,
        "onnxruntime": "onnxruntime" in have.onnx_runtimes,
        "openvino": "openvino" in have.onnx_runtimes,
    }
    choice = next((b for b in AUTO_ORDER if present[b]), None)
    if choice is None:
        raise VigilError("no detector backend installed (need onnxruntime, openvino or torch)")
    return choice


def probe_availability(
    manifest: Path | None, onnx: Path, engine_cache: Path | None
) -> Availability:
    """Look (cheaply, in the order of preference) at what this machine can run."""
    cuda = torch_cuda_available()
    engine = False
    if cuda and engine_cache is not None and importlib.util.find_spec("tensorrt") is not None:
        from models.tensorrt_runner import find_engine_for

        engine = find_engine_for(engine_cache, manifest, onnx) is not None
    return Availability(engine, cuda and manifest is not None, tuple(available_backends()))


@dataclass(frozen=True)
class DetectorSpec:
    """What to open: the ONNX file (ONNX runtimes), the manifest with the weights (torch
    backends; None for a bare ONNX), and the settings of the GPU backends."""

    onnx: Path
    manifest: Path | None = None
    backend: str = "auto"
    threads: int = 2
    max_batch: int = 8
    cuda_graphs: bool = True
    engine_cache: Path | None = None


def create_detector(path: Path | DetectorSpec, backend: str = "auto", threads: int = 2) -> Detector:
    """Open a detector: ``path`` (an ONNX file, with ``backend`` and ``threads``) or a full
    :class:`DetectorSpec`. ``auto`` resolves with :func:`pick_backend`."""
    spec = path if isinstance(path, DetectorSpec) else DetectorSpec(path, None, backend, threads)
    backend = spec.backend
    if backend not in (*BACKENDS, "auto"):
        raise VigilError(f"unknown backend {backend!r} (choose auto, {', '.join(BACKENDS)})")
    if backend == "auto":
        backend = pick_backend(probe_availability(spec.manifest, spec.onnx, spec.engine_cache))
    if backend in ("torch", "torch-cuda"):
        if spec.manifest is None:
            raise VigilError(
                f"backend {backend} builds the network from a model manifest's weights; "
                f"{spec.onnx.name} is a bare ONNX file"
            )
        from models.torch_detector import TorchDetector

        device = "cuda" if backend == "torch-cuda" else "cpu"
        return TorchDetector(spec.manifest, device, spec.max_batch, spec.cuda_graphs)
    if backend == "tensorrt":
        from models.tensorrt_runner import TensorRTDetector

        return TensorRTDetector.for_model(spec.engine_cache, spec.manifest, spec.onnx)
    if backend == "openvino":
        return OpenVinoDetector(spec.onnx, spec.threads)
    return OrtDetector(spec.onnx, spec.threads)
