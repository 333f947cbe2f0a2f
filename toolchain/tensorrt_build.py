"""Build a TensorRT 10 engine from a Vigil YOLOv5 ONNX (lazy import: needs the ``tensorrt`` extra
and an NVIDIA GPU; everything that prepares the ONNX is in ``toolchain.trt_prep`` and runs
anywhere).

- One optimization profile over the dynamic batch (``trt_prep.profile_shapes``).
- Device memory and the GPU's name come from cuda-python's runtime bindings (the ``tensorrt``
  extra installs both), so no CUDA build of torch is needed.
- ``fp16``: FP16 kernels allowed. ``int8``: a QDQ ONNX (symmetric INT8) is built as is
  (explicit quantization); an FP32 ONNX is calibrated by the entropy calibrator on letterboxed
  frames, with its calibration cache kept beside the engine cache (keyed by model sha256 and the
  calibration images' digest) so a rebuild skips calibration.
- A timing cache (``timing.cache``) is loaded and saved across builds.
- The engine cache: ``<cache>/<model>-<key>.engine`` with ``key`` = sha256 of GPU name, compute
  capability, TensorRT version, model sha256, precision, max batch and input size
  (``models.tensorrt_runner.EngineKey``), and the key itself beside it as ``<same name>.json``
  so the runner (``--backend tensorrt``) finds the engine for its model and GPU. An engine that
  exists for the key is reused; a new one is written to a temporary name, then renamed.

Verified here (no GPU, no TensorRT on the development machines): everything up to the
``import tensorrt`` line, by the tests of ``trt_prep`` and of the cache key. The builder code
below follows the TensorRT 10 Python API and has not been run.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from models.manifest import atomic_write_bytes, sha256_file
from models.tensorrt_runner import EngineKey, engine_path, sidecar_bytes, sidecar_path
from pipeline.types import VigilError
from toolchain.trt_prep import prepare, profile_shapes

PRECISIONS = ("fp16", "int8")


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        raise VigilError(
            "TensorRT is not installed: `pip install .[tensorrt]` on a machine with an NVIDIA "
            "GPU (TensorRT 10)"
        ) from None
    return trt


def _cudart() -> Any:
    """CUDA runtime bindings from cuda-python (no CUDA torch needed)."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise VigilError(
                "cuda-python is not installed: `pip install .[tensorrt]` on the GPU machine"
            ) from None
    return cudart


def _ok(result: Any) -> Any:
    """cuda-python returns ``(error, value...)``: raise on an error, return the value."""
    err, *values = result if isinstance(result, tuple) else (result,)
    code: int = int(err.value if hasattr(err, "value") else err)  # cudaError_t: an enum
    if code != 0:  # cudaSuccess
        raise VigilError(f"CUDA runtime error {err}")
    return values[0] if values else None


def _gpu(cudart: Any) -> tuple[str, str]:
    """(device name, compute capability) of GPU 0."""
    props = _ok(cudart.cudaGetDeviceProperties(0))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.rstrip("\x00"), f"{props.major}.{props.minor}"


def _entropy_calibrator(
    trt: Any, cudart: Any, batches: Iterable[np.ndarray], shape: tuple[int, ...], cache_file: Path
) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``(B, 3, S, S) float32`` batches (``shape``) from
    the host through one device buffer; its cache is ``cache_file``."""
    nbytes = int(np.prod(shape)) * 4

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = iter(batches)
            self.device = _ok(cudart.cudaMalloc(nbytes))

        def get_batch_size(self) -> int:
            return shape[0]

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self.batches, None)
            if batch is None:
                return None
            if batch.shape[0] != shape[0]:  # the last, short batch: pad by repetition
                reps = -(-shape[0] // batch.shape[0])
                batch = np.concatenate([batch] * reps)[: shape[0]]
            host = np.ascontiguousarray(batch, dtype=np.float32)
            kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            _ok(cudart.cudaMemcpy(self.device, host.ctypes.data, nbytes, kind))
            return [int(self.device)]

        def read_calibration_cache(self) -> bytes | None:
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            atomic_write_bytes(cache_file, bytes(cache))

        def free(self) -> None:
            _ok(cudart.cudaFree(self.device))

    return Calibrator()


def _serialize(
    trt: Any,
    cudart: Any,
    onnx_bytes: bytes,
    quantized: bool,
    shapes: tuple[tuple[int, ...], ...],
    key: EngineKey,
    cache: Path,
    calibration: Iterable[np.ndarray] | None,
    calibration_digest: str,
    workspace_gib: float,
) -> bytes:
    """Parse, configure (profile, timing cache, FP16/INT8, calibrator) and build; the timing
    cache is saved back. Returns the serialized engine."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise VigilError(f"TensorRT could not parse the ONNX: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    profile = builder.create_optimization_profile()
    profile.set_shape(network.get_input(0).name, *shapes)
    config.add_optimization_profile(profile)
    timing_file = cache / "timing.cache"
    timing = config.create_timing_cache(timing_file.read_bytes() if timing_file.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    config.set_flag(trt.BuilderFlag.FP16)  # layers left in float run in FP16 in both modes
    calibrator = None
    if key.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        if not quantized:
            assert calibration is not None
            calib_file = cache / f"{key.model_sha256[:16]}-{calibration_digest[:16]}.calib"
            calibrator = _entropy_calibrator(trt, cudart, calibration, shapes[1], calib_file)
            config.int8_calibrator = calibrator
            config.set_calibration_profile(profile)
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.free()
    if serialized is None:
        raise VigilError("TensorRT failed to build an engine (see its log above)")
    atomic_write_bytes(timing_file, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def build_engine(
    onnx_path: Path,
    model_name: str,
    precision: str,
    max_batch: int,
    cache: Path,
    calibration: Iterable[np.ndarray] | None = None,
    calibration_digest: str = "",
    workspace_gib: float = 4.0,
) -> tuple[Path, bool]:
    """The engine file for ``onnx_path`` (built unless cached); returns (path, built_now)."""
    if precision not in PRECISIONS:
        raise VigilError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    cache.mkdir(parents=True, exist_ok=True)
    prepared = cache / f".{model_name}.trt-input.onnx"
    facts = prepare(onnx_path, prepared)  # refuses a non-YOLOv5 or TensorRT-unfit graph here
    try:
        shapes = profile_shapes(facts.imgsz, max_batch)
        if precision == "int8" and not facts.quantized and calibration is None:
            raise VigilError("INT8 from an FP32 ONNX needs calibration images (--calib)")
        trt = _import_tensorrt()
        cudart = _cudart()
        gpu, cc = _gpu(cudart)
        key = EngineKey(
            gpu, cc, trt.__version__, sha256_file(onnx_path), precision, max_batch, facts.imgsz
        )
        out = engine_path(cache, model_name, key)
        if out.is_file():
            if not sidecar_path(out).is_file():
                atomic_write_bytes(sidecar_path(out), sidecar_bytes(key))
            return out, False
        onnx_bytes = prepared.read_bytes()
        serialized = _serialize(
            trt,
            cudart,
            onnx_bytes,
            facts.quantized,
            shapes,
            key,
            cache,
            calibration,
            calibration_digest,
            workspace_gib,
        )
        atomic_write_bytes(out, serialized)
        atomic_write_bytes(sidecar_path(out), sidecar_bytes(key))
        return out, True
    finally:
        prepared.unlink(missing_ok=True)
