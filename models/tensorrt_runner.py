"""Run a TensorRT engine built by ``vigil models build-engine`` as a detector (backend
``tensorrt``).

**Never run**: TensorRT cannot be installed on any machine this project has had (README,
"GPU"). What is verified here, by tests, is everything that does not need it: the engine cache
key and its sidecar file, which cached engine fits a model, GPU and TensorRT version
(:func:`select_engine`), the binding checks (:func:`check_bindings`), the batch plan over the
engine's optimization profile (:func:`plan_batches`) and the dtype mapping. The runner itself
follows the TensorRT 10 Python API:

- tensors bound by name (``get_tensor_name``/``get_tensor_mode``), the dynamic batch set with
  ``set_input_shape`` inside the profile's [min, max], device buffers (torch CUDA tensors,
  shared with DALI and the torch backends: a device input is copied device-to-device) bound
  with ``set_tensor_address``;
- ``execute_async_v3`` on a dedicated CUDA stream, decode + NMS with torch ops on that stream
  (:mod:`models.postprocess_torch`), one device-to-host copy of the kept boxes.

The engine cache: ``<cache>/<model>-<precision>-b<max_batch>-<digest>.engine`` with ``digest``
a sha256 of :class:`EngineKey`, plus ``<same name>.json`` holding the key, so a runner can tell
which engine was built for what without loading any.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.postprocess import PostprocessParams
from pipeline.types import Detections, VigilError

# TensorRT DataType names -> numpy/torch dtype names (the I/O types a YOLOv5 engine can have).
TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32"}


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine is specific to; any change means another engine."""

    gpu: str
    compute_capability: str
    tensorrt: str
    model_sha256: str
    precision: str
    max_batch: int
    imgsz: int

    def digest(self) -> str:
        text = json.dumps(self.__dict__, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def engine_path(cache: Path, model_name: str, key: EngineKey) -> Path:
    return cache / f"{model_name}-{key.precision}-b{key.max_batch}-{key.digest()}.engine"


def sidecar_path(engine: Path) -> Path:
    return engine.with_suffix(".json")


def sidecar_bytes(key: EngineKey) -> bytes:
    return (json.dumps(asdict(key), indent=1, sort_keys=True) + "\n").encode()


def read_sidecar(engine: Path) -> EngineKey | None:
    """The key an engine was built for, or None when its sidecar is missing or unreadable."""
    try:
        data = json.loads(sidecar_path(engine).read_text())
        key = EngineKey(**data)
    except (OSError, ValueError, TypeError):
        return None
    return key if engine.name.endswith(f"-{key.digest()}.engine") else None


def select_engine(
    candidates: Sequence[tuple[Path, EngineKey]],
    gpu: str,
    compute_capability: str,
    tensorrt: str,
    model_sha256s: Sequence[str],
    imgsz: int,
) -> Path | None:
    """The engine to run: built for this GPU, compute capability, TensorRT version, input size
    and one of the model's ONNX files (``model_sha256s``, in order of preference); among those,
    the preferred ONNX first, then the largest ``max_batch``, then the name (deterministic)."""
    fits = [
        (model_sha256s.index(k.model_sha256), -k.max_batch, p.name, p)
        for p, k in candidates
        if k.gpu == gpu
        and k.compute_capability == compute_capability
        and k.tensorrt == tensorrt
        and k.imgsz == imgsz
        and k.model_sha256 in model_sha256s
    ]
    return min(fits)[3] if fits else None


@dataclass(frozen=True)
class TensorInfo:
    """One I/O tensor of an engine: mode ``INPUT``/``OUTPUT``, shape with -1 for dynamic
    dimensions, TensorRT dtype name (``FLOAT``, ``HALF``...)."""

    name: str
    mode: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class Bindings:
    """A checked YOLOv5 engine interface: input ``(B, 3, S, S)``, output ``(B, A, 5 + nc)``."""

    input_name: str
    output_name: str
    imgsz: int
    anchors: int
    outputs: int
    input_dtype: str  # numpy/torch dtype name
    output_dtype: str


def torch_dtype_name(trt_dtype: str) -> str:
    if trt_dtype not in TRT_DTYPES:
        raise VigilError(f"TensorRT engine I/O type {trt_dtype} is not supported")
    return TRT_DTYPES[trt_dtype]


def check_bindings(tensors: Sequence[TensorInfo]) -> Bindings:
    """Exactly one input ``(-1, 3, S, S)`` and one output ``(-1, A, 5 + nc)``, else a one-line
    error that says what the engine has."""
    inputs = [t for t in tensors if t.mode == "INPUT"]
    outputs = [t for t in tensors if t.mode == "OUTPUT"]
    have = ", ".join(f"{t.mode.lower()} {t.name}{list(t.shape)}" for t in tensors)
    if len(inputs) != 1 or len(outputs) != 1:
        raise VigilError(f"not a YOLOv5 engine: expected one input and one output ({have})")
    i, o = inputs[0], outputs[0]
    ok = (
        len(i.shape) == 4
        and i.shape[1] == 3
        and i.shape[2] == i.shape[3] > 0
        and len(o.shape) == 3
        and o.shape[1] > 0
        and o.shape[2] > 5
        and i.shape[0] in (-1, o.shape[0])
    )
    if not ok:
        raise VigilError(f"not a YOLOv5 engine: expected (B,3,S,S) -> (B,A,5+nc) ({have})")
    return Bindings(
        i.name,
        o.name,
        i.shape[2],
        o.shape[1],
        o.shape[2],
        torch_dtype_name(i.dtype),
        torch_dtype_name(o.dtype),
    )


def plan_batches(n: int, min_batch: int, max_batch: int) -> list[tuple[int, int, int]]:
    """``(start, stop, run_batch)`` runs covering ``n`` images inside the profile's
    ``[min_batch, max_batch]``: full runs of ``max_batch``, the rest padded up to ``min_batch``
    when smaller (the padding rows are never decoded)."""
    if not 1 <= min_batch <= max_batch:
        raise VigilError(f"bad optimization profile: batch [{min_batch}, {max_batch}]")
    runs = []
    for start in range(0, n, max_batch):
        stop = min(start + max_batch, n)
        runs.append((start, stop, max(stop - start, min_batch)))
    return runs


def model_onnx_sha256s(manifest: Path | None, onnx: Path) -> list[str]:
    """The sha256 of every ONNX an engine for this model may have been built from: the one
    that runs (``onnx``), then the manifest's FP32 and TensorRT-INT8 exports."""
    from models.manifest import ModelManifest, sha256_file

    shas = [sha256_file(onnx)]
    if manifest is not None:
        m = ModelManifest.load(manifest)
        for role in (f"onnx-int8-trt-{m.input_size}", f"onnx-fp32-{m.input_size}"):
            sha = m.files.get(role, {}).get("sha256")
            if sha and sha not in shas:
                shas.append(str(sha))
    return shas


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        raise VigilError(
            "backend tensorrt needs TensorRT 10: `pip install .[tensorrt]` on a machine with an "
            "NVIDIA GPU"
        ) from None
    return trt


def _gpu_identity() -> tuple[str, str]:
    import torch

    if not torch.cuda.is_available():
        raise VigilError("backend tensorrt needs an NVIDIA GPU and a CUDA build of torch")
    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), f"{major}.{minor}"


