"""Prepare and check a Vigil YOLOv5 ONNX for TensorRT (runs anywhere: no TensorRT needed).

What TensorRT 10's ONNX parser needs from this graph, and what is checked here:

- It is a Vigil/YOLOv5 export: input ``images`` ``(batch, 3, S, S)``, output ``predictions``
  ``(batch, A, 5 + nc)`` with ``A = 3 * (S/8)^2 * (1 + 1/4 + 1/16)``.
- BatchNorm is folded into the convolutions (no ``BatchNormalization`` node left).
- Every shape but the batch is static; one optimization profile covers batch 1..max.
- Only operators of the supported set below (all in TensorRT 10's ONNX operator support list).
- INT8 explicit quantization (a QDQ model): TensorRT only takes *signed INT8, zero point 0*
  Q/DQ pairs, per-tensor for activations and per-output-channel (axis 0) for weights. Our
  default ONNX Runtime QDQ model uses UINT8 asymmetric activations, so TensorRT INT8 is built
  either from the FP32 ONNX with the entropy calibrator (implicit quantization), or from a
  QDQ model exported with ``symmetric=True`` (``toolchain.quantize``); a wrong QDQ model is refused
  here with the node named, before any GPU time is spent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from models.export import INPUT_NAME, OUTPUT_NAME
from pipeline.types import VigilError

TRT_OPS = frozenset(
    {
        "Add",
        "Cast",
        "Concat",
        "Constant",
        "Conv",
        "DequantizeLinear",
        "Div",
        "Gather",
        "Identity",
        "MaxPool",
        "Mul",
        "Pow",
        "QuantizeLinear",
        "Reshape",
        "Resize",
        "Shape",
        "Sigmoid",
        "Slice",
        "Split",
        "Sub",
        "Transpose",
        "Unsqueeze",
    }
)


@dataclass(frozen=True)
class OnnxFacts:
    imgsz: int
    anchors: int
    outputs: int  # 5 + nc
    quantized: bool  # has Q/DQ nodes (explicit INT8)
    opset: int


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [
        d.dim_value if d.HasField("dim_value") else d.dim_param
        for d in value.type.tensor_type.shape.dim
    ]


def inspect_yolov5(model: onnx.ModelProto) -> OnnxFacts:
    """Check that ``model`` is a Vigil YOLOv5 export fit for TensorRT; VigilError otherwise."""
    g = model.graph
    inputs = [i for i in g.input if i.name not in {t.name for t in g.initializer}]
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME or len(g.output) != 1:
        raise VigilError("not a Vigil YOLOv5 export: expected one input 'images', one output")
    if g.output[0].name != OUTPUT_NAME:
        raise VigilError("not a Vigil YOLOv5 export: the output is not named 'predictions'")
    ind, outd = _dims(inputs[0]), _dims(g.output[0])
    if len(ind) != 4 or ind[1] != 3 or not isinstance(ind[2], int) or ind[2] != ind[3]:
        raise VigilError(f"not a YOLOv5 export: input shape {ind}, expected (batch, 3, S, S)")
    size = int(ind[2])
    if size % 32 or size == 0:
        raise VigilError(f"input size {size} is not a multiple of 32")
    anchors = 3 * sum((size // s) ** 2 for s in (8, 16, 32))
    if len(outd) != 3 or outd[1] != anchors or not isinstance(outd[2], int) or outd[2] < 6:
        raise VigilError(
            f"not a YOLOv5 export: output shape {outd}, expected (batch, {anchors}, 5+nc)"
        )
    if ind[0] != outd[0]:
        raise VigilError("the batch dimension of input and output differ")
    ops = {n.op_type for n in g.node if n.domain in ("", "ai.onnx")}
    if "BatchNormalization" in ops:
        raise VigilError("BatchNorm is not folded into the convolutions (export with Vigil)")
    foreign = sorted(
        {n.op_type for n in g.node if n.domain not in ("", "ai.onnx")} | (ops - TRT_OPS)
    )
    if foreign:
        raise VigilError(f"operators TensorRT builds are not checked for: {', '.join(foreign)}")
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    quantized = "QuantizeLinear" in ops or "DequantizeLinear" in ops
    if quantized:
        check_qdq(model)
    return OnnxFacts(size, anchors, int(outd[2]), quantized, int(opset))


def check_qdq(model: onnx.ModelProto) -> None:
    """Every Q/DQ must be signed INT8 with zero point 0; weight DQs per-channel on axis 0."""
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zp = inits.get(node.input[2]) if len(node.input) > 2 else None
        if zp is None:
            raise VigilError(f"{node.name}: no constant zero point (TensorRT needs one of 0)")
        arr = numpy_helper.to_array(zp)
        if arr.dtype != np.int8 or np.any(arr != 0):
            raise VigilError(
                f"{node.name}: {arr.dtype} zero point {arr.ravel()[:1].tolist()}; TensorRT takes "
                "only signed INT8 with zero point 0 (quantize with --for-tensorrt, or build INT8 "
                "from the FP32 ONNX with the calibrator)"
            )
        scale = inits.get(node.input[1])
        if scale is None:
            raise VigilError(f"{node.name}: the scale is not a constant")
        if numpy_helper.to_array(scale).size > 1:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if node.op_type != "DequantizeLinear" or node.input[0] not in inits or axis != 0:
                raise VigilError(f"{node.name}: per-channel Q/DQ only on weights, axis 0")


def profile_shapes(imgsz: int, max_batch: int) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) input shapes of the one optimization profile: batch 1, the largest
    power of two <= max_batch (the live batcher's usual full batch), max_batch."""
    if not 1 <= max_batch <= 256:
        raise VigilError(f"--max-batch must be in [1, 256], got {max_batch}")
    opt = 1 << (max_batch.bit_length() - 1)
    return tuple((b, 3, imgsz, imgsz) for b in (1, opt, max_batch))


def prepare(src: Path, dst: Path) -> OnnxFacts:
    """Check ``src``, pin every shape but the batch, fold constants, write ``dst`` atomically."""
    from models.manifest import atomic_write_bytes

    try:
        model = onnx.load(str(src))
    except Exception as e:  # onnx raises DecodeError / OSError / google.protobuf errors
        raise VigilError(f"{src}: not an ONNX model ({type(e).__name__})") from None
    facts = inspect_yolov5(model)
    # Constant nodes become initializers: TensorRT folds them either way, but a graph with
    # plain initializers is what the checks above and Polygraphy-style tools expect.
    consts = [n for n in model.graph.node if n.op_type == "Constant"]
    for n in consts:
        t = onnx.helper.get_attribute_value(n.attribute[0])
        if isinstance(t, onnx.TensorProto):
            t.name = n.output[0]
            model.graph.initializer.append(t)
            model.graph.node.remove(n)
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    atomic_write_bytes(dst, model.SerializeToString())
    return facts
