"""Convert official Ultralytics YOLOv5 checkpoints (``*.pt``) without running pickled code.

A YOLOv5 checkpoint is a torch zip archive whose pickle names the classes of the training
repository (``models.yolo.Model``, ``models.common.C3``...) and of ``torch.nn``. We never import
those: a restricted unpickler resolves only an allow-list of names, mapping every module class
onto an inert record (``_Record``) that keeps the pickled attribute dict, and tensors onto
torch's own tensor rebuilders. Any other global (``os.system``, ``builtins.eval``, an unknown
layer type) is refused with a one-line error before anything is called.

The records are then walked to a flat state dict (``model.<i>.<...>`` names), which loads with
``strict=True`` into :class:`models.yolov5.YOLOv5` built from the checkpoint's own YAML dict.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from models.manifest import ModelManifest
from models.yolov5 import SCALES, V6_ANCHORS, V6_BACKBONE, V6_HEAD, YOLOv5, build_from_spec
from pipeline.types import VigilError

# Classes of the YOLOv5 repository (any of its releases since v6.0) that may appear.
_YOLO_CLASSES = {
    ("models.yolo", "Model"),
    ("models.yolo", "DetectionModel"),
    ("models.yolo", "Detect"),
    ("models.common", "Conv"),
    ("models.common", "C3"),
    ("models.common", "Bottleneck"),
    ("models.common", "SPPF"),
    ("models.common", "Concat"),
}
# torch.nn containers and layers used by those classes.
_TORCH_NN_CLASSES = {
    ("torch.nn.modules.conv", "Conv2d"),
    ("torch.nn.modules.batchnorm", "BatchNorm2d"),
    ("torch.nn.modules.activation", "SiLU"),
    ("torch.nn.modules.pooling", "MaxPool2d"),
    ("torch.nn.modules.upsampling", "Upsample"),
    ("torch.nn.modules.container", "Sequential"),
    ("torch.nn.modules.container", "ModuleList"),
}
# Plain data and torch's tensor rebuilders (they only build tensors from storages).
_SAFE_CALLABLES: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
}


class _Record:
    """Inert stand-in for a pickled module object: holds its attribute dict, runs nothing."""

    qualname = ""
    state: dict[str, Any]

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"unexpected state for {self.qualname}")
        self.__dict__["state"] = state


_RECORD_TYPES: dict[tuple[str, str], type[_Record]] = {
    key: type(key[1], (_Record,), {"qualname": f"{key[0]}.{key[1]}"})
    for key in _YOLO_CLASSES | _TORCH_NN_CLASSES
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _RECORD_TYPES:
            return _RECORD_TYPES[key]
        if key in _SAFE_CALLABLES:
            return _SAFE_CALLABLES[key]
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: not a known YOLOv5 class")


class _RestrictedPickleModule:
    """Passed to ``torch.load(pickle_module=...)``: torch handles storages, we resolve names."""

    Unpickler = _RestrictedUnpickler
    __name__ = "vigil_restricted_pickle"

    @staticmethod
    def load(f: Any, **kwargs: Any) -> Any:
        return _RestrictedUnpickler(f, **kwargs).load()


def load_checkpoint_records(path: Path) -> dict[str, Any]:
    """Unpickle ``path`` with the allow-list; returns the checkpoint dict (modules as records)."""
    if not path.is_file():
        raise VigilError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise VigilError(f"{path} is not a torch checkpoint (not a zip archive)")
    try:
        ckpt = torch.load(
            path, map_location="cpu", pickle_module=_RestrictedPickleModule, weights_only=False
        )
    except pickle.UnpicklingError as e:
        raise VigilError(f"{path}: {_first_line(e)}") from None
    except Exception as e:  # a damaged or hostile archive: whatever broke, one line
        raise VigilError(
            f"{path}: unreadable checkpoint ({type(e).__name__}: {_first_line(e)})"
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model") or ckpt.get("ema"), _Record):
        raise VigilError(f"{path}: not a YOLOv5 checkpoint (no 'model' entry)")
    return ckpt


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def _flatten(rec: _Record, prefix: str, out: dict[str, torch.Tensor]) -> None:
    state = rec.state
    for name, t in (state.get("_parameters") or {}).items():
        if t is not None:
            out[prefix + name] = t.detach()
    for name, t in (state.get("_buffers") or {}).items():
        if t is not None and name != "num_batches_tracked":
            out[prefix + name] = t
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, _Record):
            _flatten(child, f"{prefix}{name}.", out)


def _architecture(model: _Record) -> dict[str, Any]:
    yaml = model.state.get("yaml")
    if not isinstance(yaml, dict):
        raise VigilError("checkpoint has no model YAML dict; cannot tell its architecture")
    return {
        "family": "yolov5",
        "nc": int(yaml.get("nc", 80)),
        "depth_multiple": float(yaml["depth_multiple"]),
        "width_multiple": float(yaml["width_multiple"]),
        "anchors": yaml.get("anchors") if isinstance(yaml.get("anchors"), list) else V6_ANCHORS,
        "backbone": yaml.get("backbone", V6_BACKBONE),
        "head": yaml.get("head", V6_HEAD),
    }


def _names(model: _Record, nc: int) -> list[str]:
    names = model.state.get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    if not isinstance(names, list) or len(names) != nc:
        return [f"class{i}" for i in range(nc)]
    return [str(n) for n in names]


def _scale_name(arch: dict[str, Any]) -> str:
    for name, (d, w) in SCALES.items():
        if abs(arch["depth_multiple"] - d) < 1e-6 and abs(arch["width_multiple"] - w) < 1e-6:
            return name
    return "custom"


def convert_checkpoint(path: Path, version: str = "1.0.0") -> tuple[YOLOv5, ModelManifest]:
    """Checkpoint -> (float32 eval-mode network with weights loaded, manifest)."""
    ckpt = load_checkpoint_records(path)
    rec: _Record = ckpt["ema"] if isinstance(ckpt.get("ema"), _Record) else ckpt["model"]
    arch = _architecture(rec)
    state: dict[str, torch.Tensor] = {}
    _flatten(rec, "", state)
    try:
        net = build_from_spec(arch)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise VigilError(f"{path}: unsupported YOLOv5 architecture ({e})") from None
    state = {k: v.float() for k, v in state.items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise VigilError(
            f"{path}: weights do not fit the YOLOv5 v6 architecture "
            f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})"
        )
    net.eval()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = ModelManifest(
        name=f"yolov5{_scale_name(arch)}",
        version=version,
        architecture=arch,
        class_names=_names(rec, arch["nc"]),
        strides=[int(s) for s in net.detect.stride.tolist()],
        anchors_px=(net.detect.anchors * net.detect.stride.view(-1, 1, 1)).tolist(),
        source_sha256=digest,
        source_name=path.name,
    )
    return net, manifest
