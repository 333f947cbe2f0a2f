"""Export a converted YOLOv5 to ONNX (FP32) and save/load the converted weights.

The ONNX graph: input ``images`` ``(B, 3, S, S) float32`` RGB in [0, 1] (B dynamic), output
``predictions`` ``(B, A, 5 + nc) float32`` = ``cx, cy, w, h`` (letterbox pixels), objectness,
class probabilities. BatchNorm is folded into the convolutions first; the head's decode (sigmoid,
grid, anchors) stays in the graph and in float, so an INT8 model quantizes only the convolutions.
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import onnx
import torch
from safetensors.torch import load_file, save_file

from models.manifest import ModelManifest, atomic_write_bytes
from models.yolov5 import YOLOv5, build_from_spec, resize_to_state_dict
from pipeline.types import VigilError

INPUT_NAME = "images"
OUTPUT_NAME = "predictions"


def save_weights(net: YOLOv5, manifest: ModelManifest, out_dir: Path) -> Path:
    """Write ``<name>.safetensors`` and ``<name>.json`` into ``out_dir``; returns the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{manifest.name}.safetensors"
    tmp = weights.with_name(f".{weights.name}.tmp")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
    tmp.chmod(0o644)
    tmp.replace(weights)
    manifest.add_file("weights", weights)
    path = out_dir / f"{manifest.name}.json"
    manifest.save(path)
    return path


def load_weights(manifest_path: Path) -> tuple[YOLOv5, ModelManifest]:
    """Rebuild the float32 eval-mode network from a manifest and its safetensors file."""
    manifest = ModelManifest.load(manifest_path)
    net = build_from_spec(manifest.architecture)
    try:
        state = load_file(str(manifest.file_path(manifest_path, "weights")))
    except (OSError, ValueError) as e:
        raise VigilError(f"{manifest_path}: unreadable weights ({e})") from None
    if manifest.architecture.get("pruned"):
        resize_to_state_dict(net, state)  # a pruned model's channel counts live in its weights
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise VigilError(
            f"{manifest_path}: weights do not match the architecture ({first})"
        ) from None
    return net.eval(), manifest


def export_onnx(net: YOLOv5, path: Path, imgsz: int = 320, opset: int = 17) -> None:
    """Export a BN-fused copy of ``net`` to ``path`` (written atomically)."""
    if imgsz % 32 or not 64 <= imgsz <= 1920:
        raise VigilError(f"--imgsz must be a multiple of 32 in [64, 1920], got {imgsz}")
    fused = copy.deepcopy(net).eval().fuse()
    dummy = torch.zeros(1, 3, imgsz, imgsz)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        num_anchors, num_outputs = fused(dummy).shape[1:]
        torch.onnx.export(
            fused,
            (dummy,),
            buf,  # type: ignore[arg-type]
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load_from_string(buf.getvalue())
    # The head's reshapes hide the static sizes from shape inference: state them.
    dims = model.graph.output[0].type.tensor_type.shape.dim
    dims[1].dim_value, dims[2].dim_value = int(num_anchors), int(num_outputs)
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    atomic_write_bytes(path, model.SerializeToString())
