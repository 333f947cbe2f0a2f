"""Static INT8 quantization of the exported ONNX (QDQ format, per-channel weights).

Two scopes:

- ``conv``: only ``Conv`` nodes get QuantizeLinear/DequantizeLinear pairs.
- ``body`` (default): the whole backbone and neck (Conv, SiLU's Sigmoid/Mul, residual Add,
  Concat, MaxPool, Resize), so activations stay INT8 between layers instead of being
  dequantized around every SiLU. Measured on the 2-core dev machine (README): ``conv`` is
  *slower* than FP32 in ONNX Runtime, ``body`` is faster.

In both, the whole Detect layer stays float: its three 1x1 output convolutions (box, objectness
and class logits share one tensor, so one INT8 scale would serve very different ranges) and the
decode (sigmoid, grid, anchor multiply, concat), where one INT8 scale shared by box pixels
(0..S) and probabilities (0..1) would crush the scores (ENVIRONMENT.md §6).
Weights: symmetric INT8 per output channel; activations: asymmetric UINT8 per tensor,
calibrated by min-max (default), entropy or percentile over letterboxed frames.

:func:`quantize_model` is the step as a registry entry (``vigil models quantize``): one trial
per calibration method, the best mAP@.5:.95 on the eval split wins, every trial recorded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from models.export import INPUT_NAME
from models.manifest import ModelManifest, atomic_write_bytes
from pipeline.types import VigilError
from toolchain.images import images_digest, letterbox_batches

SCOPES = {
    "conv": frozenset({"Conv"}),
    "body": frozenset({"Conv", "Mul", "Sigmoid", "Add", "Concat", "MaxPool", "Resize"}),
}

# TensorRT's explicit quantization: signed INT8 with zero point 0 everywhere, biases in float
# (TensorRT does not take INT32 bias Q/DQ; it fuses the float bias into the INT8 convolution).
TENSORRT_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


@contextlib.contextmanager
def _entropy_histogram(num_bins: int = 2048) -> Iterator[None]:
    """Give ONNX Runtime's entropy calibrator a real histogram.

    ``quantize_static`` cannot pass histogram sizes through, and the calibrator's defaults
    (128 bins, 128 quantized bins) leave a single candidate threshold, the full range: measured
    here, "entropy" then produced scales identical to min-max. TensorRT's entropy calibration
    searches 2048 bins for the 128-bin window of least KL divergence; so do we, by wrapping the
    calibrator factory for the duration of one call.
    """
    import importlib

    # the module, not the `quantize` function the package exports under the same name
    ort_quantize = importlib.import_module("onnxruntime.quantization.quantize")
    original = ort_quantize.create_calibrator

    def with_bins(*args: Any, **kwargs: Any) -> Any:
        extra = dict(kwargs.get("extra_options") or {})
        kwargs["extra_options"] = {"num_bins": num_bins, "num_quantized_bins": 128, **extra}
        return original(*args, **kwargs)

    setattr(ort_quantize, "create_calibrator", with_bins)  # noqa: B010
    try:
        yield
    finally:
        setattr(ort_quantize, "create_calibrator", original)  # noqa: B010


@contextlib.contextmanager
def _calibration_errors(method: str) -> Iterator[None]:
    """A histogram calibrator fails on a (near) constant tensor: say so in one line."""
    try:
        yield
    except ValueError as e:
        raise VigilError(f"{method} calibration failed ({e}); try another --method") from None


class _BatchReader(CalibrationDataReader):
    """Feeds ``(B, 3, S, S) float32`` batches to the calibrator, one batch per call."""

    def __init__(self, batches: Iterable[np.ndarray]) -> None:
        self._it: Iterator[np.ndarray] = iter(batches)
        self.digest = hashlib.sha256()
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        if batch is None:
            return None
        self.digest.update(np.ascontiguousarray(batch).tobytes())
        self.count += int(batch.shape[0])
        return {INPUT_NAME: batch.astype(np.float32, copy=False)}


def quantize_int8(
    fp32_onnx: Path,
    out_path: Path,
    batches: Iterable[np.ndarray],
    method: str = "minmax",
    scope: str = "body",
    symmetric: bool = False,
) -> dict[str, object]:
    """Write the INT8 QDQ model to ``out_path`` (atomically).

    ``symmetric``: signed INT8 activations with zero point 0 (what TensorRT's explicit
    quantization takes) instead of ONNX Runtime's faster asymmetric UINT8.

    Returns calibration facts for the manifest: method, number of images and the sha256 of the
    exact calibration tensors (so a rebuilt model can be traced to its data).
    """
    if method not in CALIBRATION_METHODS:
        raise VigilError(
            f"unknown calibration method {method!r} (choose {', '.join(CALIBRATION_METHODS)})"
        )
    if scope not in SCOPES:
        raise VigilError(f"unknown quantization scope {scope!r} (choose {', '.join(SCOPES)})")
    ops = SCOPES[scope]
    reader = _BatchReader(batches)
    with tempfile.TemporaryDirectory(prefix="vigil-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_onnx), str(pre), skip_symbolic_shape=True)
        graph = onnx.load(str(pre)).graph
        head = _head_prefix(graph)
        exclude = [n.name for n in graph.node if n.op_type not in ops or n.name.startswith(head)]
        staged = Path(tmp) / "int8.onnx"
        bins = _entropy_histogram() if method == "entropy" else contextlib.nullcontext()
        with bins, _calibration_errors(method):
            quantize_static(
                str(pre),
                str(staged),
                reader,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                nodes_to_exclude=exclude,
                calibrate_method=CALIBRATION_METHODS[method],
                extra_options={
                    **({"CalibMaxIntermediateOutputs": 64} if method != "minmax" else {}),
                    **(TENSORRT_OPTIONS if symmetric else {}),
                },
            )
        if reader.count == 0:
            raise VigilError("no calibration images were given")
        atomic_write_bytes(out_path, staged.read_bytes())
    return {
        "method": method,
        "scope": scope,
        "symmetric": symmetric,
        "images": reader.count,
        "data_sha256": reader.digest.hexdigest(),
    }


def _head_prefix(graph: onnx.GraphProto) -> str:
    """Name prefix of the Detect layer's nodes (the last ``/model.<i>/`` in the graph)."""
    layers = [n.name.split("/")[1] for n in graph.node if n.name.startswith("/model.")]
    if not layers:
        raise VigilError("the ONNX graph does not look like a Vigil YOLOv5 export")
    last = max(int(x.split(".")[1]) for x in layers if x.split(".")[1].isdigit())
    return f"/model.{last}/"