def find_engine_for(cache: Path | None, manifest: Path | None, onnx: Path) -> Path | None:
    """The cached engine for this model on this GPU and TensorRT version, if any."""
    if cache is None or not cache.is_dir():
        return None
    trt = _import_tensorrt()
    gpu, cc = _gpu_identity()
    size = _input_size(manifest, onnx)
    candidates = [(p, k) for p in sorted(cache.glob("*.engine")) if (k := read_sidecar(p))]
    shas = model_onnx_sha256s(manifest, onnx)
    return select_engine(candidates, gpu, cc, str(trt.__version__), shas, size)


def _input_size(manifest: Path | None, onnx: Path) -> int:
    from models.manifest import ModelManifest

    if manifest is not None:
        return int(ModelManifest.load(manifest).input_size)
    import onnx as onnx_lib

    dims = onnx_lib.load(str(onnx), load_external_data=False).graph.input[0].type.tensor_type
    return int(dims.shape.dim[2].dim_value)


class TensorRTDetector:
    """A YOLOv5 TensorRT engine behind the ``Detector`` protocol (see the module docstring)."""

    backend = "tensorrt"
    accepts_device = True

    @classmethod
    def for_model(cls, cache: Path | None, manifest: Path | None, onnx: Path) -> TensorRTDetector:
        path = find_engine_for(cache, manifest, onnx)
        if path is None:
            raise VigilError(
                f"no TensorRT engine for {onnx.name} on this GPU and TensorRT version in "
                f"{cache}: build one with `vigil models build-engine --cache {cache}`"
            )
        key = read_sidecar(path)
        assert key is not None
        return cls(path, key)

    def __init__(self, path: Path, key: EngineKey) -> None:
        import torch

        trt = _import_tensorrt()
        self.path, self.key, self.model_file = path, key, path
        self.precision = key.precision
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise VigilError(f"{path}: TensorRT could not load the engine (see its log)")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        tensors = [
            TensorInfo(
                n,
                self._engine.get_tensor_mode(n).name,
                tuple(int(d) for d in self._engine.get_tensor_shape(n)),
                self._engine.get_tensor_dtype(n).name,
            )
            for n in names
        ]
        self.io = check_bindings(tensors)
        lo, _, hi = self._engine.get_tensor_profile_shape(self.io.input_name, 0)
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.input_size, self.num_outputs = self.io.imgsz, self.io.outputs
        self.input_dtype = self.io.input_dtype
        self._context = self._engine.create_execution_context()
        self.device = torch.device("cuda", 0)
        self._stream = torch.cuda.Stream(self.device)
        s = self.input_size
        in_dtype = getattr(torch, self.io.input_dtype)
        out_dtype = getattr(torch, self.io.output_dtype)
        self._in = torch.empty((self.max_batch, 3, s, s), dtype=in_dtype, device=self.device)
        self._out = torch.empty(
            (self.max_batch, self.io.anchors, self.io.outputs), dtype=out_dtype, device=self.device
        )
        self._context.set_tensor_address(self.io.input_name, self._in.data_ptr())
        self._context.set_tensor_address(self.io.output_name, self._out.data_ptr())

    def _raw(self, batch: Any) -> Any:
        """``(B, A, 5 + nc) float32`` on the device, computed on the runner's stream."""
        import torch

        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream), torch.inference_mode():
            if isinstance(batch, np.ndarray):
                x = torch.from_numpy(np.ascontiguousarray(batch)).pin_memory()
                x = x.to(self.device, non_blocking=True)
            else:
                x = batch
            runs = plan_batches(int(x.shape[0]), self.min_batch, self.max_batch)
            outs = []
            for start, stop, run in runs:
                self._in[: stop - start].copy_(x[start:stop])
                s = self.input_size
                self._context.set_input_shape(self.io.input_name, (run, 3, s, s))
                if not self._context.execute_async_v3(self._stream.cuda_stream):
                    raise VigilError(f"{self.path.name}: TensorRT execution failed")
                out = self._out[: stop - start].float()
                outs.append(out if len(runs) == 1 else out.clone())
            return outs[0] if len(outs) == 1 else torch.cat(outs)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        raw = self._raw(batch)
        self._stream.synchronize()
        return np.asarray(raw.cpu().numpy(), dtype=np.float32)

    def detect(
        self, batch: Any, params: PostprocessParams, timings: dict[str, float] | None = None
    ) -> list[Detections]:
        import torch

        from models.postprocess_torch import postprocess_batch, to_detections

        t0 = time.perf_counter()
        raw = self._raw(batch)
        self._stream.synchronize()
        t1 = time.perf_counter()
        with torch.cuda.stream(self._stream), torch.inference_mode():
            dets = to_detections(*postprocess_batch(raw, params))
        if timings is not None:
            timings.update(infer=(t1 - t0) * 1e3, nms=(time.perf_counter() - t1) * 1e3)
        return dets

    def describe(self) -> dict[str, Any]:
        return {"device": "cuda:0", "engine": self.path.name, **asdict(self.key)}