@dataclass(frozen=True)
class CalibrationTrial:
    method: str
    map50_95: float
    map50: float
    seconds: float


def quantize_model(
    manifest_path: Path,
    images: Sequence[np.ndarray],
    methods: Sequence[str],
    data: Path | None,
    imgsz: int,
    scope: str = "body",
    for_tensorrt: bool = False,
) -> tuple[Path, list[CalibrationTrial]]:
    """INT8 QDQ model of ``manifest_path``'s FP32 ONNX, calibrated on ``images`` by each of
    ``methods``; with more than one, the best mAP@.5:.95 on ``data``'s eval split wins (ties:
    mAP@.5). Writes ``onnx-int8-<imgsz>`` beside the manifest and records every trial in the
    manifest's ``calibration``; returns the INT8 path and the trials. ``for_tensorrt``: signed
    symmetric INT8 for TensorRT's explicit quantization, as ``onnx-int8-trt-<imgsz>``."""
    import time

    from evaluation.detection import evaluate_map, find_annotations
    from models.detector import create_detector
    from toolchain.quantize import CALIBRATION_METHODS, quantize_int8

    for m in methods:
        if m not in CALIBRATION_METHODS:
            raise VigilError(f"unknown calibration method {m!r} ({', '.join(CALIBRATION_METHODS)})")
    if len(methods) > 1 and data is None:
        raise VigilError("choosing between calibration methods needs --data (a COCO folder)")
    if data is not None:
        find_annotations(data)
    manifest = ModelManifest.load(manifest_path)
    fp32 = manifest.file_path(manifest_path, f"onnx-fp32-{imgsz}")
    trials: list[CalibrationTrial] = []
    best: tuple[tuple[float, float], Path, dict[str, object]] | None = None
    with tempfile.TemporaryDirectory(prefix="vigil-int8-") as tmp:
        for method in methods:
            t0 = time.perf_counter()
            out = Path(tmp) / f"{method}.onnx"
            batches = letterbox_batches(images, imgsz)
            try:
                facts = quantize_int8(fp32, out, batches, method, scope, symmetric=for_tensorrt)
            except VigilError as e:
                print(f"calibration {method:10s} skipped: {e}")
                continue
            score = (float("nan"), float("nan"))
            if data is not None:
                r = evaluate_map(create_detector(out, "onnxruntime"), data, split="eval")
                score = (r.map50_95, r.map50)
            trials.append(CalibrationTrial(method, *score, time.perf_counter() - t0))
            print(f"calibration {method:10s} mAP@.5:.95 {score[0]:.4f}  mAP@.5 {score[1]:.4f}")
            if best is None or score > best[0]:
                best = (score, out, facts)
        if best is None:
            raise VigilError(f"every calibration method failed ({', '.join(methods)})")
        kind = "int8-trt" if for_tensorrt else "int8"
        target = manifest_path.parent / f"{manifest.name}-{imgsz}-{kind}.onnx"
        atomic_write_bytes(target, best[1].read_bytes())
    manifest.add_file(f"onnx-{kind}-{imgsz}", target, imgsz=imgsz, **best[2])
    if for_tensorrt:
        manifest.save(manifest_path)
        return target, trials
    manifest.calibration = {
        **best[2],
        "images_sha256": images_digest(images),
        "selected_by": "mAP@.5:.95 on the eval split" if data is not None else "given",
        "trials": [dataclasses.asdict(t) for t in trials],
    }
    manifest.save(manifest_path)
    return target, trials
